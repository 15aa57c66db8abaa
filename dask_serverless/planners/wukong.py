"""WUKONG's placement made explicit, bounded by a parallelism width.

- roots are split, in Dask's priority order, into at most ``parallelism`` contiguous
  blocks, one worker each (locality: sibling leaves share a worker);
- a chain stays on its worker: a task's first dependent continues on it;
- at a fan-out the other dependents start new workers, up to ``parallelism`` branches per
  fan-out, handed out in contiguous blocks;
- a fan-in whose inputs all sit on one worker stays there; any other fan-in is *floating*:
  it runs where its last input finished.
A task annotated with another memory gets a worker of that config.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..dag import DAG
from ..plan import Plan, ResourceConfig, WorkerSpec
from .base import task_config


@dataclass
class WukongPlanner:
    name: str = "wukong"

    def plan(self, dag: DAG, *, parallelism: int, memory_mb: int,
             predictor: Any = None) -> Plan:
        workers: dict[str, WorkerSpec] = {}
        assignment: list[str] = [""] * len(dag)

        def new_worker(config: ResourceConfig, floating: bool = False) -> str:
            wid = f"w{len(workers)}"
            workers[wid] = WorkerSpec(wid, config, floating)
            return wid

        def same_or_new(wid: str, config: ResourceConfig) -> str:
            return wid if workers[wid].config == config else new_worker(config)

        roots = dag.roots()
        block = max(1, -(-len(roots) // max(1, parallelism)))
        root_worker: dict[tuple[int, ResourceConfig], str] = {}
        for i, tid in enumerate(roots):
            cfg = task_config(dag.tasks[tid], memory_mb)
            slot = (i // block, cfg)
            if slot not in root_worker:
                root_worker[slot] = new_worker(cfg)
            assignment[tid] = root_worker[slot]

        # fan-out branches: dependent -> worker chosen by its first dependency
        branch_of: dict[int, str] = {}
        for t in dag.tasks:
            if len(t.dependents) > 1:
                width = min(parallelism, len(t.dependents))
                per = -(-len(t.dependents) // width)
                block_workers: dict[int, str] = {}
                for j, d in enumerate(t.dependents):
                    b = j // per
                    if b == 0:
                        continue  # first block continues on the producer's worker
                    if b not in block_workers:
                        block_workers[b] = f"branch:{t.id}:{b}"
                    branch_of.setdefault(d, block_workers[b])

        branch_worker: dict[str, str] = {}
        for t in dag.tasks:
            if not t.deps:
                continue
            cfg = task_config(t, memory_mb)
            dep_workers = {assignment[d] for d in t.deps}
            if len(t.deps) == 1 or len(dep_workers) == 1:
                src = assignment[t.deps[0]]
                if len(t.deps) == 1 and t.id in branch_of:
                    label = branch_of[t.id]
                    if label not in branch_worker:
                        branch_worker[label] = new_worker(cfg)
                    wid = same_or_new(branch_worker[label], cfg)
                else:
                    wid = same_or_new(src, cfg)
                assignment[t.id] = wid
            else:
                assignment[t.id] = new_worker(cfg, floating=True)
        return Plan(assignment, workers, self.name, {"parallelism": parallelism})
