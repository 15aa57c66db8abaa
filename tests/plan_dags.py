"""DAG builders for planner and simulator tests (structure only, or runnable by Dask)."""

from __future__ import annotations

import random

from dask_serverless.dag import DAG, TaskNode
from dask_serverless.plan import Plan, ResourceConfig, WorkerSpec


def dag_of(deps: list[list[int]], names: dict[int, str] | None = None,
           memory: dict[int, int] | None = None) -> DAG:
    """A DAG from dependency lists; outputs are the tasks nothing depends on."""
    names, memory = names or {}, memory or {}
    tasks = [TaskNode(i, f"t{i}", None, names.get(i, "f"), tuple(d),
                      annotations={"memory": memory[i]} if i in memory else {})
             for i, d in enumerate(deps)]
    used = {x for d in deps for x in d}
    return DAG(tasks, [i for i in range(len(deps)) if i not in used])


def random_deps(rng: random.Random, n: int, max_deps: int = 3, p_root: float = 0.2,
                window: int = 8) -> list[list[int]]:
    deps: list[list[int]] = []
    for i in range(n):
        if i == 0 or rng.random() < p_root:
            deps.append([])
        else:
            lo = max(0, i - window)
            k = rng.randint(1, min(max_deps, i - lo))
            deps.append(sorted(rng.sample(range(lo, i), k)))
    return deps


def plan_of(assignment: list[str], floating: set[str] = frozenset(), mb: int = 1024,
            threads: int = 1, **options) -> Plan:
    workers = {w: WorkerSpec(w, ResourceConfig(mb), w in floating, threads)
               for w in set(assignment)}
    return Plan(assignment, workers, "test", options)


def combine(i, *inputs):
    """A task of the runnable random DAGs: deterministic in its inputs."""
    return (i * 7 + sum(inputs) * 3) % 1_000_003


def dask_graph(deps: list[list[int]], prefix: str = "t") -> dict:
    return {f"{prefix}{i}": (combine, i, *[f"{prefix}{d}" for d in ds])
            for i, ds in enumerate(deps)}
