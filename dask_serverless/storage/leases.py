"""Invocation leases in the run's Redis: who is running what, and who stopped.

Every invocation sent is registered (``RunKeys.invocations``) by whoever sends it, before
it is sent; it is *queued* until one of its executions (a delivery of one attempt)
starts. An execution takes the lease ``RunKeys.lease(id, attempt)`` with ``SET NX`` (a
second delivery of the same attempt finds it taken and does nothing), registers itself
in ``RunKeys.running`` and renews the lease from a heartbeat thread; when it ends it
adds the invocation to ``RunKeys.ended`` (later deliveries do nothing) and removes its
entries. A lease that expired while its execution is still registered and its
invocation has not ended: the execution died (``runtime.leases`` re-invokes it).

Times are epoch seconds of the machine that wrote them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..protocol.wire import Invocation
from .store import RunStore

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class Registered:
    """An invocation as registered by its sender: enough to send it again."""

    id: str
    worker_id: str
    memory_mb: int
    start: list[int]
    attempt: int  # the highest attempt sent
    invoke_time: float
    heartbeat_s: float
    invoker: str = "client"

    def invocation(self, redis_url: str, run_id: str, attempt: int, now: float,
                   backup: bool = False) -> Invocation:
        """The invocation again (same id; inputs and spec come from Redis)."""
        return Invocation(run_id, self.worker_id, self.memory_mb, redis_url, list(self.start),
                          None, {}, "client", now, id=self.id, attempt=attempt,
                          heartbeat_s=self.heartbeat_s, backup=backup)


@dataclass(slots=True)
class Execution:
    """A started execution as its lease shows it (``alive`` False: the lease expired)."""

    id: str
    attempt: int
    worker_id: str
    alive: bool
    tasks: dict[int, float] = field(default_factory=dict)  # running task -> start (epoch)
    beat: float = 0.0  # epoch of the last renewal seen
    started: float = 0.0  # epoch the execution started


def _registered(inv: Invocation) -> str:
    return json.dumps({"w": inv.worker_id, "m": inv.memory_mb, "s": list(inv.start),
                       "a": inv.attempt, "t": inv.invoke_time, "hb": inv.heartbeat_s,
                       "by": inv.invoker}, separators=(",", ":"))


def register(store: RunStore, invocations: Sequence[Invocation]) -> None:
    """Register invocations about to be sent (one round trip)."""
    tracked = [i for i in invocations if i.heartbeat_s > 0 and not i.warmup]
    if not tracked:
        return
    k = store.keys
    pipe = store.r.pipeline(transaction=False)
    pipe.hset(k.invocations, mapping={i.id: _registered(i) for i in tracked})
    pipe.expire(k.invocations, store.ttl)
    pipe.execute()


def lease_value(inv: Invocation, started: float, tasks: dict[int, float], now: float) -> str:
    """What a lease holds: worker, attempt, when the execution started, its last beat and
    its running tasks with their starts."""
    return json.dumps({"w": inv.worker_id, "a": inv.attempt, "s": started, "b": now,
                       "t": {str(t): s for t, s in tasks.items()}}, separators=(",", ":"))


def lease_ms(inv: Invocation, beats: int) -> int:
    return max(1, int(inv.heartbeat_s * beats * 1000))


def acquire(store: RunStore, inv: Invocation, value: str, ms: int) -> str:
    """Start an execution of ``inv``: "ok", "ended" (the invocation's work is done: this
    delivery does nothing) or "taken" (another delivery of this attempt runs it)."""
    k = store.keys
    lease = k.lease(inv.id, inv.attempt)
    field = f"{inv.id}:{inv.attempt}"
    pipe = store.r.pipeline(transaction=True)  # one round trip in the common case
    pipe.sismember(k.ended, inv.id)
    pipe.set(lease, value, nx=True, px=ms)
    pipe.hset(k.running, field, inv.worker_id)  # (a taken lease's holder set it too)
    pipe.expire(k.running, store.ttl)
    pipe.exists(k.dag)
    res = pipe.execute()
    if not res[4]:  # a late delivery after the run's cleanup: nothing to do, nothing left
        store.r.delete(k.running, *([lease] if res[1] else []))
        return "ended"
    if res[0]:
        pipe = store.r.pipeline(transaction=True)
        if res[1]:
            pipe.delete(lease)
            pipe.hdel(k.running, field)
        pipe.hdel(k.invocations, inv.id)  # sent again after it ended: no longer queued
        pipe.execute()
        return "ended"
    return "ok" if res[1] else "taken"


def renew(store: RunStore, inv: Invocation, value: str, ms: int,
          durations: Sequence[tuple[int, float]]) -> tuple[bool, bool]:
    """Renew the lease (and record finished tasks' durations); returns (still held,
    invocation ended by another execution)."""
    k = store.keys
    pipe = store.r.pipeline(transaction=False)
    pipe.set(k.lease(inv.id, inv.attempt), value, xx=True, px=ms)
    pipe.sismember(k.ended, inv.id)
    if durations:
        pipe.rpush(k.durations, *(f"{t}:{s:.4f}" for t, s in durations))
        pipe.expire(k.durations, store.ttl)
        pipe.exists(k.dag)
    res = pipe.execute()
    if durations and not res[-1]:  # renewed after the run's cleanup: leave nothing behind
        store.r.delete(k.durations)
    return bool(res[0]), bool(res[1])


def release(store: RunStore, inv: Invocation, ended: bool,
            durations: Sequence[tuple[int, float]] = ()) -> None:
    """The execution is over; ``ended``: its invocation's work is done (or failed for
    good); else another attempt takes over (its lease was lost, or it was cancelled)."""
    k = store.keys
    pipe = store.r.pipeline(transaction=True)
    pipe.exists(k.dag)  # the run is still there (else: its keys were cleaned up)
    if ended:
        pipe.sadd(k.ended, inv.id)
        pipe.expire(k.ended, store.ttl)
        pipe.hdel(k.invocations, inv.id)
    if durations:
        pipe.rpush(k.durations, *(f"{t}:{s:.4f}" for t, s in durations))
        pipe.expire(k.durations, store.ttl)
    pipe.hdel(k.running, f"{inv.id}:{inv.attempt}")
    pipe.delete(k.lease(inv.id, inv.attempt))
    if not pipe.execute()[0]:  # ended after the client cleaned up: leave nothing behind
        store.r.delete(k.ended, k.durations)


def halted(store: RunStore, inv_id: str) -> bool:
    """The run was cancelled or is over (its spec cleaned up), or invocation ``inv_id``
    ended (another execution did its work): one round trip."""
    pipe = store.r.pipeline(transaction=False)
    pipe.exists(store.keys.cancel)
    pipe.sismember(store.keys.ended, inv_id)
    pipe.exists(store.keys.dag)
    cancelled, ended, present = pipe.execute()
    return bool(cancelled) or bool(ended) or not present


# -- the client's view -------------------------------------------------------------------
@dataclass(slots=True)
class Snapshot:
    """Every registered invocation, every started execution, which invocations ended."""

    registered: dict[str, Registered]
    executions: list[Execution]
    ended: set[str]


def snapshot(store: RunStore) -> Snapshot:
    """Read the run's leases (two round trips)."""
    k = store.keys
    pipe = store.r.pipeline(transaction=False)
    pipe.hgetall(k.invocations)
    pipe.hkeys(k.running)
    registered_raw, running_raw = pipe.execute()
    registered = {}
    for key, raw in registered_raw.items():
        inv_id = key.decode() if isinstance(key, bytes) else key
        try:
            d = json.loads(raw)
            registered[inv_id] = Registered(inv_id, str(d["w"]), int(d["m"]),
                                            [int(s) for s in d["s"]], int(d["a"]),
                                            float(d["t"]), float(d["hb"]),
                                            str(d.get("by", "client")))
        except (ValueError, KeyError, TypeError):
            logger.warning("run %s: ignored a malformed invocation entry", k.run_id)
    fields = [f.decode() if isinstance(f, bytes) else f for f in running_raw]
    pipe = store.r.pipeline(transaction=False)
    pipe.smembers(k.ended)
    ids = []
    for f in fields:
        inv_id, _, attempt = f.rpartition(":")
        if not attempt.isdigit():
            logger.warning("run %s: ignored a malformed execution entry", k.run_id)
            continue
        ids.append((inv_id, int(attempt)))
        pipe.get(k.lease(inv_id, int(attempt)))
    res = pipe.execute()
    done = {x.decode() if isinstance(x, bytes) else x for x in res[0]}
    executions = []
    for (inv_id, attempt), value in zip(ids, res[1:], strict=True):
        if value is None:
            executions.append(Execution(inv_id, attempt, "", False))
            continue
        try:
            d: dict[str, Any] = json.loads(value)
            tasks = {int(t): float(s) for t, s in d["t"].items()}
            executions.append(Execution(inv_id, attempt, str(d["w"]), True, tasks,
                                        float(d["b"]), float(d.get("s", 0.0))))
        except (ValueError, KeyError, TypeError, AttributeError):
            logger.warning("run %s: a malformed lease of %s; taken as alive", k.run_id,
                           inv_id)
            executions.append(Execution(inv_id, attempt, "", True))
    return Snapshot(registered, executions, done)


def forget(store: RunStore, executions: Sequence[Execution]) -> None:
    """Drop dead executions from the running set (their invocation was re-sent or ended)."""
    if executions:
        store.r.hdel(store.keys.running, *(f"{e.id}:{e.attempt}" for e in executions))


def durations(store: RunStore, start: int) -> tuple[list[tuple[int, float]], int]:
    """Finished tasks' durations recorded from list index ``start`` on; and the next index."""
    raw = store.r.lrange(store.keys.durations, start, -1)
    out = []
    for item in raw:
        t, _, s = (item.decode() if isinstance(item, bytes) else item).partition(":")
        try:
            out.append((int(t), float(s)))
        except ValueError:
            logger.warning("run %s: ignored a malformed task duration", store.keys.run_id)
    return out, start + len(raw)
