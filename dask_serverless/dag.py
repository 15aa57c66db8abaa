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
class StoredInput:
    """A value tasks read that no task of the run makes: in Redis already (``ref``, a
    ``storage.stored.StoredRef``: a persisted result, or embedded data the client
    stored), or ``value``, embedded data the client stores before the run (then drops).
    ``nbytes``: its size (sealed, or in memory while not stored)."""

    key: Key
    ref: Any = None
    value: Any = None
    nbytes: int = 0


@dataclass(slots=True)
class TaskNode:
    """One task: its Dask key, the runnable Dask task spec node and its edges (ids);
    ``size``: bytes of data a task without dependencies makes (``sizes``; 0: unknown).
    ``stored``: ids of the stored inputs it reads (``DAG.stored``; not dependencies: they
    are there before the run starts).
    ``annotations`` may be shared with other tasks (of the same function): never mutate."""

    id: int
    key: Key
    node: Any  # dask._task_spec.GraphNode; ``node(values)`` runs it
    func_name: str
    deps: tuple[int, ...] = ()
    dependents: tuple[int, ...] = ()
    annotations: dict[str, Any] = field(default_factory=dict)
    size: int = 0
    stored: tuple[int, ...] = field(default=(), kw_only=True)  # (subclasses add fields)


class DAG:
    """Tasks in topological order plus the ids of the requested outputs.

    ``stored``: values tasks read that are in Redis before the run (``StoredInput``);
    stored input ``i`` has id ``len(tasks) + i``, so task ids and stored ids never meet.
    """

    def __init__(self, tasks: Sequence[TaskNode], outputs: Iterable[int],
                 stored: Sequence[StoredInput] = ()):
        self.tasks: list[TaskNode] = list(tasks)
        self.stored: list[StoredInput] = list(stored)
        # requested keys whose values are stored already (the client reads them): key ->
        # StoredRef; not part of the run
        self.stored_outputs: dict[Key, Any] = {}
        # requested keys the client computes from the outputs (``adapter.to_dag``)
        self.client_finals: dict[Key, Any] = {}
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

    def stored_input(self, sid: int) -> StoredInput:
        """The stored input of id ``sid`` (``>= len(self)``)."""
        return self.stored[sid - len(self.tasks)]

    def key_of(self, vid: int) -> Key:
        """The Dask key of a task or stored input id."""
        n = len(self.tasks)
        return self.tasks[vid].key if vid < n else self.stored[vid - n].key

    def reads(self, tid: int) -> tuple[int, ...]:
        """What task ``tid`` reads: its dependencies, then its stored inputs."""
        t = self.tasks[tid]
        return t.deps + t.stored if t.stored else t.deps

    def arguments(self, tid: int, values: dict[int, Any]) -> dict[Key, Any]:
        """Task ``tid``'s inputs by Dask key (what its node is called with), from
        ``values`` by id."""
        t = self.tasks[tid]
        args = {self.tasks[d].key: values[d] for d in t.deps}
        n = len(self.tasks)
        for s in t.stored:
            args[self.stored[s - n].key] = values[s]
        return args

    def stored_refs(self) -> dict[int, Any]:
        """Stored input id -> its ``StoredRef`` (those stored)."""
        n = len(self.tasks)
        return {n + i: s.ref for i, s in enumerate(self.stored) if s.ref is not None}

    def __repr__(self) -> str:
        stored = f" stored={len(self.stored)}" if self.stored else ""
        return (f"<DAG tasks={len(self)} outputs={len(self.outputs)} "
                f"roots={len(self.roots())}{stored}>")

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
