"""What an invocation carries, and the per-run spec a worker executes."""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field

from ..dag import DAG
from ..layout import Layout
from ..plan import Plan


@dataclass(slots=True)
class Invocation:
    """One worker invocation (plain data: safe to pickle, small to send)."""

    run_id: str
    worker_id: str
    memory_mb: int
    redis_url: str
    start: list[int]
    spec: bytes | None = None  # the RunSpec inline, or None: fetch it from Redis
    inputs: dict[int, bytes] = field(default_factory=dict)  # upstream outputs inline
    invoker: str = "client"
    invoke_time: float = 0.0
    warmup: bool = False  # pre-warm: start the container, run nothing

    @property
    def id(self) -> str:
        """Unique within a run: each task starts in exactly one invocation."""
        if not self.start:
            return f"{self.worker_id}:warmup:{self.invoke_time!r}"
        return f"{self.worker_id}:{self.start[0]}"

    def dumps(self) -> bytes:
        return pickle.dumps(self, protocol=5)

    @staticmethod
    def loads(data: bytes) -> Invocation:
        return pickle.loads(data)


@dataclass(slots=True)
class RunSpec:
    """Everything a worker needs about a run; stored once per run."""

    dag: DAG
    plan: Plan
    layout: Layout
    ttl: int
    inline_bytes: int
    report_tasks: bool
    metrics_url: str | None = None  # where workers record metrics; None: not recorded

    def dumps(self) -> bytes:
        import cloudpickle

        return cloudpickle.dumps(self, protocol=5)

    @staticmethod
    def loads(data: bytes) -> RunSpec:
        return pickle.loads(data)
