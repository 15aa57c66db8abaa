"""Discrete-event prediction of a plan's execution: timeline, makespan, cost.

The simulator replays what the runtime does (``layout.py`` + ``worker/executor.py``):
root groups invoked by the client, each invocation running its ready tasks last-in
first-out, outputs uploaded only when an entry task or the client needs them, fan-in sets
registered in one round trip and claimed in another, fired entries run in place (same
worker, or a floating fan-in of the same config) or by invoking their worker with small
inputs inline. Containers start cold or warm (keep-alive, pre-warm); delayed I/O,
pre-load, task-dup and output streaming follow the plan's ``Optimizations`` exactly as
the executor does. A worker with ``threads`` > 1 runs that many ready tasks at once
(inputs, uploads and fan-ins stay sequential, as in the executor); their CPU parts share
the config's vCPUs (or the machine's cores, below). A streamed output is announced (one
round trip: its consumers fire), then uploaded; a read of it from ``t`` ends at
``max(upload end, t + download time)`` plus one chunk's download, instead of upload end,
then download.

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
(first fit, so invocations running ahead of the clock book consistently). With a container cap,
invocations beyond it queue until a container finishes, which takes the queued work of
its own config warm (else makes room for another config), as the local pool does.
"""

from __future__ import annotations

import bisect
import heapq
import math
from collections import deque
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

from .capacity import Capacity
from .costmodel import CostModel
from .dag import DAG
from .estimates import Estimates
from .layout import Layout, build_layout
from .plan import Plan, ResourceConfig
from .protocol.constants import FINAL_FLUSH_BYTES, HOLD_POLL_S

WARMUP_BILLED_S = 0.001  # a warm-up invocation returns at once
_MIN_BOOKED_S = 1e-3  # shorter transfers are all latency: they do not queue for a core
_INF = math.inf
_ARRIVE, _RESUME, _RELEASE, _WARMUP = 0, 1, 2, 3
_Arrival = tuple[str, list[int], frozenset, int]  # worker, start tasks, inline inputs, trigger


class SimulationError(RuntimeError):
    """The plan cannot finish (an output is never produced)."""


@dataclass(slots=True)
class InvocationRecord:
    """One predicted invocation: a container running some of a worker's tasks."""

    worker: str
    memory_mb: int
    invoked_at: float
    started_at: float
    ended_at: float
    cold: bool
    start_tasks: list[int]
    invoked_by: int  # the task whose completion invoked it; -1: the client


@dataclass(slots=True)
class InputTransfer:
    """A task input that did not come from the same invocation's memory."""

    task: int
    dep: int
    source: str  # "redis" | "inline" | "preload" | "stream"
    nbytes: int


@dataclass
class SimResult:
    """The predicted timeline of one plan and its totals."""

    makespan: float
    cost: float
    gb_seconds: float
    requests: int
    invocations: list[InvocationRecord]
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
                "bytes_moved": self.bytes_moved, "duplicates": self.duplicates}


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
    """A running invocation (simulated)."""

    __slots__ = ("config", "cores", "final", "final_bytes", "gen", "held", "idx", "local",
                 "prev", "rec", "remaining", "small", "spec_id", "token")

    def __init__(self, idx: int, spec_id: str, config: ResourceConfig, rec: InvocationRecord):
        self.idx, self.spec_id, self.config, self.rec = idx, spec_id, config, rec
        self.local: set[int] = set()
        self.small: set[int] = set()
        self.remaining: dict[int, int] = {}
        self.final: list[int] = []
        self.final_bytes = 0
        self.held: list[list[Any]] = []  # [producer, fan-in, deadline]
        self.prev = -1
        self.token = 0
        self.gen: Generator[float, None, None] | None = None
        self.cores: list[float] = []  # its own vCPUs when its threads share them


class Simulator:
    """Predicts plans of one DAG; keep one per DAG to reuse its estimates."""

    def __init__(self, dag: DAG, cost: CostModel | Estimates, *,
                 inline_bytes: int = 64 * 1024, keep_alive: float = 300.0,
                 warm: dict[int, int] | None = None, capacity: Capacity | None = None):
        self.dag = dag
        self.est = cost if isinstance(cost, Estimates) else Estimates(dag, cost)
        self.capacity = capacity or self.est.capacity
        self.inline_bytes, self.keep_alive = inline_bytes, keep_alive
        self.warm = dict(warm or {})

    def run(self, plan: Plan, layout: Layout | None = None) -> SimResult:
        return _Run(self, plan, layout or build_layout(self.dag, plan)).result()


