"""``uniform``: one resource config for every worker, chosen by simulation.

For each candidate memory size, width (``parallelism``, then halved down to one worker:
on a backend of few shared cores, fewer workers start fewer cold containers competing for
them) and thread count per worker (``THREADS`` unless the caller fixes it: a worker whose
tasks wait on I/O runs several at once instead of starting more workers), it places tasks
with predictions so that the critical path avoids transfers and cold starts (at a fan-out
the branch with the longest path to the end continues on the producer's worker; blocks
are sized by predicted work), adds delayed I/O where it pays, simulates, and keeps the
best plan for the objective among those whose workers hold their predicted data
(``base.fits``; the first candidate is kept when none does). ``parallelism`` is thus an
upper bound, as for Dask's ``num_workers``. Where memory buys no CPU
(``Capacity.cpu_follows_memory``) and only the makespan counts, other sizes than the warm
one are tried only until a plan fits: they would compute no faster, only start cold.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..dag import DAG
from ..estimates import Estimates
from ..plan import Plan, ResourceConfig
from ..simulator import SimResult, Simulator
from .base import cost_model_of, pressure, versus
from .objective import Objective
from .passes import simulated_delayed_io
from .placement import Placement

CANDIDATE_MB = (512, 1024, 1769, 3008)
# on cores shared by every container, tasks that compute this much of their time run no
# faster with more threads than cores: recorded CPU shares read low under contention
# (waiting for a core looks like waiting for I/O), so predictions would favour threads
WAITING_SHARE = 0.2
SIM_TASKS_PER_S = 100_000  # tasks the simulator replays per second (a quiet machine)
THREADS = (1, 2, 4, 8, 16)


@dataclass
class UniformPlanner:
    name: str = "uniform"
    objective: Objective | str = "makespan"
    budget_s: float | None = None
    memories: tuple[int, ...] = CANDIDATE_MB
    threads: tuple[int, ...] = THREADS  # candidates when the caller does not fix it
    # stop trying candidates after about this long (the default is kept) or this share of
    # the best predicted makespan; counted in simulated tasks at ``SIM_TASKS_PER_S``, not
    # wall time, so the same inputs give the same plan however busy the machine is
    search_s: float = 1.0
    search_share: float = 0.1
    min_search_s: float = 0.02
    switch_margin: float = 0.05  # another memory size than the warm one (else the
    # default) must be this much better: plans that flip between near-equal sizes keep
    # starting cold

    def plan(self, dag: DAG, *, parallelism: int, memory_mb: int,
             predictor: Any = None, threads: int | None = None,
             warm: dict[int, int] | None = None) -> Plan:
        sim = Simulator(dag, Estimates(dag, cost_model_of(predictor)), warm=warm)
        plan, _ = self.best(dag, parallelism, memory_mb, sim, threads)
        return plan

    def best(self, dag: DAG, parallelism: int, memory_mb: int, sim: Simulator,
             threads: int | None = None) -> tuple[Plan, SimResult]:
        """The best candidate and its simulated run (``sim`` knows the warm containers
        and carries the caches shared with the caller's other simulations)."""
        objective = Objective.parse(self.objective, self.budget_s)
        est = sim.est
        best: tuple[Plan, SimResult] | None = None
        best_load = float("inf")
        home = _home_memory(memory_mb, sim.warm)
        memories = list(dict.fromkeys((home, memory_mb, *self.memories)))
        counts = [threads] if threads else sorted(set(self.threads) | {1})
        busy = _busy_cores(est, memory_mb) if threads is None else None
        home_only = not _memory_matters(est, objective)  # once a plan fits
        for mb, width, k in ((m, w, k) for m in memories for w in widths(parallelism)
                             for k in counts if k == 1 or busy is None or w * k <= busy):
            if best_load <= 1.0 and sim.simulated_tasks > SIM_TASKS_PER_S * min(
                    self.search_s, max(self.min_search_s, self.search_share * best[1].makespan)):
                break  # planning longer than it could save
            if mb != home and best_load <= 1.0 and home_only:
                continue  # its containers would compute no faster, only start cold
            min_block = 0.0
            if objective.kind != "makespan":
                min_block = est.invocation_time(ResourceConfig(mb), "cold")
            plan = Placement(dag, width, mb, est, critical_first=True,
                             min_block_s=min_block, threads=k).plan(self.name)
            plan, result = simulated_delayed_io(dag, plan, sim, objective)
            load = pressure(dag, plan, est.out_bytes)
            verdict = versus(load, best_load)
            if verdict == "skip":
                continue  # its workers would not hold their data (or less likely so)
            plan.options.update(memory_mb=mb, objective=objective.kind)
            margin = self.switch_margin if mb != home else 0.0
            if verdict == "take" or objective.better(result, best[1], margin):
                best, best_load = (plan, result), load
        assert best is not None
        return best


def _home_memory(memory_mb: int, warm: dict[int, int] | None) -> int:
    """The memory size other sizes must beat by ``switch_margin``: the one most warm
    containers have (an earlier run's pick: switching starts cold), else the default."""
    held = {mb: n for mb, n in (warm or {}).items() if n > 0}
    return max(held, key=lambda mb: (held[mb], mb == memory_mb)) if held else memory_mb


def _memory_matters(est: Estimates, objective: Objective) -> bool:
    """Whether another memory size than the warm one can win once a plan fits: where
    memory buys CPU (Lambda), or when cost counts (smaller sizes cost less)."""
    return est.capacity.cpu_follows_memory or objective.kind != "makespan"


def _busy_cores(est: Estimates, memory_mb: int) -> int | None:
    """The most task threads worth running at once: the shared cores when the tasks
    mostly compute (``WAITING_SHARE``), else None (no bound)."""
    if not est.capacity.shared or est.cpu_share(ResourceConfig(memory_mb)) < WAITING_SHARE:
        return None
    return max(1, int(est.capacity.cores))


def widths(parallelism: int) -> list[int]:
    """Widths to try: ``parallelism`` first, then halved down to 1."""
    out, w = [], max(1, parallelism)
    while w >= 1:
        out.append(w)
        w //= 2
    return out
