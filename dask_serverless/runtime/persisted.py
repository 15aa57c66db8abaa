"""The client's side of stored values: what ``persist`` keeps in Redis, what a compute
stores before its run and renews, and what it reads without a run (``storage.stored``)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ..dag import DAG
from ..storage import stored, streams
from ..storage.serialize import Purpose
from ..storage.stored import StoredNode, StoredRef

if TYPE_CHECKING:
    from .run import Run

logger = logging.getLogger(__name__)


def keep_outputs(run: Run, embed_max_bytes: int, ttl: int) -> list[Any]:
    """The run's outputs for ``persist``: a value whose sealed size is at most
    ``embed_max_bytes`` is read (it rides in later graphs); a larger one stays where its
    worker stored it (under ``o:<task>``, or in parts for a large output), for ``ttl``
    seconds, as a ``StoredNode`` tracked for release when nothing here holds it any more.
    ``run.kept``: the outputs whose ``o:<task>`` key stays (cleanup leaves it)."""
    store, dag = run.store, run.dag
    k = store.keys
    keys = [k.output(t) for t in dag.outputs]
    pipe = store.r.pipeline(transaction=False)
    for key in keys:
        pipe.strlen(key)
    sizes = [int(n) for n in pipe.execute()]
    values: list[Any] = [None] * len(keys)
    small: list[int] = []
    for i, (tid, key, n) in enumerate(zip(dag.outputs, keys, sizes, strict=True)):
        what = f"output {dag.tasks[tid].key!r}"
        if n == 0 and tid in run.plan.optimizations.stream:  # streamed: store it whole
            blob, _ = streams.read(store, tid, what, run.submit_time + run.deadline)
            n = len(blob)
            if n > embed_max_bytes:
                store.r.set(key, blob, ex=ttl)
            else:
                values[i] = store.decode_output(tid, blob, what)
                continue
        if n == 0:
            raise RuntimeError(f"{what} of run {run.run_id} is missing from Redis")
        if n <= embed_max_bytes:  # a small value, or the manifest of a large one
            small.append(i)
            continue
        values[i] = _kept(run, tid, StoredRef(run.redis_url, key, Purpose.OUTPUT.value,
                                              run.run_id, n), ttl)
        run.kept.add(tid)
    if small:
        blobs = store.r.mget([keys[i] for i in small])
        for i, blob in zip(small, blobs, strict=True):
            tid = dag.outputs[i]
            what = f"output {dag.tasks[tid].key!r}"
            if blob is None:
                raise RuntimeError(f"{what} of run {run.run_id} is missing from Redis")
            parts = store.parts_of(tid, blob)
            if parts is None:
                values[i] = store.decode_output(tid, blob, what)
                continue
            names, part_sizes = parts  # its parts stay; cleanup deletes the manifest
            ref = StoredRef(run.redis_url, keys[i], Purpose.OUTPUT.value, run.run_id,
                            sum(part_sizes), tuple(names), tuple(part_sizes))
            store.r.srem(k.parts, *names)  # cleanup deletes the run's parts but these
            values[i] = _kept(run, tid, ref, ttl)
    return values


def _kept(run: Run, tid: int, ref: StoredRef, ttl: int) -> StoredNode:
    pipe = run.store.r.pipeline(transaction=False)
    for name in ref.redis_keys():
        pipe.expire(name, ttl)
    pipe.execute()
    stored.track(ref)
    return StoredNode(run.dag.tasks[tid].key, ref)


def prepare(dag: DAG, r: Any, url: str, ttl: int, persist_ttl: int) -> list[StoredRef]:
    """Before a run: store the embedded values ``to_dag`` set apart (for ``ttl``: the
    run's), renew the persisted ones it reads (``persist_ttl``; ``PersistedDataLostError``
    naming those gone). Returns the references to release when the run ends."""
    persisted = [s for s in dag.stored if s.ref is not None]
    persisted_refs = [s.ref for s in persisted] + list(dag.stored_outputs.values())
    names = [s.key for s in persisted] + list(dag.stored_outputs)
    stored.touch(r, persisted_refs, persist_ttl, names)
    made: list[StoredRef] = []
    try:
        with stored.Writer(r, url, ttl) as writer:
            for s in dag.stored:
                if s.ref is None:
                    s.ref = writer.write(s.value)
                    s.value, s.nbytes = None, s.ref.nbytes
                    made.append(s.ref)
    except BaseException:
        release(made)
        raise
    if made:
        logger.debug("stored %d embedded values (%d bytes) apart from the run spec",
                     len(made), sum(m.nbytes for m in made))
    return made


def release(refs: list[StoredRef]) -> None:
    by_url: dict[str, list[str]] = {}
    for ref in refs:
        by_url.setdefault(ref.url, []).extend(ref.redis_keys())
    for url, keys in by_url.items():
        stored.release(url, keys)


def read_stored_outputs(dag: DAG) -> dict[Any, Any]:
    """The requested keys that are stored values, read here (no run needed)."""
    return {k: ref.load() for k, ref in dag.stored_outputs.items()}


def forget(dag: DAG) -> None:
    """Drop ``dag``'s references to stored values once its run is over, so that keeping
    the DAG (``get.last_run``) does not keep persisted values from being released."""
    for s in dag.stored:
        s.ref = s.value = None
    dag.stored_outputs = {}