def simulate(dag: DAG, plan: Plan, cost: CostModel | Estimates, **kwargs: Any) -> SimResult:
    """Predict ``plan``'s execution of ``dag`` under ``cost``; see ``Simulator``."""
    return Simulator(dag, cost, **kwargs).run(plan)


class _Run:
    """State of one simulation."""

    def __init__(self, sim: Simulator, plan: Plan, layout: Layout):
        dag = sim.dag
        n = len(dag)
        self.sim, self.plan, self.layout, self.est = sim, plan, layout, sim.est
        self.deps = [t.deps for t in dag.tasks]
        self.out = self.est.out_bytes
        self.rtt = self.est.upload(0)
        # on a machine of shared cores, whole transfers (pickling, sealing, Redis copying
        # the bytes) share those cores too: one calendar per core, first fit on any (on
        # Lambda each function's network is the limit)
        cap = sim.capacity
        self.lanes = [_Calendar() for _ in range(max(1, int(cap.cores)))] \
            if cap.shared else []
        self.opt = plan.optimizations
        self.avail = [_INF] * n  # when each output is in Redis
        self.streams: dict[int, tuple[float, float, int]] = {}  # announced, written, chunk
        self.count = [0] * n  # fan-in set sizes (entries without task-dup)
        self.members: dict[int, set[int]] = {e: set() for e in self.opt.duplicate}
        self.fired = bytearray(n)
        self.waiters: dict[int, _Proc] = {}
        self.start = [-1.0] * n
        self.end = [-1.0] * n
        self.where = [-1] * n
        self.cause = [-1] * n
        self.transfers: list[InputTransfer] = []
        self.up = self.down = self.dups = 0
        self.records: list[InvocationRecord] = []
        self.pools: dict[int, deque[float]] = {m: deque([0.0] * c) for m, c in sim.warm.items()}
        self.heap: list[tuple[float, int, int, Any, int]] = []
        self.seq = 0
        self.now = 0.0
        self.warmups = 0
        self.is_final = dag.output_set
        self.cores: list[float] | None = [0.0] * max(1, int(cap.cores)) if cap.shared else None
        self.limit = cap.containers
        self.busy = 0  # containers starting or running an invocation
        self.queued: deque[tuple[_Arrival, float]] = deque()

    # -- event loop ----------------------------------------------------------------------
    def _push(self, t: float, kind: int, obj: Any, token: int = 0) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (t, self.seq, kind, obj, token))

    def result(self) -> SimResult:
        for w in self.opt.prewarm:
            self._push(w.at_s, _WARMUP, w)
        for wid, roots in self.layout.root_groups.items():
            self._push(0.0, _ARRIVE, (wid, roots, frozenset(), -1))
        heap = self.heap
        while heap:
            t, _, kind, obj, token = heapq.heappop(heap)
            self.now = t
            if kind == _RESUME:
                if token == obj.token:
                    self._step(obj)
            elif kind == _ARRIVE:
                self._arrive(*obj)
            elif kind == _RELEASE:
                self._release(*obj)
            else:
                self._warmup(obj)
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

    def _warmup(self, w: Any) -> None:
        cold = self.est.invocation_time(ResourceConfig(w.memory_mb), "cold")
        for _ in range(w.count):
            self.warmups += 1
            self._push(self._on_core(self.now, cold), _RELEASE, (w.memory_mb, False))

    def _release(self, mem: int, busy: bool) -> None:
        """A container became idle: it takes queued work (its own config first)."""
        self.pools.setdefault(mem, deque()).append(self.now)
        if busy:
            self.busy -= 1
        if not self.queued:
            return
        pick = next((i for i, (a, _) in enumerate(self.queued)
                     if self.plan.workers[a[0]].config.memory_mb == mem), 0)
        arrival, at = self.queued[pick]
        del self.queued[pick]
        self._arrive(*arrival, invoked_at=at)

    def _idle_pool(self, mem: int) -> deque[float] | None:
        pool = self.pools.get(mem)
        while pool and self.now - pool[0] > self.sim.keep_alive:
            pool.popleft()
        return pool

    def _arrive(self, wid: str, starts: list[int], inline: frozenset, trigger: int,
                invoked_at: float | None = None) -> None:
        at = self.now if invoked_at is None else invoked_at
        if self.limit and self.busy >= self.limit:
            self.queued.append(((wid, starts, inline, trigger), at))
            return
        self.busy += 1
        spec = self.plan.workers[wid]
        mem = spec.config.memory_mb
        pool = self._idle_pool(mem)
        cold = not pool
        if pool:
            pool.pop()
        elif self.limit:
            self._make_room(mem)
        if cold:
            begin = self._on_core(self.now, self.est.invocation_time(spec.config, "cold"))
        else:
            begin = self.now + self.est.invocation_time(spec.config, "warm")
        rec = InvocationRecord(wid, mem, at, begin, begin, cold, starts, trigger)
        p = _Proc(len(self.records), wid, spec.config, rec)
        self.records.append(rec)
        p.prev = trigger
        p.gen = self._invocation(p, starts, inline, begin)
        self._push(begin, _RESUME, p, p.token)

    def _make_room(self, mem: int) -> None:
        """A new container at the cap replaces the longest-idle one of another config."""
        idle = [(pool[0], m) for m, pool in self.pools.items() if pool and m != mem]
        if idle and self.busy + sum(len(p) for p in self.pools.values()) > self.limit:
            self.pools[min(idle)[1]].popleft()

    # -- one invocation --------------------------------------------------------------------
    def _fetch(self, p: _Proc, task: int, deps: Any, t: float, source: str = "redis") -> float:
        """One read of the inputs stored whole, then each streamed one in turn."""
        nbytes = 0
        streamed = []
        for d in deps:
            b = self.out[d]
            self.down += b
            p.local.add(d)
            if d in self.streams:
                streamed.append(d)
                self.transfers.append(InputTransfer(task, d, "stream", b))
                continue
            nbytes += b
            self.transfers.append(InputTransfer(task, d, source, b))
        t = self._move(t, nbytes, "download")
        for d in streamed:
            t = self._stream_read(d, t)
        return t

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
        transfer = self.est.download(self.out[d])
        return max(done, max(t, announced) + transfer) + self.est.download(chunk)

    def _invocation(self, p: _Proc, starts: list[int], inline: frozenset,
                    t: float) -> Generator[float, None, None]:
        layout, deps, out, est = self.layout, self.deps, self.out, self.est
        execs = est.exec_times(p.config)
        threads = self.plan.workers[p.spec_id].threads
        if self.cores is None and threads > 1:  # its threads share the config's vCPUs
            p.cores = [0.0] * max(1, math.ceil(p.config.vcpus - 1e-9))
        cpus = est.cpu_times(p.config) if self.cores is not None or p.cores else None
        wanted = sorted({d for s in starts for d in deps[s]})
        for d in wanted:
            if d in inline:
                p.local.add(d)
                self.transfers.append(InputTransfer(starts[0], d, "inline", out[d]))
        need = [d for d in wanted if d not in inline]
        if need:
            t = self._fetch(p, starts[0], need, t)
        ready = list(reversed(starts))
        delay = self.opt.delay
        hold_since = -1.0
        running: list[tuple[float, int, bool]] = []  # (end, task, first run) in threads
        while True:
            while ready or running:
                while ready and len(running) < threads:
                    tid = ready.pop()
                    miss = [d for d in deps[tid] if d not in p.local]
                    if miss:
                        t = self._fetch(p, tid, miss, t)
                    first = self.where[tid] < 0  # a duplicated task keeps its first run
                    if first:
                        self.start[tid], self.where[tid], self.cause[tid] = t, p.idx, p.prev
                    if cpus is None:
                        end = t + execs[tid]
                    else:
                        if self.cores is not None:
                            yield t  # wait for a core in event order
                        end = self._on_core(t, cpus[tid], p.cores) + execs[tid] - cpus[tid]
                    heapq.heappush(running, (end, tid, first))
                end, tid, first = heapq.heappop(running)
                t = max(t, end)
                if first:
                    self.end[tid] = end
                p.prev = tid
                new: list[int] = []
                for d in layout.local_dependents[tid]:
                    left = p.remaining.get(d, len(deps[d])) - 1
                    if left == 0:
                        p.remaining.pop(d, None)
                        new.append(d)
                    else:
                        p.remaining[d] = left
                p.local.add(tid)
                if not layout.upload[tid]:
                    ready.extend(new)
                    continue
                entries = layout.entry_dependents[tid]
                if tid in delay and entries:
                    held = [e for e in entries if len(deps[e]) > 1 and self._runs_here(p, e)]
                    if held:
                        entries = tuple(e for e in entries if e not in held)
                        for e in held:
                            p.held.append([tid, e, t + delay[tid]])
                if not entries:
                    if tid in self.is_final:
                        p.final.append(tid)
                        p.final_bytes += out[tid]
                        if p.final_bytes >= FINAL_FLUSH_BYTES:
                            t = self._flush(p, t)
                    ready.extend(new)
                    continue
                chunk = self.opt.stream.get(tid, 0)
                streamed = 0 < chunk < out[tid]
                t = t + self.rtt if streamed else self._move(t, out[tid], "upload")
                self.up += out[tid]
                fanins = [e for e in entries if len(deps[e]) > 1]
                if fanins:
                    yield t
                if not streamed and t < self.avail[tid]:
                    self.avail[tid] = t
                if out[tid] <= self.sim.inline_bytes:
                    p.small.add(tid)
                fired = [e for e in entries if len(deps[e]) == 1]
                complete = [e for e in fanins if self._register(tid, e)]
                if complete:
                    t += self.rtt
                    fired += self._claim(complete)
                here: list[int] = []
                if streamed:  # consumers start, then the chunks are written
                    here, fired = self._dispatch(p, fired, t), []
                    announced, t = t, self._move(t, out[tid], "upload")
                    self.streams[tid] = (announced, t, chunk)
                    self.avail[tid] = min(self.avail[tid], t)
                for e in fanins:
                    if e in self.opt.duplicate and e not in complete and not self.fired[e]:
                        t, won = yield from self._duplicate(p, e, t)
                        fired += won
                ready.extend(new)
                ready.extend(here)
                ready.extend(self._dispatch(p, fired, t))
            if not p.held:
                break
            t = self._flush(p, t)
            if hold_since < 0:
                hold_since = t
            t = yield from self._hold(p, ready, t, hold_since)
        p.rec.ended_at = self._flush(p, t)
        self._push(p.rec.ended_at, _RELEASE, (p.config.memory_mb, True))

    def _flush(self, p: _Proc, t: float) -> float:
        if p.final:
            t = self._move(t, p.final_bytes, "upload")
            self.up += p.final_bytes
            for x in p.final:
                if t < self.avail[x]:
                    self.avail[x] = t
            p.final, p.final_bytes = [], 0
        return t

    def _runs_here(self, p: _Proc, e: int) -> bool:
        spec = self.plan.workers[self.plan.assignment[e]]
        return spec.id == p.spec_id or (spec.floating and spec.config == p.config)

    def _register(self, producer: int, e: int) -> bool:
        """Add ``producer`` to ``e``'s fan-in set; True when this made it complete."""
        members = self.members.get(e)
        if members is not None:
            if producer in members:
                return False
            members.add(producer)
            size = len(members)
        else:
            self.count[e] += 1
            size = self.count[e]
        need = len(self.deps[e])
        if size == need - 1 and e in self.waiters:
            w = self.waiters[e]
            self._push(self.now + HOLD_POLL_S / 2, _RESUME, w, w.token)
        return size == need

    def _others_in(self, e: int, producer: int) -> int:
        members = self.members.get(e)
        if members is not None:
            return len(members - {producer})
        return self.count[e]

    def _claim(self, complete: list[int]) -> list[int]:
        won = []
        for e in complete:
            if not self.fired[e]:
                self.fired[e] = 1
                won.append(e)
        return won

    def _dispatch(self, p: _Proc, fired: list[int], t: float) -> list[int]:
        run_here: list[int] = []
        remote: dict[str, list[int]] = {}
        for e in fired:
            if self._runs_here(p, e):
                run_here.append(e)
            else:
                remote.setdefault(self.plan.assignment[e], []).append(e)
        for wid, starts in remote.items():
            inline = frozenset(d for s in starts for d in self.deps[s] if d in p.small)
            self._push(t, _ARRIVE, (wid, starts, inline, p.prev))
        return run_here

    def _duplicate(self, p: _Proc, e: int, t: float) -> Generator[float, None, Any]:
        """Task-dup: run ``e``'s missing cheap inputs here when their inputs exist."""
        deps, out = self.deps, self.out
        t += self.rtt  # read the fan-in set and whether the inputs exist
        yield t
        won: list[int] = []
        members = self.members[e]
        for b in self.opt.duplicate[e]:
            if b in members or self.fired[e]:
                continue
            if not all(d in p.local or self.avail[d] <= t for d in deps[b]):
                continue
            miss = [d for d in deps[b] if d not in p.local]
            if miss:
                t = self._fetch(p, b, miss, t)
            run_s = self.est.exec_times(p.config)[b]
            if self.cores is not None:
                yield t
                cpu = self.est.cpu_times(p.config)[b]
                run_s = self._on_core(t, cpu) + run_s - cpu - t
            if self.where[b] < 0:
                self.start[b], self.where[b], self.cause[b] = t, p.idx, p.prev
                self.end[b] = t + run_s
            t = self._move(t + run_s, out[b], "upload")
            self.up += out[b]
            self.dups += 1
            yield t
            if t < self.avail[b]:
                self.avail[b] = t
            p.local.add(b)
            p.prev = b
            if self._register(b, e):
                t += self.rtt
                won += self._claim([e])
        return t, won

    def _hold(self, p: _Proc, ready: list[int], t: float,
              since: float) -> Generator[float, None, float]:
        """Delayed I/O: wait for the held fan-ins' other inputs, or publish at deadline."""
        deps = self.deps
        yield t
        while p.held and not ready:
            for h in list(p.held):
                a, e, deadline = h
                if self._others_in(e, a) >= len(deps[e]) - 1:
                    p.held.remove(h)
                    t += self.rtt  # add ourselves, see the set complete
                    self._register(a, e)
                    if self.opt.preload:
                        t = self._preloaded(p, e, a, since, t)
                    t += self.rtt
                    if self._claim([e]):
                        last = max((d for d in deps[e] if d != a),
                                   key=lambda d: self.end[d])
                        p.prev = last
                        ready.append(e)
                    break
                if deadline <= t:
                    p.held.remove(h)
                    t = self._move(t, self.out[a], "upload")
                    self.up += self.out[a]
                    yield t
                    if t < self.avail[a]:
                        self.avail[a] = t
                    if self._register(a, e):
                        t += self.rtt
                        ready.extend(self._dispatch(p, self._claim([e]), t))
            if ready or not p.held:
                break
            for _, e, _ in p.held:
                self.waiters[e] = p
            wake = min(h[2] for h in p.held)
            yield max(wake, t)
            for _, e, _ in p.held:
                self.waiters.pop(e, None)
            t = max(t, self.now)
        return t

    def _preloaded(self, p: _Proc, e: int, a: int, since: float, t: float) -> float:
        """Inputs of ``e`` downloaded one by one as they were published while holding."""
        clock = since
        others = sorted((d for d in self.deps[e] if d != a and d not in p.local),
                        key=lambda d: self.avail[d])
        for d in others:
            if d in self.streams:
                clock = self._stream_read(d, clock)
            else:
                clock = self._move(max(clock, self.avail[d]), self.out[d], "download")
            self.transfers.append(InputTransfer(e, d, "preload", self.out[d]))
            self.down += self.out[d]
            p.local.add(d)
        return max(t, clock)

    # -- totals ------------------------------------------------------------------------------
    def _totals(self) -> SimResult:
        dag = self.sim.dag
        outs = dag.outputs
        missing = [dag.tasks[o].key for o in outs if self.avail[o] == _INF]
        if missing:
            raise SimulationError(f"plan never produces outputs {missing[:3]!r}")
        done = max((self.avail[o] for o in outs), default=0.0)
        makespan = self._move(done, sum(self.out[o] for o in outs), "download")
        gb_s = sum((r.ended_at - r.started_at) * r.memory_mb / 1024 for r in self.records)
        gb_s += sum(w.count * w.memory_mb / 1024 * WARMUP_BILLED_S for w in self.opt.prewarm)
        requests = len(self.records) + self.warmups
        cost = self.est.cost
        price = gb_s * cost.price_gb_s + requests * cost.price_request
        last = max(outs, key=self.avail.__getitem__) if outs else -1
        path: list[int] = []
        while last >= 0 and len(path) <= len(dag):
            path.append(last)
            last = self.cause[last]
        return SimResult(makespan, price, gb_s, requests, self.records, self.start, self.end,
                         self.where, self.transfers, self.up, self.down, self.dups,
                         path[::-1], len({r.worker for r in self.records}), self.warmups)
