"""The decision core of one invocation: a pure state machine, events in, instructions out.

Everything an invocation *decides* lives here, once: which of its tasks are ready, which
inputs it must fetch and which it holds, which outputs it stores, keeps, holds back
(delayed I/O) or batches for the client, which fan-ins it registers and claims, which
fired entries it runs itself and which it invokes elsewhere (with small inputs inline),
task-dup and output streaming. The core has no clock and does no I/O. Two drivers run
it: ``worker.executor`` against Redis and wall time, and ``simulator`` against the cost
model and its event heap, so a protocol change is made once and predicted as it runs.

Driving it::

    state = InvocationState(view, worker, width, inline_bytes=inline_bytes)
    instructions = state.handle(Begin(start, inline))
    # perform them in order; an instruction that asks a question (``Store``, ``Claim``,
    # ``PollHeld``, ``QueryDup``, ``Execute(duplicate=True)``) is always the last of its
    # list, and its answer is the next event. Otherwise report each ``Execute``d task's
    # end with ``TaskDone`` whenever it comes; ``state.done`` once nothing is left.

At most one question is outstanding at a time, so a step that takes several round
trips (store, then claim, then task-dup) reads top to bottom as a generator that yields
its questions (``_flow``); its data (``memory``, ``uses``, ``ready``...) stays in plain
attributes that ``validate_state`` checks.

Memory: each read of a value by a task here is counted once in ``uses``, when the task
is queued (``counted``) or else when it starts, and uncounted when it ends; a value made
here is dropped (``Release``) only once no count is left and no fan-in here may need it.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Generator, Sequence
from dataclasses import dataclass

from ..plan import WorkerSpec
from .constants import FINAL_FLUSH_BYTES, INLINE_CACHE_BYTES, KEPT_MEMORY_FRACTION
from .view import RunView

# -- events (what happened) ----------------------------------------------------------------


@dataclass(slots=True)
class Begin:
    """The invocation starts ``start`` tasks; ``inline``: inputs that came with it.
    ``recheck``: an earlier attempt of it may have stored outputs (a retry): each group
    it starts first asks which are stored, and runs only what is still needed."""

    start: tuple[int, ...]
    inline: tuple[int, ...] = ()
    recheck: bool = False


@dataclass(slots=True)
class TaskDone:
    """A task returned. ``memory_bytes``: its value's size in memory; ``stored_bytes``:
    its sealed size when the view says it is uploaded (else 0); ``fetched``: the sizes of
    the inputs fetched for it, ``(id, bytes)``."""

    task: int
    memory_bytes: int = 0
    stored_bytes: int = 0
    fetched: tuple[tuple[int, int], ...] = ()


@dataclass(slots=True)
class TaskFailed:
    """A task raised; only a duplicated task's failure is the core's business (its own
    worker runs it and reports the error)."""

    task: int


@dataclass(slots=True)
class Published:
    """Answer to ``Store``: the fan-in set sizes seen after registering, per fan-in;
    whether this invocation holds each claim asked for; ``written``: False when another
    attempt stored the output first (its value is the one everybody reads)."""

    sizes: tuple[int, ...]
    won: tuple[bool, ...] = ()
    written: bool = True


@dataclass(slots=True)
class Claimed:
    """Answer to ``Claim``: whether this invocation holds each claim."""

    won: tuple[bool, ...]


@dataclass(slots=True)
class HeldStatus:
    """Answer to ``PollHeld``: each fan-in's set size, its members when asked (pre-load),
    and the held ``(producer, fan-in)`` pairs whose bound passed."""

    sizes: tuple[int, ...]
    members: tuple[frozenset[int], ...] | None = None
    expired: frozenset[tuple[int, int]] = frozenset()


@dataclass(slots=True)
class Stored:
    """Answer to ``CheckStored``: which of the outputs asked about are stored."""

    tasks: frozenset[int]


@dataclass(slots=True)
class DupStatus:
    """Answer to ``QueryDup``: the fan-in set's members and the candidates whose missing
    inputs are all stored."""

    members: frozenset[int]
    available: frozenset[int]


Event = (Begin | TaskDone | TaskFailed | Published | Claimed | HeldStatus | DupStatus
         | Stored)

# -- instructions (what to do) -------------------------------------------------------------


@dataclass(slots=True)
class Fetch:
    """Download ``ids`` (stored outputs) for ``task``; ``kind``: "redis" or "preload"."""

    ids: tuple[int, ...]
    task: int
    kind: str = "redis"


@dataclass(slots=True)
class Execute:
    """Run ``task`` (its inputs are held). ``duplicate``: task-dup of another worker's
    task, run now on this thread; its ``TaskDone``/``TaskFailed`` is the next event."""

    task: int
    duplicate: bool = False


@dataclass(slots=True)
class Store:
    """Store ``task``'s output (write-once; not when ``write`` is False: it is stored
    already, or held and released to a fan-in that runs here), register it in
    ``fanins``' sets, claim ``claims`` (its single-input dependents) and mark it done when
    ``final``, in one round trip; ``stream_chunk`` > 0: announce it instead, its chunks
    follow (``WriteStream``). Answer: ``Published``."""

    task: int
    fanins: tuple[int, ...] = ()
    final: bool = False
    write: bool = True
    stream_chunk: int = 0
    claims: tuple[int, ...] = ()


@dataclass(slots=True)
class CheckStored:
    """Which of ``tasks``' outputs are stored already (a retry). Answer: ``Stored``."""

    tasks: tuple[int, ...]


