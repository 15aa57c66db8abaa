"""``non-uniform``: per-worker resource configs, tuned by simulation.

Starts from the ``uniform`` plan, then repeats: move the workers on the predicted
critical path one memory size up while the simulator says the objective improves
(makespan drops), and move the workers off it one size down while the makespan holds
and the cost drops. Workers running tasks with a user-annotated memory keep it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..dag import DAG
from ..estimates import Estimates
from ..plan import Plan, ResourceConfig
from ..simulator import Simulator
from .base import cost_model_of, pinned
from .objective import Objective
from .uniform import CANDIDATE_MB, SIM_TASKS_PER_S, UniformPlanner


@dataclass
class NonUniformPlanner:
    name: str = "non-uniform"
    objective: Objective | str = "makespan"
    budget_s: float | None = None
    memories: tuple[int, ...] = CANDIDATE_MB
    rounds: int = 6
    search_s: float = 1.5
    search_share: float = 0.1  # its uniform start: see ``UniformPlanner.search_share``

    def plan(self, dag: DAG, *, parallelism: int, memory_mb: int,
             predictor: Any = None, threads: int | None = None,
             warm: dict[int, int] | None = None) -> Plan:
        objective = Objective.parse(self.objective, self.budget_s)
        est = Estimates(dag, cost_model_of(predictor))
        uniform = UniformPlanner(objective=objective, memories=self.memories,
                                 search_s=self.search_s / 2,
                                 search_share=self.search_share)
        sim = Simulator(dag, est, warm=warm)
        plan, result = uniform.best(dag, parallelism, memory_mb, sim, threads)
        plan.planner = self.name
        fixed = {plan.assignment[t.id] for t in dag.tasks if pinned(t)}
        ladder = sorted(set(self.memories) | {w.config.memory_mb for w in plan.workers.values()})
        budget = sim.simulated_tasks + SIM_TASKS_PER_S * self.search_s / 2  # as uniform's
        for _ in range(self.rounds):
            if sim.simulated_tasks > budget:
                break
            critical = {plan.assignment[t] for t in result.critical_path} - fixed
            others = set(plan.workers) - critical - fixed
            changed = False
            up = _resized(plan, critical, ladder, +1)
            if up is not None:
                r = sim.run(up)
                if r.makespan < result.makespan and objective.better(r, result):
                    plan, result, changed = up, r, True
            down = _resized(plan, others, ladder, -1)
            if down is not None:
                r = sim.run(down)
                if r.makespan <= result.makespan * (1 + 1e-9) and r.cost < result.cost:
                    plan, result, changed = down, r, True
            if not changed:
                break
        plan.options.update(objective=objective.kind,
                            predicted_makespan_s=result.makespan, predicted_cost=result.cost)
        return plan


def _resized(plan: Plan, workers: set[str], ladder: list[int], step: int) -> Plan | None:
    specs = dict(plan.workers)
    moved = False
    for wid in workers:
        spec = specs[wid]
        i = ladder.index(spec.config.memory_mb) + step
        if 0 <= i < len(ladder):
            specs[wid] = dataclasses.replace(spec, config=ResourceConfig(ladder[i]))
            moved = True
    if not moved:
        return None
    return dataclasses.replace(plan, workers=specs, options=dict(plan.options))
