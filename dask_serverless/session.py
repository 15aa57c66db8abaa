"""Process-wide resources shared by computes: the Redis URLs and the backends."""

from __future__ import annotations

import atexit
import logging
import threading

import redis

from . import config
from .backends import Backend, create_backend
from .errors import RedisUnavailableError
from .metrics.server import MetricsServer
from .storage.embedded import EmbeddedRedis, server_binary
from .storage.store import connect, redact

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_embedded: EmbeddedRedis | None = None
_metrics_server: MetricsServer | None = None
_backends: dict[str, Backend] = {}
_checked_urls: set[str] = set()


def redis_url(override: str | None = None) -> str:
    """The configured Redis URL, or the embedded server's (started on first use)."""
    global _embedded
    url = config.get("redis-url", override)
    if url is None:
        with _lock:
            if _embedded is None:
                _embedded = EmbeddedRedis(prefer=config.get("embedded.prefer"))
                _embedded.start()
            url = _embedded.url
    _check(url, "serverless.redis-url")
    return url


def metrics_url(redis_url_override: str | None = None) -> str | None:
    """Where metrics are recorded, or None when ``serverless.metrics.enabled`` is off.

    ``serverless.metrics.redis-url`` if set; else the configured ``serverless.redis-url``
    (metrics keys never expire there); else the embedded metrics server that keeps its data
    in ``serverless.metrics.data-dir`` (shared with other processes; see
    ``metrics.server``). Without a Redis server binary (or with
    ``serverless.embedded.prefer = "fakeredis"``) metrics go to the embedded intermediates
    server and last only as long as the process.
    """
    global _metrics_server
    if not config.get("metrics.enabled"):
        return None
    url = config.get("metrics.redis-url") or config.get("redis-url", redis_url_override)
    if url is None:
        if config.get("embedded.prefer") != "redis-server" or server_binary() is None:
            logger.warning("metrics are kept in the in-process Redis and will not outlive "
                           "this process (no Redis server binary, or embedded.prefer)")
            return redis_url()
        with _lock:
            if _metrics_server is None:
                server = MetricsServer(config.get("metrics.data-dir"))
                server.acquire()
                _metrics_server = server
            url = _metrics_server.url
    _check(url, "serverless.metrics.redis-url")
    return url


def _check(url: str, option: str) -> None:
    if url in _checked_urls:
        return
    try:
        connect(url).ping()
    except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
        raise RedisUnavailableError(
            f"cannot reach Redis at {redact(url)!r} ({option}): {exc}") from exc
    _checked_urls.add(url)


def backend(name: str | Backend | None = None) -> Backend:
    """The process-wide backend of that name (a Backend instance is returned as is)."""
    if name is not None and not isinstance(name, str):
        return name
    name = config.get("backend", name)
    with _lock:
        b = _backends.get(name)
        if b is None:
            b = _backends[name] = create_backend(name)
        return b


def reset_backend(name: str) -> None:
    """Close and forget backend ``name``; its next use recreates it from the config."""
    with _lock:
        b = _backends.pop(name, None)
    if b is not None:
        b.close()


def close() -> None:
    """Stop the backends and the embedded Redis this process started; let go of the
    metrics server (stopped when no other process uses it)."""
    global _embedded, _metrics_server
    with _lock:
        for b in _backends.values():
            b.close()
        _backends.clear()
        if _embedded is not None:
            _embedded.stop()
            _embedded = None
        if _metrics_server is not None:
            if _metrics_server.url is not None:
                connect(_metrics_server.url).connection_pool.disconnect()
            _metrics_server.release()
            _metrics_server = None
        _checked_urls.clear()


atexit.register(close)
