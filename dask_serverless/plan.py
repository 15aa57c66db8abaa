"""Plan: which worker runs each task and with which resource config."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from .dag import DAG

LAMBDA_MB_PER_VCPU = 1769  # Lambda gives one full vCPU at 1769 MB
MIN_MEMORY_MB, MAX_MEMORY_MB = 128, 10240
MAX_THREADS = 256  # per worker invocation


class PlanError(ValueError):
    """A plan does not fit its DAG or names an invalid worker or config."""


@dataclass(frozen=True, slots=True)
class ResourceConfig:
    """Memory of a worker in MB; vCPUs follow memory the Lambda way."""

    memory_mb: int

    def __post_init__(self) -> None:
        if not isinstance(self.memory_mb, int) or not (
            MIN_MEMORY_MB <= self.memory_mb <= MAX_MEMORY_MB
        ):
            raise PlanError(
                f"resource config memory_mb={self.memory_mb!r} must be an integer "
                f"between {MIN_MEMORY_MB} and {MAX_MEMORY_MB}"
            )

    @property
    def vcpus(self) -> float:
        return self.memory_mb / LAMBDA_MB_PER_VCPU

    def __str__(self) -> str:
        return f"{self.memory_mb}MB"


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """A worker (a cluster of tasks). ``floating``: its first task runs in whichever
    invocation makes it ready (WUKONG's fan-in rule) when the config matches.
    ``threads``: how many of its ready tasks an invocation runs at once (like a Dask
    worker's ``nthreads``; tasks that wait on I/O or release the GIL overlap)."""

    id: str
    config: ResourceConfig
    floating: bool = False
    threads: int = 1


@dataclass(frozen=True, slots=True)
class Warmup:
    """Pre-warm: ``count`` containers of ``memory_mb`` are started ``at_s`` seconds after
    submission, so that invocations predicted to start cold start warm."""

    at_s: float
    memory_mb: int
    count: int = 1


@dataclass
class Optimizations:
    """Runtime behaviour a plan asks for, on top of its placement.

    - ``prewarm``: timed warm-ups the client sends (``Warmup``);
    - ``duplicate``: fan-in task -> upstream tasks that a producer finding the fan-in
      incomplete may run itself (task-dup; first writer wins, fan-in sets are idempotent);
    - ``delay``: producer task -> seconds it may hold its output waiting for the other
      inputs of its fan-ins it can run itself (WUKONG's delayed I/O);
    - ``preload``: while holding, download each input as soon as it is published.
    """

    prewarm: list[Warmup] = field(default_factory=list)
    duplicate: dict[int, tuple[int, ...]] = field(default_factory=dict)
    delay: dict[int, float] = field(default_factory=dict)
    preload: bool = False

    def __bool__(self) -> bool:
        return bool(self.prewarm or self.duplicate or self.delay or self.preload)

    def to_dict(self) -> dict[str, Any]:
        return {"prewarm": [asdict(w) for w in self.prewarm],
                "duplicate": {str(k): list(v) for k, v in self.duplicate.items()},
                "delay": {str(k): v for k, v in self.delay.items()},
                "preload": self.preload}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Optimizations:
        return cls([Warmup(**w) for w in data.get("prewarm", [])],
                   {int(k): tuple(v) for k, v in data.get("duplicate", {}).items()},
                   {int(k): float(v) for k, v in data.get("delay", {}).items()},
                   bool(data.get("preload", False)))


@dataclass
class Plan:
    """``assignment[task_id]`` is a worker id present in ``workers``."""

    assignment: list[str]
    workers: dict[str, WorkerSpec]
    planner: str = "custom"
    options: dict[str, Any] = field(default_factory=dict)
    optimizations: Optimizations = field(default_factory=Optimizations)

    def worker_of(self, task_id: int) -> WorkerSpec:
        return self.workers[self.assignment[task_id]]

    def validate(self, dag: DAG) -> None:
        if len(self.assignment) != len(dag):
            raise PlanError(
                f"plan assigns {len(self.assignment)} tasks but the DAG has {len(dag)}"
            )
        for tid, wid in enumerate(self.assignment):
            if wid not in self.workers:
                raise PlanError(
                    f"task {dag.tasks[tid].key!r} is assigned to unknown worker {wid!r}"
                )
        for wid, spec in self.workers.items():
            if spec.id != wid:
                raise PlanError(f"worker {wid!r} has a spec named {spec.id!r}")
            if not isinstance(spec.config, ResourceConfig):
                raise PlanError(f"worker {wid!r} has no ResourceConfig: {spec.config!r}")
            if not isinstance(spec.threads, int) or not 1 <= spec.threads <= MAX_THREADS:
                raise PlanError(f"worker {wid!r} has threads={spec.threads!r}: must be an "
                                f"integer between 1 and {MAX_THREADS}")
        self._validate_optimizations(dag)

    def _validate_optimizations(self, dag: DAG) -> None:
        n = len(dag)
        opt = self.optimizations
        for e, ups in opt.duplicate.items():
            if not 0 <= e < n:
                raise PlanError(f"task-dup names fan-in task id {e}, not in the DAG")
            bad = [u for u in ups if u not in dag.tasks[e].deps]
            if bad:
                raise PlanError(f"task-dup: task ids {bad} are not inputs of fan-in "
                                f"{dag.tasks[e].key!r}")
        for t, bound in opt.delay.items():
            if not 0 <= t < n or bound < 0:
                raise PlanError(f"delayed I/O: task id {t} / bound {bound!r} s is invalid")
        for w in opt.prewarm:
            ResourceConfig(w.memory_mb)
            if w.at_s < 0 or w.count < 1:
                raise PlanError(f"pre-warm {w!r}: time must be >= 0 and count >= 1")

    def to_json(self, dag: DAG | None = None) -> str:
        data: dict[str, Any] = {
            "planner": self.planner,
            "options": self.options,
            "assignment": self.assignment,
            "workers": {w: asdict(s) for w, s in self.workers.items()},
            "optimizations": self.optimizations.to_dict(),
        }
        if dag is not None:
            data["keys"] = [repr(t.key) for t in dag.tasks]
        return json.dumps(data)

    @classmethod
    def from_json(cls, text: str) -> Plan:
        data = json.loads(text)
        workers = {
            w: WorkerSpec(s["id"], ResourceConfig(**s["config"]), s.get("floating", False),
                          s.get("threads", 1))
            for w, s in data["workers"].items()
        }
        return cls(list(data["assignment"]), workers, data.get("planner", "custom"),
                   data.get("options", {}),
                   Optimizations.from_dict(data.get("optimizations", {})))

    def config_of(self, task_id: int) -> ResourceConfig:
        return self.workers[self.assignment[task_id]].config
