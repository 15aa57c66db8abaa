"""Discrete-event prediction of a plan's execution: timeline, makespan, cost.

Every invocation runs the same decision core as a real worker (``protocol.core``): the
core decides which tasks run, what is fetched, stored, held, inlined, claimed and
invoked; this module only says how long each of those steps takes under the cost
model, and plays the part of Redis (fan-in sets, claims, when each output is stored).
Root groups are invoked by the client; containers start cold or warm (keep-alive,
pre-warm); a worker with ``threads`` > 1 runs that many ready tasks at once, their CPU
parts sharing the config's vCPUs (or the machine's cores, below). A streamed output is
announced (one round trip: its consumers fire), then uploaded; a read of it from ``t``
ends at ``max(upload end, t + download time)`` plus one chunk's download. A held output
(delayed I/O) waits until its fan-in's other inputs are in (the last one wakes it, as
a poll would see it) or its bound passes; with pre-load it is woken by every input and
downloads each as a poll finds it.

Each invocation is a generator that runs ahead on its own clock and yields only before a
step that reads or changes shared state (fan-in sets, claims, published outputs), so the
event heap holds O(invocations + cross-worker fan-in edges) events:
O((V + E) log V) overall.

The backend's ``Capacity`` (from the cost model, or the ``capacity`` argument) adds what
a machine of shared cores does: when ``cores`` is finite, each task's CPU part (its time
times the cost model's ``cpu_share``) and each cold start wait for a free core, first
come first served (a multi-server queue standing in for time-sharing: k equal tasks on
c cores take ceil(k / c) task times); the rest of a task (sleeps, I/O) runs without one.
Invocations then yield before every task, one more event per task. Whole transfers
(pickling, sealing and Redis copying the bytes) take a core too, on per-core calendars
(first fit, so invocations running ahead of the clock book consistently). With a container
cap, invocations beyond it queue until a container finishes, which takes the queued work
of its own config warm (else makes room for another config), as the local pool does.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import math
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

from . import config
from .capacity import Capacity
from .containers import ContainerPolicy, Placement, Slot
from .costmodel import CostModel
from .dag import DAG
from .estimates import Estimates
from .layout import Layout, build_layout
from .plan import Plan, ResourceConfig, WorkerSpec
from .protocol import core
from .protocol.constants import CANCEL_CHECK_S, HOLD_POLL_S, LEASE_BEATS
from .protocol.slices import SliceSizes
from .protocol.view import RunView

WARMUP_BILLED_S = 0.001  # a warm-up invocation returns at once
_MIN_BOOKED_S = 1e-3  # shorter transfers are all latency: they do not queue for a core
_INF = math.inf
_ARRIVE, _RESUME, _FINISHED, _READY, _WARMUP = 0, 1, 2, 3, 4
_MAY_WAIT = {core.Store, core.QueryDup, core.PollHeld, core.Execute,  # may sync on the heap
             core.CheckStored}


@dataclass(frozen=True)
class Faults:
    """What goes wrong in a predicted run (a what-if; planners predict without faults):
    ``slow``: task -> seconds its first attempt takes (a straggler: slow host, slow
    start); ``crash``: task -> seconds into its first attempt its invocation dies."""

    slow: dict[int, float] = field(default_factory=dict)
    crash: dict[int, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Recovery:
    """How the client notices and repairs what goes wrong (``serverless.*`` keys):
    ``direct``: the backend sees a container die (the local pool) instead of a lease
    expiring (``heartbeat_s`` x ``lease_beats`` after its last renewal, noticed at
    the client's next ``poll_s`` check); a dead invocation is re-sent after
    ``retry_backoff`` (doubling) at most ``retries`` times. ``speculation``: a task
    running longer than ``factor`` x the time of its function's tasks and ``min_s`` gets
    a backup invocation (the client checks each ``poll_s``; at most ``max_backups``); the
    first to finish wins and the other is cancelled (billed until then)."""

    direct: bool = False
    heartbeat_s: float | None = 5.0
    lease_beats: int = LEASE_BEATS
    poll_s: float = 0.5
    retries: int = 2
    retry_backoff: float = 0.2
    speculation: bool = True
    factor: float = 3.0
    min_s: float = 10.0
    max_backups: int = 8

    @classmethod
    def from_config(cls, direct: bool = False) -> Recovery:
        """The ``serverless.*`` settings the client runs with (``direct``: the backend
        sees its containers die, as the local pool does)."""
        return cls(direct=direct, heartbeat_s=config.get("heartbeat-interval"),
                   poll_s=config.get("poll-interval"), retries=config.get("retries"),
                   retry_backoff=config.get("retry-backoff"),
                   speculation=config.get("speculation.enabled"),
                   factor=config.get("speculation.factor"),
                   min_s=config.get("speculation.min-seconds"),
                   max_backups=config.get("speculation.max-backups"))


@dataclass(slots=True)
class _Arrival:
    """An invocation on its way: who runs it, what it starts with, and its identity
    across retries and backups (``lineage``: claims and child invocations are its)."""

    worker: str
    starts: list[int]
    inline: frozenset
    trigger: int
    invoked_at: float
    lineage: str
    attempt: int = 0
    backup: bool = False


class SimulationError(RuntimeError):
    """The plan cannot finish (an output is never produced)."""


@dataclass(slots=True)
class PredictedInvocation:
    """One predicted invocation: a container running some of a worker's tasks (field
    names as in ``metrics.records.InvocationRecord``)."""

    worker_id: str
    memory_mb: int
    invoke_time: float
    start_time: float
    end_time: float
    cold: bool
    start_tasks: list[int]
    invoked_by: int  # the task whose completion invoked it; -1: the client
    attempt: int = 0  # a retry of an invocation that died: 1, 2...
    backup: bool = False  # a straggler's backup
    outcome: str = "ok"  # "ok" | "crashed" | "cancelled" (lost to its backup or original)
    tasks: list[int] = field(default_factory=list)  # the tasks it ran, in order
    duplicates: list[int] = field(default_factory=list)  # other workers' tasks it ran too


@dataclass(slots=True)
class InputTransfer:
    """A task input that did not come from the same invocation's memory."""

    task: int
    dep: int
    source: str  # "redis" | "inline" | "preload" | "stream"
    nbytes: int
    invocation: int = -1  # into which (``SimResult.invocations`` index)

    @property
    def kind(self) -> str:
        """Where it came from as a run records it: "inline" or "redis"."""
        return "inline" if self.source == "inline" else "redis"


