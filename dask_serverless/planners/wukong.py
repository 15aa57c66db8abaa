"""WUKONG's policy made explicit, bounded by a parallelism width.

Chains stay on one worker; at a fan-out one block of branches stays and the others start
new workers; fan-ins run where their last input finished (floating). See
``placement.Placement`` for the exact rules.

With a predictor it adds WUKONG's two optimisations: **task clustering** (blocks sized by
predicted work, so a large output or cheap successors stay on the producer's worker) and
**delayed I/O** (a producer with a large output holds it, up to a predicted bound, for
the other inputs of its fan-in and runs the fan-in itself). Without one it is the
structural policy only, which needs no history.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..dag import DAG
from ..estimates import Estimates
from ..plan import Plan, ResourceConfig
from ..simulator import Simulator
from .objective import Objective
from .passes import delayed_io
from .placement import Placement


@dataclass
class WukongPlanner:
    name: str = "wukong"
    clustering: bool = True
    delayed_io: bool = True
    objective: Objective | str = "makespan"
    budget_s: float | None = None

    def plan(self, dag: DAG, *, parallelism: int, memory_mb: int,
             predictor: Any = None, threads: int | None = None,
             warm: dict[int, int] | None = None) -> Plan:
        if predictor is None:
            return Placement(dag, parallelism, memory_mb, threads=threads).plan(self.name)
        objective = Objective.parse(self.objective, self.budget_s)
        est = Estimates(dag, predictor)
        min_block = 0.0
        if objective.kind != "makespan":
            min_block = est.invocation_time(ResourceConfig(memory_mb), "cold")
        placement = Placement(dag, parallelism, memory_mb, est if self.clustering else None,
                              min_block_s=min_block, threads=threads)
        plan = placement.plan(self.name)
        plan.options.update(clustering=self.clustering, objective=objective.kind)
        if self.delayed_io:
            plan = delayed_io(dag, plan, Simulator(dag, est, warm=warm), objective)
        return plan
