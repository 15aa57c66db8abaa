"""WUKONG's policy made explicit, bounded by a parallelism width.

Chains stay on one worker; at a fan-out one block of branches stays and the others start
new workers; fan-ins run where their last input finished (floating). See
``placement.Placement`` for the exact rules.

With a predictor it adds WUKONG's two optimisations: **task clustering** (blocks sized by
predicted work, so a large output or cheap successors stay on the producer's worker) and
**delayed I/O** (a producer with a large output holds it, up to a predicted bound, for
the other inputs of its fan-in and runs the fan-in itself). Without one it is the
structural policy only, which needs no history.

With a predictor (history, or on a first run ``costmodel.SizePrior`` from the data sizes
its roots declare) it also simulates the alternatives, the structural plan and
``uniform``'s best (width, threads, memory searched), and keeps whichever the objective
prefers among those whose workers hold their predicted data (``base.fits``), its own plan
unless another is ``CHOICE_MARGIN`` better (or within that margin and moving that much
less data): so where moving data
costs more than spreading it saves (a GEMM on few cores), it keeps the data local.
``plan.options["picked"]`` names the candidate kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..dag import DAG
from ..estimates import Estimates
from ..plan import Plan, ResourceConfig
from ..simulator import SimResult, Simulator
from .base import pressure, versus
from .objective import Objective
from .passes import simulated_delayed_io
from .placement import Placement
from .uniform import UniformPlanner

CHOICE_MARGIN = 0.05  # another candidate must be predicted this much better


@dataclass
class WukongPlanner:
    name: str = "wukong"
    clustering: bool = True
    delayed_io: bool = True
    objective: Objective | str = "makespan"
    budget_s: float | None = None
    choose: bool = True  # with a predictor: keep the best of the simulated candidates

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
        sim = Simulator(dag, est, warm=warm)
        result = None
        if self.delayed_io:
            plan, result = simulated_delayed_io(dag, plan, sim, objective)
        if not self.choose:
            return plan
        return self._best(dag, plan, result or sim.run(plan), sim, objective, parallelism,
                          memory_mb, threads)

    def _best(self, dag: DAG, own: Plan, own_r: SimResult, sim: Simulator,
              objective: Objective, parallelism: int, memory_mb: int,
              threads: int | None) -> Plan:
        """``own`` (simulated: ``own_r``) or a simulated alternative the objective
        prefers by ``CHOICE_MARGIN``."""
        structural = Placement(dag, parallelism, memory_mb, threads=threads).plan(self.name)
        uniform = UniformPlanner(objective=objective, budget_s=self.budget_s).best(
            dag, parallelism, memory_mb, sim, threads)
        out = sim.est.out_bytes
        best, best_r, picked = own, own_r, "wukong"
        best_load = pressure(dag, own, out)
        for name, plan, r in (("structural", structural, None), ("uniform", *uniform)):
            load = pressure(dag, plan, out)
            verdict = versus(load, best_load)
            if verdict == "skip":
                continue  # its workers would not hold their data (or less likely so)
            r = r or sim.run(plan)
            if verdict == "take" or _preferred(r, best_r, objective):
                best, best_r, picked, best_load = plan, r, name, load
        if best is not own:
            best = Plan(best.assignment, best.workers, self.name, dict(best.options),
                        best.optimizations)
        best.options.update(picked=picked, clustering=self.clustering,
                            objective=objective.kind)
        return best


def _preferred(r: SimResult, best: SimResult, objective: Objective) -> bool:
    """``r`` beats ``best`` by ``CHOICE_MARGIN``, or neither beats the other by that much
    and ``r`` moves that much less data (a near tie goes to the plan that keeps data
    local: predictions fitted on noisy runs would otherwise flip between them)."""
    if objective.better(r, best, CHOICE_MARGIN):
        return True
    if objective.better(best, r, CHOICE_MARGIN):
        return False
    return r.bytes_moved < best.bytes_moved * (1 - CHOICE_MARGIN)