@dataclass
class SimResult:
    """The predicted timeline of one plan and its totals."""

    makespan: float
    cost: float
    gb_seconds: float
    requests: int
    invocations: list[PredictedInvocation]
    task_start: list[float]
    task_end: list[float]
    task_invocation: list[int]
    transfers: list[InputTransfer]
    bytes_uploaded: int
    bytes_downloaded: int
    duplicates: int
    critical_path: list[int]
    workers: int = 0
    warmups: int = 0
    retries: int = 0  # invocations re-sent after they died
    backups: int = 0  # straggler backups started
    failed: bool = False  # an invocation died more often than retries allow
    cold_starts: int = field(init=False)
    warm_starts: int = field(init=False)

    def __post_init__(self) -> None:
        self.cold_starts = sum(r.cold for r in self.invocations)
        self.warm_starts = len(self.invocations) - self.cold_starts

    @property
    def bytes_moved(self) -> int:
        return self.bytes_uploaded + self.bytes_downloaded

    def summary(self) -> dict[str, Any]:
        return {"makespan_s": self.makespan, "cost_usd": self.cost,
                "gb_seconds": self.gb_seconds, "requests": self.requests,
                "invocations": len(self.invocations), "workers": self.workers,
                "cold_starts": self.cold_starts, "warm_starts": self.warm_starts,
                "bytes_moved": self.bytes_moved, "duplicates": self.duplicates,
                "retries": self.retries, "backups": self.backups, "failed": self.failed}


class _Calendar:
    """Busy intervals of one server (a core moving data): a transfer takes the first gap
    at or after its start long enough for it. Requests may come out of time order
    (invocations run ahead on their own clocks), which a first-fit calendar handles
    consistently."""

    __slots__ = ("ends", "starts")

    def __init__(self) -> None:
        self.starts: list[float] = []
        self.ends: list[float] = []

    def earliest(self, t: float, seconds: float) -> tuple[float, int]:
        """Start of the first gap at or after ``t`` that holds ``seconds``, and the index
        of the interval after it."""
        starts, ends = self.starts, self.ends
        i = bisect.bisect_right(ends, t)  # intervals ending after t
        while i < len(starts) and starts[i] < t + seconds:
            t = max(t, ends[i])
            i += 1
        return t, i

    def book(self, t: float, seconds: float) -> float:
        """Reserve ``seconds`` from the first gap at or after ``t``; returns its start."""
        return self.reserve(*self.earliest(t, seconds), seconds)

    def reserve(self, t: float, i: int, seconds: float) -> float:
        """Take ``seconds`` from ``t``, a gap found by ``earliest`` (``i`` with it)."""
        starts, ends = self.starts, self.ends
        if i > 0 and ends[i - 1] == t:  # adjacent to the previous one: extend it
            ends[i - 1] = t + seconds
            if i < len(starts) and starts[i] == ends[i - 1]:
                ends[i - 1] = ends.pop(i)
                starts.pop(i)
        elif i < len(starts) and starts[i] == t + seconds:
            starts[i] = t
        else:
            starts.insert(i, t)
            ends.insert(i, t + seconds)
        return t


