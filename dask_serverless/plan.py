"""Plan: which worker runs each task and with which resource config."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from .dag import DAG

LAMBDA_MB_PER_VCPU = 1769  # Lambda gives one full vCPU at 1769 MB
MIN_MEMORY_MB, MAX_MEMORY_MB = 128, 10240


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
    invocation makes it ready (WUKONG's fan-in rule) when the config matches."""

    id: str
    config: ResourceConfig
    floating: bool = False


@dataclass
class Plan:
    """``assignment[task_id]`` is a worker id present in ``workers``."""

    assignment: list[str]
    workers: dict[str, WorkerSpec]
    planner: str = "custom"
    options: dict[str, Any] = field(default_factory=dict)

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

    def to_json(self, dag: DAG | None = None) -> str:
        data: dict[str, Any] = {
            "planner": self.planner,
            "options": self.options,
            "assignment": self.assignment,
            "workers": {w: asdict(s) for w, s in self.workers.items()},
        }
        if dag is not None:
            data["keys"] = [repr(t.key) for t in dag.tasks]
        return json.dumps(data)

    @classmethod
    def from_json(cls, text: str) -> Plan:
        data = json.loads(text)
        workers = {
            w: WorkerSpec(s["id"], ResourceConfig(**s["config"]), s.get("floating", False))
            for w, s in data["workers"].items()
        }
        return cls(list(data["assignment"]), workers, data.get("planner", "custom"),
                   data.get("options", {}))