@dataclass(slots=True)
class WriteStream:
    """Write the chunks of ``task``'s announced output (its consumers are invoked)."""

    task: int
    final: bool


@dataclass(slots=True)
class Claim:
    """Claim fan-ins whose sets are complete. Answer: ``Claimed``."""

    entries: tuple[int, ...]


@dataclass(slots=True)
class Invoke:
    """Invoke ``worker`` to start ``start``; ``inline``: inputs to send along (their
    sealed bytes are held)."""

    worker: str
    start: tuple[int, ...]
    inline: tuple[int, ...]


@dataclass(slots=True)
class Flush:
    """Store final outputs the client alone needs, in one batch."""

    tasks: tuple[int, ...]


@dataclass(slots=True)
class Hold:
    """Delayed I/O: ``producer``'s output waits up to ``seconds`` for ``fanin``'s other
    inputs (the driver keeps the deadline; ``HeldStatus.expired`` reports it)."""

    producer: int
    fanin: int
    seconds: float


@dataclass(slots=True)
class PollHeld:
    """How far the held fan-ins' sets are (and their members when ``members``).
    ``wait``: the last poll changed nothing; wait a little first. Answer: ``HeldStatus``."""

    fanins: tuple[int, ...]
    members: bool = False
    wait: bool = False


@dataclass(slots=True)
class QueryDup:
    """Task-dup: read ``fanin``'s set, and which ``candidates`` have all of ``missing``
    (per candidate) stored. Answer: ``DupStatus``."""

    fanin: int
    candidates: tuple[int, ...]
    missing: tuple[tuple[int, ...], ...]


@dataclass(slots=True)
class Release:
    """Drop these values from memory (nothing here will read them again)."""

    ids: tuple[int, ...]


@dataclass(slots=True)
class DropBlobs:
    """Drop these outputs' sealed bytes: nothing here will write or inline them again.
    (A driver keeps an uploaded output's sealed bytes from ``TaskDone`` until then.)"""

    ids: tuple[int, ...]


Instruction = (Fetch | Execute | Store | WriteStream | Claim | Invoke | Flush | Hold
               | PollHeld | QueryDup | CheckStored | Release | DropBlobs)
QUESTIONS = (Store, Claim, PollHeld, QueryDup, CheckStored)  # and Execute(duplicate=True)

_Flow = Generator[Instruction, Event, None]


class InvalidEvent(RuntimeError):
    """An event the state machine cannot take now (a driver bug)."""


