"""Starting a container process for ``LocalPool``: spawned (a fresh interpreter that
imports everything) or forked by the pool's fork server (a ``zygote`` that imported it
once).

Either way ``launch`` returns ``(process, tx, rx)``: the process offers ``pid``,
``kill()`` and ``wait(timeout)`` (``subprocess.TimeoutExpired`` when it is still
running; the exit code like ``Popen.returncode``, negative for a signal), and the two
pipe ends the pool talks to it through.

A container leads its own session and process group, and the group is killed when the
container ends (before its exit status is collected, so the group id is still its own):
whatever a task forked goes with it. ``kill()`` kills the whole group. The pool's secret
(``serverless.secret``) reaches a container as the first message on its pipe (a forked
one inherits it from the fork server, which got it on its socket), never through its
environment or command line, so the processes tasks start do not inherit it.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import pickle
import select
import signal
import socket
import subprocess
import sys
import threading
from multiprocessing.connection import Connection
from typing import Protocol

from .zygote import MAX_FDS, MAX_MESSAGE

logger = logging.getLogger(__name__)

START_TIMEOUT_S = 60.0  # a zygote not ready by then (imports) is given up
FORK_TIMEOUT_S = 30.0  # a fork request not answered by then is given up
MAX_FAILURES = 3  # zygote deaths / failed starts / failed forks in a row: spawn from then


class ContainerProcess(Protocol):
    pid: int

    def kill(self) -> None: ...

    def wait(self, timeout: float | None = None) -> int | None: ...


Launched = tuple[ContainerProcess, Connection, Connection]


def _pipes() -> tuple[tuple[int, int], Connection, Connection]:
    """The container's ends (its read end, its write end) and the pool's tx and rx."""
    to_child_r, to_child_w = os.pipe()
    from_child_r, from_child_w = os.pipe()
    return ((to_child_r, from_child_w), Connection(to_child_w, readable=False),
            Connection(from_child_r, writable=False))


def _close_all(fds: tuple[int, ...]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def log_tail(path: str, size: int = 2000) -> str:
    """The last ``size`` bytes of a log file ("" when it cannot be read)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - size))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def spawn(env: dict[str, str], memory_mb: int, status_path: str, log_path: str,
          secret: str | None = None) -> Launched:
    """A container in a fresh interpreter (``container.main``), in a session of its own;
    ``secret`` (if any) is its first message."""
    child_fds, tx, rx = _pipes()
    try:
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "dask_serverless.backends.local.container",
                 str(child_fds[0]), str(child_fds[1]), status_path, str(memory_mb)],
                pass_fds=child_fds, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                env=env, close_fds=True, start_new_session=True)
        if secret is not None:
            tx.send_bytes(pickle.dumps(("secret", secret)))
    except BaseException:
        tx.close()
        rx.close()
        raise
    finally:
        _close_all(child_fds)
    return SpawnedProcess(proc), tx, rx


def kill_group(pgid: int) -> None:
    """SIGKILL process group ``pgid`` (gone already: nothing to do)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


class SpawnedProcess:
    """A spawned container: waits through a pidfd without reaping, so its group (its pid)
    can be killed before the exit status is collected; no pidfd (not Linux): the group is
    killed right after (a narrow pid-reuse window)."""

    def __init__(self, popen: subprocess.Popen):
        self.popen = popen
        self.pid = popen.pid
        self._lock = threading.Lock()
        self._reaped = False
        self._pidfd: int | None = None
        if hasattr(os, "pidfd_open"):
            with contextlib.suppress(OSError):
                self._pidfd = os.pidfd_open(popen.pid)  # our unreaped child: its own pid

    @property
    def returncode(self) -> int | None:
        return self.popen.returncode

    def kill(self) -> None:
        with self._lock:
            if not self._reaped:
                kill_group(self.pid)

    def wait(self, timeout: float | None = None) -> int | None:
        if self._pidfd is None:
            code = self.popen.wait(timeout)
            kill_group(self.pid)
            return code
        try:
            ready, _, _ = select.select([self._pidfd], [], [], timeout)
        except (OSError, ValueError):  # closed by a concurrent wait that reaped it
            ready = [True]
        if not ready:
            raise subprocess.TimeoutExpired(f"container pid {self.pid}", timeout or 0)
        with self._lock:
            if not self._reaped:
                kill_group(self.pid)  # unreaped, the leader keeps the group id ours
                self.popen.wait()
                self._reaped = True
                os.close(self._pidfd)
        return self.popen.returncode


def _cwd() -> str:
    """This process's working directory ("" when it was deleted: the child stays put)."""
    try:
        return os.getcwd()
    except OSError:
        return ""


