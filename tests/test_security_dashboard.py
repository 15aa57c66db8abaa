"""The dashboard's surfaces against another local user: it shows nothing without its
access token, nor to a web page rebinding a name to loopback; headless Chromium
(screenshots) offers no DevTools port (whoever reaches one drives a browser running as
this user); no secret is on any command line."""

from __future__ import annotations

import base64
import http.client
import json
import os
from urllib.parse import urlsplit

import dask
import pytest
import squatter
from dask import delayed

pytest.importorskip("streamlit")

from dask_serverless import config, serverless_get
from dask_serverless.config import ConfigError
from dask_serverless.dashboard import launcher
from dask_serverless.dashboard.screenshot import PAGE_DONE, Chromium, find_chromium
from dask_serverless.metrics.store import MetricsStore
from dask_serverless.runtime import get as get_mod
from dask_serverless.storage import serialize
from dask_serverless.storage.embedded import EmbeddedRedis, free_port
from dask_serverless.storage.keys import MetricsKeys
from dask_serverless.storage.store import connect


def _descendants(pid: int) -> set[int]:
    """``pid`` and every process below it."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = set(), [pid]
    while todo:
        p = todo.pop()
        found.add(p)
        todo.extend(children.get(p, ()))
    return found


def _socket_inodes(pids: set[int]) -> set[str]:
    inodes = set()
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    return inodes


def _tcp_listeners() -> dict[str, int]:
    """inode -> port of every listening TCP socket (IPv4 and IPv6)."""
    out = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.read().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A":  # LISTEN
                    out[fields[9]] = int(fields[1].rsplit(":", 1)[1], 16)
    return out


@pytest.mark.skipif(find_chromium() is None or not os.path.exists("/proc/net/tcp"),
                    reason="needs Chromium and Linux /proc")
def test_headless_chromium_listens_on_no_port():
    with Chromium() as browser:
        assert browser.call("Browser.getVersion")["product"]  # driven over its pipes
        pids = _descendants(browser.proc.pid)
        listening = {inode: port for inode, port in _tcp_listeners().items()
                     if inode in _socket_inodes(pids)}
        assert listening == {}, f"Chromium listens on TCP ports {sorted(listening.values())}"


def _add(*xs):
    return sum(xs)


def _websocket_status(url: str, host: str) -> int:
    """The status a websocket upgrade of Streamlit's stream gets with ``Host: host``."""
    port = urlsplit(url).port
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/_stcore/stream", headers={
        "Host": f"{host}:{port}", "Origin": f"http://{host}:{port}", "Upgrade": "websocket",
        "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode()})
    status = conn.getresponse().status
    conn.close()
    return status


@pytest.mark.skipif(find_chromium() is None, reason="needs Chromium")
@pytest.mark.timeout(300)
def test_the_dashboard_shows_nothing_without_its_token(redis_server):
    url = redis_server.rsplit("/", 1)[0] + "/6"
    MetricsStore.from_url(url).r.flushdb()
    with dask.config.set({"serverless.redis-url": url}):
        dask.compute(delayed(_add)(1, 2), scheduler=serverless_get)
    run_id = get_mod.last_run.run_id
    proc, dashboard = launcher.start(url, free_port())
    try:
        assert launcher.wait_healthy(dashboard, 90, proc), "the dashboard did not start"
        token = launcher.token_of(dashboard)
        assert token and len(token) >= 24
        assert token not in " ".join(proc.args)  # not on its command line
        with Chromium() as browser:
            for wrong in ("", "?token=guess", f"?token={token[:-1]}"):
                page = browser.capture(f"{dashboard}/{wrong}{'&' if wrong else '?'}run={run_id}",
                                       None, PAGE_DONE, settle=2)
                assert "access token" in page["text"]
                assert run_id not in page["text"] and "_add" not in page["text"]
            page = browser.capture(launcher.page_url(dashboard, run=run_id), None,
                                   PAGE_DONE, settle=2)
            assert run_id in page["text"] and "access token" not in page["text"]
        # a web page that rebound its own name to 127.0.0.1 gets no websocket
        assert _websocket_status(dashboard, "127.0.0.1") == 101
        assert _websocket_status(dashboard, "evil.example") == 403
        launcher._tokens.clear()  # a later process finds it registered, with its token
        assert launcher.registered(url) == dashboard
        assert launcher.token_of(dashboard) == token
    finally:
        launcher.stop(proc)


def test_a_weak_dashboard_token_is_refused_without_quoting_it():
    for weak in ("short", "x" * 15, "has spaces in it, 16+ chars", 12345678901234567):
        with pytest.raises(ConfigError, match=r"dashboard\.token") as info:
            config.get("dashboard.token", weak)
        assert str(weak) not in str(info.value)
    assert config.get("dashboard.token", "a" * 16) == "a" * 16


def _command_lines() -> str:
    lines = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    lines.append(f.read().replace(b"\0", b" ").decode(errors="replace"))
            except OSError:
                continue
    return "\n".join(lines)


@pytest.mark.timeout(300)
def test_no_secret_on_any_command_line_while_a_run_and_its_dashboard_are_up(monkeypatch):
    """``ps`` shows every user every command line: while an embedded Redis (password), a
    warm local pool (the generated secret) and a dashboard (metrics URL, token) run, none
    of their secrets is on one."""
    monkeypatch.delenv("DASK_SERVERLESS__SECRET", raising=False)
    server = EmbeddedRedis()
    url = server.start()
    try:
        with dask.config.set({"serverless.redis-url": url, "serverless.metrics.redis-url": url,
                              "serverless.dashboard.open-browser": False}):
            assert dask.compute(delayed(_add)(1, 2), scheduler=serverless_get,
                                serverless_dashboard=True) == (3,)
            dashboard = launcher._known[url]
            assert launcher.wait_healthy(dashboard, 90)
            secrets_in_use = {"redis password": urlsplit(url).password,
                              "serverless.secret": serialize.secret(),
                              "dashboard token": launcher.token_of(dashboard)}
            assert all(secrets_in_use.values())
            seen = _command_lines()
            assert {what for what, value in secrets_in_use.items() if value in seen} == set()
    finally:
        launcher._stop_children()
        launcher._known.clear()
        server.stop()


@pytest.mark.skipif(not squatter.available(),
                    reason="needs root and setpriv to act as another user")
def test_a_dashboard_port_another_user_took_is_neither_opened_nor_sent_the_token(
        redis_server):
    port = free_port()
    health = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
    dashboard = f"http://127.0.0.1:{port}"
    with squatter.Squatter(port, health) as other:
        assert not launcher.healthy(dashboard)  # it answers "ok", but it is not ours
        r = connect(redis_server)
        r.set(MetricsKeys.dashboard, json.dumps({"url": dashboard, "pid": 1,
                                                  "token": "t" * 32}))
        try:
            assert launcher.registered(redis_server) is None
        finally:
            r.delete(MetricsKeys.dashboard)
        assert other.received() == b""
