"""``dask``: what Dask distributed would do with a fixed pool of N workers.

Tasks are taken in Dask's priority order and each goes to the worker where it can start
earliest, counting the transfer of inputs held by other workers (data locality; ties go
to the worker holding more of its input bytes). The plan pins each task to its pool
worker (never floating), so running it serverlessly shows the cost of that placement;
``options["cluster_makespan_s"]`` is the makespan the same schedule predicts on an
always-warm cluster, to compare serverless plans with what the cluster would do.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Any

from ..dag import DAG
from ..estimates import Estimates
from ..plan import Plan, ResourceConfig, WorkerSpec
from .base import cost_model_of, task_config


@dataclass
class DaskPlanner:
    name: str = "dask"
    workers: int | None = None  # pool size; default: the parallelism

    def plan(self, dag: DAG, *, parallelism: int, memory_mb: int,
             predictor: Any = None, threads: int | None = None,
             warm: dict[int, int] | None = None) -> Plan:
        est = Estimates(dag, cost_model_of(predictor))
        pool = max(1, self.workers or parallelism)
        specs: dict[str, WorkerSpec] = {}
        free: dict[str, float] = {}
        idle: dict[ResourceConfig, list[tuple[float, str]]] = {}  # heap per config
        end = [0.0] * len(dag)
        assignment = [""] * len(dag)
        out = est.out_bytes
        for t in dag.tasks:
            cfg = task_config(t, memory_mb)
            heap = idle.get(cfg)
            if heap is None:
                heap = idle[cfg] = []
                for _ in range(pool):
                    wid = f"w{len(specs)}"
                    specs[wid] = WorkerSpec(wid, cfg, threads=threads or 1)
                    free[wid] = 0.0
                    heap.append((0.0, wid))
            while heap[0][0] != free[heap[0][1]]:  # drop stale entries
                heapq.heappop(heap)
            candidates = {heap[0][1]} | {assignment[d] for d in t.deps
                                        if specs[assignment[d]].config == cfg}
            best: tuple[float, int, str] | None = None
            for wid in sorted(candidates):
                ready, local = 0.0, 0
                for d in t.deps:
                    if assignment[d] == wid:
                        ready = max(ready, end[d])
                        local += out[d]
                    else:
                        ready = max(ready, end[d] + est.download(out[d]))
                choice = (max(ready, free[wid]), -local, wid)
                if best is None or choice < best:
                    best = choice
            assert best is not None
            start, _, wid = best
            assignment[t.id] = wid
            end[t.id] = start + est.exec_time(t.id, cfg)
            free[wid] = end[t.id]
            heapq.heappush(heap, (end[t.id], wid))
        cluster_makespan = max((end[o] for o in dag.outputs), default=0.0)
        return Plan(assignment, specs, self.name,
                    {"pool": pool, "cluster_makespan_s": cluster_makespan})
