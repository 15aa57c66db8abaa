"""What an invocation reads of its run: the per-task facts the decision core needs.

``RunView`` holds them as flat sequences indexed by task id (fast in the simulator's
loops, which replay whole runs); a sliced run spec provides the same attributes for only
the tasks one invocation can touch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..dag import DAG
from ..layout import Layout
from ..plan import Optimizations, Plan, WorkerSpec


@dataclass(slots=True)
class RunView:
    """Per-task facts of a run (see module docstring).

    - ``deps``: each task's dependencies; ``reads``: what it reads, its dependencies then
      the stored inputs it reads (ids past the tasks: ``DAG.stored``), which are in
      Redis before the run and are fetched, never waited for;
      ``local_dependents`` / ``entry_dependents``:
      its dependents in its own group / starting other groups (``layout``);
    - ``upload``: its output is stored (an entry or the client needs it);
    - ``final``: the outputs the client asked for;
    - ``worker_of``: the plan's worker of a task; ``optimizations``: the plan's passes.
    """

    deps: Sequence[tuple[int, ...]]
    local_dependents: Sequence[tuple[int, ...]]
    entry_dependents: Sequence[tuple[int, ...]]
    upload: Sequence[bool]
    final: frozenset[int]
    assignment: Sequence[str]
    workers: dict[str, WorkerSpec]
    optimizations: Optimizations
    reads: Sequence[tuple[int, ...]] | None = None  # None: what each task reads is its deps

    @classmethod
    def of(cls, dag: DAG, plan: Plan, layout: Layout) -> RunView:
        deps = [t.deps for t in dag.tasks]
        reads = [t.deps + t.stored for t in dag.tasks] if dag.stored else None
        return cls(deps, layout.local_dependents, layout.entry_dependents, layout.upload,
                   dag.output_set, plan.assignment, plan.workers, plan.optimizations, reads)

    def worker_of(self, task: int) -> WorkerSpec:
        return self.workers[self.assignment[task]]

    def runs_in(self, entry: int, worker: WorkerSpec) -> bool:
        """Whether an invocation of ``worker`` runs ``entry`` itself once it fires it: the
        entry is that worker's, or floats and the memory config matches."""
        spec = self.workers[self.assignment[entry]]
        return spec.id == worker.id or (spec.floating and spec.config == worker.config)
