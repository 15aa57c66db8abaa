"""Our DAG: tasks with integer ids in a topological order, their edges and annotations.

A task id is its position in ``DAG.tasks``; every dependency has a smaller id than its
dependents, so iterating ids in order is a valid execution order.
"""

from __future__ import annotations

import hashlib
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import cloudpickle
from dask.utils import key_split

Key = Hashable
NO_ANNOTATIONS: dict[str, Any] = {}  # shared by tasks without annotations: never mutate


def key_prefix(key: Key) -> str:
    """``dask.utils.key_split`` of a key; a tuple key's is its first element's (cached by
    that element, so a million tuple keys do not churn key_split's cache)."""
    return key_split(key[0] if type(key) is tuple and key else key)


@dataclass(slots=True)
class TaskNode:
    """One task: its Dask key, the runnable Dask task spec node and its edges (ids);
    ``size``: bytes of data a task without dependencies makes (``sizes``; 0: unknown).
    ``annotations`` may be shared with other tasks (of the same function): never mutate."""

    id: int
    key: Key
    node: Any  # dask._task_spec.GraphNode; ``node(values)`` runs it
    func_name: str
    deps: tuple[int, ...] = ()
    dependents: tuple[int, ...] = ()
    annotations: dict[str, Any] = field(default_factory=dict)
    size: int = 0


class DAG:
    """Tasks in topological order plus the ids of the requested outputs."""

    def __init__(self, tasks: Sequence[TaskNode], outputs: Iterable[int]):
        self.tasks: list[TaskNode] = list(tasks)
        self.outputs: list[int] = list(dict.fromkeys(outputs))
        self.output_set = frozenset(self.outputs)
        self._key_to_id: dict[Key, int] | None = None
        self._signature: str | None = None
        self.shuffle_stores = 0  # disk shuffles whose store is in Redis (adapter.py)
        dependents: list[list[int] | None] = [None] * len(self.tasks)
        for t in self.tasks:
            if t.dependents:  # a task of another DAG: its dependents are set below
                t.dependents = ()
            for d in t.deps:
                if d >= t.id:
                    raise ValueError(f"task {t.key!r} depends on a later task: not topological")
                found = dependents[d]
                if found is None:
                    dependents[d] = [t.id]
                else:
                    found.append(t.id)
        for t, ds in zip(self.tasks, dependents, strict=True):
            if ds is not None:
                t.dependents = tuple(ds)

    @property
    def key_to_id(self) -> dict[Key, int]:
        """Task id by key (built on first use: the runtime does not need it)."""
        if self._key_to_id is None:
            self._key_to_id = {t.key: t.id for t in self.tasks}
        return self._key_to_id

    def __len__(self) -> int:
        return len(self.tasks)

    def __repr__(self) -> str:
        return f"<DAG tasks={len(self)} outputs={len(self.outputs)} roots={len(self.roots())}>"

    def roots(self) -> list[int]:
        return [t.id for t in self.tasks if not t.deps]

    def edges(self) -> int:
        return sum(len(t.deps) for t in self.tasks)

    def signature(self) -> str:
        """Stable hash of the structure and function names, not of keys, data, root
        sizes or task order: each task hashes its function name with its dependencies'
        hashes (sorted), so the same program on other data gets the same signature."""
        if self._signature is None:
            node_hash: list[bytes] = []
            labels: dict[tuple[str, str], Any] = {}  # (function, key prefix) -> its hash
            blake2b = hashlib.blake2b
            for t in self.tasks:
                label = (t.func_name, key_prefix(t.key))
                base = labels.get(label)
                if base is None:
                    base = labels[label] = blake2b(f"{label[0]}|{label[1]}".encode(),
                                                   digest_size=12)
                if not t.deps:
                    node_hash.append(base.digest())
                    continue
                h = base.copy()
                if len(t.deps) == 1:
                    h.update(node_hash[t.deps[0]])
                else:
                    for d in sorted([node_hash[d] for d in t.deps]):
                        h.update(d)
                node_hash.append(h.digest())
            top = hashlib.blake2b(digest_size=8)
            for digest in sorted(node_hash[o] for o in self.outputs):
                top.update(digest)
            top.update(len(self.tasks).to_bytes(8, "little"))
            self._signature = top.hexdigest()
        return self._signature

    def critical_path(self, weight: Sequence[float] | None = None) -> tuple[float, list[int]]:
        """Longest path by task weight (default 1 per task): (length, task ids)."""
        w = weight if weight is not None else [1.0] * len(self.tasks)
        best = [0.0] * len(self.tasks)
        prev = [-1] * len(self.tasks)
        for t in self.tasks:
            start, p = 0.0, -1
            for d in t.deps:
                if best[d] > start:
                    start, p = best[d], d
            best[t.id] = start + w[t.id]
            prev[t.id] = p
        if not self.tasks:
            return 0.0, []
        end = max(range(len(best)), key=best.__getitem__)
        path = []
        while end != -1:
            path.append(end)
            end = prev[end]
        return best[path[0]], path[::-1]

    def dumps(self) -> bytes:
        """Serialise once; each distinct function object is pickled once (pickle memo)."""
        return cloudpickle.dumps(self, protocol=5)

    @staticmethod
    def loads(data: bytes) -> DAG:
        import pickle

        return pickle.loads(data)
