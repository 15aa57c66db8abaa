"""The client side of one run: store the spec, invoke root workers, wait, collect.

Waiting listens on the run's pub/sub channel and, every ``poll_interval``, also checks
the error key and the set of finished outputs, so a lost message cannot hang the caller.
Every wait has a deadline.
"""

from __future__ import annotations

import logging
import math
import pickle
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import redis

from .. import config
from ..backends import Backend
from ..dag import DAG
from ..errors import DeadlineExceededError, RedisUnavailableError, RunDataLostError
from ..layout import Layout, build_layout
from ..metrics.cost import Prices
from ..metrics.plans import plan_record
from ..metrics.records import InvocationRecord, RunRecord
from ..metrics.runs import record_run, workflow_functions
from ..metrics.store import MetricsStore
from ..plan import Plan, ResourceConfig, Warmup
from ..protocol.slices import HEADER, RunHeader, Slicer, pack_inline, root_slice
from ..protocol.wire import Invocation
from ..simulator import Recovery
from ..storage import leases, run_events, streams
from ..storage.slices import SliceWriter, store_slices
from ..storage.store import RunStore, connect, redact
from . import persisted
from .live import LiveFeed
from .monitor import Monitor
from .task_output import TaskOutputFeed

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[list[int]], None]


class Run:
    """Execute ``plan`` for ``dag`` on ``backend`` with intermediates in ``redis_url``."""

    def __init__(self, dag: DAG, plan: Plan, backend: Backend, redis_url: str, *,
                 ttl: int = 3600, inline_bytes: int | None = None, deadline: float = 3600.0,
                 poll_interval: float = 0.5, redis_grace: float = 10.0,
                 max_output_bytes: int = 500 * 2**20,
                 on_progress: ProgressCallback | None = None,
                 metrics_url: str | None = None, metrics_wait: float = 2.0,
                 task_log_level: int | None = None, live: bool = False,
                 echo_output: bool = True, keep: tuple[int, int] | None = None):
        plan.validate(dag)
        self.dag, self.plan, self.backend = dag, plan, backend
        self.redis_url = redis_url
        self.run_id = uuid.uuid4().hex[:16]
        self.layout: Layout = build_layout(dag, plan)
        self.ttl = ttl
        self.inline_bytes = config.get("payload-inline-bytes", inline_bytes)
        self.deadline, self.poll_interval = deadline, poll_interval
        self.redis_grace = redis_grace
        self.max_output_bytes = max_output_bytes
        self.on_progress = on_progress
        self.store = RunStore(connect(redis_url), self.run_id, ttl)
        self.metrics_url, self.metrics_wait = metrics_url, metrics_wait
        self.task_log_level = task_log_level
        # live: forward progress to dashboards (needs metrics; workers then report tasks)
        self.live = LiveFeed(metrics_url, self.run_id, deadline) \
            if live and metrics_url is not None else None
        # what tasks print and warn: echoed here as it arrives, warnings re-emitted at the end
        self.output = TaskOutputFeed(self.store, echo_output)
        self.record: RunRecord | None = None  # what was recorded (when metrics are on)
        self.failure = ""  # why the run failed: recorded with it
        self.roots: list[str] = []  # ids of the invocations the client made
        self.submit_time = 0.0
        self.makespan = 0.0
        self.first_invoke_at = 0.0  # epoch seconds the first root invocations went out
        self.spec_bytes = 0  # bytes of the run spec the client stored
        self.slices: SliceWriter | None = None  # what was stored of it (for cleanup)
        # persist: (embed-max-bytes, persist TTL): large outputs stay in Redis (``kept``)
        self.keep = keep
        self.kept: set[int] = set()
        # final outputs downloaded while the run went on (``_download``), until collected
        self.landed: dict[int, Any] = {}
        self._warmups: list[Warmup] = []
        self.recovery: Recovery | None = None
        self.monitor: Monitor | None = None  # set when the run is submitted
        self._started = 0.0

    def execute(self) -> list[Any]:
        """Run to completion; return output values in ``dag.outputs`` order."""
        pubsub = self.store.r.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(self.store.keys.events)
        ok = False
        try:
            self.submit_time = time.time()
            if self.live is not None:
                self.live.announce(self.dag, self.plan, self.dag.signature(),
                                   self.submit_time)
            self._store_and_start()
            self._wait(pubsub)
            if self.monitor is not None:
                self.monitor.finish()  # cancel executions that lost to another attempt
            values = self._collect() if self.keep is None else \
                persisted.keep_outputs(self, *self.keep)
            self.makespan = time.time() - self.submit_time
            ok = True
            return values
        except BaseException as exc:
            self.failure = self.failure or _first_line(f"{type(exc).__name__}: {exc}")
            raise
        finally:
            self.landed.clear()
            if not ok:
                self._cancel()
                self.makespan = time.time() - self.submit_time
            if self.live is None:
                pubsub.close()
            self.output.poll()  # the last lines, before cleanup deletes them
            self._cleanup()
            if self.metrics_url is not None:
                self._write_record(ok)
            wait_idle = getattr(self.backend, "wait_idle", None)
            if ok and wait_idle is not None:  # the next compute finds its containers warm
                wait_idle(self.run_id, self.metrics_wait)
            if self.live is not None:
                self._forward_late_events(pubsub)
                pubsub.close()
                self.live.finish(ok, self.makespan)
            # last: a warning this process turns into an error raises after all of the above
            self.output.finish(raise_errors=ok)

    def _forward_late_events(self, pubsub) -> None:
        """Pass on to the live feed the progress workers sent after the outputs were in
        (the run record waited for every invocation, so all of it has arrived)."""
        try:
            while (msg := pubsub.get_message(timeout=0)) is not None:
                event = self._event(msg)
                if event is not None and event["kind"] == "tasks":
                    self.live.event(event)  # type: ignore[union-attr]
        except (redis.RedisError, OSError):
            logger.debug("run %s: late progress events lost", self.run_id, exc_info=True)

    def _cancel(self) -> None:
        """Tell running workers to stop (flag in Redis; the backend may kill them too)."""
        try:
            self.store.cancel()
        except redis.RedisError:
            logger.warning("run %s: could not set its cancel flag", self.run_id)
        cancel_run = getattr(self.backend, "cancel_run", None)
        if cancel_run is not None:
            cancel_run(self.run_id)

    # -- steps ------------------------------------------------------------------------
    def _store_and_start(self) -> None:
        """``_submit``, with a Redis outage while the spec is stored a named error (the
        same as one while the run waits), never a raw connection error."""
        try:
            self._submit()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            self._ride_out_outage(exc)  # raises when Redis stays away or lost the run
            raise RunDataLostError(
                f"run {self.run_id}: lost Redis at {redact(self.redis_url)!r} while storing "
                f"the run spec ({exc}); compute again") from exc

    def _submit(self) -> None:
        """Store the run header, then the slices (``storage.slices.store_slices``) in
        pipelined batches, root groups first: each root invocation goes out as soon as
        the batch holding its slice is stored, carrying the header and its slice when
        they are small (``payload-inline-bytes``)."""
        header = RunHeader(self.ttl, self.inline_bytes,
                           self.on_progress is not None or self.live is not None,
                           self.max_output_bytes, self.metrics_url,
                           self.task_log_level if self.metrics_url is not None else None,
                           self.submit_time + self.deadline, self.plan.optimizations.preload)
        root_of = {root_slice(wid): (wid, roots) for wid, roots in
                   self.layout.root_groups.items()}
        self.slices = writer = SliceWriter(self.store)
        header_blob = writer.header(header)

        def invoke(stored: dict[str, bytes]) -> None:
            now = time.time()
            invocations = []
            for name, blob in stored.items():
                if name not in root_of:
                    continue
                wid, roots = root_of[name]
                inline = pack_inline({HEADER: header_blob, name: blob}) \
                    if len(header_blob) + len(blob) < self.inline_bytes else None
                invocations.append(Invocation(
                    self.run_id, wid, self.plan.workers[wid].config.memory_mb, self.redis_url,
                    roots, inline, {}, "client", now))
            if not invocations:
                return
            if not self.roots:
                self.first_invoke_at = now
            self.roots += [inv.id for inv in invocations]
            self._track(invocations)
            self.backend.invoke_many(invocations)

        self._start_monitor()
        store_slices(Slicer(self.dag, self.plan, self.layout, self.run_id), writer, invoke)
        self.spec_bytes = writer.nbytes
        logger.debug("run %s: %d tasks, %d root invocations, spec %d bytes in %d slices",
                     self.run_id, len(self.dag), len(self.roots), writer.nbytes,
                     len(writer.names))
        if self.metrics_url is not None:
            self.dag.signature()  # cached: hashed while the workers run, not after
        self._warmups = sorted(self.plan.optimizations.prewarm, key=lambda w: w.at_s)
        self._started = time.monotonic()

    # -- watching the run's invocations (leases, retries, backups) ------------------------
    def _start_monitor(self) -> None:
        """The monitor watches every invocation of the run from its registration on."""
        self.recovery = Recovery.from_config(direct=self.backend.name == "local")
        self.monitor = Monitor(self.store, self.dag, self.redis_url, self.recovery,
                               self.backend.invoke_many,
                               getattr(self.backend, "cancel_invocation", None),
                               config.get("start-timeout"),
                               self._record_invocation if self.metrics_url else None,
                               self.plan)

    def _record_invocation(self, record: InvocationRecord) -> None:
        """Record an invocation the client killed (a straggler that lost to its backup)."""
        try:
            MetricsStore.from_url(self.metrics_url).write_invocation(record, None)
        except (redis.RedisError, OSError) as exc:
            logger.warning("run %s: could not record a cancelled invocation: %s",
                           self.run_id, exc)

    def _track(self, invocations: list[Invocation]) -> None:
        """Give root invocations their lease interval and register them (queued until
        they start)."""
        assert self.recovery is not None
        for inv in invocations:
            inv.heartbeat_s = self.recovery.heartbeat_s or 0.0
        leases.register(self.store, invocations)

    def _warm_up_due(self) -> float:
        """Send the plan's pre-warm requests that are due; seconds until the next one."""
        elapsed = time.monotonic() - self._started
        while self._warmups and self._warmups[0].at_s <= elapsed:
            w = self._warmups.pop(0)
            try:
                self.backend.warm_up(ResourceConfig(w.memory_mb), w.count)
            except Exception:  # a warm-up is only a hint
                logger.warning("run %s: warm-up of %d x %d MB failed", self.run_id, w.count,
                               w.memory_mb, exc_info=True)
        return self._warmups[0].at_s - elapsed if self._warmups else math.inf

    def _wait(self, pubsub) -> None:
        n_out = len(self.dag.outputs)
        deadline = time.monotonic() + self.deadline
        next_check = 0.0
        while True:
            now = time.monotonic()
            if now >= deadline:
                self._raise_deadline()
            try:
                if now >= next_check:
                    self.output.poll()
                    self._raise_if_failed()
                    if self.store.outputs_done() >= n_out:
                        return
                    if self.monitor is not None:
                        self.monitor.check(now)
                    next_check = now + self.poll_interval
                wait = min(self.poll_interval, deadline - now, self._warm_up_due())
                msg = pubsub.get_message(timeout=max(wait, 0.0))
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                self._ride_out_outage(exc)
                next_check = 0.0
                continue
            event = self._event(msg) if msg is not None else None
            if event is None:
                continue
            kind = event["kind"]
            if kind == "error":
                self._raise_if_failed()
            elif kind == "outputs":
                next_check = 0.0
                self._download(event.get("ids", ()))
            elif kind == "tasks":
                if self.on_progress is not None:
                    self.on_progress(event["ids"])
                if self.live is not None:
                    self.live.event(event)

    def _event(self, msg: dict) -> dict | None:
        """A worker's event (None: not one; forged or malformed ones are logged)."""
        return run_events.decode(msg.get("data"), self.run_id, len(self.dag))

    def _ride_out_outage(self, exc: Exception) -> None:
        """Wait up to ``redis_grace`` for Redis; fail clearly if it lost the run's data."""
        url = redact(self.redis_url)
        logger.warning("run %s: lost Redis at %s (%s); retrying for %.0f s", self.run_id, url,
                       exc, self.redis_grace)
        give_up = time.monotonic() + self.redis_grace
        while True:
            try:
                present = self.store.spec_present()
                break
            except (redis.ConnectionError, redis.TimeoutError) as again:
                if time.monotonic() >= give_up:
                    raise RedisUnavailableError(
                        f"run {self.run_id}: Redis at {url!r} unreachable for "
                        f"{self.redis_grace} s (serverless.redis-grace): {again}") from exc
                time.sleep(0.2)
        if not present:
            raise RunDataLostError(
                f"run {self.run_id}: Redis at {url!r} came back without this run's data "
                "(restarted without persistence?); its intermediates are lost") from exc

    def _raise_deadline(self) -> None:
        done = self.store.done_outputs()
        pending = [t for t in self.dag.outputs if t not in done]
        shown = ", ".join(f"{self.dag.tasks[t].key!r} (worker {self.plan.assignment[t]})"
                          for t in pending[:10])
        more = f" and {len(pending) - 10} more" if len(pending) > 10 else ""
        cut = streams.unfinished(self.store, self.plan.optimizations.stream)
        cut_off = "".join(f"; output {self.dag.tasks[t].key!r} streamed by {head.describe()} "
                          f"stopped at {n} of {head.chunks} chunks (its producer died or "
                          "stalled mid-stream)" for t, head, n in cut[:10])
        queued = self.monitor.queued if self.monitor is not None else 0
        waiting = (f"; {queued} invocation(s) sent but never started (throttled or queued: "
                   "serverless.start-timeout bounds that)" if queued else "")
        raise DeadlineExceededError(
            f"run {self.run_id} did not finish within serverless.deadline={self.deadline} s; "
            f"{len(pending)} of {len(self.dag.outputs)} outputs pending: {shown}{more}{cut_off}"
            f"{waiting}")

    def _raise_if_failed(self) -> None:
        info = self.store.get_error()
        if info is None:
            return
        try:  # the record's seal covers these bytes
            exc = pickle.loads(info["exception"])
        except Exception:  # the exception's class is not importable here
            exc = RuntimeError(info["traceback"])
        self.failure = _first_line(f"task {info['key']} on worker {info['worker']}: "
                                   f"{type(exc).__name__}: {exc}")
        if isinstance(exc, BaseException):
            exc.add_note(f"[dask-serverless] task {info['key']} failed on worker "
                         f"{info['worker']} (memory_mb={info['memory_mb']}); worker "
                         f"traceback:\n{info['traceback']}")
            raise exc
        raise RuntimeError(info["traceback"])

    def _download(self, ids: Iterable[int]) -> None:
        """Fetch and decode the final outputs a worker just stored (its "outputs" event
        names them), while the others are computed: the client's download of a large
        result overlaps the run instead of following it. Persisting runs keep theirs
        in Redis; streamed outputs are read whole at the end (``_collect``)."""
        if self.keep is not None:
            return
        todo = [t for t in dict.fromkeys(ids) if t in self.dag.output_set
                and t not in self.landed and t not in self.plan.optimizations.stream]
        if not todo:
            return
        for tid, blob in zip(todo, self.store.get_outputs(todo), strict=True):
            if blob is not None:  # else: collected (and reported missing) at the end
                self.landed[tid] = self._decode(tid, blob)

    def _collect(self) -> list[Any]:
        """Every output's value, in ``dag.outputs`` order (those ``_download`` fetched
        are handed over, not kept)."""
        todo = [t for t in self.dag.outputs if t not in self.landed]
        for tid, blob in zip(todo, self.store.get_outputs(todo), strict=True):
            if blob is None and tid in self.plan.optimizations.stream:  # marked done: complete
                blob, _ = streams.read(self.store, tid, f"output {self.dag.tasks[tid].key!r}",
                                       self.submit_time + self.deadline)
            if blob is None:
                raise RuntimeError(f"output {self.dag.tasks[tid].key!r} of run {self.run_id} "
                                   "is missing from Redis")
            self.landed[tid] = self._decode(tid, blob)
        values = [self.landed[t] for t in self.dag.outputs]
        self.landed.clear()  # the caller holds them now; ``last_run`` must not
        return values

    def _decode(self, tid: int, blob: Any) -> Any:
        return self.store.decode_output(tid, blob, f"output {self.dag.tasks[tid].key!r}")

    def _cleanup(self) -> None:
        layout = self.layout
        try:
            if self.slices is not None:
                self.slices.cleanup()
            self.store.cleanup([t for t in range(len(self.dag))
                                if layout.upload[t] and t not in self.kept],
                               [t for t in range(len(self.dag)) if layout.is_entry[t]],
                               self.plan.optimizations.stream)
        except Exception:  # never hide the run's own outcome
            logger.warning("run %s: could not delete its Redis keys", self.run_id,
                           exc_info=True)

    def _write_record(self, ok: bool) -> None:
        """Store the run record once the workers' last records arrived (they write them
        right after their outputs: milliseconds); a failed run waits less for workers
        that may be gone. Synchronous on purpose: when ``compute`` returns, the record is
        readable and the workers are idle again (warm for the next run)."""
        run = RunRecord(self.run_id, self.dag.signature(), self.plan.planner,
                        dict(self.plan.options), self.backend.name, len(self.dag),
                        len(self.plan.workers), self.submit_time, self.makespan,
                        "ok" if ok else "failed", functions=workflow_functions(self.dag),
                        error=self.failure)
        if self.monitor is not None:
            run.retries, run.backups = self.monitor.retries, self.monitor.backups
        wait = self.metrics_wait if ok else min(self.metrics_wait, 0.2)
        try:
            plan = plan_record(self.dag, self.plan, capacity=self.backend.capacity())
        except (TypeError, ValueError) as exc:  # e.g. planner options that are not JSON
            logger.warning("run %s: its plan is not recorded: %s", self.run_id, exc)
            plan = None
        try:
            self.record = record_run(MetricsStore.from_url(self.metrics_url), run,
                                     self.roots, wait, Prices.from_config(), plan)
        except (redis.RedisError, OSError) as exc:
            logger.warning("run %s: could not record its metrics: %s", self.run_id, exc)


def _first_line(text: str, limit: int = 300) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= limit else line[:limit - 3] + "..."
