"""The fork server ("zygote") of a ``LocalPool``: a single-threaded process that imports
what a container needs once, then forks a new container per request.

Started by ``forkserver.ForkServer`` as a fresh interpreter with the pool's environment
(it inherits nothing else from the client: no Redis connections, no locks, no threads),
it talks to the pool over one ``SOCK_SEQPACKET`` Unix socket, one pickled tuple per
message:

- from the pool: ``("secret", value)`` first when the pool hands its containers a secret;
  ``("fork", request_id, memory_mb, status_path, log_path, cwd)`` with the
  container's two pipe ends (its read end, its write end) attached as file descriptors;
- to the pool: ``("ready", native_threads, names_of_the_other_threads)`` once imports
  are done;
  ``("forked", request_id, pid)`` with a pidfd of the new container attached (the pool
  signals it without pid-reuse races); ``("failed", request_id, reason)``; and
  ``("exited", pid, wait_status)`` when it has reaped a container, because only the
  parent can learn a process's exit status.

It exits when the pool's end of the socket closes (pool closed, or the client died),
killing the containers it still has: nobody is left to talk to them.

Each container leads a session (and process group) of its own; when one exits, the zygote
kills its group before reaping it (the unreaped leader keeps the group id from being
reused), so nothing a task forked outlives its container.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import os
import pickle
import selectors
import signal
import socket
import sys
import time
import traceback

MAX_MESSAGE = 64 * 1024
MAX_FDS = 4


def _send(sock: socket.socket, msg: tuple, fds: list[int] | None = None) -> None:
    socket.send_fds(sock, [pickle.dumps(msg)], fds or [])


def _native_threads() -> list[str]:
    """Names of this process's native threads (the first is the main thread)."""
    names = []
    try:
        for tid in sorted(os.listdir("/proc/self/task"), key=int):
            try:
                with open(f"/proc/self/task/{tid}/comm") as f:
                    names.append(f.read().strip())
            except OSError:
                names.append("?")
    except OSError:
        return ["main"]
    return names


def _become_container(request: tuple, fds: list[int], t0: float) -> int:
    """In the forked child: own stdio, default signals, fresh import caches and random
    state, then serve the pool like a spawned container. Returns the exit code."""
    from . import container

    os.setsid()  # its own session and process group: killed whole when it ends
    _, _, memory_mb, status_path, log_path, cwd = request
    read_fd, write_fd = fds
    with contextlib.suppress(OSError):
        os.chdir(cwd)  # where the pool's process is now, as for a spawned container
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    importlib.invalidate_caches()  # modules written since the zygote started are found
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        numpy.random.seed()  # else every container would draw the same numbers
    try:
        container.serve(read_fd, write_fd, status_path, memory_mb, t0)
        return 0
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    except BaseException:
        traceback.print_exc()
        return 1


def _fork(sock: socket.socket, sel: selectors.BaseSelector, request: tuple,
          fds: list[int]) -> None:
    t0 = time.perf_counter()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()  # else the child would write the zygote's buffered output again
    try:
        pid = os.fork()
    except OSError as exc:
        for fd in fds:
            os.close(fd)
        _send(sock, ("failed", request[1], f"fork: {exc}"))
        return
    if pid == 0:
        code = 1
        try:
            for key in list(sel.get_map().values()):
                if key.fileobj is not sock:
                    os.close(key.fd)  # pidfds of sibling containers
            sel.close()
            sock.close()
            code = _become_container(request, fds, t0)
        finally:
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):  # a broken log must not stop the exit
                    stream.flush()
            try:
                atexit._run_exitfuncs()  # what a normal interpreter exit would run
            finally:
                os._exit(code)
    for fd in fds:
        os.close(fd)
    try:
        pidfd = os.pidfd_open(pid)
    except OSError as exc:  # e.g. out of file descriptors: do without this container
        os.kill(pid, signal.SIGKILL)  # still our unreaped child: the pid is its own
        os.waitpid(pid, 0)
        _send(sock, ("failed", request[1], f"pidfd_open: {exc}"))
        return
    sel.register(pidfd, selectors.EVENT_READ, pid)
    _send(sock, ("forked", request[1], pid), [pidfd])


def _end_children(sel: selectors.BaseSelector) -> None:
    """Kill and reap the containers still running: nobody can talk to them any more (a
    closing pool has already stopped its own)."""
    for key in list(sel.get_map().values()):
        if key.data is not None:
            _kill_group(key.data)
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(key.fd, signal.SIGKILL)
            os.waitpid(key.data, 0)


def _kill_group(pid: int) -> None:
    """Kill the process group a container leads (call before reaping it)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def serve(sock: socket.socket) -> None:
    """Answer fork requests and report reaped containers until the pool goes away (its
    end of the socket closes, or a message to it finds it gone); then end the rest."""
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ, None)
    try:
        threads = _native_threads()
        _send(sock, ("ready", len(threads), threads[1:]))
        while _step(sock, sel):
            pass
    except (BrokenPipeError, ConnectionResetError):
        pass
    _end_children(sel)


def _step(sock: socket.socket, sel: selectors.BaseSelector) -> bool:
    """Handle what is ready; False once the pool has closed its end."""
    for key, _ in sel.select():
        if key.data is not None:  # a container's pidfd: it exited
            _kill_group(key.data)  # what its tasks forked goes with it
            _, status = os.waitpid(key.data, 0)
            sel.unregister(key.fd)
            os.close(key.fd)
            _send(sock, ("exited", key.data, status))
            continue
        data, fds, _, _ = socket.recv_fds(sock, MAX_MESSAGE, MAX_FDS)
        if not data:
            return False
        request = pickle.loads(data)
        if request[0] == "secret" and not fds:
            from . import container

            container.use_secret(request[1])
        elif request[0] == "fork" and len(fds) == 2:
            _fork(sock, sel, request, fds)
        else:
            for fd in fds:
                os.close(fd)
            _send(sock, ("failed", request[1], f"bad request {request[0]!r}"))
    return True


def main(argv: list[str]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # it ends with its pool, not on Ctrl-C
    sock = socket.socket(fileno=int(argv[0]))
    from . import container

    container._preload()
    serve(sock)


if __name__ == "__main__":
    main(sys.argv[1:])
