"""A private Redis for this process: ``redis-server`` on a free loopback port when the
binary exists, else fakeredis's TCP server in a thread. Stopped at interpreter exit."""

from __future__ import annotations

import atexit
import logging
import shutil
import socket
import subprocess
import tempfile
import threading
import time

import redis

logger = logging.getLogger(__name__)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EmbeddedRedis:
    """Start with ``start()``; ``url`` then points at it; ``stop()`` ends it."""

    def __init__(self, prefer: str = "redis-server", data_dir: str | None = None):
        self.prefer = prefer
        self.data_dir = data_dir
        self.url: str | None = None
        self.kind: str | None = None
        self._proc: subprocess.Popen | None = None
        self._fake = None
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

    def _start_server(self, binary: str) -> None:
        directory = self.data_dir or tempfile.mkdtemp(prefix="dask-serverless-redis-")
        self._tmp = None if self.data_dir else directory
        for _attempt in range(5):
            port = free_port()
            args = [binary, "--port", str(port), "--bind", "127.0.0.1",
                    "--protected-mode", "yes", "--dir", directory,
                    "--appendonly", "no", "--loglevel", "warning"]
            if self.data_dir is None:
                args += ["--save", ""]
            self._proc = subprocess.Popen(args, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.PIPE)
            url = f"redis://127.0.0.1:{port}/0"
            if wait_ready(url, self._proc):
                self.url, self.kind = url, "redis-server"
                logger.info("started embedded redis-server at %s", url)
                return
            self._proc.kill()
        raise RuntimeError("could not start an embedded redis-server")

    def _start_fake(self) -> None:
        from fakeredis import TcpFakeServer

        port = free_port()
        self._fake = TcpFakeServer(("127.0.0.1", port), server_type="redis")
        self._fake.daemon_threads = True  # stop() must not wait for clients still connected
        threading.Thread(target=self._fake.serve_forever, daemon=True,
                         name="dask-serverless-fakeredis").start()
        url = f"redis://127.0.0.1:{port}/0"
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
            except redis.ConnectionError:
                time.sleep(0.02)
        return False
    finally:
        client.close()
