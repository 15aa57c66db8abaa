"""Sliced run specs in Redis: the client stores them in pipelined batches, an invocation
loads the slices it needs (``protocol.slices`` has the format).

Keys (``RunKeys``): the header under ``dag``, each slice under ``slice(name)``, each
shared piece under ``piece(digest)``, and ``slices_done`` once every slice is stored. The
client invokes a root group as soon as its slice is stored, so an invocation may ask for
an entry's slice before the client stored it: it waits for it until ``slices_done`` is
set (then it is lost), the run is cancelled, or the run's deadline passes.
"""

from __future__ import annotations

import gc
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .. import config
from ..dag import DAG
from ..errors import DeadlineExceededError, RunDataLostError
from ..gcutil import gc_paused
from ..layout import Layout
from ..plan import Plan
from ..protocol.slices import (
    HEADER,
    PIECES,
    SLICE,
    GroupSlice,
    RunHeader,
    SlicedView,
    Slicer,
    decode,
    encode,
    open_piece,
    start_slices,
    unpack_inline,
)
from .store import RunStore

logger = logging.getLogger(__name__)

BATCH_BYTES = 8 * 2**20  # the client sends slices in pipelines of about this many bytes
BATCH_SLICES = 1000  # ... or of this many slices
WAIT_MAX_S = 0.05  # longest pause between looks for a slice not stored yet
VIEW_CACHE_SHARE = 32  # a container keeps loaded runs up to 1/this of its memory


class SliceWriter:
    """Client side: store the header, slices and shared pieces in pipelined batches.
    ``add`` returns the slices stored by the batch it flushed, name -> sealed bytes
    (empty while it fills)."""

    def __init__(self, store: RunStore, batch_bytes: int = BATCH_BYTES,
                 batch_slices: int = BATCH_SLICES):
        self.store = store
        self.batch_bytes, self.batch_slices = batch_bytes, batch_slices
        self._pipe = store.r.pipeline(transaction=False)
        self._pending: dict[str, bytes] = {}
        self._pending_bytes = 0
        self.names: list[str] = []  # every slice stored (for cleanup)
        self.digests: list[str] = []  # every piece stored
        self.nbytes = 0  # bytes stored: header, slices, pieces

    def header(self, header: RunHeader) -> bytes:
        blob = encode(header, HEADER, self.store.keys.run_id, HEADER)
        self.store.r.set(self.store.keys.dag, blob, ex=self.store.ttl)
        self.nbytes += len(blob)
        return blob

    def add(self, name: str, blob: bytes, pieces: dict[str, bytes]) -> dict[str, bytes]:
        """Queue slice ``name`` after the new shared ``pieces`` it uses (a reader that
        sees the slice finds its pieces: one connection runs the queue in order)."""
        keys, ttl = self.store.keys, self.store.ttl
        for digest, data in pieces.items():
            self._pipe.set(keys.piece(digest), data, ex=ttl)
            self.digests.append(digest)
            self._pending_bytes += len(data)
        self._pipe.set(keys.slice(name), blob, ex=ttl)
        self._pending[name] = blob
        self._pending_bytes += len(blob)
        if self._pending_bytes >= self.batch_bytes or len(self._pending) >= self.batch_slices:
            return self.flush()
        return {}

    def flush(self) -> dict[str, bytes]:
        """Send the queued writes; the slices they stored (name -> sealed bytes)."""
        if not self._pending:
            return {}
        self._pipe.execute()
        done, self._pending = self._pending, {}
        self.names += done
        self.nbytes += self._pending_bytes
        self._pending_bytes = 0
        return done

    def finish(self) -> None:
        """Flush, then mark every slice stored."""
        self.flush()
        self.store.r.set(self.store.keys.slices_done, 1, ex=self.store.ttl)

    def cleanup_keys(self) -> list[str]:
        keys = self.store.keys
        return [keys.slices_done, *(keys.slice(n) for n in self.names),
                *(keys.piece(d) for d in self.digests)]

    def cleanup(self) -> int:
        """Delete what this writer stored but the header (``RunStore.cleanup`` has it)."""
        names, deleted = self.cleanup_keys(), 0
        for i in range(0, len(names), 2000):
            deleted += int(self.store.r.unlink(*names[i:i + 2000]))
        return deleted


def store_slices(slicer: Slicer, writer: SliceWriter,
                 on_stored: Callable[[dict[str, bytes]], None]) -> None:
    """Encode and store every slice of ``slicer``'s run in pipelined batches, root groups
    first; ``on_stored(slices)`` (name -> sealed bytes) after each batch (the client
    invokes the root groups stored), then mark them all stored."""
    n_roots = len(slicer.layout.root_groups)
    for i, g in enumerate(slicer.order()):
        name, blob = slicer.encode(g)
        stored = writer.add(name, blob, slicer.pieces_to_store())
        if i == n_roots - 1:  # the root groups' invocations go out before the rest
            stored = {**stored, **writer.flush()}
        if stored:
            on_stored(stored)
    stored = writer.flush()
    if stored:
        on_stored(stored)
    writer.finish()