class _Proc:
    """A running invocation (simulated): its decision core and its own clock."""

    __slots__ = ("arrival", "clock", "cores", "cpu_times", "dies_at", "exec_times", "fetched",
                 "gen", "hold_until", "idx", "over", "rec", "running", "slot", "spec",
                 "started", "state", "token")

    def __init__(self, idx: int, spec: WorkerSpec, state: core.InvocationState,
                 rec: PredictedInvocation, est: Estimates, slot: Slot, arrival: _Arrival):
        self.idx, self.spec, self.state, self.rec, self.slot = idx, spec, state, rec, slot
        self.arrival = arrival
        self.dies_at = _INF  # a crash fault: when its container dies
        self.over = False  # ended, crashed or cancelled in event time
        self.started: dict[int, float] = {}  # task -> when it started here
        self.exec_times = est.exec_times(spec.config)
        self.cpu_times: list[float] | None = None  # when shared cores or its threads need it
        self.clock = rec.start_time
        self.running: list[tuple[float, int]] = []  # (end, task) of tasks on its threads
        self.fetched: dict[int, list[tuple[int, int]]] = {}  # task -> inputs fetched for it
        self.hold_until: dict[tuple[int, int], float] = {}  # delayed I/O deadlines
        self.token = 0
        self.gen: Generator[float, None, None] | None = None
        self.cores: list[float] = []  # its own vCPUs when its threads share them


class Simulator:
    """Predicts plans of one DAG; keep one per DAG to reuse its estimates."""

    def __init__(self, dag: DAG, cost: CostModel | Estimates, *,
                 inline_bytes: int | None = None, keep_alive: float | None = None,
                 warm: dict[int, int] | None = None, capacity: Capacity | None = None,
                 recovery: Recovery | None = None):
        self.dag = dag
        self.recovery = recovery or Recovery()
        self.est = cost if isinstance(cost, Estimates) else Estimates(dag, cost)
        self.capacity = capacity or self.est.capacity
        # what the runtime will use (``serverless.payload-inline-bytes``, the local pool's
        # keep-alive) unless a caller models something else
        self.inline_bytes = config.get("payload-inline-bytes", inline_bytes)
        self.keep_alive = config.get("local.keep-alive", keep_alive)
        self.warm = dict(warm or {})
        self.simulated_tasks = 0  # work done so far: planners budget their search by it
        self.task_bytes: dict[str, float] = {}  # per function, for every plan's SliceSizes

    def run(self, plan: Plan, layout: Layout | None = None,
            faults: Faults | None = None) -> SimResult:
        """Predict ``plan``'s run; ``faults``: what goes wrong (see ``Faults``)."""
        self.simulated_tasks += len(self.dag)
        return _Run(self, plan, layout or build_layout(self.dag, plan), faults).result()


def simulate(dag: DAG, plan: Plan, cost: CostModel | Estimates, **kwargs: Any) -> SimResult:
    """Predict ``plan``'s execution of ``dag`` under ``cost``; see ``Simulator``."""
    return Simulator(dag, cost, **kwargs).run(plan)


