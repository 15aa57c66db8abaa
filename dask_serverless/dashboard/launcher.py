"""Find or start the dashboard for a compute with ``serverless.dashboard.enabled``.

A dashboard registered in the metrics Redis (``MetricsKeys.dashboard``) that answers its
health check is reused. Otherwise ``dask-serverless dashboard`` is started as a child of
this process on ``serverless.dashboard.port`` (or a free port when that one is taken) and
stopped when this process exits; run ``dask-serverless dashboard`` yourself to keep one
after your script ends. A graphical browser (when there is one) opens the realtime page
once the dashboard answers; the URL is logged at INFO level either way.
Nothing here imports Streamlit: the client only starts a process.

The child learns the metrics Redis (its URL holds a password) and its access token
(``access``) from its environment, not its command line; it logs to this user's private
state directory. A registration is used only when it names a dashboard on loopback
(``http://127.0.0.1:PORT``): whatever is in Redis, the browser never opens another address.
``token_of(url)`` is the access token of a dashboard started or found here, and
``page_url`` a page's URL with it.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import webbrowser
from urllib.parse import urlsplit

import redis

from .. import config
from ..storage import loopback
from ..storage.embedded import free_port
from ..storage.keys import MetricsKeys
from ..storage.loopback import Owner
from ..storage.private import state_dir
from ..storage.store import connect
from . import access

logger = logging.getLogger(__name__)

START_TIMEOUT_S = 60.0
_lock = threading.Lock()
_known: dict[str, str] = {}  # metrics URL -> dashboard URL (checked or started here)
_tokens: dict[str, str] = {}  # dashboard URL -> its access token
_children: list[subprocess.Popen] = []


def healthy(url: str, timeout: float = 1.0) -> bool:
    """Whether a Streamlit server of this user answers at ``url`` (another user's on a
    port ours left is not ours to open, nor to hand our token)."""
    if loopback.owner(url) is Owner.FOREIGN:
        return False
    try:
        with urllib.request.urlopen(f"{url}/_stcore/health", timeout=timeout) as resp:
            return resp.status == 200 and resp.read().strip() == b"ok"
    except OSError:
        return False


def wait_healthy(url: str, timeout: float, proc: subprocess.Popen | None = None) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if healthy(url):
            return True
        if proc is not None and proc.poll() is not None:
            return False
        time.sleep(0.2)
    return False


def registered(metrics_url: str) -> str | None:
    """The URL of a live dashboard over this metrics Redis, if one is registered."""
    try:
        blob = connect(metrics_url).get(MetricsKeys.dashboard)
    except redis.RedisError:
        return None
    if blob is None:
        return None
    url = loopback_url(blob)
    if url is None:
        logger.warning("ignoring the dashboard registration in the metrics Redis: it does "
                       "not name a dashboard on this machine's loopback")
        return None
    if not healthy(url):
        return None
    token = _registered_token(blob)
    if token is not None:
        _tokens[url] = token
    return url


def _registered_token(blob: bytes) -> str | None:
    try:
        token = json.loads(blob).get("token")
    except (ValueError, AttributeError):
        return None
    return token if isinstance(token, str) else None


def token_of(url: str) -> str | None:
    """The access token of the dashboard at ``url`` (started or found here)."""
    return _tokens.get(url)


def page_url(url: str, path: str = "", **params: str) -> str:
    """The URL of a page of the dashboard at ``url``, with its access token."""
    return access.page_url(url, token_of(url), path, **params)


def loopback_url(blob: bytes) -> str | None:
    """The ``http://127.0.0.1:PORT`` (or localhost) a registration names, else None."""
    try:
        url = json.loads(blob)["url"]
        parts = urlsplit(url)
        port = parts.port
    except (ValueError, TypeError, KeyError, AttributeError):
        return None
    if (parts.scheme != "http" or parts.hostname not in ("127.0.0.1", "localhost")
            or port is None or parts.username is not None or parts.password is not None
            or parts.path not in ("", "/") or parts.query or parts.fragment):
        return None
    return f"http://{parts.hostname}:{port}"


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def log_path(port: int) -> str:
    """Where a dashboard started here on ``port`` logs (a private directory)."""
    return str(state_dir() / f"dashboard-{port}.log")


def start(metrics_url: str, port: int) -> tuple[subprocess.Popen, str]:
    """Start ``dask-serverless dashboard`` over ``metrics_url`` on loopback; its output
    goes to ``log_path(port)``."""
    port = port if _port_free(port) else free_port()
    token = config.get("dashboard.token") or access.new_token()
    env = {**os.environ, "DASK_SERVERLESS__METRICS__REDIS_URL": metrics_url,
           "DASK_SERVERLESS__DASHBOARD__TOKEN": token}
    fd = os.open(log_path(port), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dask_serverless.cli", "dashboard", "--port", str(port)],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    _tokens[url] = token
    return proc, url


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _stop_children() -> None:
    while _children:
        stop(_children.pop())


atexit.register(_stop_children)


def ensure_dashboard(metrics_url: str, port: int, open_browser: bool) -> str:
    """The URL of a dashboard over ``metrics_url``, starting one if needed (once per
    process and metrics Redis); opens the realtime page when it starts or is found."""
    with _lock:
        url = _known.get(metrics_url)
        if url is not None:
            return url
        url = registered(metrics_url)
        proc = None
        if url is None:
            proc, url = start(metrics_url, port)
            _children.append(proc)
        _known[metrics_url] = url
    logger.info("dashboard: %s%s", page_url(url, "realtime"), " (starting)" if proc else "")
    if open_browser and _has_gui():
        threading.Thread(target=_open_when_up, args=(url, proc), daemon=True).start()
    return url


def _has_gui() -> bool:
    """Whether a graphical browser can open (never a console browser in the terminal)."""
    return sys.platform in ("darwin", "win32") or bool(
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def _open_when_up(url: str, proc: subprocess.Popen | None) -> None:
    if wait_healthy(url, START_TIMEOUT_S, proc):
        with contextlib.suppress(Exception):  # no browser here: the URL is logged
            webbrowser.open(page_url(url, "realtime"))
    else:
        logger.warning("the dashboard at %s did not start; see its log %s", url,
                       log_path(int(url.rpartition(":")[2])))
