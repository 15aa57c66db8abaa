"""Dask's "disk" shuffle on serverless workers: the partd store in the run's Redis.

Dask's disk shuffle (bags' ``groupby(shuffle="disk")``, dataframes'
``shuffle_method="disk"``) makes one partd store in a task, hands it to every partitioning
task (each appends its pieces of every output partition) and, after a barrier, to every
collecting task (each reads one partition). partd keeps the pieces in files on the disk of
the worker that made the store, which other workers do not share (on Lambda each function
has its own disk), and the worker that made it deletes them when its copy is collected.

``adapter.py`` replaces the task that makes the store with ``open_store``: the same partd
encoding layers (``partd.Python``, ``partd.PandasBlocks``, compression) over a
``RedisPartd``, which keeps each partition as a hash in the run's Redis (keys of the run's
hash tag, deleted with the run, expiring with its outputs). Each field is one append of
one task execution (``<task id>:<n>``), its value sealed for the run and the field's key:
a task run again (a retry, a duplicated delivery) overwrites its own pieces instead of
adding them twice, and a read joins the pieces in task order.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from partd.core import Interface

from ..storage.serialize import Purpose, seal, unseal
from .task_output import TaskOutput, running_run_id


class ShuffleStoreError(RuntimeError):
    """A shuffle store was used outside a task of its run's invocation."""


def _output_of(run_id: str) -> TaskOutput:
    found = TaskOutput.of_run(run_id)
    if found is None:
        raise ShuffleStoreError(
            f"the shuffle store of run {run_id} is used outside a task of that run (it "
            "lives in the run's Redis, reachable from the run's workers only)")
    return found


def _running_run() -> str:
    """The run whose task runs on this thread."""
    run_id = running_run_id()
    if run_id is None:
        raise ShuffleStoreError("a shuffle store can only be opened by a task on a worker")
    return run_id


class RedisPartd(Interface):
    """partd's raw byte store (the place of ``partd.File``) in the run's Redis."""

    def __init__(self, run_id: str, name: str):
        self.run_id, self.name = run_id, name
        self.lock = threading.Lock()  # what partd's layers expect of a store
        Interface.__init__(self)

    def __getstate__(self) -> dict[str, str]:
        return {"run_id": self.run_id, "name": self.name}

    def __setstate__(self, state: dict[str, str]) -> None:
        RedisPartd.__init__(self, state["run_id"], state["name"])

    def __repr__(self) -> str:
        return f"RedisPartd(run={self.run_id!r}, name={self.name!r})"

    def _key(self, part: Any) -> str:
        return _output_of(self.run_id).store.keys.shuffle_part(self.name, repr(part))

    def append(self, data: Mapping[Any, bytes], lock: bool = True, **kwargs: Any) -> None:
        output = _output_of(self.run_id)
        running = output.running()
        if running is None:
            raise ShuffleStoreError("a shuffle store is appended to outside a task")
        field = f"{running.tid}:{running.appends}"
        running.appends += 1
        store = output.store
        with store.r.pipeline(transaction=False) as pipe:
            for part, piece in data.items():
                key = store.keys.shuffle_part(self.name, repr(part))
                pipe.hset(key, field, seal(piece, Purpose.SHUFFLE, self.run_id,
                                           f"{key}|{field}"))
                pipe.expire(key, store.ttl)
                pipe.sadd(store.keys.parts, key)
            pipe.expire(store.keys.parts, store.ttl)
            pipe.execute()

    def _get(self, keys: Sequence[Any], lock: bool = True, **kwargs: Any) -> list[bytes]:
        store = _output_of(self.run_id).store
        names = [store.keys.shuffle_part(self.name, repr(part)) for part in keys]
        with store.r.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.hgetall(name)
            found = pipe.execute()
        out = []
        for name, pieces in zip(names, found, strict=True):
            fields = sorted(pieces, key=_field_order)
            out.append(b"".join(bytes(unseal(pieces[f], Purpose.SHUFFLE, self.run_id,
                                             f"{name}|{f.decode()}", "shuffle piece"))
                                for f in fields))
        return out

    def _iset(self, key: Any, value: bytes, lock: bool = True) -> None:
        self._delete([key])
        self.append({key: value})

    def _delete(self, keys: Iterable[Any], lock: bool = True) -> None:
        names = [self._key(part) for part in keys]
        if names:
            _output_of(self.run_id).store.r.delete(*names)

    def drop(self) -> None:
        """Dask drops the store when a task using it fails: the run fails, and its
        cleanup deletes the partitions."""
        self._iset_seen.clear()


def _field_order(field: bytes) -> tuple[int, int]:
    tid, n = field.split(b":")
    return int(tid), int(n)


def open_store(layers: Sequence[Callable[[Any], Any]], name: str) -> Any:
    """The task that makes a disk shuffle's store: ``layers`` (outermost first, e.g.
    ``partd.Python``, ``partd.Snappy``) over a ``RedisPartd`` of the running task's run."""
    store: Any = RedisPartd(_running_run(), name)
    for layer in reversed(layers):
        store = layer(store)
    return store
