"""What an invocation carries, and the per-run spec a worker executes."""

from __future__ import annotations

import dataclasses
import pickle
import uuid
from dataclasses import dataclass, field

import cloudpickle

from ..dag import DAG
from ..layout import Layout
from ..plan import Plan
from ..storage import serialize


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
    id: str = field(default_factory=lambda: uuid.uuid4().hex)  # kept across retries
    attempt: int = 0

    def dumps(self) -> bytes:
        return serialize.seal(pickle.dumps(self, protocol=5))

    @staticmethod
    def loads(data: bytes) -> Invocation:
        return pickle.loads(serialize.unseal(data, "invocation payload"))

    def retry(self) -> Invocation:
        """The same invocation (same id, so it may re-claim its fan-ins), next attempt."""
        return dataclasses.replace(self, attempt=self.attempt + 1)


@dataclass(slots=True)
class RunSpec:
    """Everything a worker needs about a run; stored once per run."""

    dag: DAG
    plan: Plan
    layout: Layout
    ttl: int
    inline_bytes: int
    report_tasks: bool
    max_output_bytes: int = 500 * 2**20
    metrics_url: str | None = None  # where workers record metrics; None: not recorded

    def dumps(self) -> bytes:
        """Serialise once (each distinct function pickled once) and seal."""
        try:
            data = cloudpickle.dumps(self, protocol=5)
        except Exception as exc:
            raise _unpicklable_task(self.dag, exc) from exc
        return serialize.seal(data)

    @staticmethod
    def loads(data: bytes) -> RunSpec:
        return pickle.loads(serialize.unseal(data, "run spec"))


def _unpicklable_task(dag: DAG, exc: Exception) -> TypeError:
    for t in dag.tasks:
        try:
            cloudpickle.dumps(t.node)
        except Exception as inner:
            return TypeError(f"task {t.key!r} cannot be serialised for the workers "
                             f"(function {t.func_name!r}): {inner}")
    return TypeError(f"the run spec cannot be serialised: {exc}")
