"""A private Redis for this process: ``redis-server`` on a free loopback port when the
binary exists, else fakeredis's server in a thread. Stopped at interpreter exit.

Nobody else on the machine may use it: ``redis-server`` gets a random password (carried
in the URL, ``redis://:PASSWORD@127.0.0.1:PORT/0``; handed to the server on its standard
input, never its command line) and keeps its files in a 0700 directory; fakeredis, which
does not enforce passwords, listens on a Unix socket in a 0700 directory instead
(``unix:///DIR/redis.sock?db=0``). Other local users get ``NOAUTH`` or cannot connect.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import os
import secrets
import shutil
import socket
import socketserver
import subprocess
import tempfile
import threading
import time

import redis

from .store import redact

logger = logging.getLogger(__name__)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def new_password() -> str:
    """A random Redis password (URL- and config-safe characters)."""
    return secrets.token_urlsafe(32)


def server_config(port: int, password: str, directory: str, *,
                  persistent: bool = False, logfile: str | None = None) -> str:
    """A redis-server configuration for loopback use (fed on stdin: ``redis-server -``).
    ``persistent``: append-only file, flushed every second."""
    lines = [f"port {port}", "bind 127.0.0.1", "protected-mode yes",
             f"requirepass {password}", f"dir {_quoted(directory)}", "loglevel warning",
             'save ""']
    if persistent:
        lines += ["appendonly yes", "appendfsync everysec"]
    else:
        lines += ["appendonly no"]
    if logfile is not None:
        lines.append(f"logfile {_quoted(logfile)}")
    return "\n".join(lines) + "\n"


def _quoted(text: str) -> str:
    if any(c in text for c in '"\\\n'):
        raise ValueError(f"a path Redis cannot be configured with: {text!r}")
    return f'"{text}"'


def start_redis_server(binary: str, config: str, **popen: object) -> subprocess.Popen:
    """Start ``binary`` (redis-server or a compatible one) with ``config`` on its standard
    input: the password never shows on a command line. Files it makes are 0600."""
    proc = subprocess.Popen([binary, "-"], stdin=subprocess.PIPE, umask=0o077,
                            **popen)  # type: ignore[call-overload]
    try:
        proc.stdin.write(config.encode())  # type: ignore[union-attr]
        proc.stdin.close()  # type: ignore[union-attr]
    except OSError:  # it died at once: wait_ready sees it
        pass
    return proc


class EmbeddedRedis:
    """Start with ``start()``; ``url`` then points at it; ``stop()`` ends it."""

    def __init__(self, prefer: str = "redis-server", data_dir: str | None = None):
        self.prefer = prefer
        self.data_dir = data_dir
        self.url: str | None = None
        self.kind: str | None = None
        self._proc: subprocess.Popen | None = None
        self._fake: _UnixFakeServer | None = None
        self._tmp: str | None = None

    def start(self) -> str:
        binary = shutil.which("redis-server")
        if self.prefer == "redis-server" and binary:
            self._start_server(binary)
        else:
            if self.prefer == "redis-server":
                logger.info("no redis-server binary found; using fakeredis in-process")
            self._start_fake()
        atexit.register(self.stop)
        return self.url  # type: ignore[return-value]

    def _directory(self) -> str:
        """A directory only this user can enter (the given one is made so)."""
        if self.data_dir is None:
            self._tmp = tempfile.mkdtemp(prefix="dask-serverless-redis-")  # 0700
            return self._tmp
        os.makedirs(self.data_dir, mode=0o700, exist_ok=True)
        os.chmod(self.data_dir, 0o700)
        return self.data_dir

    def _start_server(self, binary: str) -> None:
        directory = self._directory()
        password = new_password()
        for _attempt in range(5):
            port = free_port()
            config = server_config(port, password, directory,
                                   persistent=self.data_dir is not None)
            self._proc = start_redis_server(binary, config, stdout=subprocess.DEVNULL,
                                            stderr=subprocess.PIPE)
            url = f"redis://:{password}@127.0.0.1:{port}/0"
            if wait_ready(url, self._proc):
                self.url, self.kind = url, "redis-server"
                logger.info("started embedded redis-server at %s", redact(url))
                return
            self._proc.kill()
            self._proc.wait()
        raise RuntimeError("could not start an embedded redis-server")

    def _start_fake(self) -> None:
        path = os.path.join(self._directory(), "redis.sock")
        self._fake = _UnixFakeServer(path)
        threading.Thread(target=self._fake.serve_forever, daemon=True,
                         name="dask-serverless-fakeredis").start()
        url = f"unix://{path}?db=0"
        if not wait_ready(url, None):
            raise RuntimeError("could not start the in-process fakeredis server")
        self.url, self.kind = url, "fakeredis"

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
        if self._fake is not None:
            self._fake.shutdown()
            self._fake.server_close()
            self._fake = None
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None


def _fake_handler() -> type:
    from fakeredis._clients._tcp_server import TCPFakeRequestHandler

    class Handler(TCPFakeRequestHandler):
        def setup(self) -> None:
            # Unix clients have no address: give each its own, or they would share one
            # connection state (database, transaction, subscriptions)
            self.client_address = ("unix", next(self.server.client_ids))
            super().setup()

    return Handler


class _UnixFakeServer(socketserver.ThreadingUnixStreamServer):
    """fakeredis's request handler on a Unix socket (0600, in a 0700 directory)."""

    daemon_threads = True  # stop() must not wait for clients still connected

    def __init__(self, path: str):
        from fakeredis import FakeServer

        self._shutdown_event = threading.Event()
        super().__init__(path, _fake_handler())
        os.chmod(path, 0o600)  # its 0700 directory already keeps others out
        self.fake_server = FakeServer(server_type="redis")
        self.client_ids = itertools.count()
        self.clients: dict = {}

    def shutdown(self) -> None:
        self._shutdown_event.set()
        super().shutdown()


def wait_ready(url: str, proc: subprocess.Popen | None, timeout: float = 10.0) -> bool:
    client = redis.Redis.from_url(url, socket_connect_timeout=0.5)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                return False
            try:
                if client.ping():
                    return True
            except (redis.ConnectionError, FileNotFoundError):
                time.sleep(0.02)
        return False
    finally:
        client.close()
