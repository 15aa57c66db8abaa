"""The plan record of a run, and the workflow's structure rebuilt from what was recorded.

The client stores each run's plan (``Plan.to_json``), the DAG's outputs, the functions'
I/O hints, pinned memory annotations and the backend's capacity with its run record.
Task records already hold every task's key, function and dependencies (each input names
its producer), so the two together give back a structural ``DAG`` (no runnable nodes)
that planners and the simulator accept: dashboards compare plans of a workflow without
re-running it. With ``structure=True`` the record also carries keys, functions and
dependencies, for a run that has recorded nothing yet (the dashboard's live view).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..capacity import Capacity
from ..dag import DAG, TaskNode
from ..plan import Plan
from .records import TaskRecord


def plan_record(dag: DAG, plan: Plan, *, capacity: Capacity | None = None,
                structure: bool = False) -> str:
    """JSON of what a run's records alone do not say (see module docstring), with the
    ``capacity`` of the backend that ran it (cores and container cap)."""
    hints: dict[str, dict[str, Any]] = {}
    memory: dict[str, int] = {}
    for t in dag.tasks:
        h = {k: t.annotations[k] for k in ("io", "time") if k in t.annotations}
        if h:
            hints.setdefault(t.func_name, h)
        if "memory" in t.annotations:
            memory[str(t.id)] = int(t.annotations["memory"])
    data: dict[str, Any] = {"plan": json.loads(plan.to_json()), "outputs": dag.outputs,
                            "hints": hints, "memory": memory}
    if capacity is not None:  # JSON has no infinity: null cores = a core per container
        data["capacity"] = {"cores": capacity.cores if capacity.shared else None,
                            "containers": capacity.containers,
                            "cpu_follows_memory": capacity.cpu_follows_memory}
    if structure:
        data["keys"] = [repr(t.key) for t in dag.tasks]
        data["functions"] = [t.func_name for t in dag.tasks]
        data["deps"] = [list(t.deps) for t in dag.tasks]
    return json.dumps(data, separators=(",", ":"))


@dataclass
class PlanRecord:
    """A decoded ``plan_record``."""

    plan: Plan
    outputs: list[int]
    hints: dict[str, dict[str, Any]] = field(default_factory=dict)
    memory: dict[int, int] = field(default_factory=dict)
    capacity: Capacity | None = None  # of the backend that ran it (None: not recorded)
    keys: list[str] | None = None  # with structure=True only
    functions: list[str] | None = None
    deps: list[list[int]] | None = None

    @classmethod
    def loads(cls, text: str | bytes) -> PlanRecord:
        data = json.loads(text)
        cap = data.get("capacity")
        capacity = None if cap is None else Capacity(
            math.inf if cap["cores"] is None else cap["cores"], cap["containers"],
            # records from before the field: only the local backend shared its cores
            cap.get("cpu_follows_memory", cap["cores"] is None))
        return cls(Plan.from_json(json.dumps(data["plan"])), list(data["outputs"]),
                   data.get("hints", {}), {int(k): v for k, v in data.get("memory", {}).items()},
                   capacity, data.get("keys"), data.get("functions"), data.get("deps"))

    def dag(self) -> DAG:
        """The structural DAG of a ``structure=True`` record."""
        if self.keys is None or self.functions is None or self.deps is None:
            raise ValueError("this plan record has no structure (keys, functions, deps)")
        return _build(self.keys, self.functions, self.deps, self)


def recorded_dag(tasks: Iterable[TaskRecord], record: PlanRecord) -> DAG:
    """The workflow's structure from one run's task records and plan record: keys,
    function names, dependencies, root sizes, outputs and annotations; ``node`` is None. Raises a
    ValueError naming what is missing when the run did not record every task."""
    n = len(record.plan.assignment)
    keys: list[str | None] = [None] * n
    functions = [""] * n
    deps: list[list[int]] = [[] for _ in range(n)]
    sizes = [0] * n
    for t in tasks:  # a duplicated task (task-dup) has two identical rows
        if not 0 <= t.task_id < n:
            raise ValueError(f"task record {t.key} has id {t.task_id}, outside the plan's "
                             f"{n} tasks")
        keys[t.task_id], functions[t.task_id] = t.key, t.function
        deps[t.task_id] = [i.dep for i in t.inputs if i.dep < n]  # not stored inputs
        sizes[t.task_id] = t.size
    missing = [i for i, k in enumerate(keys) if k is None]
    if missing:
        raise ValueError(f"{len(missing)} of {n} tasks have no record (ids "
                         f"{missing[:5]}...): the run failed or its records are incomplete")
    return _build(keys, functions, deps, record, sizes)  # type: ignore[arg-type]


def _build(keys: Sequence[str], functions: Sequence[str], deps: Sequence[Sequence[int]],
           record: PlanRecord, sizes: Sequence[int] | None = None) -> DAG:
    hints = record.hints
    nodes = []
    for i, (key, fn, ds) in enumerate(zip(keys, functions, deps, strict=True)):
        ann = dict(hints.get(fn, {}))
        if i in record.memory:
            ann["memory"] = record.memory[i]
        nodes.append(TaskNode(i, key, None, fn, tuple(ds), (), ann,
                              sizes[i] if sizes is not None else 0))
    return DAG(nodes, record.outputs)
