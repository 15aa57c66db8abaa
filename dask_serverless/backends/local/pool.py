"""A Lambda-like pool of subprocess containers, keyed by memory config.

Invoking with no idle container of the config is a real cold start: a new process, forked
from the pool's fork server (``start_method="fork-server"``, see ``zygote``) or a fresh
interpreter that imports everything (``"spawn"``), with its own memory cap, pipes and log;
an idle one is reused warm until ``keep_alive`` expires. Which container runs what is
``containers.ContainerPolicy``'s choice (the simulator makes the same): at most
``max_containers`` live at once; further invocations queue. Invocations from workers arrive
over their pipes, so the pool plays the part of the Lambda service for the whole machine.

Besides invocations, a container can run a ``HandlerCall``: a ``module.function(event,
context)`` handler with a JSON event, answered through ``on_result`` (the local Lambda API
server runs ``lambda_handler`` this way).

Containers get this process's environment plus ``env`` and are handed this process's
``serverless.secret`` over their pipe (not in the environment); with
``inherit_env=False`` (Lambda functions) they get only ``env``, secret included if any.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import pickle
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ... import config
from ...containers import ContainerPolicy, Placement, Slot
from ...protocol.wire import Invocation
from ...storage import serialize
from . import scratch
from .launch import ForkServer, log_tail, spawn

logger = logging.getLogger(__name__)

CrashHandler = Callable[[Invocation, dict], None]
ReportHandler = Callable[[Invocation, dict, bool], None]


@dataclass(slots=True)
class HandlerCall:
    """Run ``handler`` ("module.function") on a JSON ``event`` in a container of
    ``memory_mb``; ``on_result(ok, payload, cold)`` gets the JSON result or, when ``ok`` is
    False, a Lambda-style error object (the handler raised or the container died)."""

    memory_mb: int
    handler: str
    event: bytes
    on_result: Callable[[bool, bytes, bool], None]
    context: dict = field(default_factory=dict)
    run_id: str = ""  # not tied to a run: ``cancel_run`` leaves it alone

    @property
    def worker_id(self) -> str:
        return f"{self.context.get('function_name', 'handler')} ({self.handler})"


Work = Invocation | HandlerCall


def _code(returncode: int | None) -> str:
    return "an unknown status" if returncode is None else f"code {returncode}"


class _Container:
    """A container process; ``slot`` is the policy's view of it."""

    __slots__ = ("busy_since", "cold", "current", "dead", "id", "invocations", "log_path",
                 "memory_mb", "proc", "rx", "slot", "startup_s", "status_path", "timed_out",
                 "tx")

    def __init__(self, slot: Slot):
        self.slot, self.id, self.memory_mb = slot, slot.id, slot.memory_mb
        self.dead = False  # retired by the pool, or its process ended
        self.current: Work | None = None
        self.cold = False  # the next work sent is what it was spawned for
        self.busy_since = time.monotonic()
        self.timed_out = False
        self.startup_s = 0.0
        self.invocations = 0

    @property
    def state(self) -> str:
        return "dead" if self.dead else self.slot.state


