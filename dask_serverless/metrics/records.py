"""What is recorded: a run, its worker invocations and their tasks.

Times are epoch seconds (``time.time()``), durations seconds, sizes bytes. Workers
write one invocation record and one batch of task rows per invocation; the client writes
the run record. To keep the worker's JSON small and quick to write, task rows are lists in
``TASK_FIELDS`` order with times as integer microseconds: ``start`` / ``end`` after the
batch's ``t0`` (the invocation's start), durations as they are.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

SCHEMA = 1

# How an input reached the task: downloaded from Redis, carried inline in the
# invocation payload, or already held by the worker (produced or fetched earlier).
SOURCES = ("redis", "inline", "local")


@dataclass(slots=True)
class InputRecord:
    """One dependency of a task: who produced it, its size and how it arrived."""

    dep: int  # producer task id
    nbytes: int  # pickled size when it was pickled, else dask.sizeof
    source: str  # one of SOURCES
    download_s: float = 0.0  # share of the Redis round trip (0 unless source == "redis")


@dataclass(slots=True)
class TaskRecord:
    """One task execution. ``upload_s`` is the producer's one MULTI round trip, which
    also registers its fan-in edges; ``fanin_s`` is the claim of completed fan-ins."""

    run_id: str
    invocation_id: str
    worker_id: str
    memory_mb: int
    task_id: int
    key: str
    function: str
    start: float  # picked from the ready queue
    end: float  # output stored / dependents dispatched
    exec_s: float
    inputs: list[InputRecord]
    output_bytes: int
    upload_bytes: int = 0
    upload_s: float = 0.0
    fanin_s: float = 0.0
    invoked: list[str] = field(default_factory=list)  # invocation ids this task started
    cpu_s: float = -1.0  # CPU time of the task's thread during exec_s (-1: not recorded)
    size: int = 0  # a task without inputs: bytes of data it makes (TaskNode.size; 0: unknown)

    @property
    def input_bytes(self) -> int:
        return sum(i.nbytes for i in self.inputs)

    @property
    def download_bytes(self) -> int:
        return sum(i.nbytes for i in self.inputs if i.source == "redis")

    @property
    def download_s(self) -> float:
        return sum(i.download_s for i in self.inputs)


TASK_FIELDS = ("task_id", "key", "function", "start", "end", "exec_s", "inputs",
               "output_bytes", "upload_bytes", "upload_s", "fanin_s", "invoked", "cpu_s",
               "size")


def micros(seconds: float) -> int:
    """Seconds as the integer microseconds a task row holds."""
    return int(seconds * 1e6 + 0.5)


def tasks_from_batch(run_id: str, batch: dict[str, Any]) -> list[TaskRecord]:
    """Decode one invocation's ``{"invocation_id", "worker_id", "memory_mb", "t0",
    "rows"}`` (see module docstring)."""
    out, t0 = [], batch["t0"]
    for row in batch["rows"]:
        v = dict(zip(TASK_FIELDS, row, strict=False))  # older rows lack cpu_s, size
        inputs = [InputRecord(dep, n, source, us / 1e6) for dep, n, source, us in v["inputs"]]
        out.append(TaskRecord(
            run_id, batch["invocation_id"], batch["worker_id"], batch["memory_mb"],
            v["task_id"], v["key"], v["function"], t0 + v["start"] / 1e6,
            t0 + v["end"] / 1e6, v["exec_s"] / 1e6, inputs, v["output_bytes"],
            v["upload_bytes"], v["upload_s"] / 1e6, v["fanin_s"] / 1e6, v["invoked"],
            v.get("cpu_s", -1e6) / 1e6, v.get("size", 0)))
    return out


@dataclass(slots=True)
class InvocationRecord:
    """One worker invocation: who invoked it, when it started, cold or warm."""

    run_id: str
    invocation_id: str
    worker_id: str
    invoker: str  # "client" or the invoking worker's id
    memory_mb: int
    invoke_time: float
    start_time: float
    end_time: float
    cold: bool
    spec_fetch_s: float  # run spec (its slices: tasks, plan, layout) fetched and decoded
    tasks: int
    invoked: list[str] = field(default_factory=list)
    upload_bytes: int = 0
    download_bytes: int = 0
    inline_bytes: int = 0  # inputs that came inside the invocation payload
    failed: bool = False
    warmup: bool = False
    attempt: int = 0  # a retried invocation keeps its id; each attempt is recorded
    dispatch_time: float = 0.0  # handed to a container after queueing; 0: not queued/known
    spec_bytes: int = 0  # run spec bytes fetched (header, slices, shared pieces); 0: cached

    @property
    def startup_s(self) -> float:
        """Cold or warm worker start: from dispatch (invoke, when not queued) to start."""
        return max(0.0, self.start_time - (self.dispatch_time or self.invoke_time))

    @property
    def queue_s(self) -> float:
        """Time the invocation waited for a free container (local backend)."""
        return max(0.0, self.dispatch_time - self.invoke_time) if self.dispatch_time else 0.0

    @property
    def duration_s(self) -> float:
        return max(0.0, self.end_time - self.start_time)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InvocationRecord:
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


@dataclass(slots=True)
class RunRecord:
    """One run as the client saw it, plus totals over its invocation records."""

    run_id: str
    signature: str  # DAG.signature(): same program on other data -> same signature
    planner: str
    planner_options: dict[str, Any]
    backend: str
    tasks: int
    workers_planned: int
    submit_time: float
    makespan: float
    status: str  # "ok" | "failed"
    invocations: int = 0
    workers: int = 0  # distinct worker ids that ran
    cold_starts: int = 0
    warm_starts: int = 0
    upload_bytes: int = 0
    download_bytes: int = 0
    inline_bytes: int = 0
    spec_bytes: int = 0  # run spec bytes the invocations fetched, in all
    gb_seconds: float = 0.0
    cost_usd: float = 0.0
    complete: bool = True  # every invocation record arrived before the run was written
    functions: str = ""  # what the workflow runs: its outputs' functions <- the most used
    error: str = ""  # a failed run: which task failed and why (first line)
    retries: int = 0  # invocations the client sent again after their lease expired
    backups: int = 0  # straggler backups the client sent (runtime.monitor)
    schema: int = SCHEMA

    @property
    def bytes_moved(self) -> int:
        return self.upload_bytes + self.download_bytes + self.inline_bytes

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["bytes_moved"] = self.bytes_moved
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunRecord:
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})