def write_spec(writer: SliceWriter, dag: DAG, plan: Plan, layout: Layout,
               header: RunHeader,
               on_stored: Callable[[dict[str, bytes]], None] = lambda stored: None
               ) -> bytes:
    """Store a run's spec with ``writer``: its header, then its slices
    (``store_slices``); the writer knows what it stored (``cleanup``), even when this
    raises half-way. Returns the sealed header."""
    blob = writer.header(header)
    store_slices(Slicer(dag, plan, layout, writer.store.keys.run_id), writer, on_stored)
    return blob


class SliceReader:
    """Worker side: fetch an invocation's header and slices (waiting for slices the
    client has not stored yet) and the shared pieces this container lacks."""

    def __init__(self, store: RunStore, deadline_at: float = 0.0,
                 what: str = "worker"):
        self.store, self.deadline_at, self.what = store, deadline_at, what
        self.nbytes = 0  # everything fetched: header, slices, pieces

    def header_and_slices(self, names: list[str], inline: bytes | None = None
                          ) -> tuple[RunHeader, list[GroupSlice]]:
        """The run header and slices ``names``: those the invocation carried
        (``inline``: ``pack_inline``'s), the others in one round trip (more when a slice
        is not stored yet)."""
        keys = self.store.keys
        carried = unpack_inline(inline, f"{self.what}: inline run spec") \
            if inline is not None else {}
        wanted = [k for k, n in ((keys.dag, HEADER), *((keys.slice(n), n) for n in names))
                  if n not in carried]
        fetched = iter(self.store.r.mget(wanted) if wanted else [])
        blobs = [carried[n] if n in carried else next(fetched) for n in (HEADER, *names)]
        if blobs[0] is None:
            raise RunDataLostError(f"run {keys.run_id}: its spec header is gone from Redis "
                                   "(run finished, cancelled, expired, or Redis restarted)")
        header = decode(blobs[0], keys.run_id, HEADER, HEADER, f"{self.what}: run header")
        self.nbytes += len(blobs[0])
        self.deadline_at = header.deadline_at
        return header, self._decode(names, blobs[1:])

    def slices(self, names: list[str]) -> list[GroupSlice]:
        keys = self.store.keys
        return self._decode(names, self.store.r.mget([keys.slice(n) for n in names]))

    def _decode(self, names: list[str], blobs: list[bytes | None]) -> list[GroupSlice]:
        missing = [n for n, b in zip(names, blobs, strict=True) if b is None]
        if missing:
            found = dict(zip(missing, self._wait_for(missing), strict=True))
            blobs = [b if b is not None else found[n] for n, b in zip(names, blobs,
                                                                      strict=True)]
        self.nbytes += sum(len(b) for b in blobs if b is not None)
        run_id = self.store.keys.run_id
        return [decode(b, run_id, n, SLICE, f"{self.what}: slice {n!r} of the run spec",
                       self._fetch_pieces) for n, b in zip(names, blobs, strict=True)]

    def _wait_for(self, names: list[str]) -> list[bytes]:
        """Slices the client has not stored yet: wait for them (see module docstring)."""
        keys, r = self.store.keys, self.store.r
        pause = 0.001
        while True:
            pipe = r.pipeline(transaction=False)  # GETs, not MGET: Redis Cluster pipelines
            for n in names:  # refuse multi-key commands
                pipe.get(keys.slice(n))
            pipe.exists(keys.slices_done)
            pipe.exists(keys.cancel)
            *blobs, done, cancelled = pipe.execute()
            flags = done or cancelled
            if all(b is not None for b in blobs):
                return blobs
            if flags:
                lost = [n for n, b in zip(names, blobs, strict=True) if b is None]
                raise RunDataLostError(
                    f"run {keys.run_id}: slices {lost[:5]} of its spec are not in Redis "
                    "(run finished, cancelled, expired, or Redis restarted)")
            if self.deadline_at and time.time() >= self.deadline_at:
                raise DeadlineExceededError(
                    f"run {keys.run_id}: {self.what} waited for slices {names[:5]} of the "
                    "run spec until the run's deadline")
            time.sleep(pause)
            pause = min(2 * pause, WAIT_MAX_S)

    def _fetch_pieces(self, digests: list[str]) -> None:
        keys = self.store.keys
        blobs = self.store.r.mget([keys.piece(d) for d in digests])
        for d, blob in zip(digests, blobs, strict=True):
            if blob is None:
                raise RunDataLostError(f"run {keys.run_id}: shared piece {d} of its spec "
                                       "is gone from Redis")
            self.nbytes += len(blob)
            open_piece(blob, keys.run_id, d, f"{self.what}: shared piece {d}")


@dataclass(slots=True)
class SpecUse:
    """What one invocation fetched of its run's spec: ``of(view)`` once it ends gives
    (bytes, seconds) since ``load_view`` began, lazy loads included."""

    nbytes: int = 0
    load_s: float = 0.0

    def of(self, view: SlicedView) -> tuple[int, float]:
        return view.nbytes - self.nbytes, view.load_s - self.load_s


