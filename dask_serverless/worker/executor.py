"""Run one invocation: a worker's ready tasks and everything that becomes ready locally.

The same code runs in every backend (local containers, AWS Lambda). It downloads only
inputs it does not hold, uploads only outputs another group or the client needs,
registers fan-ins atomically and invokes the workers of entry tasks it made ready.
Streamed outputs (``plan.optimizations.stream``) are announced and their consumers
invoked before the chunks are written (``storage.streams``).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Protocol

from dask.sizeof import sizeof

from ..errors import OutputTooLargeError, RunDataLostError
from ..metrics.recorder import InvocationRecorder
from ..protocol.constants import CANCEL_CHECK_S, FINAL_FLUSH_BYTES, HOLD_POLL_S, PROGRESS_S
from ..protocol.wire import Invocation, InvocationReport, RunSpec, error_record
from ..storage import streams
from ..storage.serialize import Encoded
from ..storage.store import RunStore, connect
from .task_output import TaskOutput

logger = logging.getLogger(__name__)

# per-container cache: run id -> (spec, its bytes when small enough to forward inline)
_SPECS: OrderedDict[str, tuple[RunSpec, bytes | None]] = OrderedDict()
_SPEC_CACHE_SIZE = 4


class Invoker(Protocol):
    def invoke_many(self, invocations: list[Invocation]) -> None: ...


def load_spec(inv: Invocation, store: RunStore) -> tuple[RunSpec, bytes | None, float]:
    """The run's spec from the container cache, the invocation, or Redis."""
    cached = _SPECS.get(inv.run_id)
    if cached is not None:
        return cached[0], cached[1], 0.0
    t0 = time.perf_counter()
    blob = inv.spec if inv.spec is not None else store.get_spec()
    spec = RunSpec.loads(blob, inv.run_id)
    forward = blob if len(blob) <= spec.inline_bytes else None
    _SPECS[inv.run_id] = (spec, forward)
    while len(_SPECS) > _SPEC_CACHE_SIZE:
        _SPECS.popitem(last=False)
    return spec, forward, time.perf_counter() - t0


def execute(inv: Invocation, invoker: Invoker,
            on_task_start: Callable[[int], None] | None = None, *,
            cold: bool = False) -> InvocationReport:
    """Execute ``inv``; errors are stored in Redis for the client, never raised.

    ``cold``: this is the first invocation of a new container (the backend knows).
    Metrics (when the run records them) are written in one pipeline at the end.
    """
    report = InvocationReport(inv.run_id, inv.worker_id, cold=cold, start_time=time.time())
    store = RunStore(connect(inv.redis_url), inv.run_id)
    try:
        spec, spec_blob, report.spec_fetch_s = load_spec(inv, store)
        spec.check_schema(inv.worker_id)
    except Exception as exc:
        store.fail(error_record(exc, "<run spec>", inv.worker_id, inv.memory_mb))
        report.failed = True
        return report
    store.ttl = spec.ttl
    recorder = InvocationRecorder(inv, cold, report.start_time) if spec.metrics_url else None
    if not inv.warmup:
        logs = (recorder.capture_logs(spec.task_log_level).install()
                if recorder is not None and spec.task_log_level is not None else None)
        output = TaskOutput(store, inv.worker_id, logs).install()  # hook: prints, warnings
        try:
            _Execution(inv, spec, spec_blob, store, invoker, on_task_start, report,
                       recorder, output).run()
        except streams.StreamCancelled:
            report.cancelled = True
        except BaseException as exc:
            report.failed = True
            store.fail(error_record(exc, f"<worker {inv.worker_id}>", inv.worker_id,
                                    inv.memory_mb))
        finally:
            output.remove()
            if logs is not None:
                logs.remove()
    report.end_time = time.time()
    if recorder is not None:
        recorder.flush(connect(spec.metrics_url), recorder.record(
            report.start_time, report.end_time, report.spec_fetch_s, report.failed))
    return report


@dataclass(slots=True)
class _Held:
    """An output held back (delayed I/O) for a fan-in this invocation may run."""

    producer: int
    fanin: int
    deadline: float
    value: Any
    data: Encoded


