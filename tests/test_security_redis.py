"""The embedded Redis and the metrics Redis against another local user: no password, no
data; nothing readable on disk; the password on no command line, nor sent to a port
another user took."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from urllib.parse import urlsplit

import pytest
import redis
import squatter

from dask_serverless.metrics.server import MetricsServer
from dask_serverless.storage import embedded, loopback
from dask_serverless.storage.embedded import EmbeddedRedis, free_port
from dask_serverless.storage.loopback import Owner


def _without_password(url: str) -> redis.Redis:
    parts = urlsplit(url)
    # RESP2: no HELLO handshake, so the command itself gets NOAUTH (AuthenticationError)
    return redis.Redis(host=parts.hostname, port=parts.port, socket_connect_timeout=5,
                       protocol=2)


def _cmdline(pid: int) -> str:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().replace(b"\0", b" ").decode()


def _mode(path) -> int:
    return os.stat(path).st_mode & 0o777


def test_embedded_redis_server_refuses_a_client_without_its_password():
    server = EmbeddedRedis()
    url = server.start()
    try:
        assert server.kind == "redis-server"
        password = urlsplit(url).password
        assert password and len(password) >= 32
        with pytest.raises(redis.AuthenticationError, match="Authentication required"):
            _without_password(url).get("ds:{run}:dag")
        with pytest.raises(redis.AuthenticationError, match="Authentication required"):
            _without_password(url).flushall()
        guessed = redis.Redis.from_url(url.replace(password, "guess"))
        with pytest.raises(redis.AuthenticationError):
            guessed.ping()
        assert redis.Redis.from_url(url).set("k", "v")  # its own clients work
        assert password not in _cmdline(server._proc.pid)
        assert _mode(server._tmp) == 0o700
    finally:
        server.stop()


def test_fakeredis_fallback_listens_on_a_private_unix_socket():
    server = EmbeddedRedis(prefer="fakeredis")
    url = server.start()
    try:
        assert url.startswith("unix://")
        path = urlsplit(url).path
        assert _mode(os.path.dirname(path)) == 0o700 and _mode(path) == 0o600
        a, b = redis.Redis.from_url(url), redis.Redis.from_url(url)
        a.select(1)  # clients keep their own connection state
        a.set("k", "in db 1")
        assert b.get("k") is None and a.get("k") == b"in db 1"
    finally:
        server.stop()


def test_metrics_redis_needs_its_password_and_keeps_its_data_private(tmp_path):
    data = tmp_path / "metrics"
    server = MetricsServer(data)
    url = server.acquire()
    try:
        assert urlsplit(url).password
        with pytest.raises(redis.AuthenticationError, match="Authentication required"):
            _without_password(url).keys("*")
        with pytest.raises(redis.AuthenticationError, match="Authentication required"):
            _without_password(url).config_set("maxmemory", "1")
        client = redis.Redis.from_url(url)
        client.set("dsm:run:x", "task log line")
        client.bgrewriteaof()
        assert urlsplit(url).password not in _cmdline(server._proc.pid)
    finally:
        server.release()
    assert _mode(data) == 0o700
    files = [p for p in data.rglob("*") if p.is_file()]
    assert any("appendonly" in str(p) for p in files)
    assert {str(p.relative_to(data)): _mode(p) for p in files if _mode(p) != 0o600} == {}
    subdirs = [p for p in data.rglob("*") if p.is_dir()]
    assert all(_mode(p) & 0o077 == 0 for p in subdirs)


def test_metrics_data_an_older_version_left_open_is_closed(tmp_path):
    data = tmp_path / "metrics"
    data.mkdir(mode=0o755)
    os.chmod(data, 0o755)
    log = data / "redis.log"
    log.write_text("old log\n")
    os.chmod(log, 0o644)
    server = MetricsServer(data)
    server.acquire()
    server.release()
    assert _mode(data) == 0o700 and _mode(log) == 0o600


def test_a_metrics_server_without_password_is_replaced(tmp_path):
    data = tmp_path / "metrics"
    data.mkdir(mode=0o700)
    port = free_port()
    old = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                            "--dir", str(data), "--appendonly", "yes", "--save", ""],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        legacy = redis.Redis(port=port)
        for _ in range(100):
            try:
                legacy.set("kept", "yes")
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        (data / "server.port").write_text(f"{port}\n")
        server = MetricsServer(data)
        url = server.acquire()
        try:
            assert old.wait(timeout=30) == 0  # shut down, data saved
            assert redis.Redis.from_url(url).get("kept") == b"yes"
            assert not (data / "server.port").exists()
        finally:
            server.release()
    finally:
        if old.poll() is None:
            old.kill()
            old.wait()


# -- ports another local user took ---------------------------------------------------------
needs_another_user = pytest.mark.skipif(not squatter.available(),
                                        reason="needs root and setpriv to act as another user")


def test_loopback_owner_tells_ours_nobody_and_unknown():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        assert loopback.owner(f"redis://:pw@127.0.0.1:{port}/0") is Owner.OURS
        assert loopback.owner(f"http://localhost:{port}") is Owner.OURS
    assert loopback.owner(f"redis://127.0.0.1:{port}/0") is Owner.NOBODY
    assert loopback.owner("redis://redis.example.com:6379/0") is Owner.UNKNOWN
    assert loopback.owner("unix:///tmp/x/redis.sock?db=0") is Owner.UNKNOWN
    if socket.has_ipv6:
        with socket.socket(socket.AF_INET6) as s6:
            try:
                s6.bind(("::1", 0))
            except OSError:  # no IPv6 loopback here
                return
            s6.listen(1)
            port6 = s6.getsockname()[1]
            assert loopback.owner(f"http://[::1]:{port6}") is Owner.OURS
            assert loopback.owner(f"http://localhost:{port6}") is Owner.OURS


@needs_another_user
def test_embedded_redis_sends_nothing_to_a_port_another_user_took(monkeypatch):
    taken = free_port()
    with squatter.Squatter(taken) as other:
        picks = iter([taken])
        real = embedded.free_port
        monkeypatch.setattr(embedded, "free_port", lambda: next(picks, None) or real())
        assert loopback.owner(f"redis://127.0.0.1:{taken}/0") is Owner.FOREIGN
        server = EmbeddedRedis()
        url = server.start()
        try:
            assert urlsplit(url).port != taken
            assert redis.Redis.from_url(url).ping()
            time.sleep(0.2)
            assert other.received() == b""  # no AUTH, no PING, no password
        finally:
            server.stop()


@needs_another_user
def test_a_metrics_server_whose_port_another_user_took_is_not_used(tmp_path):
    data = tmp_path / "metrics"
    first = MetricsServer(data)
    url = first.acquire()
    first._proc.kill()  # it dies; its URL file stays
    first._proc.wait()
    port, password = urlsplit(url).port, urlsplit(url).password
    with squatter.Squatter(port) as other:
        second = MetricsServer(data)
        fresh = second.acquire()
        try:
            assert urlsplit(fresh).port != port
            time.sleep(0.2)
            assert password.encode() not in other.received()
            assert other.received() == b""
        finally:
            second.release()
    first._drop_users_lock()
