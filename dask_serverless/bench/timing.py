"""Per-task execution times (sync scheduler + a Dask callback) and the lower bounds they
give: the critical path and the total work."""

from __future__ import annotations

import time
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

import dask
from dask.callbacks import Callback

from ..adapter import to_dag
from ..dag import DAG
from .workloads import Workload


class TaskTimer(Callback):
    """Seconds each task took, by key (use as a context manager around a sync run)."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds: dict[Hashable, float] = {}
        self._started: dict[Hashable, float] = {}

    def _pretask(self, key, dsk, state) -> None:
        self._started[key] = time.perf_counter()

    def _posttask(self, key, result, dsk, state, worker_id) -> None:
        self.seconds[key] = time.perf_counter() - self._started.pop(key)


@dataclass(frozen=True)
class Bounds:
    """What the workload's tasks cost on one core of this machine, measured."""

    critical_path_s: float  # longest dependency chain by measured task time
    work_s: float  # sum of all task times

    def lower_bound(self, parallelism: int) -> float:
        """No scheduler with ``parallelism`` cores can finish faster than this."""
        return max(self.critical_path_s, self.work_s / max(1, parallelism))


def reference_run(workload: Workload, runs: int = 2) -> tuple[Any, Bounds, DAG]:
    """Run ``runs`` times with the sync scheduler, timing every task: (result, bounds,
    the workload's DAG).
    A task's time is its fastest run (the first run also pays for imports and caches;
    other processes on the machine only ever add time)."""
    best: dict[Hashable, float] = {}
    result = None
    for _ in range(runs):
        with TaskTimer() as timer:
            result = dask.get(workload.graph, workload.keys)
        for key, seconds in timer.seconds.items():
            best[key] = min(seconds, best.get(key, seconds))
    dag = to_dag(workload.graph if workload.source is None else workload.source,
                 workload.keys)  # the source: with its root sizes
    weights = [best.get(t.key, 0.0) for t in dag.tasks]
    critical, _path = dag.critical_path(weights)
    return result, Bounds(critical, sum(weights)), dag