class ForkedProcess:
    """A container forked by a zygote. Signals go through a pidfd (no pid-reuse race);
    the exit status comes from the zygote that reaped it, or is None when that zygote
    died first (the exit itself is then seen on the pidfd)."""

    def __init__(self, pid: int, pidfd: int | None):
        self.pid = pid
        self.returncode: int | None = None
        self._pidfd = pidfd
        self._lock = threading.Lock()
        self._exited = threading.Event()

    def kill(self) -> None:
        """Kill its process group (the zygote kills it again when it reaps the leader)."""
        with self._lock:
            if self._pidfd is not None:
                try:  # not reaped yet (maybe a zombie): its pid is still its group's id
                    signal.pidfd_send_signal(self._pidfd, 0)
                except ProcessLookupError:
                    return
                kill_group(self.pid)
                with contextlib.suppress(ProcessLookupError):
                    signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)

    def wait(self, timeout: float | None = None) -> int | None:
        if not self._exited.wait(timeout):
            raise subprocess.TimeoutExpired(f"container pid {self.pid}", timeout or 0)
        return self.returncode

    def reaped(self, wait_status: int) -> None:
        self.returncode = os.waitstatus_to_exitcode(wait_status)
        self._close()
        self._exited.set()

    def orphaned(self) -> None:
        """Its zygote died: watch the pidfd for the exit (its status is lost)."""
        def watch() -> None:
            fd = self._pidfd
            if fd is not None:
                with contextlib.suppress(OSError, ValueError):
                    select.select([fd], [], [])
            self._close()
            self._exited.set()

        threading.Thread(target=watch, daemon=True, name=f"dask-serverless-orphan-{self.pid}"
                         ).start()

    def _close(self) -> None:
        with self._lock:
            fd, self._pidfd = self._pidfd, None
        if fd is not None:
            os.close(fd)


class ZygoteError(RuntimeError):
    """The fork server could not fork a container."""


class _Zygote:
    """One running fork server process and the thread reading its messages."""

    def __init__(self, env: dict[str, str], log_path: str, secret: str | None = None):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            with open(log_path, "ab") as log:
                self.proc = subprocess.Popen(
                    [sys.executable, "-m", "dask_serverless.backends.local.zygote",
                     str(theirs.fileno())],
                    pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, stdout=log,
                    stderr=log, env=env, close_fds=True)
            if secret is not None:  # the first message: its containers inherit it
                socket.send_fds(ours, [pickle.dumps(("secret", secret))], [])
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.sock = ours
        self.alive = True
        self.threads = 0  # native threads it reported once ready
        self.thread_names: list[str] = []  # those besides its main thread
        self.ready = threading.Event()  # also set when it dies
        self._lock = threading.Lock()  # replies, children, alive
        self._send_lock = threading.Lock()  # sending, closing the socket
        self._ids = itertools.count()
        self._replies: dict[int, list] = {}  # request id -> [event, ForkedProcess | reason]
        self._children: dict[int, ForkedProcess] = {}
        threading.Thread(target=self._read_loop, daemon=True,
                         name=f"dask-serverless-zygote-{self.proc.pid}").start()

    def fork(self, memory_mb: int, status_path: str, log_path: str,
             child_fds: tuple[int, int]) -> ForkedProcess:
        rid = next(self._ids)
        slot: list = [threading.Event(), None]
        with self._lock:
            if not self.alive:
                raise ZygoteError("the fork server has exited")
            self._replies[rid] = slot
        try:
            with self._send_lock:
                socket.send_fds(self.sock, [pickle.dumps(
                    ("fork", rid, memory_mb, status_path, log_path, _cwd()))],
                    list(child_fds))
            answered = slot[0].wait(FORK_TIMEOUT_S)
        except OSError as exc:
            raise ZygoteError(f"cannot reach the fork server: {exc}") from exc
        finally:
            with self._lock:
                self._replies.pop(rid, None)
        if not answered:  # hung: replace it
            self.proc.kill()
            raise ZygoteError(f"the fork server did not answer within {FORK_TIMEOUT_S:.0f} s")
        if isinstance(slot[1], ForkedProcess):
            return slot[1]
        raise ZygoteError(slot[1])

    def close(self, timeout: float = 5.0) -> None:
        with self._send_lock, contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # EOF for it and for our reader
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def _read_loop(self) -> None:
        try:
            while True:
                data, fds, _, _ = socket.recv_fds(self.sock, MAX_MESSAGE, MAX_FDS)
                if not data:
                    break
                self._handle(pickle.loads(data), fds)
        except OSError:
            pass
        finally:
            self._died()

    def _handle(self, msg: tuple, fds: list[int]) -> None:
        kind = msg[0]
        if kind == "ready":
            self.threads = msg[1]
            self.thread_names = list(msg[2]) if len(msg) > 2 else []
            self.ready.set()
        elif kind == "forked":
            child = ForkedProcess(msg[2], fds[0] if fds else None)
            with self._lock:
                self._children[child.pid] = child
                slot = self._replies.get(msg[1])
                if slot is not None:
                    slot[1] = child
            if slot is None:  # its requester gave up waiting: nobody talks to it
                child.kill()
            else:
                slot[0].set()
        elif kind == "failed":
            with self._lock:
                slot = self._replies.get(msg[1])
            if slot is not None:
                slot[1] = msg[2]
                slot[0].set()
        elif kind == "exited":
            with self._lock:
                child = self._children.pop(msg[1], None)
            if child is not None:
                child.reaped(msg[2])

    def _died(self) -> None:
        with self._lock:
            self.alive = False
            replies, self._replies = list(self._replies.values()), {}
            children, self._children = list(self._children.values()), {}
        for slot in replies:
            slot[1] = "the fork server exited"
            slot[0].set()
        for child in children:
            child.orphaned()
        self.ready.set()
        with self._send_lock:
            self.sock.close()
        self.proc.wait()  # reap it; it exits once its socket is closed