class _TaskThreads:
    """Up to ``n`` daemon threads calling ``call(tid, args)`` for ``(tid, args)`` put on
    ``todo``; ``(tid, *result)`` comes back on ``done``. Fewer threads when the process
    cannot start more (``threads`` holds those that started)."""

    def __init__(self, n: int, call: Callable[[int, dict], tuple]):
        self.todo: queue.SimpleQueue = queue.SimpleQueue()
        self.done: queue.SimpleQueue = queue.SimpleQueue()
        self.threads: list[threading.Thread] = []
        for i in range(n):
            t = threading.Thread(target=self._loop, args=(call,), name=f"task-{i}",
                                 daemon=True)
            try:
                t.start()
            except RuntimeError:  # e.g. the container's memory cap
                break
            self.threads.append(t)

    def _loop(self, call: Callable[[int, dict], tuple]) -> None:
        while (item := self.todo.get()) is not None:
            self.done.put((item[0], *call(*item)))

    def close(self) -> None:
        """Let each thread end after its current task (tasks cannot be interrupted)."""
        for _ in self.threads:
            self.todo.put(None)


class _Execution:
    """State of one invocation while it runs (see ``execute``)."""

    def __init__(self, inv: Invocation, spec: RunSpec, spec_blob: bytes | None,
                 store: RunStore, invoker: Invoker,
                 on_task_start: Callable[[int], None] | None, report: InvocationReport,
                 recorder: InvocationRecorder | None = None, output: TaskOutput | None = None):
        self.inv, self.spec, self.store, self.invoker = inv, spec, store, invoker
        self.output = output
        self.spec_blob = spec_blob
        self.on_task_start = on_task_start
        self.report = report
        self.rec = recorder
        self.tasks = spec.dag.tasks
        self.layout = spec.layout
        self.local: dict[int, Any] = {}
        self.local_bytes: dict[int, bytes] = {}  # pickled outputs kept to inline downstream
        self.kept: dict[int, Any] = {}  # outputs for fan-ins that may run here (``_keep``)
        self.kept_sizes: dict[int, int] = {}
        self.kept_bytes = 0
        self.remaining: dict[int, int] = {}
        self.refs: dict[int, int] = {}
        self.final: list[tuple[int, Encoded]] = []  # outputs only the client needs
        self.final_bytes = 0
        self.final_ser_s = 0.0  # time spent sealing them
        self.progress: list[int] = []  # finished since the last progress event
        self.started: list[int] = []  # started since the last progress event
        my = spec.plan.workers[inv.worker_id]
        self.config = my.config
        self.threads = my.threads
        self.pool: _TaskThreads | None = None
        self.opt = spec.plan.optimizations
        self.held: list[_Held] = []
        self.next_cancel_check = time.monotonic() + CANCEL_CHECK_S
        self.next_progress = time.monotonic()  # the first task's start is reported at once
        self.logs = recorder.logs if recorder is not None else None

    # -- main loop ---------------------------------------------------------------------
    def run(self) -> None:
        try:
            self._run()
        finally:
            if self.pool is not None:  # a failed run leaves its other tasks running
                self.pool.close()

    def _run(self) -> None:
        ready = list(reversed(self.inv.start))
        self._fetch_inputs(self.inv.start)
        while self._drain(ready) and self.held:
            self._flush_final()
            ready = self._await_held()
        if self.report.failed or self.report.cancelled:
            return
        if self.spec.report_tasks:  # before the outputs: with them the client stops waiting
            self._flush_progress(end=True)
        self._flush_final()

    def _check_cancelled(self, now: float) -> bool:
        if now >= self.next_cancel_check:
            self.next_cancel_check = now + CANCEL_CHECK_S
            if self.store.cancelled():
                self.report.cancelled = True
        return self.report.cancelled

    def _drain(self, ready: list[int]) -> bool:
        """Run ready tasks until none is left; False when the invocation must stop."""
        if self.threads > 1 and self._task_threads():
            return self._drain_threaded(ready)
        while ready:
            tid = ready.pop()
            args = self._start(tid)
            if args is None:
                return False
            value, exec_s, cpu_s, exc = self._call(tid, args[1])
            if exc is not None:
                self._fail(exc, self.tasks[tid].key)
                return False
            ready.extend(self._complete(tid, args[0], value, exec_s, cpu_s))
        return True

    def _drain_threaded(self, ready: list[int]) -> bool:
        """``_drain`` with up to ``threads`` tasks running at once. Only the tasks run in
        the pool's threads; inputs, outputs, fan-ins and metrics stay on this thread."""
        assert self.pool is not None
        width = len(self.pool.threads)
        running: dict[int, float] = {}  # task id -> start time
        while ready or running:
            while ready and len(running) < width:
                tid = ready.pop()
                args = self._start(tid)
                if args is None:
                    return False
                running[tid] = args[0]
                self.pool.todo.put((tid, args[1]))
            try:
                tid, value, exec_s, cpu_s, exc = self.pool.done.get(timeout=CANCEL_CHECK_S)
            except queue.Empty:
                if self._check_cancelled(time.monotonic()):
                    return False
                continue
            start = running.pop(tid)
            if exc is not None:
                self._fail(exc, self.tasks[tid].key)
                return False
            ready.extend(self._complete(tid, start, value, exec_s, cpu_s))
        return True

    def _task_threads(self) -> int:
        """Threads running this invocation's tasks (started on first use; 0: run them
        on this thread)."""
        if self.pool is None:
            self.pool = _TaskThreads(self.threads, self._call)
            if len(self.pool.threads) < self.threads:
                logger.warning("worker %s: started %d of %d task threads", self.inv.worker_id,
                               len(self.pool.threads), self.threads)
        return len(self.pool.threads)

    def _start(self, tid: int) -> tuple[float, dict] | None:
        """Bookkeeping before task ``tid`` runs, its missing inputs fetched: (start time,
        its arguments), or None when the run was cancelled."""
        now = time.monotonic()
        if self._check_cancelled(now):
            return None
        if self.spec.report_tasks:
            self.started.append(tid)
            if now >= self.next_progress:
                self.next_progress = now + PROGRESS_S
                self._flush_progress()
        task = self.tasks[tid]
        if self.on_task_start is not None:
            self.on_task_start(tid)
        start = time.time()
        missing = self._missing(task.deps)
        if missing:
            self._fetch_inputs_of(missing)
        return start, {self.tasks[d].key: self.local[d] for d in task.deps}

    def _call(self, tid: int, args: dict) -> tuple[Any, float, float, BaseException | None]:
        """Run task ``tid``: (value, seconds, CPU seconds of this thread, exception)."""
        if self.logs is not None:
            self.logs.task = tid
        t0, c0 = time.perf_counter(), time.thread_time()
        task = self.tasks[tid]
        try:
            with self.output.task(tid, task.key) if self.output is not None else nullcontext():
                value = task.node(args)
        except BaseException as exc:
            return None, 0.0, 0.0, exc
        finally:
            if self.logs is not None:
                self.logs.task = -1
        return value, time.perf_counter() - t0, time.thread_time() - c0, None

    def _complete(self, tid: int, start: float, value: Any, exec_s: float,
                  cpu_s: float) -> list[int]:
        """Store what task ``tid`` made and record it; returns the tasks now ready."""
        task = self.tasks[tid]
        self.report.tasks += 1
        for d in task.deps:
            self._release(d)
        ready = self._finished(tid, value)
        if self.rec is not None:
            self.rec.task(task, start, exec_s, time.time(),
                          bool(self.final) and self.final[-1][0] == tid, cpu_s)
        return ready

    # -- inputs ------------------------------------------------------------------------
    def _fetch_inputs(self, start: list[int]) -> None:
        wanted = sorted({d for s in start for d in self.tasks[s].deps})
        for d, data in self.inv.inputs.items():
            self.local[d] = self.store.decode_output(d, data)
        if self.rec is not None and self.inv.inputs:
            self.rec.arrived_inputs(list(self.inv.inputs),
                                    [len(b) for b in self.inv.inputs.values()], "inline")
        self._fetch_inputs_of([d for d in wanted if d not in self.local])

    def _fetch_inputs_of(self, ids: list[int]) -> None:
        if not ids:
            return
        t0 = time.perf_counter()
        blobs = self.store.get_outputs(ids)
        waited = self._read_streams(ids, blobs) if self.opt.stream else 0.0
        for d, blob in zip(ids, blobs, strict=True):
            if blob is None:
                raise RunDataLostError(
                    f"worker {self.inv.worker_id}: input {self.tasks[d].key!r} is missing "
                    f"from Redis (run {self.inv.run_id} cancelled, expired or Redis "
                    "restarted)")
            self.local[d] = self.store.decode_output(d, blob)
        seconds = time.perf_counter() - t0 - waited  # a download is only done once unsealed
        if self.rec is not None:
            self.rec.arrived_inputs(ids, [len(b) for b in blobs], "redis", seconds)

    def _read_streams(self, ids: list[int], blobs: list[bytes | None]) -> float:
        """Fill in the inputs not stored whole that may be streamed, waiting for their
        chunks; returns the seconds spent waiting for chunks (not a download's time)."""
        waited = 0.0
        for i, d in enumerate(ids):
            if blobs[i] is None and d in self.opt.stream:
                what = f"worker {self.inv.worker_id}: input {self.tasks[d].key!r}"
                blobs[i], wait_s = streams.read(
                    self.store, d, what, self.spec.deadline_at,
                    lambda: self._check_cancelled(time.monotonic()))
                waited += wait_s
        return waited

    def _missing(self, ids: Any) -> list[int]:
        """Of ``ids``, the values this invocation does not hold (kept ones become local)."""
        out = []
        for d in ids:
            if d in self.local:
                continue
            if d in self.kept:
                self.local[d] = self.kept[d]  # unreferenced: stays until the end
            else:
                out.append(d)
        return out

    def _keep(self, tid: int, value: Any) -> None:
        """Keep ``tid``'s output (also uploaded) for fan-ins this invocation may run, if it
        completes them, so they need not download it back; the oldest go first when the
        kept values pass a quarter of the worker's memory (they are in Redis anyway)."""
        self.kept[tid] = value
        self.kept_sizes[tid] = size = sizeof(value)
        self.kept_bytes += size
        while self.kept_bytes > self.config.memory_mb * 2**18 and self.kept:
            old = next(iter(self.kept))
            del self.kept[old]
            self.kept_bytes -= self.kept_sizes.pop(old)

    def _release(self, tid: int) -> None:
        left = self.refs.get(tid)
        if left is None:
            return
        if left <= 1:
            self.refs.pop(tid, None)
            self.local.pop(tid, None)
            self.local_bytes.pop(tid, None)
        else:
            self.refs[tid] = left - 1

    # -- outputs -----------------------------------------------------------------------
    def _finished(self, tid: int, value: Any) -> list[int]:
        """Store what must be stored; return tasks now ready in this invocation."""
        layout = self.layout
        task = self.tasks[tid]
        if self.spec.report_tasks:
            self.progress.append(tid)
        local_deps = layout.local_dependents[tid]
        entries = layout.entry_dependents[tid]
        if local_deps:
            self.local[tid] = value
            self.refs[tid] = len(local_deps)
        if any(len(self.tasks[e].deps) > 1 and self._runs_here(e) for e in entries):
            self._keep(tid, value)
        ready: list[int] = []
        for d in local_deps:
            left = self.remaining.get(d, len(self.tasks[d].deps)) - 1
            if left == 0:
                self.remaining.pop(d, None)
                ready.append(d)
            else:
                self.remaining[d] = left
        rec = self.rec
        if not layout.upload[tid]:
            if rec is not None:
                rec.output(tid, sizeof(value))
            return ready
        t_ser = time.perf_counter()
        try:
            data = self.store.encode_output(tid, value)
        except Exception as exc:
            raise TypeError(f"output of task {task.key!r} cannot be pickled: {exc}") from exc
        if data.nbytes > self.spec.max_output_bytes:
            raise OutputTooLargeError(
                f"output of task {task.key!r} is {data.nbytes} bytes, over "
                f"serverless.max-output-bytes={self.spec.max_output_bytes}")
        ser_s = time.perf_counter() - t_ser  # sealing is part of the upload's cost
        if rec is not None:
            rec.output(tid, data.nbytes)
        is_final = tid in self.spec.dag.output_set
        if tid in self.opt.delay and entries:
            entries = self._hold(tid, value, data, entries)
        if not entries:
            if is_final:
                self.final.append((tid, data))
                self.final_bytes += data.nbytes
                self.final_ser_s += ser_s
                if self.final_bytes >= FINAL_FLUSH_BYTES:
                    self._flush_final()
            return ready
        final = [tid] if is_final else []
        fanins = [(tid, e) for e in entries if len(self.tasks[e].deps) > 1]
        chunk = self.opt.stream.get(tid, 0)
        head = streams.StreamHead.new(self.inv.id, self.inv.attempt, self.inv.worker_id,
                                      data.nbytes, chunk) if 0 < chunk < data.nbytes else None
        t0 = time.perf_counter()
        if head is None:
            sizes = self.store.publish_outputs([(tid, data)], final, fanins)
        else:  # announce only: consumers start before the chunks are written
            writes, sizes = streams.announce(self.store, tid, head, fanins)
        t1 = time.perf_counter()
        complete = [c for (_, c), n in zip(fanins, sizes, strict=True)
                    if n == len(self.tasks[c].deps)]
        won = self.store.claim(complete, self.inv.id) if complete else []
        if rec is not None:
            if head is None:
                rec.uploaded(data.nbytes, t1 - t0 + ser_s)
            if complete:
                rec.claimed(time.perf_counter() - t1)
        fired = [e for e in entries if len(self.tasks[e].deps) == 1]
        fired += [c for c, w in zip(complete, won, strict=True) if w]
        if data.nbytes <= self.spec.inline_bytes:
            self.local_bytes[tid] = data.tobytes()
        dup = [c for (_, c) in fanins if c in self.opt.duplicate and c not in complete]
        if head is not None:
            here = self._dispatch(fired, value, tid)
            t2 = time.perf_counter()
            if writes:
                streams.write(self.store, tid, head, data, chunk, is_final)
            if rec is not None:
                rec.uploaded(data.nbytes if writes else 0,
                             t1 - t0 + ser_s + time.perf_counter() - t2)
            return ready + here + [r for c in dup for r in self._duplicate(c)]
        extra = [r for c in dup for r in self._duplicate(c)]
        return ready + self._dispatch(fired, value, tid) + extra

    def _runs_here(self, entry: int) -> bool:
        spec = self.spec.plan.worker_of(entry)
        return spec.id == self.inv.worker_id or (spec.floating and spec.config == self.config)

    def _dispatch(self, fired: list[int], value: Any, producer: int) -> list[int]:
        """Run fired entries here when the plan allows it; invoke their workers otherwise."""
        run_here: list[int] = []
        remote: dict[str, list[int]] = {}
        for e in fired:
            if self._runs_here(e):
                run_here.append(e)
            else:
                remote.setdefault(self.spec.plan.assignment[e], []).append(e)
        if run_here:
            self.local[producer] = value
            self.refs[producer] = self.refs.get(producer, 0) + len(run_here)
        if remote:
            self._invoke(remote)
        return run_here

    def _invoke(self, remote: dict[str, list[int]]) -> None:
        invs = []
        for wid, starts in remote.items():
            inline = {d: self.local_bytes[d] for s in starts for d in self.tasks[s].deps
                      if d in self.local_bytes}
            invs.append(Invocation(
                self.inv.run_id, wid, self.spec.plan.workers[wid].config.memory_mb,
                self.inv.redis_url, starts, self.spec_blob, inline, self.inv.worker_id,
                time.time()))
        self.report.invoked += len(invs)
        if self.rec is not None:
            self.rec.invoked_ids([i.id for i in invs])
        self.invoker.invoke_many(invs)

    # -- task-dup ----------------------------------------------------------------------
    def _duplicate(self, fanin: int) -> list[int]:
        """Run the fan-in's missing cheap inputs (``plan.optimizations.duplicate``) here
        when their own inputs exist. First writer wins (``SET NX``) and the fan-in set
        holds producer ids, so the original run of a duplicate changes nothing."""
        (members,) = self.store.fanin_members([fanin])
        for b in self.opt.duplicate[fanin]:
            if b in members:
                continue
            task = self.tasks[b]
            missing = self._missing(task.deps)
            if missing and not self.store.outputs_exist(missing):
                continue
            try:
                self._fetch_inputs_of(missing)
                value = task.node({self.tasks[d].key: self.local[d] for d in task.deps})
                data = self.store.encode_output(b, value)
            except Exception:  # the task's own worker runs it and reports any error
                logger.debug("task-dup of %r skipped", task.key, exc_info=True)
                continue
            self.report.extra["duplicates"] = self.report.extra.get("duplicates", 0) + 1
            (size,) = self.store.publish_outputs([(b, data)], [], [(b, fanin)])
            if size == len(self.tasks[fanin].deps) and \
                    self.store.claim([fanin], self.inv.id)[0]:
                return self._dispatch([fanin], value, b)
        return []

    # -- delayed I/O and pre-load ----------------------------------------------------------
    def _hold(self, tid: int, value: Any, data: Encoded, entries: tuple[int, ...]) -> tuple:
        """Hold ``tid``'s output for fan-ins this invocation may run; return the entries
        to publish to now."""
        held = [e for e in entries if len(self.tasks[e].deps) > 1 and self._runs_here(e)]
        if not held:
            return entries
        deadline = time.monotonic() + self.opt.delay[tid]
        self.held += [_Held(tid, e, deadline, value, data) for e in held]
        self.local[tid] = value
        self.refs[tid] = self.refs.get(tid, 0) + len(held)
        return tuple(e for e in entries if e not in held)

    def _await_held(self) -> list[int]:
        """Wait for held fan-ins' other inputs (downloading them as they land when
        pre-load is on); publish a held output when its bound passes. Returns the fan-ins
        to run here."""
        while self.held:
            if self._check_cancelled(time.monotonic()):
                return []
            fanins = [h.fanin for h in self.held]
            if self.opt.preload:
                self._preload(fanins)
            sizes = self.store.fanin_sizes(fanins)
            now = time.monotonic()
            ready: list[int] = []
            for h, size in zip(list(self.held), sizes, strict=True):
                if size >= len(self.tasks[h.fanin].deps) - 1:
                    self.held.remove(h)
                    ready += self._release_held(h, publish=False)
                elif now >= h.deadline:
                    self.held.remove(h)
                    ready += self._release_held(h, publish=True)
            if ready:
                return ready
            if self.held:
                time.sleep(HOLD_POLL_S)
        return []

    def _release_held(self, h: _Held, publish: bool) -> list[int]:
        outputs = [(h.producer, h.data)] if publish else []
        (size,) = self.store.publish_outputs(outputs, [], [(h.producer, h.fanin)])
        self._release(h.producer)
        if size == len(self.tasks[h.fanin].deps) and \
                self.store.claim([h.fanin], self.inv.id)[0]:
            return self._dispatch([h.fanin], h.value, h.producer)
        return []

    def _preload(self, fanins: list[int]) -> None:
        wanted = self._missing(sorted({d for members in self.store.fanin_members(fanins)
                                       for d in members}))
        if wanted:
            self._fetch_inputs_of(wanted)

    def _flush_final(self) -> None:
        if self.final:
            t0 = time.perf_counter()
            self.store.publish_outputs(self.final, [t for t, _ in self.final], [])
            if self.rec is not None:
                self.rec.batch_uploaded([(t, d.nbytes) for t, d in self.final],
                                        time.perf_counter() - t0 + self.final_ser_s)
            self.store.event({"kind": "outputs"})
            self.final, self.final_bytes, self.final_ser_s = [], 0, 0.0

    def _flush_progress(self, end: bool = False) -> None:
        """Tell the client which tasks finished (``ids``) and started since the last
        event; ``end``: this invocation is over (sent even with nothing new)."""
        if self.progress or self.started or end:
            self.store.event({"kind": "tasks", "ids": self.progress, "started": self.started,
                              "worker": self.inv.worker_id, "invocation": self.inv.id,
                              "cold": self.report.cold, "end": end})
            self.progress, self.started = [], []

    def _fail(self, exc: BaseException, key: Any) -> None:
        if isinstance(exc, MemoryError):
            exc.add_note(f"task {key!r} ran out of memory on worker {self.inv.worker_id} "
                         f"with config {self.config} (memory_mb={self.config.memory_mb})")
        self.report.failed = True
        if self.spec.report_tasks:
            self._flush_progress(end=True)
        self.store.fail(error_record(exc, key, self.inv.worker_id, self.config.memory_mb))
