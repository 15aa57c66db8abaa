"""The planner interface and helpers shared by planners."""

from __future__ import annotations

from typing import Any, Protocol

from ..dag import DAG, TaskNode
from ..plan import Plan, ResourceConfig


class Planner(Protocol):
    """Turns a DAG into a Plan. ``predictor`` is optional (history-driven planners)."""

    name: str

    def plan(self, dag: DAG, *, parallelism: int, memory_mb: int,
             predictor: Any = None) -> Plan: ...


def task_memory(task: TaskNode, default_mb: int) -> int:
    """Memory a task asks for with ``dask.annotate(serverless={"memory": MB})``."""
    mem = task.annotations.get("memory", default_mb)
    return int(mem)


def task_config(task: TaskNode, default_mb: int) -> ResourceConfig:
    return ResourceConfig(task_memory(task, default_mb))
