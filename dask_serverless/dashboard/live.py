"""The dashboard's side of a run's live feed (``runtime.live``): the state of a running
run, rebuilt from its event list and kept current by its pub/sub channel."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import redis

from ..dag import DAG
from ..metrics.plans import PlanRecord
from ..storage.keys import MetricsKeys as K


@dataclass
class LiveInvocation:
    """An invocation a live run reported: its worker, start kind, whether it ended."""

    worker: str
    cold: bool
    ended: bool = False


@dataclass
class LiveState:
    """What is known about a live run after the events up to ``seq``."""

    run_id: str
    signature: str
    submit_time: float
    dag: DAG
    planned_worker: list[str]
    started: set[int] = field(default_factory=set)
    finished: set[int] = field(default_factory=set)
    invocations: dict[str, LiveInvocation] = field(default_factory=dict)
    status: str = "running"  # "running" | "ok" | "failed"
    makespan: float | None = None
    seq: int = 0
    last_event: float = 0.0

    def apply(self, event: dict[str, Any]) -> None:
        self.seq = max(self.seq, int(event.get("seq", self.seq)))
        self.last_event = float(event.get("time", self.last_event))
        kind = event.get("kind")
        if kind == "tasks":
            self.started.update(event.get("started", ()))
            self.finished.update(event.get("ids", ()))
            inv = self.invocations.setdefault(
                event["invocation"], LiveInvocation(event["worker"], bool(event.get("cold"))))
            inv.ended = inv.ended or bool(event.get("end"))
        elif kind == "finished":
            self.status = event["status"]
            self.makespan = event.get("makespan")
            if self.status == "ok":  # the last workers' events may come after the client
                self.finished.update(range(len(self.dag)))
            for inv in self.invocations.values():
                inv.ended = True

    def task_states(self) -> list[str]:
        """Per task: waiting, running, finished (failed: still unfinished, run failed)."""
        unfinished = "failed" if self.status == "failed" else "running"
        return ["finished" if t in self.finished else unfinished if t in self.started
                else "waiting" for t in range(len(self.dag))]

    def counts(self) -> dict[str, int]:
        running = len(self.started - self.finished) if self.status == "running" else 0
        workers = {i.worker for i in self.invocations.values() if not i.ended}
        return {"tasks": len(self.dag), "finished": len(self.finished), "running": running,
                "waiting": len(self.dag) - len(self.finished | self.started),
                "workers running": len(workers),
                "workers seen": len({i.worker for i in self.invocations.values()}),
                "cold starts": sum(i.cold for i in self.invocations.values()),
                "warm starts": sum(not i.cold for i in self.invocations.values())}

    def elapsed(self) -> float:
        if self.makespan is not None:
            return self.makespan
        return max(0.0, time.time() - self.submit_time)


def live_runs(r: redis.Redis, limit: int = 20) -> list[str]:
    """Runs announced to dashboards (running or recently finished), newest first."""
    ids = [x.decode() for x in r.zrevrange(K.live_runs, 0, limit - 1)]
    if not ids:
        return []
    alive = r.mget([K.live(i) for i in ids])
    stale = [i for i, blob in zip(ids, alive, strict=True) if blob is None]
    if stale:
        r.zrem(K.live_runs, *stale)
    return [i for i, blob in zip(ids, alive, strict=True) if blob is not None]


def load_state(r: redis.Redis, run_id: str) -> LiveState | None:
    """The run's structure and every event so far (None: no such live run)."""
    blob = r.get(K.live(run_id))
    if blob is None:
        return None
    data = json.loads(blob)
    record = PlanRecord.loads(blob)
    state = LiveState(run_id, data["signature"], data["submit_time"], record.dag(),
                      list(record.plan.assignment))
    catch_up(r, state)
    return state


def catch_up(r: redis.Redis, state: LiveState) -> bool:
    """Apply the events after ``state.seq`` from the run's event list; True if any."""
    blobs = r.lrange(K.live_log(state.run_id), state.seq, -1)
    for b in blobs:
        state.apply(json.loads(b))
    return bool(blobs)


def wait_for_events(pubsub: Any, timeout: float) -> bool:
    """Block on the run's channel until a message arrives (True) or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        msg = pubsub.get_message(ignore_subscribe_messages=True, timeout=left)
        if msg is not None:
            return True
