"""Find or start the dashboard for a compute with ``serverless.dashboard.enabled``.

A dashboard registered in the metrics Redis (``MetricsKeys.dashboard``) that answers its
health check is reused. Otherwise ``dask-serverless dashboard`` is started as a child of
this process on ``serverless.dashboard.port`` (or a free port when that one is taken) and
stopped when this process exits; run ``dask-serverless dashboard`` yourself to keep one
after your script ends. A graphical browser (when there is one) opens the realtime page
once the dashboard answers; the URL is logged at INFO level either way.
Nothing here imports Streamlit: the client only starts a process.
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
import tempfile
import threading
import time
import urllib.request
import webbrowser

import redis

from ..storage.embedded import free_port
from ..storage.keys import MetricsKeys
from ..storage.store import connect

logger = logging.getLogger(__name__)

START_TIMEOUT_S = 60.0
_lock = threading.Lock()
_known: dict[str, str] = {}  # metrics URL -> dashboard URL (checked or started here)
_children: list[subprocess.Popen] = []


def healthy(url: str, timeout: float = 1.0) -> bool:
    """Whether a Streamlit server answers at ``url``."""
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
    url = json.loads(blob)["url"]
    return url if healthy(url) else None


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def start(metrics_url: str, port: int) -> tuple[subprocess.Popen, str]:
    """Start ``dask-serverless dashboard`` over ``metrics_url`` on loopback; its output
    goes to a log file in the temporary directory."""
    port = port if _port_free(port) else free_port()
    log = os.path.join(tempfile.gettempdir(), f"dask-serverless-dashboard-{port}.log")
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dask_serverless.cli", "dashboard", "--redis-url",
             metrics_url, "--port", str(port)],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    return proc, f"http://127.0.0.1:{port}"


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
    logger.info("dashboard: %s/realtime%s", url, " (starting)" if proc else "")
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
            webbrowser.open(f"{url}/realtime")
    else:
        logger.warning("the dashboard at %s did not start; see its log in %s", url,
                       tempfile.gettempdir())
