"""How a plan executes: invocation groups, entry tasks and which outputs go to Redis.

A *group* is a set of tasks that always run inside one invocation: roots of a worker form
one group; a task joins its dependencies' group when they all share one group of its own
worker; any other task is an *entry* that starts a new group. An entry becomes ready
through an atomic fan-in counter in Redis (or directly, with a single dependency); all
other tasks become ready through in-memory counts. An output is uploaded only when an
entry task or the client needs it.
"""

from __future__ import annotations

from dataclasses import dataclass

from .dag import DAG
from .plan import Plan


@dataclass(slots=True)
class Layout:
    group: list[int]
    is_entry: list[bool]
    upload: list[bool]  # output must be stored in Redis
    local_dependents: list[tuple[int, ...]]  # same-group dependents
    entry_dependents: list[tuple[int, ...]]  # dependents that start other groups
    root_groups: dict[str, list[int]]  # worker id -> its root tasks (one invocation each)

    @property
    def n_groups(self) -> int:
        return max(self.group, default=-1) + 1


def build_layout(dag: DAG, plan: Plan) -> Layout:
    n = len(dag)
    group = [0] * n
    group_worker: list[str] = []
    is_entry = [False] * n
    root_group_of: dict[str, int] = {}
    root_groups: dict[str, list[int]] = {}
    for t in dag.tasks:
        w = plan.assignment[t.id]
        if not t.deps:
            g = root_group_of.get(w)
            if g is None:
                g = root_group_of[w] = len(group_worker)
                group_worker.append(w)
                root_groups[w] = []
            root_groups[w].append(t.id)
            group[t.id] = g
            continue
        g0 = group[t.deps[0]]
        if group_worker[g0] == w and all(group[d] == g0 for d in t.deps):
            group[t.id] = g0
        else:
            group[t.id] = len(group_worker)
            group_worker.append(w)
            is_entry[t.id] = True
    local_dependents: list[tuple[int, ...]] = []
    entry_dependents: list[tuple[int, ...]] = []
    upload = [False] * n
    outputs = dag.output_set
    for t in dag.tasks:
        dependents = t.dependents
        if not any(is_entry[d] for d in dependents):  # the common case: share the tuple
            local_dependents.append(dependents)
            entry_dependents.append(())
            upload[t.id] = t.id in outputs
            continue
        ent = tuple(d for d in dependents if is_entry[d])
        local_dependents.append(tuple(d for d in dependents if not is_entry[d]))
        entry_dependents.append(ent)
        upload[t.id] = True
    return Layout(group, is_entry, upload, local_dependents, entry_dependents, root_groups)
