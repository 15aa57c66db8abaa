"""Run one invocation: drive its decision core (``protocol.core``) against Redis.

The same code runs in every backend (local containers, AWS Lambda). The core decides;
this module does what it says: runs tasks (on this thread, or on up to ``threads``
task threads), (un)seals and moves values, registers and claims fan-ins, invokes
workers, writes streamed chunks, and keeps the wall-clock parts the core leaves out
(delayed-I/O deadlines, cancellation checks, progress events, metrics).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from typing import Any, Protocol

from dask.sizeof import sizeof

from .. import heap
from ..errors import OutputTooLargeError, RunDataLostError
from ..metrics.recorder import InvocationRecorder
from ..protocol import core
from ..protocol.constants import CANCEL_CHECK_S, EVENT_OUTPUT_IDS, HOLD_POLL_S, PROGRESS_S
from ..protocol.slices import SlicedView
from ..protocol.wire import Invocation, InvocationReport, error_record
from ..storage import leases, streams
from ..storage.serialize import Encoded
from ..storage.slices import SpecUse, load_view
from ..storage.store import RunStore, connect
from .heartbeat import Heartbeat
from .progress import ProgressTicker
from .task_output import TaskOutput

logger = logging.getLogger(__name__)


class Invoker(Protocol):
    def invoke_many(self, invocations: list[Invocation]) -> None: ...


def load_spec(inv: Invocation, store: RunStore) -> tuple[SlicedView, SpecUse]:
    """The run as this invocation sees it: the slices of its start tasks, from this
    container's spec cache, the invocation or Redis (``storage.slices.load_view``), and
    what had been fetched before (``use.of(view)`` at the end: this invocation's spec
    bytes and seconds, lazy loads included)."""
    return load_view(inv.run_id, inv.worker_id, inv.invoker, inv.start, store,
                     inv.memory_mb, inv.spec)


def execute(inv: Invocation, invoker: Invoker,
            on_task_start: Callable[[int], None] | None = None, *,
            cold: bool = False) -> InvocationReport:
    """Execute ``inv``; errors are stored in Redis for the client, never raised.

    ``cold``: this is the first invocation of a new container (the backend knows).
    Metrics (when the run records them) are written in one pipeline at the end, before
    an error is stored: the client stops the run's workers once it sees the error.
    """
    report = InvocationReport(inv.run_id, inv.worker_id, cold=cold, start_time=time.time())
    store = RunStore(connect(inv.redis_url), inv.run_id)
    beat = Heartbeat(store, inv) if inv.heartbeat_s > 0 and not inv.warmup else None
    if beat is not None:
        got = beat.acquire()  # a duplicate delivery, or a late one, does nothing
        if got != "ok":
            logger.info("worker %s: invocation %s attempt %d %s; nothing to do",
                        inv.worker_id, inv.id, inv.attempt,
                        "already ended" if got == "ended" else "runs elsewhere")
            report.extra["skipped"] = got
            return report
    try:
        report = _execute(inv, invoker, on_task_start, cold, store, report, beat)
    except Exception as exc:  # a fault of this driver: the run fails with it, never waits
        logger.exception("worker %s: invocation %s failed", inv.worker_id, inv.id)
        store.fail(error_record(exc, f"<worker {inv.worker_id}>", inv.worker_id,
                                inv.memory_mb))
        report.failed = True
    finally:
        if beat is not None:
            beat.stop(ended=True)
    return report


def _execute(inv: Invocation, invoker: Invoker,
             on_task_start: Callable[[int], None] | None, cold: bool, store: RunStore,
             report: InvocationReport, beat: Heartbeat | None) -> InvocationReport:
    try:
        spec, spec_use = load_spec(inv, store)  # a slice of other code: SchemaMismatchError
    except Exception as exc:
        store.fail(error_record(exc, "<run spec>", inv.worker_id, inv.memory_mb))
        report.failed = True
        return report
    store.ttl = spec.ttl
    store.stored = spec.stored_refs  # stored inputs are read by reference (filled as
    # slices load)
    recorder = InvocationRecorder(inv, cold, report.start_time) if spec.metrics_url else None
    if not inv.warmup:
        logs = (recorder.capture_logs(spec.task_log_level).install()
                if recorder is not None and spec.task_log_level is not None else None)
        output = TaskOutput(store, inv.worker_id, logs).install()  # prints, warnings
        execution = _Execution(inv, spec, store, invoker, on_task_start, report, recorder,
                               output, beat)
        try:
            execution.run()
        except (_Stopped, streams.StreamCancelled):
            pass
        except BaseException as exc:
            report.failed = True
            execution.error = error_record(exc, f"<worker {inv.worker_id}>", inv.worker_id,
                                           inv.memory_mb)
        finally:
            output.remove()
            if logs is not None:
                logs.remove()
        error = execution.error
    else:
        error = None
    report.end_time = time.time()
    spec_bytes, report.spec_fetch_s = spec_use.of(spec)
    if recorder is not None:
        recorder.flush(connect(spec.metrics_url), recorder.record(
            report.start_time, report.end_time, report.spec_fetch_s, report.failed,
            spec_bytes))
    if error is not None:
        store.fail(error)
    return report


def _run_node(node: Callable[[dict], Any], args: dict) -> Any:
    """Run a task's node; one that runs out of memory while the heap holds freed pages
    (``heap``: a memory cap counts them) gets them back and one more try."""
    try:
        return node(args)
    except MemoryError:
        if not heap.release_free():
            raise
    logger.info("a task ran out of memory: freed heap pages given back, trying again")
    return node(args)


class _Stopped(Exception):
    """The invocation stops early: a task failed (recorded) or the run was cancelled."""


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
    """One invocation while it runs: the core's state plus what it leaves to a driver
    (values, sealed bytes, deadlines, metrics); see ``execute``."""

    def __init__(self, inv: Invocation, spec: SlicedView, store: RunStore, invoker: Invoker,
                 on_task_start: Callable[[int], None] | None, report: InvocationReport,
                 recorder: InvocationRecorder | None = None, output: TaskOutput | None = None,
                 beat: Heartbeat | None = None):
        self.inv, self.spec, self.store, self.invoker = inv, spec, store, invoker
        self.beat = beat  # the lease: running tasks and durations go out with its beats
        self.output = output  # a task's prints and warnings, told with its key
        self.on_task_start = on_task_start
        self.report = report
        self.rec = recorder
        self.tasks = spec.tasks
        self.opt = spec.optimizations
        my = spec.workers[inv.worker_id]
        self.config = my.config
        self.pool: _TaskThreads | None = None
        width = 1
        if my.threads > 1:
            self.pool = _TaskThreads(my.threads, self._call)
            width = len(self.pool.threads)
            if width < my.threads:
                logger.warning("worker %s: started %d of %d task threads", inv.worker_id,
                               width, my.threads)
            if width <= 1:
                self.pool.close()
                self.pool = None
        self.state = core.InvocationState(spec, my,
                                          width, inline_bytes=spec.inline_bytes)
        self.values: dict[int, Any] = {}
        self.blobs: dict[int, Encoded] = {}  # sealed outputs the core still needs
        self.seal_s: dict[int, float] = {}  # seconds spent pickling and sealing each
        self.fetched: dict[int, list[tuple[int, int]]] = {}  # task -> inputs fetched for it
        # running task -> its start (epoch s); the heartbeat reports them
        self.started_at: dict[int, float] = beat.running if beat is not None else {}
        self.hold_until: dict[tuple[int, int], float] = {}  # delayed I/O deadlines
        self.streams: dict[int, tuple[streams.StreamHead, bool]] = {}  # head, we write it
        self.invokes: list[core.Invoke] = []  # collected to send in one batch
        self.open_row: tuple | None = None  # the task whose metrics row is still open
        self.progress: list[int] = []  # finished since the last progress event
        self.started: list[int] = []  # started since the last progress event
        self.progress_lock = threading.Lock()  # the ticker flushes from its own thread
        self.ended = False  # the client was told this invocation is over
        self.error: dict[str, Any] | None = None  # stored for the client after the metrics
        self.next_cancel_check = time.monotonic() + CANCEL_CHECK_S
        self.next_progress = time.monotonic()  # the first task's start is reported at once
        self.logs = recorder.logs if recorder is not None else None

    # -- main loop ---------------------------------------------------------------------
    def run(self) -> None:
        ticker = ProgressTicker(self._flush_progress).start() \
            if self.spec.report_tasks else None  # hook: progress on a clock
        try:
            self._begin()
            while not self.state.done:  # only task threads leave work behind a batch
                self._perform(self.state.handle(self._next_done()))
            if self.spec.report_tasks and not self.ended:
                self._flush_progress(end=True)
        finally:
            if ticker is not None:
                ticker.stop()
            if self.pool is not None:  # a failed run leaves its other tasks running
                self.pool.close()

    def _begin(self) -> None:
        for d, data in self.inv.inputs.items():
            self.values[d] = self.store.decode_output(d, data)
        if self.rec is not None and self.inv.inputs:
            self.rec.arrived_inputs(list(self.inv.inputs),
                                    [len(b) for b in self.inv.inputs.values()], "inline")
        # a retry: its earlier attempt may have stored outputs, which are not run again
        self._perform(self.state.handle(core.Begin(tuple(self.inv.start),
                                                   tuple(self.inv.inputs),
                                                   recheck=self.inv.attempt > 0)))

    def _perform(self, instructions: Iterable[core.Instruction]) -> None:
        """Carry out ``instructions`` in order; a question's answer goes back to the
        core at once and what it says next is done before the rest."""
        todo = list(reversed(list(instructions)))
        while todo:
            inst = todo.pop()
            if isinstance(inst, core.Invoke):
                self.invokes.append(inst)
                continue
            self._send_invokes()
            answer = self._do(inst)
            if answer is not None:
                todo.extend(reversed(self.state.handle(answer)))
        self._send_invokes()
        self._close_row()

    def _do(self, inst: core.Instruction) -> core.Event | None:
        """Perform one instruction; return the event it answers with (if any)."""
        match inst:
            case core.Execute(task, duplicate=False):
                return self._execute(task)
            case core.Execute(task, duplicate=True):
                return self._run_duplicate(task)
            case core.Fetch(ids, task, kind):
                self._fetch(ids, task, kind)
            case core.Store():
                return self._store(inst)
            case core.Claim(entries):
                t0 = time.perf_counter()
                won = self.store.claim(entries, self.inv.id)
                if self.rec is not None:
                    self.rec.claimed(time.perf_counter() - t0)
                return core.Claimed(tuple(won))
            case core.WriteStream(task, final):
                self._write_stream(task, final)
            case core.Flush(tasks):
                self._flush_final(tasks)
            case core.Hold(producer, fanin, seconds):
                self.hold_until[producer, fanin] = time.monotonic() + seconds
            case core.PollHeld():
                return self._poll_held(inst)
            case core.QueryDup(fanin, candidates, missing):
                return self._query_dup(fanin, candidates, missing)
            case core.CheckStored(tasks):
                stored = self.store.outputs_stored(tasks) if tasks else []
                return core.Stored(frozenset(t for t, ok in zip(tasks, stored, strict=True)
                                             if ok))
            case core.Release(ids):
                for v in ids:
                    self.values.pop(v, None)
            case core.DropBlobs(ids):
                for v in ids:
                    self.blobs.pop(v, None)
                    self.seal_s.pop(v, None)
            case _:
                raise TypeError(f"unknown instruction {inst!r}")
        return None

    # -- tasks -------------------------------------------------------------------------
    def _execute(self, tid: int) -> core.Event | None:
        """Start task ``tid``: on this thread (its end is the answer), or on a task
        thread (its end comes through ``_next_done``)."""
        self._close_row()
        now = time.monotonic()
        if self._check_cancelled(now):
            raise _Stopped
        if self.spec.report_tasks:
            with self.progress_lock:
                self.started.append(tid)
            if now >= self.next_progress:
                self.next_progress = now + PROGRESS_S
                self._flush_progress()
        if self.on_task_start is not None:
            self.on_task_start(tid)
        self.started_at[tid] = time.time()
        args = self.spec.arguments(tid, self.values)
        if self.pool is not None:
            self.pool.todo.put((tid, args))
            return None
        return self._task_done(tid, *self._call(tid, args))

    def _call(self, tid: int, args: dict) -> tuple[Any, float, float, BaseException | None]:
        """Run task ``tid``: (value, seconds, CPU seconds of this thread, exception)."""
        if self.logs is not None:
            self.logs.task = tid
        t0, c0 = time.perf_counter(), time.thread_time()
        task = self.tasks[tid]
        try:
            with self.output.task(tid, task.key) if self.output is not None else nullcontext():
                value = _run_node(task.node, args)
        except BaseException as exc:
            return None, 0.0, 0.0, exc
        finally:
            if self.logs is not None:
                self.logs.task = -1
        return value, time.perf_counter() - t0, time.thread_time() - c0, None

    def _next_done(self) -> core.TaskDone:
        """Wait for a task thread to finish a task (checking for cancellation)."""
        assert self.pool is not None, "the core waits for a task but none is running"
        while True:
            try:
                tid, value, exec_s, cpu_s, exc = self.pool.done.get(timeout=CANCEL_CHECK_S)
            except queue.Empty:
                if self._check_cancelled(time.monotonic()):
                    raise _Stopped from None
                continue
            return self._task_done(tid, value, exec_s, cpu_s, exc)

    def _task_done(self, tid: int, value: Any, exec_s: float, cpu_s: float,
                   exc: BaseException | None) -> core.TaskDone:
        """Seal what must be stored, open the task's metrics row; the core's event."""
        task = self.tasks[tid]
        if exc is not None:
            self._fail(exc, task.key)
        self.report.tasks += 1
        if self.spec.report_tasks:
            with self.progress_lock:
                self.progress.append(tid)
        self.values[tid] = value
        memory = sizeof(value)
        stored = self._seal(tid, value) if self.state.view.upload[tid] else 0
        if self.rec is not None:
            self.rec.output(tid, stored or memory)
        self.open_row = (task, self.started_at.pop(tid), exec_s, cpu_s)
        if self.beat is not None:
            self.beat.finished.append((tid, exec_s))
        return core.TaskDone(tid, memory, stored, tuple(self.fetched.pop(tid, ())))

    def _seal(self, tid: int, value: Any) -> int:
        t0 = time.perf_counter()
        try:
            data = self.store.encode_output(tid, value)
        except Exception as exc:
            raise TypeError(f"output of task {self.tasks[tid].key!r} cannot be pickled: "
                            f"{exc}") from exc
        if data.nbytes > self.spec.max_output_bytes:
            raise OutputTooLargeError(
                f"output of task {self.tasks[tid].key!r} is {data.nbytes} bytes, over "
                f"serverless.max-output-bytes={self.spec.max_output_bytes}")
        self.blobs[tid] = data
        self.seal_s[tid] = time.perf_counter() - t0  # sealing is part of the upload's cost
        return data.nbytes

    def _close_row(self, batch: tuple[int, ...] = ()) -> None:
        """Close the metrics row of the last finished task once its outputs are out
        (those batched for the client, e.g. in ``batch``, are added when written)."""
        if self.open_row is not None:
            task, start, exec_s, cpu_s = self.open_row
            self.open_row = None
            if self.rec is not None:
                later = task.id in batch or task.id in self.state.final_batch
                self.rec.task(task, start, exec_s, time.time(), later, cpu_s)

    def _run_duplicate(self, tid: int) -> core.Event:
        """Task-dup: run another worker's cheap task here, now; its failure is its own
        worker's to report."""
        task = self.tasks[tid]
        self.fetched.pop(tid, None)
        try:
            value = task.node(self.spec.arguments(tid, self.values))
            self.values[tid] = value
            stored = self._seal(tid, value)
        except Exception:
            logger.debug("task-dup of %r skipped", task.key, exc_info=True)
            self.values.pop(tid, None)
            return core.TaskFailed(tid)
        self.report.extra["duplicates"] = self.report.extra.get("duplicates", 0) + 1
        return core.TaskDone(tid, sizeof(value), stored)

    # -- inputs ------------------------------------------------------------------------
    def _fetch(self, ids: tuple[int, ...], task: int, kind: str) -> None:
        t0 = time.perf_counter()
        blobs = self.store.get_outputs(ids)
        waited = self._read_streams(ids, blobs) if self.opt.stream else 0.0
        sizes = []
        for d, blob in zip(ids, blobs, strict=True):
            if blob is None:
                raise RunDataLostError(
                    f"worker {self.inv.worker_id}: input {self.tasks[d].key!r} is missing "
                    f"from Redis (run {self.inv.run_id} cancelled, expired or Redis "
                    "restarted)")
            self.values[d] = self.store.decode_output(d, blob)
            sizes.append(len(blob))
        if task not in ids:  # (else: its own value, stored first by another attempt)
            self.fetched.setdefault(task, []).extend(zip(ids, sizes, strict=True))
        seconds = time.perf_counter() - t0 - waited  # a download is only done once unsealed
        if self.rec is not None:
            self.rec.arrived_inputs(ids, sizes, "redis", seconds)

    def _read_streams(self, ids: tuple[int, ...], blobs: list[bytes | None]) -> float:
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

    # -- outputs -----------------------------------------------------------------------
    def _store(self, s: core.Store) -> core.Published:
        """Store an output (or announce a stream of it), register its fan-in edges and
        claim its single-input dependents."""
        data = self.blobs[s.task] if s.write else None
        t0 = time.perf_counter()
        if s.stream_chunk:
            assert data is not None
            head = streams.StreamHead.new(self.inv.id, self.inv.attempt, self.inv.worker_id,
                                          data.nbytes, s.stream_chunk)
            written, sizes = streams.announce(self.store, s.task, head,
                                              [(s.task, e) for e in s.fanins])
            self.streams[s.task] = (head, written)
            won = self.store.claim(s.claims, self.inv.id) if s.claims else []
        else:
            written, sizes, won = self.store.publish(s.task, data, s.final, s.fanins,
                                                     s.claims, self.inv.id)
        if self.rec is not None and data is not None and not s.stream_chunk:
            self.rec.uploaded(data.nbytes, time.perf_counter() - t0 + self.seal_s[s.task])
        return core.Published(tuple(sizes), tuple(won), written)

    def _write_stream(self, tid: int, final: bool) -> None:
        head, writes = self.streams.pop(tid)
        data = self.blobs[tid]
        t0 = time.perf_counter()
        if writes:
            streams.write(self.store, tid, head, data, self.opt.stream[tid], final)
        if self.rec is not None:
            self.rec.uploaded(data.nbytes if writes else 0,
                              time.perf_counter() - t0 + self.seal_s[tid])

    def _send_invokes(self) -> None:
        """Send the collected invocations together (backends issue them concurrently)."""
        if not self.invokes:
            return
        collected, self.invokes = self.invokes, []
        workers = self.spec.workers
        invs = [Invocation(self.inv.run_id, i.worker, workers[i.worker].config.memory_mb,
                           self.inv.redis_url, list(i.start), None,
                           {d: self.blobs[d].tobytes() for d in i.inline}, self.inv.worker_id,
                           time.time(), id=self.inv.child_id(i.start),
                           heartbeat_s=self.inv.heartbeat_s)
                for i in collected]
        leases.register(self.store, invs)  # before sending: queued until they start
        self.report.invoked += len(invs)
        if self.rec is not None:
            self.rec.invoked_ids([i.id for i in invs])
        self.invoker.invoke_many(invs)

    def _flush_final(self, tasks: tuple[int, ...]) -> None:
        self._close_row(tasks)
        if self.state.done and self.spec.report_tasks:  # before the outputs: with them
            self._flush_progress(end=True)  # the client stops waiting
        items = [(t, self.blobs[t]) for t in tasks]
        t0 = time.perf_counter()
        self.store.publish_outputs(items, tasks, [])
        if self.rec is not None:
            self.rec.batch_uploaded([(t, d.nbytes) for t, d in items],
                                    time.perf_counter() - t0
                                    + sum(self.seal_s.get(t, 0.0) for t in tasks))
        self.store.event({"kind": "outputs", "ids": list(tasks)[:EVENT_OUTPUT_IDS]})

    # -- delayed I/O and task-dup ------------------------------------------------------
    def _poll_held(self, poll: core.PollHeld) -> core.HeldStatus:
        self._close_row()
        if poll.wait:
            time.sleep(HOLD_POLL_S)
        if self._check_cancelled(time.monotonic()):
            raise _Stopped
        fanins = list(poll.fanins)
        members = tuple(frozenset(m) for m in self.store.fanin_members(fanins)) \
            if poll.members else None
        sizes = tuple(len(m) for m in members) if members is not None \
            else tuple(self.store.fanin_sizes(fanins))
        now = time.monotonic()
        expired = frozenset(k for k, at in self.hold_until.items() if at <= now)
        for k in expired:
            del self.hold_until[k]
        return core.HeldStatus(sizes, members, expired)

    def _query_dup(self, fanin: int, candidates: tuple[int, ...],
                   missing: tuple[tuple[int, ...], ...]) -> core.DupStatus:
        (members,) = self.store.fanin_members([fanin])
        available = frozenset(b for b, need in zip(candidates, missing, strict=True)
                              if b not in members
                              and (not need or self.store.outputs_exist(need)))
        return core.DupStatus(frozenset(members), available)

    # -- cancellation, progress, failure -----------------------------------------------
    def _check_cancelled(self, now: float) -> bool:
        """The run was cancelled, or this execution should stop: its lease was lost (the
        client sent another attempt) or another execution did the invocation's work (a
        straggler whose backup won)."""
        if now >= self.next_cancel_check:
            self.next_cancel_check = now + CANCEL_CHECK_S
            if (self.beat.stopped or leases.halted(self.store, self.inv.id)
                    if self.beat is not None else self.store.cancelled()):
                self.report.cancelled = True
        return self.report.cancelled

    def _flush_progress(self, end: bool = False) -> None:
        """Tell the client which tasks finished (``ids``) and started since the last
        event; ``end``: this invocation is over (sent even with nothing new). Nothing is
        sent after the end."""
        with self.progress_lock:
            if self.ended or not (self.progress or self.started or end):
                return
            self.ended = end
            ids, started, self.progress, self.started = self.progress, self.started, [], []
            self.store.event({"kind": "tasks", "ids": ids, "started": started,
                              "worker": self.inv.worker_id, "invocation": self.inv.id,
                              "cold": self.report.cold, "end": end})

    def _fail(self, exc: BaseException, key: Any) -> None:
        if isinstance(exc, MemoryError):
            exc.add_note(f"task {key!r} ran out of memory on worker {self.inv.worker_id} "
                         f"with config {self.config} (memory_mb={self.config.memory_mb})")
        self.report.failed = True
        if self.spec.report_tasks:
            self._flush_progress(end=True)
        self.error = error_record(exc, key, self.inv.worker_id, self.config.memory_mb)
        raise _Stopped
