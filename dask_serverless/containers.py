"""Which container runs an invocation: one policy for the local pool and the simulator.

Containers have a memory size. Work (an invocation) takes the most recently idle
container of its size: a warm start. Otherwise a new container starts (cold) while
fewer than ``max_containers`` exist; at the cap, the longest-idle container of another
size is retired to make room, and when every container is starting or busy the work
queues. A container that becomes idle takes queued work of its own size first (warm),
else the oldest queued work is placed as above. Idle containers expire after
``keep_alive`` seconds. The policy is plain data: no processes, no clock (callers pass
``now``), so the pool and the simulator make the same choices.
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass, field
from typing import Generic, TypeVar

W = TypeVar("W")  # a unit of work (an invocation, a handler call, a simulated arrival)


@dataclass(slots=True)
class Slot:
    """A container as the policy sees it."""

    id: int
    memory_mb: int
    state: str = "starting"  # starting -> idle <-> busy; retired containers are dropped
    idle_since: float = 0.0


@dataclass(slots=True)
class Placement(Generic[W]):
    """What to do with work: run it on ``slot`` (``cold``: a new container to start);
    ``retired``: containers to stop first; ``slot`` None: it was queued."""

    work: W
    slot: Slot | None = None
    cold: bool = False
    retired: list[Slot] = field(default_factory=list)


class ContainerPolicy(Generic[W]):
    """Containers and queued work (see module docstring); ``max_containers`` 0: no cap."""

    def __init__(self, max_containers: int = 0, keep_alive: float = 300.0):
        self.max_containers = max_containers
        self.keep_alive = keep_alive
        self.slots: dict[int, Slot] = {}
        self.idle: dict[int, deque[Slot]] = {}  # memory -> idle containers, longest idle first
        self.queue: deque[tuple[int, W]] = deque()  # (memory_mb, work), oldest first
        self._ids = itertools.count()

    # -- events ---------------------------------------------------------------------------
    def place(self, memory_mb: int, work: W, now: float) -> Placement[W]:
        """New work arrives."""
        retired = self.expire(now)
        idle = self.idle.get(memory_mb)
        if idle:
            slot = idle.pop()  # the most recently idle: the others may expire
            slot.state = "busy"
            return Placement(work, slot, False, retired)
        if self._full():
            victim = self._longest_idle()
            if victim is None:
                self.queue.append((memory_mb, work))
                return Placement(work, None, False, retired)
            retired.append(self._retire(victim))
        return Placement(work, self._start(memory_mb, "busy"), True, retired)

    def start_idle(self, memory_mb: int) -> Slot | None:
        """Start a container with no work (pre-warm); None at the cap."""
        if self._full():
            return None
        return self._start(memory_mb, "starting")

    def ready(self, slot: Slot, now: float) -> Placement[W] | None:
        """A container started with no work is up: idle, or it takes queued work."""
        return self.finished(slot, now)

    def finished(self, slot: Slot, now: float) -> Placement[W] | None:
        """``slot`` ended its work: it takes queued work of its size (warm), else it idles
        and the oldest queued work is placed (which may retire it)."""
        for i, (mb, work) in enumerate(self.queue):
            if mb == slot.memory_mb:
                del self.queue[i]
                slot.state = "busy"
                return Placement(work, slot, False, [])
        slot.state, slot.idle_since = "idle", now
        self.idle.setdefault(slot.memory_mb, deque()).append(slot)
        if self.queue:
            mb, work = self.queue.popleft()
            return self.place(mb, work, now)
        return None

    def died(self, slot: Slot, now: float) -> Placement[W] | None:
        """``slot``'s container is gone: the oldest queued work takes its place."""
        if self.slots.pop(slot.id, None) is not None and slot.state == "idle":
            self.idle[slot.memory_mb].remove(slot)
        if self.queue:
            mb, work = self.queue.popleft()
            return self.place(mb, work, now)
        return None

    def expire(self, now: float) -> list[Slot]:
        """Retire containers idle longer than the keep-alive."""
        old = []
        for idle in self.idle.values():
            while idle and now - idle[0].idle_since > self.keep_alive:
                old.append(self._retire(idle[0]))
        return old

    def drop_queued(self, keep) -> list[W]:
        """Remove queued work for which ``keep(work)`` is False; returns it."""
        dropped = [w for _, w in self.queue if not keep(w)]
        self.queue = deque((mb, w) for mb, w in self.queue if keep(w))
        return dropped

    # -- views ----------------------------------------------------------------------------
    def idle_by_memory(self) -> dict[int, int]:
        return {mb: len(idle) for mb, idle in self.idle.items() if idle}

    def counts(self) -> dict[str, int]:
        states = [s.state for s in self.slots.values()]
        return {"containers": len(states), "idle": states.count("idle"),
                "busy": states.count("busy"), "pending": len(self.queue)}

    # -- helpers --------------------------------------------------------------------------
    def _full(self) -> bool:
        return bool(self.max_containers) and len(self.slots) >= self.max_containers

    def _start(self, memory_mb: int, state: str) -> Slot:
        slot = Slot(next(self._ids), memory_mb, state)
        self.slots[slot.id] = slot
        return slot

    def _retire(self, slot: Slot) -> Slot:
        """Stop an idle container (the longest idle of its size)."""
        idle = self.idle[slot.memory_mb]
        assert idle[0] is slot
        idle.popleft()
        del self.slots[slot.id]
        return slot

    def _longest_idle(self) -> Slot | None:
        heads = [idle[0] for idle in self.idle.values() if idle]
        return min(heads, key=lambda s: (s.idle_since, s.id), default=None)