class LocalPool:
    """Subprocess containers that execute invocations; see module docstring."""

    def __init__(self, max_containers: int, keep_alive: float,
                 on_crash: CrashHandler | None = None, on_done: ReportHandler | None = None,
                 env: dict[str, str] | None = None, retries: int = 0,
                 retry_backoff: float = 0.2, invocation_timeout: float = 900.0,
                 start_method: str | None = None, preload: list[str] | None = None,
                 inherit_env: bool = True):
        self.max_containers = max_containers
        self.keep_alive = keep_alive
        self.retries, self.retry_backoff = retries, retry_backoff
        self.invocation_timeout = invocation_timeout
        self.on_crash = on_crash
        self.on_done = on_done
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # a container ended its work
        self.policy: ContainerPolicy[Work] = ContainerPolicy(max_containers, keep_alive)
        self._containers: dict[int, _Container] = {}  # by slot id
        self._dir = scratch.make_pool_dir()  # removed by close()
        self._closed = False
        self._env = dict(os.environ) if inherit_env else {}
        self._env.setdefault("OPENBLAS_NUM_THREADS", "1")
        self._env.setdefault("OMP_NUM_THREADS", "1")
        self._env.setdefault("MKL_NUM_THREADS", "1")
        # pyarrow's jemalloc starts a background thread at import: the fork server (which
        # imports dask.dataframe when preloaded) must stay single-threaded to fork safely
        self._env.setdefault("JE_ARROW_MALLOC_CONF", "background_thread:false")
        self._env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        secret = serialize.secret() if inherit_env else None  # handed over the pipe
        self._env["DASK_SERVERLESS_CONTAINER"] = "1"
        self._env["DASK_SERVERLESS_PRELOAD"] = ",".join(preload or ())
        self._env.update(env or {})
        self.start_method = config.get("local.start-method", start_method)
        self.fork_server = (ForkServer(self._env, os.path.join(self._dir, "zygote.log"), secret)
                            if self.start_method == "fork-server" else None)
        self._launch = (self.fork_server.launch if self.fork_server is not None
                        else functools.partial(spawn, self._env, secret=secret))
        self.cold_starts = 0
        self.warm_starts = 0
        self._reaper = threading.Thread(target=self._reap_loop, daemon=True,
                                        name="dask-serverless-reaper")
        self._reaper.start()

    # -- public ------------------------------------------------------------------------
    def invoke_many(self, invocations: list[Invocation]) -> None:
        for inv in invocations:
            self._submit(inv)

    def call(self, call: HandlerCall) -> None:
        """Queue a handler call; its result arrives through ``call.on_result``."""
        self._submit(call)

    def warm_up(self, memory_mb: int, count: int = 1) -> None:
        """Start containers of ``memory_mb`` (they come up idle and warm for reuse)."""
        self.prepare()
        with self._lock:
            for _ in range(count):
                slot = self.policy.start_idle(memory_mb)
                if slot is None:
                    break
                self._spawn(slot, None)

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {**self.policy.counts(), "cold_starts": self.cold_starts,
                    "warm_starts": self.warm_starts}

    def idle_by_memory(self) -> dict[int, int]:
        """Idle (warm) containers per memory size."""
        with self._lock:
            return self.policy.idle_by_memory()

    def wait_idle(self, run_id: str, timeout: float) -> bool:
        """Wait up to ``timeout`` s until no container runs or queues work of ``run_id``
        (its workers report done right after their last records); True when none does."""
        def idle() -> bool:
            return not any(c.current is not None and c.current.run_id == run_id
                           for c in self._containers.values()) \
                and not any(w.run_id == run_id for _, w in self.policy.queue)

        with self._changed:
            return self._changed.wait_for(idle, timeout)

    def busy_pids(self) -> list[int]:
        """Process ids of containers running an invocation now."""
        with self._lock:
            return [c.proc.pid for c in self._containers.values() if c.state == "busy"]

    def prepare(self) -> None:
        """Have the fork server ready (its first start imports the runtime); called
        before taking the lock, and by the backend in the background when it is made."""
        if self.fork_server is not None:
            self.fork_server.prepare()

    def cancel_run(self, run_id: str) -> int:
        """Kill containers running invocations of ``run_id`` (no retry, no report)."""
        with self._lock:
            doomed = [c for c in self._containers.values()
                      if c.state == "busy" and c.current is not None
                      and c.current.run_id == run_id]
            self.policy.drop_queued(lambda w: w.run_id != run_id)
            for c in doomed:
                c.current = None  # its exit is not a crash to report
        for c in doomed:
            c.proc.kill()
        return len(doomed)

    def cancel_invocation(self, run_id: str, inv_id: str, attempts: list[int]) -> int:
        """Kill containers running these attempts of invocation ``inv_id`` (another
        attempt did its work: a straggler whose backup won) and drop them if queued."""
        def doomed(w: Work) -> bool:
            return (isinstance(w, Invocation) and w.run_id == run_id and w.id == inv_id
                    and w.attempt in attempts)

        with self._lock:
            victims = [c for c in self._containers.values()
                       if c.state == "busy" and c.current is not None and doomed(c.current)]
            self.policy.drop_queued(lambda w: not doomed(w))
            for c in victims:
                c.current = None  # its exit is not a crash to report
        for c in victims:
            logger.info("container %s: cancelling invocation %s of run %s (another attempt "
                        "did its work)", c.id, inv_id, run_id)
            c.proc.kill()
        return len(victims)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            containers = list(self._containers.values())
            self._containers.clear()
            self.policy.queue.clear()
        for c in containers:
            self._retire(c)
        for c in containers:
            try:
                c.proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                c.proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    c.proc.wait(timeout=2)
        if self.fork_server is not None:
            self.fork_server.close()
        scratch.remove_pool_dir(self._dir)

    # -- dispatch ----------------------------------------------------------------------
    def _submit(self, work: Work) -> None:
        arrived = time.time()
        self.prepare()
        with self._lock:
            if self._closed:
                raise RuntimeError("the local worker pool is closed")
            placement = self.policy.place(work.memory_mb, work, time.monotonic())
            # not queued: starting the fork server is part of a cold start, not queueing
            send = self._apply(placement, arrived)
        if send is not None:
            self._send(*send)

    def _apply(self, placement: Placement[Work] | None,
               dispatched: float | None = None) -> tuple[_Container, Work] | None:
        """Carry out the policy's placement (caller holds the lock): stop the containers
        it retires, start a new one (its work is sent when it is ready), or hand the
        work to a warm one (returned: send it outside the lock)."""
        if placement is None:
            return None
        for slot in placement.retired:
            self._retire(self._containers.pop(slot.id))
        if placement.slot is None:
            return None  # queued
        work = placement.work
        if isinstance(work, Invocation):  # queueing ends, startup begins
            work.dispatch_time = time.time() if dispatched is None else dispatched
        if placement.cold:
            self.cold_starts += 1
            self._spawn(placement.slot, work)
            return None
        self.warm_starts += 1
        c = self._containers[placement.slot.id]
        c.current, c.busy_since = work, time.monotonic()
        return c, work

    def _spawn(self, slot: Slot, work: Work | None) -> _Container:
        c = _Container(slot)
        c.current, c.cold = work, work is not None
        c.status_path = os.path.join(self._dir, f"c{c.id}.status")
        c.log_path = os.path.join(self._dir, f"c{c.id}.log")
        c.proc, c.tx, c.rx = self._launch(slot.memory_mb, c.status_path, c.log_path)
        self._containers[c.id] = c
        threading.Thread(target=self._read_loop, args=(c,), daemon=True,
                         name=f"dask-serverless-container-{c.id}").start()
        return c

    def encode(self, inv: Invocation) -> bytes:
        """The sealed bytes sent to a container (overridable for fault injection)."""
        return inv.dumps()

    def _send(self, c: _Container, inv: Work) -> None:
        c.invocations += 1
        cold, c.cold = c.cold, False
        if isinstance(inv, HandlerCall):
            msg = ("call", inv.handler, inv.event, inv.context, cold)
        else:
            msg = ("run", inv.run_id, inv.worker_id, self.encode(inv), cold)
        try:
            c.tx.send_bytes(pickle.dumps(msg))
        except OSError:
            pass  # the reader thread sees the death and reports the crash

    def _finished(self, c: _Container) -> tuple[_Container, Work] | None:
        """Container ``c`` ended its work (caller holds the lock): it takes queued work,
        or idles."""
        c.current = None
        self._changed.notify_all()
        return self._apply(self.policy.finished(c.slot, time.monotonic()))

    # -- per-container reader thread ---------------------------------------------------------
    def _read_loop(self, c: _Container) -> None:
        while True:
            try:
                msg = pickle.loads(c.rx.recv_bytes())
            except (EOFError, OSError):
                self._on_exit(c)
                return
            kind = msg[0]
            if kind == "invoke":
                for run_id, worker_id, data in msg[1]:
                    self._submit_from_worker(Invocation.loads(data, run_id, worker_id))
            elif kind == "ready":
                c.startup_s = msg[1]
                with self._lock:
                    if c.current is None:  # a warm-up: idle, or queued work
                        send = self._apply(self.policy.ready(c.slot, time.monotonic()))
                    else:
                        c.busy_since = time.monotonic()
                        send = c, c.current
                if send is not None:
                    self._send(*send)
            elif kind == "refused":
                if self.on_crash is not None and c.current is not None:
                    self.on_crash(c.current, {"refused": msg[1], "memory_mb": c.memory_mb,
                                              "container": c.id})
                with self._lock:
                    send = self._finished(c)
                if send is not None:
                    self._send(*send)
            elif kind in ("done", "result"):
                finished = c.current
                if isinstance(finished, HandlerCall):
                    finished.on_result(msg[1], msg[2], msg[3])
                elif self.on_done is not None and finished is not None:
                    self.on_done(finished, msg[1], msg[2])
                with self._lock:
                    send = self._finished(c)
                if send is not None:
                    self._send(*send)

    def invoke_from_worker(self, inv: Invocation) -> None:
        """An invocation made by a worker (overridable hook for fault injection)."""
        self.invoke_many([inv])

    def _submit_from_worker(self, inv: Invocation) -> None:
        try:
            self.invoke_from_worker(inv)
        except RuntimeError:
            logger.debug("pool closed; dropped invocation of worker %s", inv.worker_id)

    def _on_exit(self, c: _Container) -> None:
        returncode = c.proc.wait()
        send = None
        with self._lock:
            was_retired, c.dead = c.dead, True
            inv = c.current
            self._containers.pop(c.id, None)
            if not was_retired and not self._closed:  # its place goes to queued work
                send = self._apply(self.policy.died(c.slot, time.monotonic()))
            self._changed.notify_all()
        if send is not None:
            self._send(*send)
        if was_retired or inv is None or self._closed:
            return
        if isinstance(inv, HandlerCall):
            self._handler_died(c, inv, returncode)
            return
        info = {"returncode": returncode, "memory_mb": c.memory_mb, "container": c.id,
                "task_id": self._read_status(c), "log_tail": self._log_tail(c),
                "timed_out": self.invocation_timeout if c.timed_out else None,
                "attempts": inv.attempt + 1}
        logger.warning("container %s (memory %s MB) died with code %s while running worker %s "
                       "(attempt %d)", c.id, c.memory_mb, returncode, inv.worker_id,
                       inv.attempt + 1)
        if inv.attempt < self.retries:
            delay = self.retry_backoff * 2 ** inv.attempt
            timer = threading.Timer(delay, self._submit_from_worker, [inv.retry()])
            timer.daemon = True
            timer.start()
        elif self.on_crash is not None:
            self.on_crash(inv, info)

    def _handler_died(self, c: _Container, call: HandlerCall, returncode: int | None) -> None:
        """Answer a handler call whose container died, the way Lambda reports it."""
        reason = (f"Task timed out after {self.invocation_timeout:.0f} seconds" if c.timed_out
                  else f"Runtime exited with {_code(returncode)} (memory {c.memory_mb} MB)")
        logger.warning("container %s running %s: %s", c.id, call.worker_id, reason)
        call.on_result(False, json.dumps({
            "errorType": "Runtime.ExitError", "errorMessage": reason,
            "log_tail": self._log_tail(c)[-800:]}).encode(), False)

    def _retire(self, c: _Container) -> None:
        c.dead = True
        with contextlib.suppress(OSError):
            c.tx.send_bytes(pickle.dumps(("exit",)))

    def _reap_loop(self) -> None:
        period = max(0.05, min(1.0, self.keep_alive / 4))
        while not self._closed:
            time.sleep(period)
            now = time.monotonic()
            with self._lock:
                for slot in self.policy.expire(now):
                    self._retire(self._containers.pop(slot.id))
                overdue = [c for c in self._containers.values() if c.state == "busy"
                           and now - c.busy_since > self.invocation_timeout]
            for c in overdue:
                c.timed_out = True
                logger.warning("container %s exceeded the invocation timeout (%.1f s): killing",
                               c.id, self.invocation_timeout)
                c.proc.kill()

    @staticmethod
    def _read_status(c: _Container) -> int | None:
        try:
            with open(c.status_path) as f:
                text = f.read().strip()
            return int(text) if text else None
        except (OSError, ValueError):
            return None

    @staticmethod
    def _log_tail(c: _Container) -> str:
        return log_tail(c.log_path)
