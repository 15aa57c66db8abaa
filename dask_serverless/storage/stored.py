"""Values kept in Redis apart from any run spec, and the references graphs hold to them.

Two kinds of stored values:

- **persisted results**: ``persist()`` under ``serverless_get`` leaves each large output
  where its worker stored it (``ds:{run}:o:<task>``, sealed for that run and key) and
  returns a collection whose graph holds a ``StoredNode`` per chunk instead of its value;
- **embedded data**: a value a graph carries (a numpy array given to ``from_array`` or
  ``delayed``, a DataNode) larger than ``serverless.embed-max-bytes`` is stored once as
  its own object (``ds:{<id>}:v``, sealed ``Purpose.DATA``) and the run spec holds a
  reference; it lives while the value lives in the client (or for the run, when the
  value cannot be weakly referenced): ``runtime.persisted.prepare``.

A ``StoredRef`` names one value: the Redis URL, its key, the purpose and run id its seal
is bound to, its sealed size, and the keys of its parts when it is stored in parts: a
persisted output of 1 MiB or more (``store.LARGE_BYTES``), or embedded data over Redis's
512 MiB string limit (``MAX_STRING_BYTES``; ``CHUNK_BYTES`` parts ``<key>:<i>``). Parts
are read back into one writable buffer (``bulk.read``; numpy arrays then view it).

Workers read a stored value as they read any upstream output: ``adapter.to_dag`` turns a
graph's stored nodes into the DAG's stored inputs (``dag.StoredInput``), the decision core
fetches them for the tasks that read them (``RunView.reads``), and ``RunStore`` reads them
by their reference. Any other scheduler runs a ``StoredNode`` as a task that loads the
value in the client.

Lifetime of a persisted value: ``track`` attaches a finalizer to its reference, which
deletes the keys when the persisted collection (the last graph holding the reference) is
garbage-collected in the client. ``serverless.persist.ttl`` is the backstop for a client
that dies: each compute that reads the value renews it (``touch``). A reference whose
value is gone raises ``PersistedDataLostError``.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from dask._task_spec import DataNode

from ..errors import PersistedDataLostError
from . import bulk, serialize
from .serialize import Purpose

logger = logging.getLogger(__name__)

MAX_STRING_BYTES = 512 * 2**20  # Redis's limit on one string value (proto-max-bulk-len)
CHUNK_BYTES = 64 * 2**20  # a value over MAX_STRING_BYTES is stored in parts this large


@dataclass(frozen=True, slots=True, weakref_slot=True)
class StoredRef:
    """Where a stored value is: in the Redis at ``url``, sealed for ``purpose``,
    ``run_id`` and ``key``; ``nbytes`` sealed bytes, under ``key`` itself or, when
    ``parts`` is set, in those keys in order (``sizes`` bytes each: a value stored in
    parts, as a large output is, or over Redis's string limit)."""

    url: str
    key: str
    purpose: str
    run_id: str
    nbytes: int
    parts: tuple[str, ...] = ()
    sizes: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.url:
            _URLS.setdefault(_url_id(self.url), self.url)

    def __reduce__(self) -> tuple:
        # the URL may hold a password: a pickled reference (in a run spec, a slice, a
        # pickled collection) names it by digest; this process resolves it (``load``)
        return _restore, (_url_id(self.url) if self.url else "", self.key, self.purpose,
                          self.run_id, self.nbytes, self.parts, self.sizes)

    def redis_keys(self) -> list[str]:
        """The Redis keys holding the value."""
        return list(self.parts) if self.parts else [self.key]

    def load(self) -> Any:
        """The value (read from Redis in this process)."""
        from .store import connect

        if not self.url:
            raise lost([self], [f"{self.key} (its Redis URL is not known in this process: "
                                "a reference unpickled away from the client that made it)"])
        (blob,) = read(connect(self.url), [self])
        return decode(self, blob)

    def __repr__(self) -> str:
        return f"StoredRef({self.key!r}, {self.nbytes} bytes)"  # the URL may hold a password

    def __dask_tokenize__(self) -> tuple[str, str]:
        return ("StoredRef", self.key)


_URLS: dict[str, str] = {}  # digest -> Redis URL of the references made in this process


def _url_id(url: str) -> str:
    return hashlib.blake2b(url.encode(), digest_size=12).hexdigest()


def _restore(url_id: str, key: str, purpose: str, run_id: str, nbytes: int,
             parts: tuple[str, ...], sizes: tuple[int, ...]) -> StoredRef:
    return StoredRef(_URLS.get(url_id, ""), key, purpose, run_id, nbytes, parts, sizes)


class StoredNode(DataNode):
    """A graph node whose value is in Redis (``ref``). Dask does not fuse it into its
    dependents (``block_fusion``), so ``to_dag`` finds it; run by another scheduler (or
    inside a fused task), it loads its value."""

    __slots__ = ()

    @property
    def block_fusion(self) -> bool:
        return True

    @property
    def ref(self) -> StoredRef:
        return self.value

    def __call__(self, values: Any = ()) -> Any:
        return self.value.load()

    def result(self) -> Any:
        """The value, as a distributed ``Future`` answers: Dask's ``assert_eq`` reads
        the chunks of a persisted collection from its graph that way."""
        return self.value.load()

    def copy(self) -> StoredNode:
        return StoredNode(self.key, self.value)

    def __reduce__(self) -> tuple:
        return StoredNode, (self.key, self.value)

    def __repr__(self) -> str:
        return f"StoredNode({self.key!r}, {self.value!r})"


def ref_of(node: Any) -> StoredRef | None:
    """The reference a graph node stands for (a ``StoredNode``, or a DataNode holding a
    ``StoredRef`` after Dask copied one), else None."""
    if isinstance(node, DataNode) and isinstance(node.value, StoredRef):
        return node.value
    return None


# -- writing -------------------------------------------------------------------------------
def write(r: Any, url: str, value: Any, ttl: int) -> StoredRef:
    """Store ``value`` as its own object (sealed ``Purpose.DATA``; in parts when over
    ``MAX_STRING_BYTES``) for ``ttl`` seconds; its reference."""
    with Writer(r, url, ttl) as writer:
        return writer.write(value)


class Writer:
    """Stores values as their own objects (``write``), small ones batched in pipelines of
    about ``BATCH_BYTES``; everything is written when the ``with`` block ends."""

    BATCH_BYTES = 64 * 2**20

    def __init__(self, r: Any, url: str, ttl: int):
        self.r, self.url, self.ttl = r, url, ttl
        self.pipe = r.pipeline(transaction=False)
        self.pending = 0

    def __enter__(self) -> Writer:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self.pipe.execute()
            self.pending = 0

    def write(self, value: Any) -> StoredRef:
        vid = uuid.uuid4().hex[:16]
        key = f"ds:{{{vid}}}:v"
        data = serialize.encode(value, Purpose.DATA, vid, key)
        if data.nbytes <= MAX_STRING_BYTES:
            self.pipe.set(key, data.tobytes(), ex=self.ttl)
            self.pending += data.nbytes or 1
            if self.pending >= self.BATCH_BYTES:
                self.flush()
            return StoredRef(self.url, key, Purpose.DATA.value, vid, data.nbytes)
        items = [(f"{key}:{i}", views) for i, views in enumerate(data.pieces(CHUNK_BYTES))]
        bulk.write(self.r, items, self.ttl)  # the value's views as they are: no copy
        return StoredRef(self.url, key, Purpose.DATA.value, vid, data.nbytes,
                         tuple(name for name, _ in items),
                         tuple(sum(v.nbytes for v in views) for _, views in items))


# -- reading -------------------------------------------------------------------------------
def read(r: Any, refs: Sequence[StoredRef], what: Sequence[str] | None = None
         ) -> list[Any]:
    """The sealed bytes of ``refs`` (whole values in one round trip, those in parts each
    into one writable buffer); ``PersistedDataLostError`` for a value that is gone."""
    whole = [i for i, ref in enumerate(refs) if not ref.parts]
    out: list[Any] = [None] * len(refs)
    if whole:  # a pipeline, not MGET: values of other runs are in other cluster slots
        pipe = r.pipeline(transaction=False)
        for i in whole:
            pipe.get(refs[i].key)
        for i, blob in zip(whole, pipe.execute(), strict=True):
            out[i] = blob
    for i, ref in enumerate(refs):
        if ref.parts:
            buf = bulk.buffer(ref.nbytes)
            if bulk.read(r, ref.parts, ref.sizes, memoryview(buf)):
                out[i] = buf
    for i, blob in enumerate(out):
        if blob is None:
            raise lost([refs[i]], [what[i]] if what else None)
    return out


def decode(ref: StoredRef, blob: Any, what: str = "stored value") -> Any:
    """The value of ``blob`` once its seal checks out for ``ref``."""
    return serialize.decode(blob, Purpose(ref.purpose), ref.run_id, ref.key, what)


def lost(refs: Sequence[StoredRef], names: Sequence[Any] | None = None
         ) -> PersistedDataLostError:
    shown = ", ".join(repr(n) for n in (names or [ref.key for ref in refs])[:5])
    more = f" and {len(refs) - 5} more" if len(refs) > 5 else ""
    return PersistedDataLostError(
        f"{len(refs)} persisted or stored value(s) are gone from Redis: {shown}{more}. "
        "The collection holding them outlived serverless.persist.ttl without being used, "
        "was released, or Redis was flushed or restarted: persist it again")


# -- lifetime ------------------------------------------------------------------------------
def touch(r: Any, refs: Sequence[StoredRef], ttl: int,
          names: Sequence[Any] | None = None) -> None:
    """Renew ``refs``' lifetime to ``ttl`` seconds (a compute is about to read them);
    ``PersistedDataLostError`` naming those already gone (``names``: how to call them)."""
    if not refs:
        return
    pipe = r.pipeline(transaction=False)
    spans = []
    for ref in refs:
        ks = ref.redis_keys()
        spans.append(len(ks))
        for k in ks:
            pipe.expire(k, ttl)
    res = iter(pipe.execute())
    gone = [i for i, n in enumerate(spans) if not all([bool(next(res)) for _ in range(n)])]
    if gone:
        raise lost([refs[i] for i in gone], [names[i] for i in gone] if names else None)


def release(url: str, keys: Iterable[str]) -> None:
    """Delete stored values' keys (errors are logged: a release is best effort)."""
    from .store import connect

    names = list(keys)
    if not names:
        return
    try:
        pipe = connect(url).pipeline(transaction=False)
        for name in names:  # one by one: keys of several values are in several slots
            pipe.unlink(name)
        pipe.execute()
    except Exception as exc:  # Redis gone (e.g. the embedded one stopped at exit)
        logger.debug("could not release stored values %s: %s", names[:3], exc)


def track(ref: StoredRef) -> weakref.finalize:
    """Release ``ref``'s keys once nothing in this process holds ``ref`` any more."""
    return weakref.finalize(ref, release, ref.url, ref.redis_keys())
