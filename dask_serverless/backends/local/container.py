"""Entry point of a local "container": a long-lived worker subprocess, like a Lambda
execution environment. Started by ``LocalPool`` (a fresh interpreter, or forked by the
pool's fork server, see ``zygote``); talks to it over two pipes.

Messages are pickled tuples. From the pool: ("secret", value) first when the pool hands
down its ``serverless.secret`` (never through the environment: processes a task starts
must not inherit it), ("run", invocation_bytes, cold),
("call", "module.function", event_json, context_dict, cold) and ("exit",); ``cold`` is
true for the work the container was spawned for (a pre-warmed container's first
invocation is warm). To the pool: ("ready", startup_s), ("invoke", [invocation_bytes, ...]),
("done", report_dict, was_cold), ("result", ok, result_or_error_json, was_cold).
"""

from __future__ import annotations

import importlib
import os
import pickle
import resource
import signal
import sys
import time
from dataclasses import asdict
from multiprocessing.connection import Connection

from dask_serverless import heap

_T0 = time.perf_counter()


def _vm_size_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def _preload() -> None:
    """Import what every container needs (the fork server does it once for all)."""
    import dask
    import dask._task_spec  # noqa: F401


    try:
        import numpy  # noqa: F401
    except ImportError:
        pass
    for name in filter(None, os.environ.get("DASK_SERVERLESS_PRELOAD", "").split(",")):
        try:  # serverless.local.preload: modules the user's tasks will need
            importlib.import_module(name)
        except Exception as exc:  # a task needing it will raise the real error
            sys.stderr.write(f"preload of {name!r} failed: {exc!r}\n")


def _cap_memory(memory_mb: int) -> None:
    """Cap the address space at what the runtime uses now plus the config's memory,
    after setting the heap for a worker of that size (``heap.tune`` also limits malloc
    arenas, whose reservations the cap would count)."""
    heap.tune(memory_mb)
    limit = _vm_size_bytes() + memory_mb * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def use_secret(value: str) -> None:
    """Seal and unseal with ``value`` (``serverless.secret``) in this process."""
    import dask.config

    from dask_serverless.storage import serialize

    dask.config.set({"serverless.secret": value})
    reset = getattr(serialize, "reset_key", None)
    if reset is not None:
        reset()


def _end_group() -> None:
    """The pool is gone: nobody will kill this container's group, so do it (with this
    process in it) once output is flushed."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # a broken log must not keep the group alive
            pass
    os.killpg(os.getpgrp(), signal.SIGKILL)


class _PipeInvoker:
    def __init__(self, conn: Connection):
        self.conn = conn

    def invoke_many(self, invocations) -> None:
        self.conn.send_bytes(pickle.dumps(
            ("invoke", [(i.run_id, i.worker_id, i.dumps()) for i in invocations])))


def main(argv: list[str]) -> None:
    read_fd, write_fd, status_path, memory_mb = int(argv[0]), int(argv[1]), argv[2], int(argv[3])
    _preload()
    serve(read_fd, write_fd, status_path, memory_mb, _T0)


def serve(read_fd: int, write_fd: int, status_path: str, memory_mb: int, t0: float) -> None:
    """Cap memory, report ready (``t0``: when this container's start began) and run work
    from the pool until it says exit or goes away."""
    rx, tx = Connection(read_fd, writable=False), Connection(write_fd, readable=False)
    sys.stdout = sys.stderr  # user prints go to the container log
    from dask_serverless.backends.local import handler_call
    from dask_serverless.protocol.wire import Invocation
    from dask_serverless.storage.serialize import TamperedPayloadError
    from dask_serverless.worker.executor import execute

    _cap_memory(memory_mb)
    status_fd = os.open(status_path, os.O_WRONLY | os.O_CREAT, 0o600)

    def on_task_start(tid: int) -> None:
        os.pwrite(status_fd, b"%-23d\n" % tid, 0)

    invoker = _PipeInvoker(tx)
    tx.send_bytes(pickle.dumps(("ready", time.perf_counter() - t0)))
    released = True  # the heap holds no memory freed since the last release
    while True:
        if not released and not rx.poll(heap.IDLE_RELEASE_S):
            heap.release_free()  # idle: hold only what is live
            released = True
        try:
            msg = pickle.loads(rx.recv_bytes())
        except EOFError:
            if os.getpgrp() == os.getpid():  # leads its group (always, when pool-started)
                _end_group()
            return
        if msg[0] == "exit":
            return
        if msg[0] == "secret":
            use_secret(msg[1])
            continue
        cold = msg[-1]
        released = False  # a call or a run: what it frees stays in the heap for the next
        if msg[0] == "call":
            os.pwrite(status_fd, b" " * 23 + b"\n", 0)
            ok, payload = handler_call.call(msg[1], msg[2], msg[3])
            tx.send_bytes(pickle.dumps(("result", ok, payload, cold)))
            continue
        try:
            inv = Invocation.loads(msg[3], msg[1], msg[2])  # ("run", run, worker, blob, cold)
        except TamperedPayloadError as exc:
            sys.stderr.write(f"refused invocation: {exc}\n")
            tx.send_bytes(pickle.dumps(("refused", str(exc))))
            continue
        os.pwrite(status_fd, b" " * 23 + b"\n", 0)
        report = execute(inv, invoker, on_task_start, cold=cold)
        tx.send_bytes(pickle.dumps(("done", asdict(report), cold)))


if __name__ == "__main__":
    main(sys.argv[1:])
