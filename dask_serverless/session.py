"""Process-wide resources shared by computes: the Redis URL and the backends."""

from __future__ import annotations

import atexit
import threading

import redis

from . import config
from .backends import Backend, create_backend
from .errors import RedisUnavailableError
from .storage.embedded import EmbeddedRedis
from .storage.store import connect, redact

_lock = threading.Lock()
_embedded: EmbeddedRedis | None = None
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
    if url not in _checked_urls:
        try:
            connect(url).ping()
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            raise RedisUnavailableError(
                f"cannot reach Redis at {redact(url)!r} (serverless.redis-url): {exc}") from exc
        _checked_urls.add(url)
    return url


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
    """Stop the backends and the embedded Redis this process started."""
    global _embedded
    with _lock:
        for b in _backends.values():
            b.close()
        _backends.clear()
        if _embedded is not None:
            _embedded.stop()
            _embedded = None
        _checked_urls.clear()


atexit.register(close)
