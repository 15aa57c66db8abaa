"""The client's side of stored values: what ``persist`` keeps in Redis, what a compute
stores before its run and renews, and what it reads without a run (``storage.stored``)."""

from __future__ import annotations

import logging
import weakref
from typing import TYPE_CHECKING, Any

from ..dag import DAG
from ..errors import PersistedDataLostError
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
    """Before a run: store the embedded values ``to_dag`` set apart, renew the persisted
    ones it reads (``persist_ttl``; ``PersistedDataLostError`` naming those gone).

    An embedded value this process can watch (a numpy array, a pandas object: anything
    weakly referenceable) is stored once for as long as it lives here, like a persisted
    one (renewed by each compute, released when it is garbage-collected); any other is
    stored for this run (``ttl``). Returns the references to release when the run ends."""
    persisted = [s for s in dag.stored if s.ref is not None]
    persisted_refs = [s.ref for s in persisted] + list(dag.stored_outputs.values())
    names = [s.key for s in persisted] + list(dag.stored_outputs)
    stored.touch(r, persisted_refs, persist_ttl, names)
    made: list[StoredRef] = []
    kept: list[StoredRef] = []
    try:
        with stored.Writer(r, url, ttl) as writer:
            for s in dag.stored:
                if s.ref is not None:
                    continue
                ref = _cached(s.value, r, url, persist_ttl)
                if ref is None:
                    ref = writer.write(s.value)
                    (kept if _remember(s.value, ref) else made).append(ref)
                s.ref, s.value, s.nbytes = ref, None, ref.nbytes
    except BaseException:
        release(made + kept)
        raise
    if kept:
        stored.touch(r, kept, persist_ttl)
    if made or kept:
        logger.debug("stored %d embedded values (%d bytes) apart from the run spec",
                     len(made) + len(kept), sum(m.nbytes for m in made + kept))
    return made


# embedded values stored while they live in this process: id -> (weak reference, ref)
_EMBEDDED: dict[int, tuple[weakref.ref, StoredRef]] = {}


def _cached(value: Any, r: Any, url: str, ttl: int) -> StoredRef | None:
    """The reference of ``value`` stored by an earlier compute (renewed), if any."""
    entry = _EMBEDDED.get(id(value))
    if entry is None or entry[0]() is not value or entry[1].url != url:
        return None
    try:
        stored.touch(r, [entry[1]], ttl)
    except PersistedDataLostError:  # expired or flushed: store it again
        _EMBEDDED.pop(id(value), None)
        return None
    return entry[1]


def _remember(value: Any, ref: StoredRef) -> bool:
    """Keep ``value`` stored while it lives here; False when it cannot be watched."""
    try:
        watch = weakref.ref(value)
    except TypeError:
        return False
    _EMBEDDED[id(value)] = (watch, ref)
    weakref.finalize(value, _dropped, id(value), ref)
    return True


def _dropped(vid: int, ref: StoredRef) -> None:
    entry = _EMBEDDED.get(vid)
    if entry is not None and entry[1] is ref:
        del _EMBEDDED[vid]
    stored.release(ref.url, ref.redis_keys())


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