# native threads some libraries start at import, and the setting that prevents it
THREAD_CAUSES = {
    "jemalloc_bg_thd": "pyarrow's jemalloc (JE_ARROW_MALLOC_CONF=background_thread:false)",
    "openblas": "OpenBLAS (OPENBLAS_NUM_THREADS=1)",
    "omp": "OpenMP (OMP_NUM_THREADS=1)",
}


def _threaded_reason(count: int, names: list[str]) -> str:
    """Why the fork server cannot be used: its threads, named, and what started them."""
    causes = sorted({cause for name in names for prefix, cause in THREAD_CAUSES.items()
                     if name.lower().startswith(prefix)})
    named = f" ({', '.join(names)})" if names else ""
    known = f"; started by {', '.join(causes)}" if causes else \
        "; a module in serverless.local.preload starts threads when imported"
    return (f"it runs {count} threads after its imports{named} and forking a threaded "
            f"process is unsafe{known}")


class ForkServer:
    """Launches containers by forking them from a zygote started on first use; a dead
    zygote is replaced on the next launch, and a launch it cannot serve is spawned."""

    def __init__(self, env: dict[str, str], log_path: str, secret: str | None = None):
        self._env, self._log_path, self._secret = env, log_path, secret
        self._lock = threading.Lock()
        self._zygote: _Zygote | None = None
        self._failures = 0
        self._closed = False
        self.disabled: str | None = None  # why containers are spawned from now on
        if not hasattr(os, "pidfd_open") or not hasattr(socket, "send_fds"):
            self.disabled = "this platform has no pidfd_open / SCM_RIGHTS"

    @property
    def pid(self) -> int | None:
        """The running zygote's process id (None when there is none)."""
        z = self._zygote
        return z.proc.pid if z is not None and z.alive else None

    def prepare(self) -> None:
        """Have a zygote ready (call without the pool's lock: the first takes imports)."""
        z = self._zygote
        if self.disabled is None and not (z is not None and z.alive):
            self._ready_zygote()

    def launch(self, memory_mb: int, status_path: str, log_path: str) -> Launched:
        zygote = self._ready_zygote()
        if zygote is not None:
            child_fds, tx, rx = _pipes()
            try:
                proc = zygote.fork(memory_mb, status_path, log_path, child_fds)
                with self._lock:
                    self._failures = 0
                return proc, tx, rx
            except ZygoteError as exc:
                tx.close()  # a container forked after all sees EOF and exits
                rx.close()
                logger.warning("fork server could not start a container (%s): spawning it",
                               exc)
                with self._lock:
                    self._failed()
            finally:
                _close_all(child_fds)
        return spawn(self._env, memory_mb, status_path, log_path, self._secret)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            z, self._zygote = self._zygote, None
        if z is not None:
            z.close()

    def _ready_zygote(self) -> _Zygote | None:
        """The running zygote, started (again) if needed; None: spawn this one."""
        with self._lock:
            if self._closed or self.disabled is not None:
                return None
            z = self._zygote
            if z is not None and z.alive:
                return z
            if z is not None:
                logger.warning("the fork server (pid %s) exited with code %s",
                               z.proc.pid, z.proc.poll())
                self._zygote = None
                self._failed()
                if self.disabled is not None:
                    return None
            try:
                z = _Zygote(self._env, self._log_path, self._secret)
            except OSError as exc:
                logger.warning("cannot start the fork server: %s", exc)
                self._failed()
                return None
            if not z.ready.wait(START_TIMEOUT_S) or not z.alive:
                z.close()
                self._failed()
                return None
            if z.threads > 1:
                z.close()
                self._disable(_threaded_reason(z.threads, z.thread_names))
                return None
            self._zygote = z
            return z

    def _failed(self) -> None:
        """A zygote died, did not get ready or could not fork. Caller holds the lock."""
        self._failures += 1
        if self._failures >= MAX_FAILURES and self.disabled is None:
            self._disable(f"it failed {self._failures} times in a row; its log: "
                          f"{log_tail(self._log_path, 800)}")

    def _disable(self, reason: str) -> None:
        self.disabled = reason
        logger.warning("local containers are spawned instead of forked: %s", reason)
