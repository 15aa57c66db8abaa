"""``per-task``: every task on a worker of its own, the obvious plan planners must beat
(each task but the roots is invoked by its last input, all data goes through Redis)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..dag import DAG
from ..plan import Plan
from .base import Workers, task_config


@dataclass
class PerTaskPlanner:
    name: str = "per-task"

    def plan(self, dag: DAG, *, parallelism: int, memory_mb: int,
             predictor: Any = None, threads: int | None = None,
             warm: dict[int, int] | None = None) -> Plan:
        workers = Workers(threads)
        assignment = [workers.new(task_config(t, memory_mb)) for t in dag.tasks]
        return Plan(assignment, workers.specs, self.name)