class _Run:
    """State of one simulation."""

    def __init__(self, sim: Simulator, plan: Plan, layout: Layout, faults: Faults | None):
        dag = sim.dag
        self.faults, self.recovery = faults or Faults(), sim.recovery
        n = len(dag)
        self.sim, self.plan, self.layout, self.est = sim, plan, layout, sim.est
        self.view = RunView.of(dag, plan, layout)
        self.slice_sizes: SliceSizes | None = None  # made at the first invocation
        self.deps = self.view.deps
        self.out_bytes = self.est.out_bytes
        self.rtt = self.est.upload(0)
        # on a machine of shared cores, whole transfers (pickling, sealing, Redis copying
        # the bytes) share those cores too: one calendar per core, first fit on any (on
        # Lambda each function's network is the limit)
        cap = sim.capacity
        self.lanes = [_Calendar() for _ in range(max(1, int(cap.cores)))] \
            if cap.shared else []
        self.opt = plan.optimizations
        # the simulated Redis: when each output is stored, streams, fan-in sets, claims
        self.stored_at = [_INF] * n
        self.streams: dict[int, tuple[float, float, int]] = {}  # announced, written, chunk
        self.fanin_size = [0] * n
        self.fanin_members: dict[int, set[int]] = {e: set() for e in self._with_members()}
        self.claimed: dict[int, str] = {}  # entry -> the lineage that claimed it
        self.sent: set[str] = set()  # child invocations sent (a second send is dropped)
        self.live: dict[str, list[_Proc]] = {}  # lineage -> its invocations not over
        self.retries = self.backups = 0
        self.failed_at = _INF
        self.waiters: dict[int, list[_Proc]] = {}  # held fan-in -> invocations waiting on it
        self.task_start = [-1.0] * n
        self.task_end = [-1.0] * n
        self.task_invocation = [-1] * n
        self.transfers: list[InputTransfer] = []
        self.read_early: set[int] = set()  # outputs fetched before anything stored them
        self.bytes_uploaded = self.bytes_downloaded = self.duplicates = 0
        self.records: list[PredictedInvocation] = []
        self.containers: ContainerPolicy = ContainerPolicy(cap.containers, sim.keep_alive)
        for mb, count in sim.warm.items():  # idle containers of earlier runs
            for _ in range(count):
                slot = self.containers.start_idle(mb)
                if slot is not None:
                    self.containers.ready(slot, 0.0)
        self.heap: list[tuple[float, int, int, Any, int]] = []
        self.seq = 0
        self.now = 0.0
        self.warmups = 0
        self.cores: list[float] | None = [0.0] * max(1, int(cap.cores)) if cap.shared else None

    def _with_members(self) -> set[int]:
        """Fan-ins whose members (not only their count) someone reads: task-dup's, and
        with pre-load those held outputs wait for."""
        tracked = set(self.opt.duplicate)
        if self.opt.preload:
            tracked.update(e for t in self.opt.delay for e in self.view.entry_dependents[t])
        return tracked

    # -- event loop ----------------------------------------------------------------------
    def _push(self, t: float, kind: int, obj: Any, token: int = 0) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (t, self.seq, kind, obj, token))

    def result(self) -> SimResult:
        for w in self.opt.prewarm:
            self._push(w.at_s, _WARMUP, w)
        for wid, roots in self.layout.root_groups.items():
            self._push(0.0, _ARRIVE, _Arrival(wid, roots, frozenset(), -1, 0.0, f"r:{wid}"))
        heap = self.heap
        while heap:
            t, _, kind, obj, token = heapq.heappop(heap)
            self.now = t
            if kind == _RESUME:
                if token == obj.token:
                    self._step(obj)
            elif kind == _ARRIVE:
                self._arrive(obj)
            elif kind == _FINISHED:
                self._finished(obj)
            elif kind == _READY:
                self._run_on(self.containers.ready(obj, t))
            else:
                self._warmup(obj)
        never = sorted(d for d in self.read_early if self.stored_at[d] == _INF)
        if never:  # a worker would fail with RunDataLostError: the protocol is wrong
            raise core.InvalidEvent(f"outputs {never} were fetched but never stored")
        return self._totals()

    def _step(self, p: _Proc) -> None:
        p.token += 1
        try:
            when = next(p.gen)  # type: ignore[arg-type]
        except StopIteration:
            return
        self._push(when, _RESUME, p, p.token)

    def _on_core(self, t: float, seconds: float, own: list[float] | None = None) -> float:
        """Run ``seconds`` of CPU from ``t`` (the current event time) on the first free
        shared core (else on the first free of ``own``, an invocation's vCPUs); returns
        when it ends."""
        cores = self.cores if self.cores is not None else own
        if not cores or seconds <= 0:
            return t + seconds
        begin = max(t, heapq.heappop(cores))
        heapq.heappush(cores, begin + seconds)
        return begin + seconds

    # -- containers ------------------------------------------------------------------------
    def _warmup(self, w: Any) -> None:
        cold = self.est.invocation_time(ResourceConfig(w.memory_mb), "cold")
        for _ in range(w.count):
            self.warmups += 1
            slot = self.containers.start_idle(w.memory_mb)
            if slot is not None:
                self._push(self._on_core(self.now, cold), _READY, slot)

    def _arrive(self, arrival: _Arrival) -> None:
        mb = self.plan.workers[arrival.worker].config.memory_mb
        self._run_on(self.containers.place(mb, arrival, self.now))

    def _run_on(self, placement: Placement | None) -> None:
        """Start the placed work on its container (nothing when it queued)."""
        if placement is None or placement.slot is None:
            return
        arrival: _Arrival = placement.work
        wid, starts = arrival.worker, arrival.starts
        spec = self.plan.workers[wid]
        if placement.cold:
            begin = self._on_core(self.now, self.est.invocation_time(spec.config, "cold"))
        else:
            begin = self.now + self.est.invocation_time(spec.config, "warm")
        rec = PredictedInvocation(wid, spec.config.memory_mb, arrival.invoked_at, begin, begin,
                                  placement.cold, starts, arrival.trigger, arrival.attempt,
                                  arrival.backup)
        state = core.InvocationState(self.view, spec, spec.threads,
                                     inline_bytes=self.sim.inline_bytes)
        p = _Proc(len(self.records), spec, state, rec, self.est, placement.slot, arrival)
        self.live.setdefault(arrival.lineage, []).append(p)
        if self.cores is None and spec.threads > 1:  # its threads share the config's vCPUs
            p.cores = [0.0] * max(1, math.ceil(spec.config.vcpus - 1e-9))
        if self.cores is not None or p.cores:
            p.cpu_times = self.est.cpu_times(spec.config)
        self.records.append(rec)
        p.gen = self._invocation(p, starts, arrival.inline)
        p.clock = begin + self._spec_load(starts)  # its first task waits for its spec
        self._push(p.clock, _RESUME, p, p.token)

    def _spec_load(self, starts: tuple[int, ...] | list[int]) -> float:
        """Seconds an invocation loads its run spec: the slices of its start tasks'
        groups (``SliceSizes``; a root invocation's tasks are one group), as the runtime
        fetches and decodes them before its first task."""
        if not starts:
            return 0.0
        if self.slice_sizes is None:
            self.slice_sizes = SliceSizes(self.sim.dag, self.plan, self.layout,
                                          self.sim.task_bytes)
        group = self.layout.group
        return self.est.spec_load(sum(self.slice_sizes.of_group(g)
                                      for g in {group[t] for t in starts}))

    def _finished(self, p: _Proc) -> None:
        """An invocation ended (in event time): its backup or original, if still running,
        is cancelled (billed until the cancel is seen), and its container is free."""
        if p.over:
            return
        p.over = True
        for q in self.live.pop(p.arrival.lineage, []):
            if q is not p and not q.over:
                self._cancel(q)
        self._run_on(self.containers.finished(p.slot, self.now))

    def _cancel(self, q: _Proc) -> None:
        q.over = True
        q.token += 1  # what it would still do never happens
        q.rec.outcome = "cancelled"
        if self.recovery.direct:  # the local pool kills the container
            q.rec.end_time = self.now
            self._run_on(self.containers.died(q.slot, self.now))
        else:  # Lambda: the function notices the cancel flag and returns
            q.rec.end_time = self.now + CANCEL_CHECK_S
            self._run_on(self.containers.finished(q.slot, q.rec.end_time))

    def _crashed(self, p: _Proc) -> None:
        """``p``'s container died: noticed directly or when its lease expires, then the
        invocation is sent again (a retry checks which outputs are stored)."""
        p.over = True
        p.rec.end_time, p.rec.outcome = self.now, "crashed"
        alive = self.live.get(p.arrival.lineage, [])
        if p in alive:
            alive.remove(p)
        self._run_on(self.containers.died(p.slot, self.now))
        r, a = self.recovery, p.arrival
        noticed = self._noticed(p)
        if a.attempt >= r.retries or noticed == _INF:
            self.failed_at = min(self.failed_at, noticed)
            return
        self.retries += 1
        at = noticed + r.retry_backoff * 2**a.attempt
        self._push(at, _ARRIVE, _Arrival(a.worker, a.starts, a.inline, a.trigger, at,
                                         a.lineage, a.attempt + 1, a.backup))

    def _noticed(self, p: _Proc) -> float:
        """When the client (or the pool) learns that ``p`` died (now)."""
        r = self.recovery
        if r.direct:
            return self.now
        if r.heartbeat_s is None:
            return _INF  # nobody tells: the deadline ends the run
        renewed = p.rec.start_time + math.floor(
            (self.now - p.rec.start_time) / r.heartbeat_s) * r.heartbeat_s
        return self._next_check(renewed + r.lease_beats * r.heartbeat_s)

    def _next_check(self, t: float) -> float:
        """The client's first fallback check at or after ``t``."""
        poll = self.recovery.poll_s
        return math.ceil(t / poll - 1e-9) * poll

    # -- one invocation: the core's instructions, timed --------------------------------------
    def _invocation(self, p: _Proc, starts: list[int],
                    inline: frozenset) -> Generator[float, None, None]:
        out = self.out_bytes
        for d in sorted(inline):
            self.transfers.append(InputTransfer(starts[0], d, "inline", out[d], p.idx))
        again = p.arrival.attempt > 0 or p.arrival.backup  # earlier work may be stored
        todo = list(reversed(p.state.handle(core.Begin(tuple(starts), tuple(sorted(inline)),
                                                       recheck=again))))
        held = set(inline)  # the values a worker would hold: the core's own is checked
        while True:
            while todo:
                inst = todo.pop()
                kind = type(inst)
                if kind is core.Release:
                    held.difference_update(inst.ids)
                    continue
                if kind is core.Fetch:
                    held.update(inst.ids)
                elif kind is core.Execute:
                    self._check_held(p, inst.task, held)
                if kind is core.Execute and self.cores is None:
                    answer = self._execute(p, inst)
                elif kind in _MAY_WAIT:
                    answer = yield from self._timed_step(p, inst)
                else:
                    answer = self._step_now(p, inst)
                if answer is not None:
                    todo.extend(reversed(p.state.handle(answer)))
            if p.state.done:
                break
            end, tid = heapq.heappop(p.running)  # the core waits for a task thread
            if end >= p.dies_at:
                yield p.dies_at
                self._crashed(p)
                return
            p.clock = max(p.clock, end)
            todo.extend(reversed(p.state.handle(self._task_done(p, tid, end))))
        p.rec.end_time = p.clock
        self._push(p.clock, _FINISHED, p)

    def _check_held(self, p: _Proc, tid: int, held: set[int]) -> None:
        """A task starts with every value it reads held (what a worker's executor needs to
        build its arguments); then its own value will be."""
        missing = [d for d in p.state.reads[tid] if d not in held]
        if missing:
            raise core.InvalidEvent(f"worker {p.arrival.worker}: task {tid} starts without "
                                    f"its inputs {missing} (released or never fetched)")
        held.add(tid)

    def _step_now(self, p: _Proc, inst: core.Instruction) -> core.Event | None:
        """An instruction that needs no look at shared state in event order."""
        if isinstance(inst, core.Fetch):
            if inst.kind == "preload":
                self._preload(p, inst.task, inst.ids)
            else:
                p.clock = self._fetch(p, inst.task, inst.ids, p.clock)
        elif isinstance(inst, core.Claim):
            p.clock += self.rtt
            return core.Claimed(tuple(self._claim(e, p.arrival.lineage)
                                      for e in inst.entries))
        elif isinstance(inst, core.Invoke):
            child = f"{p.arrival.lineage}>{','.join(map(str, sorted(inst.start)))}"
            if child not in self.sent:  # a retry's or backup's second send is dropped
                self.sent.add(child)
                self._push(p.clock, _ARRIVE, _Arrival(
                    inst.worker, list(inst.start), frozenset(inst.inline),
                    self._last_input(inst.start[0]), p.clock, child))
        elif isinstance(inst, core.WriteStream):
            t = inst.task
            announced, p.clock = p.clock, self._move(p.clock, self.out_bytes[t], "upload")
            self.bytes_uploaded += self.out_bytes[t]
            self.streams[t] = (announced, p.clock, self.opt.stream[t])
            self.stored_at[t] = min(self.stored_at[t], p.clock)
        elif isinstance(inst, core.Flush):
            nbytes = sum(self.out_bytes[x] for x in inst.tasks)
            p.clock = self._move(p.clock, nbytes, "upload")
            self.bytes_uploaded += nbytes
            for x in inst.tasks:
                self.stored_at[x] = min(self.stored_at[x], p.clock)
        elif isinstance(inst, core.Hold):
            p.hold_until[inst.producer, inst.fanin] = p.clock + inst.seconds
        return None  # Release, DropBlobs: memory is not modelled

    def _timed_step(self, p: _Proc, inst: core.Instruction) -> Generator[float, None, Any]:
        """An instruction that may have to wait for the event loop to reach its time."""
        if isinstance(inst, core.Execute):
            return (yield from self._execute_on_shared_cores(p, inst))
        if isinstance(inst, core.Store):
            return (yield from self._store(p, inst))
        if isinstance(inst, core.CheckStored):
            p.clock += self.rtt
            yield p.clock
            return core.Stored(frozenset(t for t in inst.tasks if self.stored_at[t] <= p.clock))
        if isinstance(inst, core.QueryDup):
            p.clock += self.rtt  # read the fan-in set and whether the inputs exist
            yield p.clock
            members = self.fanin_members[inst.fanin]
            available = frozenset(
                b for b, need in zip(inst.candidates, inst.missing, strict=True)
                if all(self.stored_at[d] <= p.clock for d in need))
            return core.DupStatus(frozenset(members), available)
        assert isinstance(inst, core.PollHeld)
        return (yield from self._poll_held(p, inst))

    def _execute(self, p: _Proc, inst: core.Execute) -> core.Event | None:
        """Start a task (its own vCPUs at most: no shared cores to queue for)."""
        tid, t = inst.task, p.clock
        self._task_started(p, inst)
        if p.cores:
            cpu = p.cpu_times[tid]  # type: ignore[index]
            end = self._on_core(t, cpu, p.cores) + p.exec_times[tid] - cpu
        else:
            end = t + p.exec_times[tid]
        return self._task_running(p, inst, self._faulty_end(p, tid, t, end))

    def _execute_on_shared_cores(self, p: _Proc,
                                 inst: core.Execute) -> Generator[float, None, Any]:
        tid, t = inst.task, p.clock
        self._task_started(p, inst)
        cpu = p.cpu_times[tid]  # type: ignore[index]
        yield t  # wait for a core in event order
        end = self._on_core(t, cpu) + p.exec_times[tid] - cpu
        return self._task_running(p, inst, self._faulty_end(p, tid, t, end))

    def _faulty_end(self, p: _Proc, tid: int, start: float, end: float) -> float:
        """When task ``tid`` started at ``start`` really ends (a first attempt may be
        slow, or die); a straggler gets a backup when speculation sees it in time."""
        a, f, r = p.arrival, self.faults, self.recovery
        if a.attempt or a.backup:
            return end
        if tid in f.crash:
            p.dies_at = start + f.crash[tid]
            return p.dies_at
        if tid in f.slow:
            normal_s, end = end - start, start + f.slow[tid]
            waited = max(r.factor * normal_s, r.min_s)
            if r.speculation and self.backups < r.max_backups and end - start > waited:
                self.backups += 1
                at = self._next_check(start + waited)
                self._push(at, _ARRIVE, _Arrival(a.worker, a.starts, a.inline, a.trigger,
                                                 at, a.lineage, 0, True))
        return end

    def _task_started(self, p: _Proc, inst: core.Execute) -> None:
        p.started[inst.task] = p.clock
        (p.rec.duplicates if inst.duplicate else p.rec.tasks).append(inst.task)

    def _task_running(self, p: _Proc, inst: core.Execute, end: float) -> core.Event | None:
        if inst.duplicate:  # runs now, on the invocation's own thread
            p.clock = end
            self.duplicates += 1
            return self._task_done(p, inst.task, end)
        heapq.heappush(p.running, (end, inst.task))
        return None

    def _task_done(self, p: _Proc, tid: int, end: float) -> core.TaskDone:
        """A task here ended; the task's recorded run is the one that ended first (a
        duplicated, retried or backed-up task may run more than once)."""
        if self.task_end[tid] < 0 or end < self.task_end[tid]:  # the run that ended first
            self.task_start[tid], self.task_end[tid] = p.started[tid], end
            self.task_invocation[tid] = p.idx
        out = self.out_bytes[tid]
        fetched = tuple(p.fetched.pop(tid)) if tid in p.fetched else ()
        return core.TaskDone(tid, out, out if self.view.upload[tid] else 0, fetched)

    def _store(self, p: _Proc, s: core.Store) -> Generator[float, None, Any]:
        t, nbytes = s.task, self.out_bytes[s.task]
        written = not (s.write and self.stored_at[t] <= p.clock)  # another attempt's first
        if s.write and not s.stream_chunk:
            p.clock = self._move(p.clock, nbytes, "upload")
            self.bytes_uploaded += nbytes
        else:  # announced (chunks follow) or a held output's registration only
            p.clock += self.rtt
        if s.fanins:
            yield p.clock
        if s.write and not s.stream_chunk:
            self.stored_at[t] = min(self.stored_at[t], p.clock)
        return core.Published(tuple(self._register(t, e) for e in s.fanins),
                              tuple(self._claim(e, p.arrival.lineage) for e in s.claims),
                              written)

    def _poll_held(self, p: _Proc, poll: core.PollHeld) -> Generator[float, None, Any]:
        """Answer when a poll would see something new: at once the first time, else when
        a held fan-in's set changes as it waits for (or a bound passes)."""
        if poll.wait:
            for e in poll.fanins:
                self.waiters.setdefault(e, []).append(p)
            yield max(min(p.hold_until.values()), p.clock)
            for e in poll.fanins:
                self.waiters[e].remove(p)
            p.clock = max(p.clock, self.now)
        else:
            yield p.clock
        members = (tuple(frozenset(self.fanin_members[e]) for e in poll.fanins)
                   if poll.members else None)
        expired = frozenset(k for k, at in p.hold_until.items() if at <= p.clock)
        for k in expired:
            del p.hold_until[k]
        return core.HeldStatus(tuple(self.fanin_size[e] for e in poll.fanins), members,
                               expired)

    def _last_input(self, task: int) -> int:
        """The input of ``task`` that finished last (the critical path runs through it)."""
        return max(self.deps[task], key=self.task_end.__getitem__, default=-1)

    # -- transfers ---------------------------------------------------------------------------
    def _fetch(self, p: _Proc, task: int, ids: tuple[int, ...], t: float) -> float:
        """One read of the inputs stored whole, then each streamed one in turn."""
        nbytes = 0
        streamed = []
        got = p.fetched.setdefault(task, [])
        for d in ids:
            b = self.out_bytes[d]
            self.bytes_downloaded += b
            got.append((d, b))
            if d < len(self.stored_at) and self.stored_at[d] == _INF:  # not a stored input
                self.read_early.add(d)  # stored later, one hopes: checked at the end
            if d in self.streams:
                streamed.append(d)
                self.transfers.append(InputTransfer(task, d, "stream", b, p.idx))
                continue
            nbytes += b
            self.transfers.append(InputTransfer(task, d, "redis", b, p.idx))
        t = self._move(t, nbytes, "download")
        for d in streamed:
            t = self._stream_read(d, t)
        return t

    def _preload(self, p: _Proc, task: int, ids: tuple[int, ...]) -> None:
        """Pre-load: inputs of a held fan-in, downloaded one by one as a poll finds them."""
        got = p.fetched.setdefault(task, [])
        for d in sorted(ids, key=self.stored_at.__getitem__):
            b = self.out_bytes[d]
            if d in self.streams:
                p.clock = self._stream_read(d, p.clock)
            else:
                p.clock = self._move(max(p.clock, self.stored_at[d]), b, "download")
            self.transfers.append(InputTransfer(task, d, "preload", b, p.idx))
            self.bytes_downloaded += b
            got.append((d, b))

    def _downloads(self, outs: list[int]) -> float:
        """When the client holds every output: it downloads each batch of outputs stored
        together as it lands (the "outputs" event), one batch after another."""
        client = 0.0
        for at, batch in itertools.groupby(sorted((self.stored_at[o], o) for o in outs),
                                           key=lambda x: x[0]):
            client = self._move(max(at, client), sum(self.out_bytes[o] for _, o in batch),
                                "download")
        return client

    def _move(self, t: float, nbytes: int, direction: str) -> float:
        """When a transfer of ``nbytes`` asked for at ``t`` ends (one Redis round trip;
        on shared cores its bytes wait for the first core free long enough)."""
        total = self.est.upload(nbytes) if direction == "upload" else \
            self.est.download(nbytes)
        busy = total - self.rtt
        if not self.lanes or busy < _MIN_BOOKED_S:
            return t + total
        start, i, lane = min(((*c.earliest(t, busy), c) for c in self.lanes),
                             key=lambda x: x[0])
        return lane.reserve(start, i, busy) + total

    def _stream_read(self, d: int, t: float) -> float:
        """A read of streamed output ``d`` from ``t`` (or from its announcement) ends once
        both the producer's upload and the transfer are done, plus one chunk's latency."""
        announced, done, chunk = self.streams[d]
        transfer = self.est.download(self.out_bytes[d])
        return max(done, max(t, announced) + transfer) + self.est.download(chunk)

    # -- the simulated Redis's fan-in sets and claims ------------------------------------------
    def _register(self, producer: int, e: int) -> int:
        """Add ``producer`` to ``e``'s fan-in set; the set's size after. Wakes invocations
        holding an output for ``e`` when a poll would see the change they wait for."""
        members = self.fanin_members.get(e)
        if members is not None:
            members.add(producer)
            size = self.fanin_size[e] = len(members)
        else:
            size = self.fanin_size[e] = self.fanin_size[e] + 1
        waiting = self.waiters.get(e)
        if waiting and (self.opt.preload or size == len(self.deps[e]) - 1):
            for w in waiting:
                self._push(self.now + HOLD_POLL_S / 2, _RESUME, w, w.token)
        return size

    def _claim(self, e: int, lineage: str) -> bool:
        """Claim ``e`` (``SET NX``): True when ``lineage`` holds it (claimed now, or by an
        earlier attempt or a backup of the same invocation)."""
        return self.claimed.setdefault(e, lineage) == lineage

    # -- totals ------------------------------------------------------------------------------
    def _totals(self) -> SimResult:
        dag = self.sim.dag
        outs = dag.outputs
        missing = [dag.tasks[o].key for o in outs if self.stored_at[o] == _INF]
        failed = self.failed_at < _INF or bool(missing and self.faults.crash)
        if missing and not failed:
            raise SimulationError(f"plan never produces outputs {missing[:3]!r}")
        # failed: the client's error, when it notices the last death it cannot retry
        makespan = self.failed_at if failed else self._downloads(outs)
        gb_s = sum((r.end_time - r.start_time) * r.memory_mb / 1024 for r in self.records)
        gb_s += sum(w.count * w.memory_mb / 1024 * WARMUP_BILLED_S for w in self.opt.prewarm)
        requests = len(self.records) + self.warmups
        cost = self.est.cost
        price = gb_s * cost.price_gb_s + requests * cost.price_request
        last = max(outs, key=self.stored_at.__getitem__) if outs else -1
        path: list[int] = []
        while last >= 0 and len(path) <= len(dag):
            path.append(last)
            last = self._last_input(last)
        return SimResult(makespan, price, gb_s, requests, self.records, self.task_start,
                         self.task_end, self.task_invocation, self.transfers,
                         self.bytes_uploaded, self.bytes_downloaded, self.duplicates,
                         path[::-1], len({r.worker_id for r in self.records}), self.warmups,
                         self.retries, self.backups, failed)