class InvocationState:
    """One invocation's decisions (see module docstring).

    ``worker``: the plan's worker this invocation runs; ``width``: tasks it runs at once
    (its threads); ``inline_bytes``: outputs up to this size travel inside the
    invocations they trigger. A share of the worker's memory holds values kept for
    fan-ins it may run and inputs it fetched, oldest dropped first.
    """

    def __init__(self, view: RunView, worker: WorkerSpec, width: int, *,
                 inline_bytes: int):
        self.view, self.worker = view, worker
        # what each task reads: its deps, and stored inputs (fetched like stored outputs,
        # never waited for); a view without stored inputs reads its deps
        reads = getattr(view, "reads", None)
        self.reads = reads if reads is not None else view.deps
        self.width = max(1, width)
        self.inline_bytes = inline_bytes
        self.kept_budget = int(worker.config.memory_mb * 2**20 * KEPT_MEMORY_FRACTION)
        self.memory: dict[int, int] = {}  # values held here -> their size in memory
        self.uses: dict[int, int] = {}  # held value -> tasks here still to read it
        # task not started yet -> the reads already counted in ``uses`` for it (the rest
        # are counted when it starts): each read is counted once, and its end uncounts it
        self.counted: dict[int, list[int]] = {}
        self.fetched: set[int] = set()  # held values that came from elsewhere
        self.kept: OrderedDict[int, int] = OrderedDict()  # evictable values, oldest first
        self.kept_bytes = 0
        self.blobs: dict[int, int] = {}  # output -> reasons its sealed bytes are needed
        self.inline_cache: OrderedDict[int, int] = OrderedDict()  # small outputs' sealed sizes
        self.inline_cache_bytes = 0
        self.waiting: dict[int, int] = {}  # task -> inputs from this group still to come
        self.ready: list[int] = []  # run last-in first-out (depth first, like Dask)
        self.running: set[int] = set()
        self.final_batch: list[int] = []  # outputs only the client needs, not yet stored
        self.final_batch_bytes = 0
        self.held: list[tuple[int, int]] = []  # (producer, fan-in) held back (delayed I/O)
        self.held_producers: dict[int, int] = {}  # producer -> fan-ins it is held for
        self._released: list[int] = []  # values to drop, told before the next task runs
        self.fired: list[int] = []  # entries this invocation fired, in order
        self.recheck = False  # a retry: groups check for stored outputs before running
        self.to_recheck: list[int] = []  # entries fired here whose groups are to check
        self.recheck_pins: list[int] = []  # their producers, held until the groups start
        self.skipped: set[int] = set()  # tasks a retry does not run again
        self.tasks_done = 0
        self.duplicates = 0
        self.done = False
        self._flow: _Flow | None = None
        self._out: list[Instruction] = []

    # -- the one entry point ---------------------------------------------------------------
    def handle(self, event: Event) -> list[Instruction]:
        """Take ``event``; return what to do, in order (see module docstring)."""
        self._out = out = []
        if self._flow is not None:
            self._resume(event)
        elif type(event) is TaskDone:
            self._task_done(event)
        elif type(event) is Begin:
            self._begin(event)
        else:
            raise InvalidEvent(f"{event!r} answers no question")
        if self._flow is None:
            self._schedule()
        if self._flow is None:  # never after a question: its answer's instructions come
            self._tell_released()  # first, and may fetch a value released here again
        return out

    def _emit(self, instruction: Instruction) -> None:
        self._out.append(instruction)

    def _start(self, flow: _Flow) -> None:
        self._flow = flow
        self._resume(None)

    def _resume(self, answer: Event | None) -> None:
        assert self._flow is not None
        try:
            question = self._flow.send(answer)  # type: ignore[arg-type]
        except StopIteration:
            self._flow = None
            return
        self._out.append(question)

    # -- transitions -----------------------------------------------------------------------
    def _begin(self, ev: Begin) -> None:
        for d in ev.inline:
            self.memory[d] = 0
            self.fetched.add(d)
        self.recheck = ev.recheck
        if ev.recheck:
            self.to_recheck = list(ev.start)
        else:
            self._start_group(ev.start)

    def _start_group(self, start: Sequence[int]) -> None:
        """Ready ``start`` (in order), fetching the inputs they do not hold in one read."""
        reads = self.reads
        wanted = tuple(sorted({d for s in start for d in reads[s]}.difference(self.memory)))
        if wanted:
            self._emit(Fetch(wanted, start[0]))
            self._hold_fetched(wanted, uses=0)
        for s in start:
            for d in reads[s]:
                self.uses[d] = self.uses.get(d, 0) + 1
            self.counted[s] = list(reads[s])
        self.ready.extend(reversed(start))

    def _recheck_groups(self) -> _Flow:
        """A retry: of the groups about to start, run only the tasks still needed (outputs
        not stored, and what they read); stored outputs are published again (their fan-in
        registrations, claims and invocations are idempotent)."""
        view = self.view
        starts, self.to_recheck = self.to_recheck, []
        group = self._group(starts)
        asked = tuple(t for t in group if view.upload[t] and t not in view.optimizations.stream)
        answer = yield CheckStored(asked)
        assert isinstance(answer, Stored)
        needed: set[int] = set()
        for t in reversed(group):  # dependents first (ids are topological)
            if t not in answer.tasks and (view.upload[t] or any(
                    d in needed for d in view.local_dependents[t])):
                needed.add(t)
        skipped = [t for t in group if t not in needed]
        self.skipped.update(skipped)
        self._start_group([s for s in starts if s in needed])
        pins, self.recheck_pins = self.recheck_pins, []
        for p in pins:  # the groups counted their own reads
            self._read(p)
        for t in skipped:
            for d in view.local_dependents[t]:
                self._input_done(d)
            if t in answer.tasks:
                yield from self._publish(t, -1, view.entry_dependents[t], stored=True)

    def _group(self, starts: Sequence[int]) -> list[int]:
        """``starts`` and every task of their groups (same-group dependents), in id order."""
        local = self.view.local_dependents
        seen = set(starts)
        todo = list(starts)
        while todo:
            for d in local[todo.pop()]:
                if d not in seen:
                    seen.add(d)
                    todo.append(d)
        return sorted(seen)

    def _input_done(self, d: int, producer: int | None = None) -> None:
        """One input of same-group task ``d`` is done (``producer``: made here, its read
        by ``d`` counted); ``d`` is ready after its last (unless a retry skips it)."""
        if d in self.skipped:
            return
        if producer is not None:
            self.counted.setdefault(d, []).append(producer)
        left = self.waiting.get(d, len(self.view.deps[d])) - 1
        if left:
            self.waiting[d] = left
        else:
            self.waiting.pop(d, None)
            self.ready.append(d)

    def _task_done(self, ev: TaskDone) -> None:
        t = ev.task
        view = self.view
        if t not in self.running:
            raise InvalidEvent(f"task {t} finished but was not running")
        self.running.remove(t)
        self.tasks_done += 1
        self._took_inputs(ev)
        local = view.local_dependents[t]
        entries = view.entry_dependents[t]
        self.memory[t] = ev.memory_bytes
        if local:
            self.uses[t] = len(local)
        for d in local:
            self._input_done(d, t)
        if entries and any(len(view.deps[e]) > 1 and view.runs_in(e, self.worker)
                           for e in entries):
            self._keep(t)
        if view.upload[t]:
            self._start(self._publish(t, ev.stored_bytes, entries))
        else:
            self._settle(t)

    def _took_inputs(self, ev: TaskDone) -> None:
        """``ev.task`` read its inputs; those fetched for it now have known sizes."""
        memory, uses = self.memory, self.uses
        for d, nbytes in ev.fetched:
            if d in memory:
                memory[d] = nbytes
        for d in self.reads[ev.task]:
            left = uses.get(d)
            if left is not None and left > 1:
                uses[d] = left - 1
            else:
                self._read(d)

    def _publish(self, t: int, nbytes: int, entries: tuple[int, ...],
                 stored: bool = False) -> _Flow:
        """Store ``t``'s output where the plan needs it and fire what it completes
        (``stored``: a retry found it stored; it is registered and claimed again)."""
        view = self.view
        final = t in view.final
        if not stored:
            self._blob_ref(t)
            if entries and t in view.optimizations.delay:
                entries = self._hold(t, entries)
            if not entries and not (final and view.local_dependents[t]):
                if final:  # batched: nothing here reads it again
                    self._batch_final(t, nbytes)
                self._blob_unref(t)
                self._settle(t)
                return
        fanins = tuple(e for e in entries if len(view.deps[e]) > 1)
        singles = tuple(e for e in entries if len(view.deps[e]) == 1)
        chunk = 0 if stored else view.optimizations.stream.get(t, 0)
        streamed = 0 < chunk < nbytes
        answer = yield Store(t, fanins, final and not stored, write=not stored,
                             stream_chunk=chunk if streamed else 0, claims=singles)
        assert isinstance(answer, Published)
        if not answer.written:  # another attempt stored it first: read its value
            self._emit(Fetch((t,), t))
        elif not stored and nbytes <= self.inline_bytes:
            self._cache_inline(t, nbytes)
        complete = tuple(e for e, n in zip(fanins, answer.sizes, strict=True)
                         if n == len(view.deps[e]))
        fired = [e for e, won in zip(singles, answer.won, strict=True) if won]
        if complete:
            claimed = yield Claim(complete)
            assert isinstance(claimed, Claimed)
            fired += [e for e, won in zip(complete, claimed.won, strict=True) if won]
        self._dispatch(fired, t)
        if streamed:
            self._emit(WriteStream(t, final))
        if not stored:
            self._blob_unref(t)
        for e in fanins:
            if e in view.optimizations.duplicate and e not in complete:
                yield from self._duplicate(e)
        self._settle(t)

    def _dispatch(self, fired: list[int], producer: int) -> None:
        """Run fired entries here when the plan allows it; invoke their workers otherwise."""
        view = self.view
        remote: dict[str, list[int]] = {}
        for e in fired:
            self.fired.append(e)
            if view.runs_in(e, self.worker):
                # its read of the producer is counted now: a held output registered
                # unwritten must stay until the fan-in runs here
                self.uses[producer] = self.uses.get(producer, 0) + 1
                if self.recheck:  # its group checks for stored outputs first
                    self.to_recheck.append(e)
                    self.recheck_pins.append(producer)
                else:
                    self.ready.append(e)
                    self.counted.setdefault(e, []).append(producer)
            else:
                remote.setdefault(view.assignment[e], []).append(e)
        for wid, starts in remote.items():
            inline = tuple(dict.fromkeys(d for s in starts for d in view.deps[s]
                                         if d in self.inline_cache))
            self._emit(Invoke(wid, tuple(starts), inline))

    def _duplicate(self, fanin: int) -> _Flow:
        """Task-dup: run the fan-in's missing cheap inputs here when their own inputs are
        stored; the first whose registration completes the set claims the fan-in."""
        view = self.view
        candidates = view.optimizations.duplicate[fanin]
        missing = tuple(tuple(d for d in view.deps[b] if d not in self.memory)
                        for b in candidates)
        status = yield QueryDup(fanin, candidates, missing)
        assert isinstance(status, DupStatus)
        for b, need in zip(candidates, missing, strict=True):
            if (b in status.members or b not in status.available or b in self.memory
                    or b in self.running or b in self.ready):
                continue  # there, or about to run here (it stores itself): not twice
            need = tuple(d for d in self.reads[b] if d not in self.memory)
            for d in self.reads[b]:
                if d in self.memory:
                    self.uses[d] = self.uses.get(d, 0) + 1
            if need:
                self._emit(Fetch(need, b))
                self._hold_fetched(need)
            self.running.add(b)
            outcome = yield Execute(b, duplicate=True)
            self.running.discard(b)
            if isinstance(outcome, TaskFailed):
                for d in self.reads[b]:
                    self._read(d)
                continue
            assert isinstance(outcome, TaskDone) and outcome.task == b
            self._took_inputs(outcome)
            self.duplicates += 1
            self.memory[b] = outcome.memory_bytes
            self._blob_ref(b)
            answer = yield Store(b, (fanin,))
            assert isinstance(answer, Published)
            self._blob_unref(b)
            won = False
            if answer.sizes[0] == len(view.deps[fanin]):
                claimed = yield Claim((fanin,))
                assert isinstance(claimed, Claimed)
                won = claimed.won[0]
                if won:
                    self._dispatch([fanin], b)
            self._settle(b)
            if won:
                return

    # -- delayed I/O -----------------------------------------------------------------------
    def _hold(self, t: int, entries: tuple[int, ...]) -> tuple[int, ...]:
        """Hold ``t``'s output for fan-ins this invocation may run; return the entries to
        publish to now."""
        view = self.view
        held = [e for e in entries if len(view.deps[e]) > 1 and view.runs_in(e, self.worker)]
        for e in held:
            self.held.append((t, e))
            self._emit(Hold(t, e, view.optimizations.delay[t]))
            self._blob_ref(t)
        if held:
            self.uses[t] = self.uses.get(t, 0) + len(held)
            self.held_producers[t] = self.held_producers.get(t, 0) + len(held)
        return tuple(e for e in entries if e not in held)

    def _await_held(self) -> _Flow:
        """Wait for the held fan-ins' other inputs (fetching them as they land with
        pre-load); a held output is stored when its bound passes. Ends when something
        is ready to run or nothing is held."""
        view = self.view
        wait = False
        while self.held:
            fanins = tuple(dict.fromkeys(e for _, e in self.held))
            status = yield PollHeld(fanins, view.optimizations.preload, wait)
            assert isinstance(status, HeldStatus)
            size = dict(zip(fanins, status.sizes, strict=True))
            if status.members is not None:
                self._preload(fanins, status.members)
            moved = False
            for p, e in list(self.held):
                others_in = size[e] >= len(view.deps[e]) - 1
                if others_in or (p, e) in status.expired:
                    moved = True
                    self.held.remove((p, e))
                    left = self.held_producers.pop(p) - 1
                    if left:
                        self.held_producers[p] = left
                    yield from self._release_held(p, e, write=not others_in)
            if self.ready:
                return
            wait = not moved

    def _release_held(self, p: int, e: int, write: bool) -> _Flow:
        """Add held output ``p`` to ``e``'s set (storing it first when ``write``: its bound
        passed) and claim ``e`` when that completed it."""
        answer = yield Store(p, (e,), write=write)
        assert isinstance(answer, Published)
        won = False
        if answer.sizes[0] == len(self.view.deps[e]):
            claimed = yield Claim((e,))
            assert isinstance(claimed, Claimed)
            won = claimed.won[0]
            if won:  # before the hold's read ends: ``p`` may exist only here
                self._dispatch([e], p)
        if not (write or won):  # registered unwritten, and another invocation runs ``e``
            yield Store(p)
        self._blob_unref(p)
        self._read(p)
        self._settle(p)

    def _preload(self, fanins: tuple[int, ...], members: tuple[frozenset[int], ...]) -> None:
        for e, ms in zip(fanins, members, strict=True):
            new = tuple(sorted(d for d in ms if d not in self.memory))
            if new:
                self._emit(Fetch(new, e, "preload"))
                self._hold_fetched(new, uses=0)

    # -- scheduling ------------------------------------------------------------------------
    def _schedule(self) -> None:
        """Start ready tasks while threads are free; when nothing runs or is ready, wait
        for held fan-ins or finish."""
        deps, memory, uses, out = self.reads, self.memory, self.uses, self._out
        ready, running = self.ready, self.running
        if self.to_recheck:
            self._start(self._recheck_groups())
            if self._flow is not None:
                return
        if ready:
            self._tell_released()  # dropped before the next task takes memory
        counted = self.counted
        while ready and len(running) < self.width:
            t = ready.pop()
            missing = []
            already = counted.pop(t, ())
            for d in deps[t]:
                if d not in memory:
                    missing.append(d)
                elif d not in already:
                    uses[d] = uses.get(d, 0) + 1
            if missing:
                out.append(Fetch(tuple(missing), t))
                self._hold_fetched(missing)
            running.add(t)
            out.append(Execute(t))
        if self.running or self.ready or self.done or self.to_recheck:
            return
        self._flush_final()
        if self.held:
            self._start(self._await_held())
            if self._flow is None:  # held outputs released and tasks became ready
                self._schedule()
        else:
            self.done = True

    # -- memory, sealed bytes, batches -----------------------------------------------------
    def _hold_fetched(self, ids: Sequence[int], uses: int = 1) -> None:
        for d in ids:
            self.memory[d] = 0
            self.fetched.add(d)
            if uses:
                self.uses[d] = self.uses.get(d, 0) + uses

    def _read(self, d: int) -> None:
        """A task here read ``d`` (or will not after all)."""
        left = self.uses.get(d)
        if left is None:
            return
        if left > 1:
            self.uses[d] = left - 1
        else:
            del self.uses[d]
            self._settle(d)

    def _settle(self, v: int) -> None:
        """Once nothing here is about to read value ``v``: an input fetched from elsewhere
        is kept while memory allows (another task here may read it); an output made here
        is dropped unless kept for a fan-in that may run here, or held back."""
        if v in self.uses or v in self.kept or v in self.held_producers \
                or v not in self.memory:
            return
        if v in self.fetched:
            self._keep(v)
            return
        del self.memory[v]
        self._released.append(v)

    def _tell_released(self) -> None:
        # a value fetched again since it was settled is held once more: not dropped
        released = tuple(v for v in self._released if v not in self.memory)
        self._released = []
        if released:
            self._out.append(Release(released))

    def _keep(self, v: int) -> None:
        """Keep value ``v`` evictable; the oldest go when kept values pass their share of
        memory (those still to be read stay until read)."""
        size = self.memory[v]
        self.kept[v] = size
        self.kept_bytes += size
        while self.kept_bytes > self.kept_budget and len(self.kept) > 1:
            old, old_size = self.kept.popitem(last=False)
            self.kept_bytes -= old_size
            self.fetched.discard(old)
            self._settle(old)

    def _blob_ref(self, t: int) -> None:
        self.blobs[t] = self.blobs.get(t, 0) + 1

    def _blob_unref(self, t: int) -> None:
        left = self.blobs[t] - 1
        if left:
            self.blobs[t] = left
        else:
            del self.blobs[t]
            self._emit(DropBlobs((t,)))

    def _cache_inline(self, t: int, nbytes: int) -> None:
        """Keep a small output's sealed bytes to send inside invocations it triggers."""
        if t in self.inline_cache:
            return
        self._blob_ref(t)
        self.inline_cache[t] = nbytes
        self.inline_cache_bytes += nbytes
        while self.inline_cache_bytes > INLINE_CACHE_BYTES and len(self.inline_cache) > 1:
            old, old_size = self.inline_cache.popitem(last=False)
            self.inline_cache_bytes -= old_size
            self._blob_unref(old)

    def _batch_final(self, t: int, nbytes: int) -> None:
        self._blob_ref(t)
        self.final_batch.append(t)
        self.final_batch_bytes += nbytes
        if self.final_batch_bytes >= FINAL_FLUSH_BYTES:
            self._flush_final()

    def _flush_final(self) -> None:
        if self.final_batch:
            batch, self.final_batch, self.final_batch_bytes = self.final_batch, [], 0
            self._emit(Flush(tuple(batch)))
            for t in batch:
                self._blob_unref(t)

    # -- invariants ------------------------------------------------------------------------
    def validate_state(self) -> None:
        """Check the invariants between the state's parts (tests call it after every
        event)."""
        assert len(self.running) <= self.width + (self._flow is not None)
        assert set(self.uses) <= set(self.memory), set(self.uses) - set(self.memory)
        assert set(self.kept) <= set(self.memory)
        assert self.fetched <= set(self.memory)
        assert self.kept_bytes == sum(self.kept.values())
        assert self.inline_cache_bytes == sum(self.inline_cache.values())
        assert all(n > 0 for n in self.uses.values())
        assert all(n > 0 for n in self.blobs.values())
        assert set(self.inline_cache) <= set(self.blobs)
        assert set(self.final_batch) <= set(self.blobs)
        assert {p for p, _ in self.held} <= set(self.blobs)
        assert self.held_producers == dict(Counter(p for p, _ in self.held))
        assert not set(self.ready) & self.running
        assert set(self.counted) <= set(self.ready) | set(self.waiting), \
            set(self.counted) - set(self.ready) - set(self.waiting)
        assert all(d in self.uses for ds in self.counted.values() for d in ds)
        assert all(p in self.uses for p in self.recheck_pins)
        if self.done:
            assert not (self.ready or self.running or self.held or self.final_batch)
            assert set(self.blobs) == set(self.inline_cache)