class SpecCache:
    """This container's run specs: the views of its recent runs, newest last, each with
    the store it reads from. Bounded by the bytes fetched for them (``trim``); a run's
    view is dropped once the run ended (``drop_ended``: its header is gone from Redis,
    which the client's cleanup deletes, or its deadline passed), checked whenever a run
    new to this container arrives, so finished runs do not pile up between runs."""

    def __init__(self) -> None:
        self._runs: OrderedDict[str, tuple[SlicedView, RunStore]] = OrderedDict()

    def __contains__(self, run_id: str) -> bool:
        return run_id in self._runs

    def runs(self) -> list[str]:
        return list(self._runs)

    @property
    def nbytes(self) -> int:
        return sum(view.nbytes for view, _ in self._runs.values())

    def get(self, run_id: str) -> SlicedView | None:
        found = self._runs.get(run_id)
        if found is None:
            return None
        self._runs.move_to_end(run_id)
        return found[0]

    def put(self, run_id: str, view: SlicedView, store: RunStore) -> None:
        self._runs[run_id] = (view, store)
        self._runs.move_to_end(run_id)

    def forget(self, run_id: str) -> None:
        if self._runs.pop(run_id, None) is not None:
            gc.unfreeze()  # its objects may be collected again (``load_view`` freezes)

    def trim(self, max_bytes: int, keep: str) -> None:
        """Drop the least recently used runs until the rest fit ``max_bytes``; ``keep``
        (the run being loaded) last, once its invocation has it."""
        total = self.nbytes
        for run_id in list(self._runs):
            if total <= max_bytes:
                return
            if run_id != keep:
                total -= self._runs[run_id][0].nbytes
                self.forget(run_id)
        if total > max_bytes:  # the current run alone is too large to keep after this call
            self.forget(keep)

    def drop_ended(self, now: float, keep: str = "") -> list[str]:
        """Drop the runs that ended (see class docstring); their ids. One round trip per
        Redis the cached runs use; a Redis that does not answer keeps its runs."""
        ended = [r for r, (view, _) in self._runs.items()
                 if r != keep and view.header.deadline_at and now >= view.header.deadline_at]
        by_client: dict[int, list[tuple[str, RunStore]]] = {}
        for run_id, (_, store) in self._runs.items():
            if run_id != keep and run_id not in ended:
                by_client.setdefault(id(store.r), []).append((run_id, store))
        for runs in by_client.values():
            pipe = runs[0][1].r.pipeline(transaction=False)
            for _, store in runs:
                pipe.exists(store.keys.dag)
            try:
                present = pipe.execute()
            except Exception:  # best effort (a gone cluster raises RedisClusterException,
                # which is no RedisError): an unanswered Redis keeps its runs
                logger.debug("spec cache: could not check %d runs", len(runs), exc_info=True)
                continue
            ended += [run_id for (run_id, _), n in zip(runs, present, strict=True) if not n]
        for run_id in ended:
            self.forget(run_id)
        return ended


SPECS = SpecCache()  # this container's


def load_view(run_id: str, worker_id: str, invoker: str, start: Iterable[int],
              store: RunStore, memory_mb: int,
              inline: bytes | None = None) -> tuple[SlicedView, SpecUse]:
    """The run as this invocation sees it, its start slices loaded (``view.nbytes`` /
    ``view.load_s``: everything fetched and the time spent, since the view was made),
    and where its counters stood before. The container keeps its runs' views
    (``SPECS``) up to ``serverless.spec-cache-bytes`` (at most 1/``VIEW_CACHE_SHARE`` of
    its memory) of fetched bytes, so a later invocation of the same run loads only the
    slices it lacks; a run new to the container first drops the runs that ended.
    ``inline``: the header and slices the invocation carried (``pack_inline``), used
    when the container does not have the run yet."""
    t0 = time.perf_counter()
    names = start_slices(invoker, worker_id, start)
    limit = min(int(config.get("spec-cache-bytes")), memory_mb * 2**20 // VIEW_CACHE_SHARE)
    PIECES.max_bytes = limit
    view = SPECS.get(run_id)
    before = SpecUse() if view is None else SpecUse(view.nbytes, view.load_s)
    if view is None:
        SPECS.drop_ended(time.time())
        reader = SliceReader(store, what=f"worker {worker_id}")
        with gc_paused():
            header, slices = reader.header_and_slices(names, inline)
            view = SlicedView(header, lambda more: _load_more(reader, view, more))
            for s in slices:
                view.add(s)
        view.nbytes = reader.nbytes
        view.load_s = time.perf_counter() - t0
        SPECS.put(run_id, view, store)
    else:
        view.ensure(names)
    SPECS.trim(limit, keep=run_id)
    gc.freeze()  # what is loaded lives as long as the run: later collections skip it
    return view, before


def _load_more(reader: SliceReader, view: SlicedView | None,
               names: list[str]) -> list[GroupSlice]:
    """A view's lazy load: more slices of its run (e.g. a floating fan-in's)."""
    t0 = time.perf_counter()
    with gc_paused():
        slices = reader.slices(names)
    if view is not None:
        view.nbytes = reader.nbytes
        view.load_s += time.perf_counter() - t0
    return slices


def forget(run_id: str) -> None:
    """Drop a run's view from this container."""
    SPECS.forget(run_id)
