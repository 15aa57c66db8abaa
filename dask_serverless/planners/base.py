"""The planner interface and helpers shared by planners."""

from __future__ import annotations

from typing import Any, Protocol

from ..costmodel import CostModel, default_cost_model
from ..dag import DAG, TaskNode
from ..plan import Plan, ResourceConfig, WorkerSpec


class Planner(Protocol):
    """Turns a DAG into a Plan. ``predictor`` is a ``CostModel`` (history-driven
    planners fall back to ``default_cost_model()`` without one). ``threads``: tasks each
    worker runs at once (None: the planner's choice, 1 unless it searches). ``warm``: idle
    containers per memory size now (planners that simulate count them warm)."""

    name: str

    def plan(self, dag: DAG, *, parallelism: int, memory_mb: int,
             predictor: Any = None, threads: int | None = None,
             warm: dict[int, int] | None = None) -> Plan: ...


def task_memory(task: TaskNode, default_mb: int) -> int:
    """Memory a task asks for with ``dask.annotate(serverless={"memory": MB})``."""
    mem = task.annotations.get("memory", default_mb)
    return int(mem)


def task_config(task: TaskNode, default_mb: int) -> ResourceConfig:
    return ResourceConfig(task_memory(task, default_mb))


def pinned(task: TaskNode) -> bool:
    """True when the user chose this task's memory (planners must not change it)."""
    return "memory" in task.annotations


def cost_model_of(predictor: Any) -> CostModel:
    return predictor if predictor is not None else default_cost_model()


class Workers:
    """Worker ids handed out in order: ``w0``, ``w1``, ..."""

    def __init__(self, threads: int | None = None) -> None:
        self.specs: dict[str, WorkerSpec] = {}
        self.threads = threads or 1

    def new(self, config: ResourceConfig, floating: bool = False) -> str:
        wid = f"w{len(self.specs)}"
        self.specs[wid] = WorkerSpec(wid, config, floating, self.threads)
        return wid

    def same_or_new(self, wid: str, config: ResourceConfig) -> str:
        return wid if self.specs[wid].config == config else self.new(config)


def bottom_levels(dag: DAG, weight: list[float]) -> list[float]:
    """Longest path from each task to an exit, the task included."""
    level = list(weight)
    for t in reversed(dag.tasks):
        if t.dependents:
            level[t.id] = weight[t.id] + max(level[d] for d in t.dependents)
    return level


def chain_work(dag: DAG, weight: list[float]) -> list[float]:
    """Work that follows a task on its worker: itself plus the chain of single-input
    first dependents after it."""
    work = list(weight)
    for t in reversed(dag.tasks):
        if t.dependents:
            f = t.dependents[0]
            if len(dag.tasks[f].deps) == 1:
                work[t.id] += work[f]
    return work
