"""The client's watch over a run's invocations, on every backend (``storage.leases``).

At each fallback check of ``Run._wait`` the monitor reads the run's leases and

- re-sends (same id, next attempt; ``serverless.retries``, backoff doubling from
  ``serverless.retry-backoff``) an invocation whose execution stopped renewing its lease
  before the invocation ended, and after the last attempt raises ``WorkerCrashedError``
  naming the tasks that were running, the worker, its memory and the attempts;
- leaves *queued* invocations (registered, never started: throttled, in Lambda's async
  queue, waiting for a local container) alone until ``serverless.start-timeout``
  (``StartTimeoutError``), else until the deadline;
- sends a backup (same id, next attempt) of an execution whose task runs longer than
  ``serverless.speculation.factor`` x the median of the finished tasks of its function
  in this run and ``min-seconds`` (at most ``max-backups`` per run); once one execution
  of an invocation ends, the others are cancelled: the backend kills their containers
  when it can (``cancel_invocation``), else they see the invocation ended and stop;
- raises ``RunDataLostError`` when the run's spec is gone from Redis (expired, flushed).
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable

import redis

from ..dag import DAG
from ..errors import RunDataLostError, StartTimeoutError, WorkerCrashedError
from ..metrics.records import InvocationRecord
from ..plan import Plan
from ..protocol.constants import SPECULATION_MIN_SAMPLES
from ..protocol.wire import Invocation
from ..simulator import Recovery
from ..storage import leases
from ..storage.leases import Execution, Registered
from ..storage.store import RunStore

logger = logging.getLogger(__name__)


class Monitor:
    """See module docstring. ``send``: how invocations go out (the backend's
    ``invoke_many``); ``cancel``: the backend's ``cancel_invocation`` or None."""

    def __init__(self, store: RunStore, dag: DAG, redis_url: str, recovery: Recovery,
                 send: Callable[[list[Invocation]], None],
                 cancel: Callable[[str, str, list[int]], None] | None = None,
                 start_timeout: float | None = None,
                 record: Callable[[InvocationRecord], None] | None = None,
                 plan: Plan | None = None):
        self.store, self.dag, self.redis_url = store, dag, redis_url
        self.plan = plan  # registry entries that do not fit it are ignored (forged)
        self.record = record  # writes a metrics record for an execution killed here
        self.known: dict[str, Registered] = {}  # backed-up invocations as registered
        self.recovery = recovery
        self.send, self.cancel = send, cancel
        self.start_timeout = start_timeout
        self.period = recovery.poll_s  # every fallback check, as the simulator assumes
        self.next_check = 0.0
        self.seen: dict[tuple[str, int], Execution] = {}  # last live lease per execution
        self.top_attempt: dict[str, int] = {}  # highest attempt sent per invocation
        self.retried: dict[str, int] = {}  # re-sends after a death, per invocation
        self.due: list[tuple[float, Invocation]] = []  # re-sends waiting for their backoff
        self.backed_up: set[str] = set()
        self.cancelled: set[tuple[str, int]] = set()
        self.durations: dict[str, list[float]] = {}  # function -> finished task seconds
        self.medians: dict[str, float] = {}
        self.read_durations = 0
        self.retries = 0  # invocations re-sent after their worker died
        self.backups = 0  # straggler backups sent
        self.queued = 0  # invocations queued at the last check

    def check(self, now: float) -> None:
        """One look at the run (``now``: monotonic); raises when the run cannot go on."""
        if now < self.next_check:
            return
        self.next_check = now + self.period
        if not self.store.spec_present():
            raise RunDataLostError(
                f"run {self.store.keys.run_id}: its data is gone from Redis (expired: "
                "serverless.output-ttl, or Redis was flushed or restarted without "
                "persistence)")
        wall = time.time()
        self._send_due(wall)
        snap = leases.snapshot(self.store)
        snap.registered = {i: r for i, r in snap.registered.items() if self._fits(r)}
        live: dict[str, list[Execution]] = {}
        for e in snap.executions:
            if e.alive:
                live.setdefault(e.id, []).append(e)
                self.seen[e.id, e.attempt] = e
            self.top_attempt[e.id] = max(self.top_attempt.get(e.id, 0), e.attempt)
        pending = {inv.id for _, inv in self.due}
        dead = [e for e in snap.executions if not e.alive]
        for e in dead:
            if e.id in snap.ended or e.id in live or e.id in pending:
                continue
            reg = snap.registered.get(e.id)
            if reg is not None:
                self._retry(e, reg, wall)
                pending.add(e.id)
        leases.forget(self.store, dead)
        self._cancel_losers(snap.ended, live)
        started = {e.id for e in snap.executions}
        queued = [r for r in snap.registered.values()
                  if r.id not in started and r.id not in pending and r.id not in snap.ended]
        self.queued = len(queued)
        if self.start_timeout is not None:
            for r in queued:
                if wall - r.invoke_time > self.start_timeout:
                    raise StartTimeoutError(
                        f"worker {r.worker_id} (memory_mb={r.memory_mb}) was invoked "
                        f"{wall - r.invoke_time:.0f} s ago to start "
                        f"{self._names(r.start)} and has not started "
                        f"(serverless.start-timeout={self.start_timeout} s; throttled, or "
                        "the backend's queue is full)")
        r = self.recovery
        if r.speculation and self.backups < r.max_backups:
            self._speculate(snap, live, wall)

    def finish(self, wait: float = 2.0) -> None:
        """The run's outputs are in: cancel executions still running an invocation that
        ended elsewhere (a straggler whose backup won), so they stop being billed. The
        winner may still be writing its records: wait up to ``wait`` s for it to end."""
        if self.cancel is None or not self.backed_up:
            return
        give_up = time.monotonic() + wait
        while True:
            try:
                snap = leases.snapshot(self.store)
            except (redis.RedisError, OSError):
                return
            live: dict[str, list[Execution]] = {}
            for e in snap.executions:
                if e.alive:
                    live.setdefault(e.id, []).append(e)
            self._cancel_losers(snap.ended, live)
            if all(i in snap.ended or i not in live for i in self.backed_up) \
                    or time.monotonic() >= give_up:
                return
            time.sleep(0.05)

    def _fits(self, reg: Registered) -> bool:
        """A registered invocation the plan could have sent: its worker and memory, start
        tasks of that worker (anyone reaching Redis could plant an entry; the client
        sends nothing else)."""
        if self.plan is None:
            return True
        spec = self.plan.workers.get(reg.worker_id)
        n = len(self.plan.assignment)
        ok = (spec is not None and spec.config.memory_mb == reg.memory_mb and reg.start
              and all(0 <= t < n and self.plan.assignment[t] == reg.worker_id
                      for t in reg.start))
        if not ok:
            logger.warning("run %s: ignored a registered invocation %s that does not fit "
                           "the plan", self.store.keys.run_id, reg.id)
        return bool(ok)

    # -- dead executions ---------------------------------------------------------------
    def _retry(self, e: Execution, reg: Registered, wall: float) -> None:
        n = self.retried.get(e.id, 0)
        attempts = max(reg.attempt, e.attempt, self.top_attempt.get(e.id, 0)) + 1
        if n >= self.recovery.retries:
            last = self.seen.get((e.id, e.attempt))
            running = sorted(last.tasks) if last is not None and last.tasks else []
            what = (f"task(s) {self._names(running)}" if running
                    else f"the invocation starting {self._names(reg.start)}")
            raise WorkerCrashedError(
                f"worker {reg.worker_id} (memory_mb={reg.memory_mb}) stopped renewing its "
                f"lease while running {what} (died: killed, out of memory, timed out or "
                f"crashed), after {attempts} attempts (serverless.retries="
                f"{self.recovery.retries}); invocation {e.id}")
        self.retried[e.id] = n + 1
        self.retries += 1
        self.top_attempt[e.id] = attempts
        at = wall + self.recovery.retry_backoff * 2 ** n
        logger.warning("run %s: worker %s stopped renewing its lease (attempt %d of "
                       "invocation %s); sending it again in %.1f s", self.store.keys.run_id,
                       reg.worker_id, e.attempt, e.id, at - wall)
        self.due.append((at, reg.invocation(self.redis_url, self.store.keys.run_id, attempts,
                                            at)))
        self._send_due(wall)

    def _send_due(self, wall: float) -> None:
        ready = [inv for at, inv in self.due if at <= wall]
        if ready:
            self.due = [(at, inv) for at, inv in self.due if at > wall]
            for inv in ready:
                inv.invoke_time = wall
            leases.register(self.store, ready)
            self.send(ready)

    def _names(self, tasks: list[int]) -> str:
        shown = ", ".join(repr(self.dag.tasks[t].key) for t in tasks[:5])
        return shown + (f" and {len(tasks) - 5} more" if len(tasks) > 5 else "")

    # -- stragglers --------------------------------------------------------------------
    def _speculate(self, snap: leases.Snapshot, live: dict[str, list[Execution]],
                   wall: float) -> None:
        new, self.read_durations = leases.durations(self.store, self.read_durations)
        for tid, seconds in new:
            if 0 <= tid < len(self.dag.tasks):
                f = self.dag.tasks[tid].func_name
                self.durations.setdefault(f, []).append(seconds)
                self.medians.pop(f, None)
        r = self.recovery
        for inv_id, execs in live.items():
            if inv_id in self.backed_up or inv_id in snap.ended or len(execs) > 1:
                continue
            reg = snap.registered.get(inv_id)
            if reg is None:
                continue
            seen = execs[0].beat or wall
            for tid, started in execs[0].tasks.items():
                median = self._median(self.dag.tasks[tid].func_name)
                # as of the last beat, both times the worker's: a worker whose heartbeat
                # is held up (GC, a long decode) shows a stale task, not a straggler
                running = seen - started
                if median is None or running <= r.min_s or running <= r.factor * median:
                    continue
                self.backed_up.add(inv_id)
                self.known[inv_id] = reg
                self.backups += 1
                attempt = self.top_attempt.get(inv_id, 0) + 1
                self.top_attempt[inv_id] = attempt
                logger.warning("run %s: task %r on worker %s has run %.1f s (%.1f x the "
                               "median %.2f s of its function): sending a backup",
                               self.store.keys.run_id, self.dag.tasks[tid].key,
                               reg.worker_id, running, running / max(median, 1e-9), median)
                backup = reg.invocation(self.redis_url, self.store.keys.run_id, attempt, wall,
                                        backup=True)
                leases.register(self.store, [backup])
                self.send([backup])
                break
            if self.backups >= r.max_backups:
                return

    def _median(self, func: str) -> float | None:
        if func not in self.medians:
            d = self.durations.get(func, ())
            if len(d) < SPECULATION_MIN_SAMPLES:
                return None
            self.medians[func] = statistics.median(d)
        return self.medians[func]

    def _cancel_losers(self, ended: set[str], live: dict[str, list[Execution]]) -> None:
        """Executions still running an invocation that ended elsewhere are cancelled."""
        for inv_id, execs in live.items():
            if inv_id not in ended:
                continue
            losers = [e for e in execs if (inv_id, e.attempt) not in self.cancelled]
            if losers and self.cancel is not None:
                self.cancelled.update((inv_id, e.attempt) for e in losers)
                self.cancel(self.store.keys.run_id, inv_id, [e.attempt for e in losers])
                self._record_killed(losers)

    def _record_killed(self, losers: list[Execution]) -> None:
        """A killed execution writes no metrics record: write one for it (billed from
        its start to now, no tasks), so the run's cost counts the straggler."""
        reg = self.known.get(losers[0].id)
        if self.record is None or reg is None:
            return
        now = time.time()
        for e in losers:
            start = e.started or reg.invoke_time
            self.record(InvocationRecord(
                self.store.keys.run_id, e.id, e.worker_id or reg.worker_id, reg.invoker,
                reg.memory_mb, reg.invoke_time, start, now, False, 0.0, 0,
                attempt=e.attempt))

