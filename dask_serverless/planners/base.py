"""The planner interface and helpers shared by planners."""

from __future__ import annotations

from typing import Any, Protocol

from ..costmodel import CostModel, default_cost_model
from ..dag import DAG, TaskNode
from ..plan import Plan, ResourceConfig, WorkerSpec


class Planner(Protocol):
    """Turns a DAG into a Plan. ``predictor`` is a ``CostModel`` (history-driven
    planners fall back to ``default_cost_model()`` without one). ``threads``: tasks each
    worker runs at once (None: the planner's choice, 1 unless it searches). ``warm``: idle
    containers per memory size now (planners that simulate count them warm)."""

    name: str

    def plan(self, dag: DAG, *, parallelism: int, memory_mb: int,
             predictor: Any = None, threads: int | None = None,
             warm: dict[int, int] | None = None) -> Plan: ...


def task_memory(task: TaskNode, default_mb: int) -> int:
    """Memory a task asks for with ``dask.annotate(serverless={"memory": MB})``."""
    mem = task.annotations.get("memory", default_mb)
    return int(mem)


def task_config(task: TaskNode, default_mb: int) -> ResourceConfig:
    return ResourceConfig(task_memory(task, default_mb))


def pinned(task: TaskNode) -> bool:
    """True when the user chose this task's memory (planners must not change it)."""
    return "memory" in task.annotations


def cost_model_of(predictor: Any) -> CostModel:
    return predictor if predictor is not None else default_cost_model()


class Workers:
    """Worker ids handed out in order: ``w0``, ``w1``, ..."""

    def __init__(self, threads: int | None = None) -> None:
        self.specs: dict[str, WorkerSpec] = {}
        self.threads = threads or 1

    def new(self, config: ResourceConfig, floating: bool = False) -> str:
        wid = f"w{len(self.specs)}"
        self.specs[wid] = WorkerSpec(wid, config, floating, self.threads)
        return wid

    def same_or_new(self, wid: str, config: ResourceConfig) -> str:
        return wid if self.specs[wid].config == config else self.new(config)


def bottom_levels(dag: DAG, weight: list[float]) -> list[float]:
    """Longest path from each task to an exit, the task included."""
    level = list(weight)
    for t in reversed(dag.tasks):
        if t.dependents:
            level[t.id] = weight[t.id] + max(level[d] for d in t.dependents)
    return level


def chain_work(dag: DAG, weight: list[float]) -> list[float]:
    """Work that follows a task on its worker: itself plus the chain of single-input
    first dependents after it."""
    work = list(weight)
    for t in reversed(dag.tasks):
        if t.dependents:
            f = t.dependents[0]
            if len(dag.tasks[f].deps) == 1:
                work[t.id] += work[f]
    return work


MEMORY_HEADROOM = 0.5  # share of a worker's memory its live task data may fill (the rest:
# temporaries of the tasks themselves, allocator fragmentation under the container's cap)
THREAD_RESERVE = 32 * 2**20  # per task thread: its stack and BLAS buffers (address space)


def peak_bytes(dag: DAG, plan: Plan, out_bytes: list[int]) -> dict[str, int]:
    """Per worker, the most bytes of task outputs it holds at once when it runs its tasks
    in the DAG's order, ``threads`` at a time: an output computed or fetched there stays
    until the last of its consumers there ran; one with none there (uploaded, final)
    counts while its task runs; the outputs of the ``threads - 1`` tasks after the
    current one count too (they run at the same time)."""
    consumers: dict[tuple[str, int], int] = {}
    order: dict[str, list[int]] = {}
    for t in dag.tasks:
        w = plan.assignment[t.id]
        order.setdefault(w, []).append(t.id)
        for d in t.deps:
            consumers[w, d] = consumers.get((w, d), 0) + 1
    live: dict[str, int] = {}
    peak: dict[str, int] = {}
    held: set[tuple[str, int]] = set()
    position: dict[str, int] = {}
    for t in dag.tasks:
        w = plan.assignment[t.id]
        now = live.get(w, 0)
        for d in t.deps:
            if (w, d) not in held:  # fetched from another worker
                held.add((w, d))
                now += out_bytes[d]
        now += out_bytes[t.id]
        i = position.get(w, 0)
        position[w] = i + 1
        alongside = order[w][i + 1:i + plan.workers[w].threads]
        peak[w] = max(peak.get(w, 0), now + sum(out_bytes[x] for x in alongside))
        for d in t.deps:
            consumers[w, d] -= 1
            if not consumers[w, d]:
                now -= out_bytes[d]
        if consumers.get((w, t.id), 0):
            held.add((w, t.id))
        else:
            now -= out_bytes[t.id]
        live[w] = now
    return peak


def pressure(dag: DAG, plan: Plan, out_bytes: list[int],
             headroom: float = MEMORY_HEADROOM) -> float:
    """The largest share, over workers, of ``headroom`` of its memory that its peak of
    live task data (``peak_bytes``) plus ``THREAD_RESERVE`` per task thread takes: at
    most 1.0 when the plan fits (``fits``). When no candidate fits, planners keep the
    one of least pressure (the most likely to run), not the fastest."""
    return max((n + plan.workers[w].threads * THREAD_RESERVE)
               / (headroom * plan.workers[w].config.memory_mb * 2**20)
               for w, n in peak_bytes(dag, plan, out_bytes).items())


def versus(load: float, best_load: float) -> str:
    """How a candidate of ``pressure`` ``load`` stands against the best so far (of
    ``best_load``; ``inf`` before any): "skip" when it does not fit where the best does,
    or presses more when neither fits; "take" when it fits where the best does not, or
    presses less when neither fits; else "compare" (the objective decides)."""
    fit, best_fit = load <= 1.0, best_load <= 1.0
    if fit != best_fit:
        return "take" if fit else "skip"
    if fit or load == best_load:
        return "compare"
    return "take" if load < best_load else "skip"


def fits(dag: DAG, plan: Plan, out_bytes: list[int],
         headroom: float = MEMORY_HEADROOM) -> bool:
    """Whether every worker's peak of live task data (``peak_bytes``) stays within
    ``headroom`` of its memory less ``THREAD_RESERVE`` per task thread."""
    return pressure(dag, plan, out_bytes, headroom) <= 1.0
