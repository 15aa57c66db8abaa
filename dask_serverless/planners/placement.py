"""Greedy placement shared by the ``wukong`` and ``uniform`` planners.

- roots are split, in Dask's priority order, into at most ``parallelism`` contiguous
  blocks, one worker each (locality: sibling leaves share a worker);
- a chain stays on its worker;
- at a fan-out the single-input dependents are split into contiguous blocks: the first
  block continues on the producer's worker, each other block starts a new worker;
- a fan-in whose inputs all sit on one worker stays there; any other fan-in is
  *floating*: it runs where its last input finished.

Without predictions blocks hold equal numbers of tasks (WUKONG's structural policy).
With predictions (``Estimates``) blocks hold equal predicted *work*, the producer's block
gets extra work worth the time a new worker needs to start and fetch the producer's
output (so a large output or cheap successors stay local: task clustering), and
``min_block_s`` keeps blocks from being smaller than that many seconds of work.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..dag import DAG
from ..estimates import Estimates
from ..plan import Plan, ResourceConfig
from .base import Workers, bottom_levels, chain_work, task_config


@dataclass
class Placement:
    dag: DAG
    parallelism: int
    memory_mb: int
    est: Estimates | None = None
    critical_first: bool = False  # fan-out: the branch on the critical path continues
    min_block_s: float = 0.0
    threads: int | None = None

    def plan(self, name: str) -> Plan:
        dag, width = self.dag, max(1, self.parallelism)
        workers = Workers(self.threads)
        assignment: list[str] = [""] * len(dag)
        base = ResourceConfig(self.memory_mb)
        if self.est is not None:
            weight = self.est.exec_times(base)
            cold = self.est.invocation_time(base, "cold")
        else:
            weight, cold = [1.0] * len(dag), 0.0
        work = chain_work(dag, weight)
        level = bottom_levels(dag, weight) if self.critical_first else None

        roots = dag.roots()
        root_worker: dict[tuple[int, ResourceConfig], str] = {}
        for b, block in enumerate(self._blocks(roots, work, width, 0.0)):
            for tid in block:
                cfg = task_config(dag.tasks[tid], self.memory_mb)
                if (b, cfg) not in root_worker:
                    root_worker[b, cfg] = workers.new(cfg)
                assignment[tid] = root_worker[b, cfg]

        branch_of: dict[int, int] = {}  # dependent -> its block number (0: stay)
        for t in dag.tasks:
            single = [d for d in t.dependents if len(dag.tasks[d].deps) == 1]
            if len(single) < 2:
                continue
            if level is not None:
                single.sort(key=lambda d: -level[d])
            head = 0.0
            if self.est is not None:
                size = self.est.out_bytes[t.id]
                head = cold + self.est.upload(size) + self.est.download(size)
            for b, block in enumerate(self._blocks(single, work, width, head)):
                for d in block:
                    branch_of[d] = b

        block_worker: dict[tuple[int, int], str] = {}
        for t in dag.tasks:
            if not t.deps:
                continue
            cfg = task_config(t, self.memory_mb)
            dep_workers = {assignment[d] for d in t.deps}
            if len(dep_workers) == 1:
                src = assignment[t.deps[0]]
                b = branch_of.get(t.id, 0) if len(t.deps) == 1 else 0
                if b:
                    slot = (t.deps[0], b)
                    if slot not in block_worker:
                        block_worker[slot] = workers.new(cfg)
                    assignment[t.id] = workers.same_or_new(block_worker[slot], cfg)
                else:
                    assignment[t.id] = workers.same_or_new(src, cfg)
            else:
                assignment[t.id] = workers.new(cfg, floating=True)
        return Plan(assignment, workers.specs, name, {"parallelism": width})

    def _blocks(self, items: list[int], work: list[float], width: int,
                head: float) -> list[list[int]]:
        """Contiguous blocks of ``items``: equal counts without predictions, else equal
        work with ``head`` seconds more in the first block."""
        if not items:
            return []
        if self.est is None:
            per = -(-len(items) // min(width, len(items)))
            return [items[i:i + per] for i in range(0, len(items), per)]
        total = sum(work[i] for i in items)
        target = max((total - head) / width, self.min_block_s, 1e-12)
        blocks: list[list[int]] = [[]]
        done, base = 0.0, -1.0
        for i in items:  # the first block while it ends in time, then by work midpoints
            if base < 0 and (done + work[i] - head <= target * (1 + 1e-6) or not blocks[0]):
                b = 0
            else:
                base = done if base < 0 else base
                mid = done - base + work[i] / 2
                b = min(width - 1, 1 + int(mid / target))
            if b > len(blocks) - 1:
                blocks.append([])
            blocks[-1].append(i)
            done += work[i]
        return blocks
