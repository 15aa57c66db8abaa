"""Sliced run specs: what each invocation group needs of a run, stored apart.

A whole run spec (DAG, plan, layout in one pickle) costs every container O(DAG) bytes
and seconds, and does not fit a 1024 MB worker at a million tasks. The client cuts it:

- the **run header** (``RunHeader``): run-wide options (TTL, deadline, inline threshold,
  metrics...), a few hundred bytes;
- one **slice per invocation group** (``GroupSlice``): the group's tasks (runnable nodes,
  keys, dependencies, sizes), their layout facts (same-group and entry dependents, which
  outputs are stored, which the client wants), the keys of their inputs from other
  groups, and for every entry task they can fire: its dependencies and its worker (id,
  config, floating, threads); the plan's optimisations for these tasks (delayed I/O
  bound, stream chunk, task-dup candidates with their runnable nodes);
- **shared pieces**: functions and classes pickled by value (a lambda, a closure, a class
  made at run time) that a slice would otherwise repeat, stored once under the digest of
  their bytes; a slice names the digests it uses and a container keeps them (``PIECES``).

A group is named by how an invocation starts it: ``w:<worker id>`` is the root group the
client invokes on that worker, ``e:<task id>`` the group an entry task starts. An
invocation loads the slices of its start tasks; a fired entry it runs itself (a floating
fan-in) loads that entry's slice then (``SlicedView``).

Frame (then sealed as a whole): ``b"DSS1" | u32 length | JSON head | pickle``; the head
holds the schema, the kind and the pieces the pickle uses. The schema is checked before
anything is unpickled: a slice written by other code raises ``SchemaMismatchError``.
"""

from __future__ import annotations

import copyreg
import dataclasses
import hashlib
import io
import json
import pickle
import struct
import types
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import cloudpickle
from dask._task_spec import Task

from .. import config
from ..dag import DAG, TaskNode
from ..layout import Layout
from ..plan import Optimizations, Plan, ResourceConfig, WorkerSpec
from ..storage import serialize
from ..storage.serialize import Purpose, TamperedPayloadError
from .wire import SCHEMA as WIRE_SCHEMA
from .wire import SPEC_NAME, SchemaMismatchError

MAGIC = b"DSS1"
_HEAD_LEN = struct.Struct("<I")
PIECE_MIN_BYTES = 256  # a function pickled to more bytes is by value: a shared piece
HEADER, SLICE = "header", "slice"  # kinds of frames; also the header's name


def root_slice(worker_id: str) -> str:
    """Name of the slice of ``worker_id``'s root group (the client invokes it)."""
    return f"w:{worker_id}"


def entry_slice(task_id: int) -> str:
    """Name of the slice of the group entry task ``task_id`` starts."""
    return f"e:{task_id}"


def start_slices(invoker: str, worker_id: str, start: Iterable[int]) -> list[str]:
    """The slices an invocation loads first: the client starts a worker's root group,
    a worker starts entry tasks (one group each)."""
    if invoker == "client":
        return [root_slice(worker_id)]
    return [entry_slice(t) for t in start]


@dataclass(slots=True)
class RunHeader:
    """Run-wide options every invocation needs (small: stored once, fetched with the
    invocation's first slice)."""

    ttl: int
    inline_bytes: int
    report_tasks: bool
    max_output_bytes: int = 500 * 2**20
    metrics_url: str | None = None  # where workers record metrics; None: not recorded
    task_log_level: int | None = None  # lowest level of task log lines recorded; None: none
    deadline_at: float = 0.0  # epoch seconds the run must end by (0: none): bounds waits
    preload: bool = False  # plan.optimizations.preload


@dataclass(slots=True)
class SliceTask(TaskNode):
    """A task as a slice carries it: ``TaskNode`` (``dependents`` left empty) with its
    layout facts and its worker."""

    local_dependents: tuple[int, ...] = ()
    entry_dependents: tuple[int, ...] = ()
    upload: bool = False
    worker: str = ""

    @property
    def reads(self) -> tuple[int, ...]:
        """What it reads: its dependencies, then its stored inputs (``TaskNode.stored``)."""
        return self.deps + self.stored if self.stored else self.deps


@dataclass(slots=True)
class GroupSlice:
    """One invocation group's part of the run (see module docstring). Task facts are
    columns (one list per field, in task id order): cheaper to pickle than objects."""

    name: str
    worker: str  # the group's worker
    ids: list[int]
    keys: list[Any]
    nodes: list[Any]
    names: list[str]
    deps: list[tuple[int, ...]]
    sizes: list[int]
    annotations: list[dict[str, Any]]
    local_dependents: list[tuple[int, ...]]
    entry_dependents: list[tuple[int, ...]]
    upload: bytes  # one byte per task: 1 when its output is stored
    final: list[int]  # tasks of the group the client asked for
    inputs: dict[int, Any]  # task id -> key of other groups' tasks whose outputs it may
    # read: inputs of its tasks, of its entries (pre-load) and of task-dup candidates
    entries: dict[int, tuple[tuple[int, ...], str]]  # entry -> (its deps, its worker)
    workers: dict[str, WorkerSpec]  # the group's worker and its entries' workers
    delay: dict[int, float] = field(default_factory=dict)
    stream: dict[int, int] = field(default_factory=dict)  # its tasks and ``inputs`` streamed
    duplicate: dict[int, tuple[int, ...]] = field(default_factory=dict)  # entry -> tasks
    candidates: list[SliceTask] = field(default_factory=list)  # task-dup's, of others
    stored: list[tuple[int, ...]] = field(default_factory=list)  # per task: stored inputs
    refs: dict[int, Any] = field(default_factory=dict)  # stored input id -> its reference

    def __len__(self) -> int:
        return len(self.ids)

    def tasks(self) -> Iterator[SliceTask]:
        up, worker, stored = self.upload, self.worker, self.stored
        for i, tid in enumerate(self.ids):
            yield SliceTask(tid, self.keys[i], self.nodes[i], self.names[i], self.deps[i],
                            (), self.annotations[i], self.sizes[i],
                            self.local_dependents[i], self.entry_dependents[i], bool(up[i]),
                            worker, stored=stored[i] if stored else ())


def _schema() -> str:
    names = [f"{cls.__name__}:{','.join(f.name for f in dataclasses.fields(cls))}"
             for cls in (RunHeader, SliceTask, GroupSlice, WorkerSpec, ResourceConfig)]
    text = ";".join([WIRE_SCHEMA, MAGIC.decode(), *names])
    return hashlib.blake2b(text.encode(), digest_size=6).hexdigest()


SCHEMA = _schema()  # changes whenever what a slice holds changes


# -- shared pieces ---------------------------------------------------------------------------
class Pieces:
    """Client side: functions and classes pickled by value, each pickled once and named
    by the digest of its bytes (``blobs``: the ones to store)."""

    def __init__(self) -> None:
        self._by_id: dict[int, tuple[Any, str | None]] = {}  # id -> (object, digest)
        self.blobs: dict[str, bytes] = {}

    def digest_of(self, obj: Any) -> str | None:
        """The piece ``obj`` is, or None when it pickles by reference (small)."""
        known = self._by_id.get(id(obj))
        if known is not None and known[0] is obj:
            return known[1]
        data = cloudpickle.dumps(obj, protocol=5)
        digest = None
        if len(data) > PIECE_MIN_BYTES:
            digest = hashlib.blake2b(data, digest_size=16).hexdigest()
            self.blobs[digest] = data
        self._by_id[id(obj)] = (obj, digest)
        return digest


class _SlicePickler(cloudpickle.Pickler):
    """cloudpickle, but functions and classes pickled by value become references to
    shared pieces (``used``: the digests referred to), and a ``Task`` is pickled as the
    call that makes it (its dependencies are derived again from its arguments).

    The dispatch table is one plain dict: the C pickler looks every object's type up in
    it, and cloudpickle's ``ChainMap`` costs a Python call (and two misses) each time."""

    def __init__(self, file: io.BytesIO, pieces: Pieces):
        super().__init__(file, protocol=5)
        self.dispatch_table = _dispatch_table()
        self.pieces = pieces
        self.used: set[str] = set()

    def reducer_override(self, obj: Any) -> Any:
        kind = type(obj)
        if kind is Task:
            return _task, (obj.key, obj.func, obj.args, obj.kwargs or None,
                           obj._data_producer)
        if kind is types.FunctionType or isinstance(obj, type):
            digest = self.pieces.digest_of(obj)
            if digest is not None:
                self.used.add(digest)
                return _piece, (digest,)
        return super().reducer_override(obj)


_dispatch: tuple[tuple[int, int], dict] = ((-1, -1), {})


def _dispatch_table() -> dict:
    """copyreg's and cloudpickle's reducers in one dict, made again when either table
    changed size (so a reducer registered later is not missed)."""
    global _dispatch
    sizes = (len(copyreg.dispatch_table), len(cloudpickle.Pickler.dispatch_table))
    if _dispatch[0] != sizes:
        _dispatch = sizes, {**copyreg.dispatch_table, **cloudpickle.Pickler.dispatch_table}
    return _dispatch[1]


def _task(key: Any, func: Any, args: tuple, kwargs: dict | None, data_producer: bool) -> Task:
    """Unpickling a slice: a ``Task`` made again (see ``_SlicePickler``)."""
    return Task(key, func, *args, _data_producer=data_producer, **(kwargs or {}))


class PieceCache:
    """Container side: unpickled pieces by digest, the most recently used kept up to
    ``max_bytes`` of their pickled size (they outlive runs: same bytes, same object;
    ``storage.slices.load_view`` sets the bound from ``serverless.spec-cache-bytes``)."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, tuple[Any, int]] = OrderedDict()
        self.nbytes = 0

    def __contains__(self, digest: str) -> bool:
        return digest in self._items

    def missing(self, digests: Iterable[str]) -> list[str]:
        return [d for d in digests if d not in self._items]

    def add(self, digest: str, data: bytes) -> None:
        if hashlib.blake2b(data, digest_size=16).hexdigest() != digest:
            raise TamperedPayloadError(f"shared piece {digest}: its bytes do not match its "
                                       "digest")
        self._items[digest] = (pickle.loads(data), len(data))
        self.nbytes += len(data)
        while self.nbytes > self.max_bytes and len(self._items) > 1:
            _, (_, n) = self._items.popitem(last=False)
            self.nbytes -= n

    def get(self, digest: str) -> Any:
        found = self._items.get(digest)
        if found is None:
            raise KeyError(f"shared piece {digest} is not loaded in this container")
        self._items.move_to_end(digest)
        return found[0]


PIECES = PieceCache(config.DEFAULTS["serverless"]["spec-cache-bytes"])  # this container's


def _piece(digest: str) -> Any:
    """Unpickling a slice: the shared piece ``digest`` (loaded before the slice)."""
    return PIECES.get(digest)


# -- frames ----------------------------------------------------------------------------------
def seal_name(name: str) -> str:
    """What a slice (or the header: ``HEADER``, a piece: ``piece_name``) is sealed under,
    inline or stored: the same blob travels both ways. The header is sealed as a whole
    run spec was, so a whole spec of other code fails the schema check, not the seal."""
    return SPEC_NAME if name == HEADER else f"{SPEC_NAME}:{name}"


def piece_name(digest: str) -> str:
    return f"piece:{digest}"


def encode(obj: Any, kind: str, run_id: str, name: str,
           pieces: Pieces | None = None) -> bytes:
    """Frame ``obj`` and seal it for ``run_id`` under ``name`` (functions by value become
    ``pieces`` when given)."""
    buf = io.BytesIO()
    used: set[str] = set()
    try:
        if pieces is None:
            cloudpickle.dump(obj, buf, protocol=5)
        else:
            pickler = _SlicePickler(buf, pieces)
            pickler.dump(obj)
            used = pickler.used
    except Exception as exc:
        raise _unpicklable(obj, kind, exc) from exc
    head = json.dumps({"schema": SCHEMA, "kind": kind, "pieces": sorted(used)}).encode()
    with buf.getbuffer() as body:
        frame = b"".join([MAGIC, _HEAD_LEN.pack(len(head)), head, body])
    return serialize.seal(frame, Purpose.SPEC, run_id, seal_name(name))


def _unpicklable(obj: Any, kind: str, exc: Exception) -> TypeError:
    """Name the task that cannot be pickled, when it is one of a slice's."""
    if isinstance(obj, GroupSlice):
        for key, node, name in zip(obj.keys, obj.nodes, obj.names, strict=True):
            try:
                cloudpickle.dumps(node)
            except Exception as inner:
                return TypeError(f"task {key!r} cannot be serialised for the workers "
                                 f"(function {name!r}): {inner}")
    return TypeError(f"the run's {kind} cannot be serialised for the workers: {exc}")


def read_head(blob: bytes, run_id: str, name: str,
              what: str) -> tuple[dict[str, Any], memoryview]:
    """Check the seal and the schema: (JSON head, pickle bytes). Nothing is unpickled."""
    data = serialize.unseal(blob, Purpose.SPEC, run_id, seal_name(name), what)
    start = len(MAGIC) + _HEAD_LEN.size
    if bytes(data[:len(MAGIC)]) != MAGIC or len(data) < start:
        raise SchemaMismatchError(f"{what} is not a run spec slice of this code's format: "
                                  "client and workers run different code")
    (n,) = _HEAD_LEN.unpack(data[len(MAGIC):start])
    try:
        head = json.loads(bytes(data[start:start + n]))
    except ValueError:
        head = {}
    theirs = head.get("schema", "unknown") if isinstance(head, dict) else "unknown"
    if theirs != SCHEMA:
        from .. import __version__

        raise SchemaMismatchError(
            f"{what} has spec schema {theirs}, but this worker runs dask-serverless "
            f"{__version__} with spec schema {SCHEMA}: client and workers run different "
            "code (re-deploy the Lambda functions, or restart the local pool)")
    return head, data[start + n:]


def decode(blob: bytes, run_id: str, name: str, kind: str, what: str,
           fetch_pieces: Callable[[list[str]], None] | None = None) -> Any:
    """Unpickle a frame of ``kind`` once its seal and schema check out, after
    ``fetch_pieces`` put the shared pieces it uses that this container lacks in
    ``PIECES``."""
    head, body = read_head(blob, run_id, name, what)
    if head.get("kind") != kind:
        raise SchemaMismatchError(f"{what} holds a {head.get('kind')!r}, not a {kind!r}")
    missing = PIECES.missing(head.get("pieces", ()))
    if missing:
        if fetch_pieces is None:
            raise KeyError(f"{what} needs shared pieces this container lacks: {missing}")
        fetch_pieces(missing)
    return pickle.loads(body)


def open_piece(blob: bytes, run_id: str, digest: str, what: str) -> None:
    """Check a stored piece's seal and add it to this container's ``PIECES``."""
    data = serialize.unseal(blob, Purpose.SPEC, run_id, seal_name(piece_name(digest)), what)
    PIECES.add(digest, bytes(data))


INLINE_MAGIC = b"DSI1"
_INLINE_ITEM = struct.Struct("<HI")


def pack_inline(blobs: dict[str, bytes]) -> bytes:
    """Sealed frames (the header under ``HEADER``, slices under their names) in one
    payload for ``Invocation.spec``: each stays sealed under its own name, so a frame
    put under another name fails its seal when opened."""
    parts = [INLINE_MAGIC]
    for name, blob in blobs.items():
        encoded = name.encode()
        parts += [_INLINE_ITEM.pack(len(encoded), len(blob)), encoded, blob]
    return b"".join(parts)


def unpack_inline(data: bytes, what: str) -> dict[str, memoryview]:
    """The frames ``pack_inline`` packed, by name (their seals are checked on decode)."""
    view = memoryview(data)
    if bytes(view[:len(INLINE_MAGIC)]) != INLINE_MAGIC:
        raise SchemaMismatchError(f"{what} is not an inline run spec of this code's format: "
                                  "client and workers run different code")
    out: dict[str, memoryview] = {}
    at = len(INLINE_MAGIC)
    try:
        while at < len(view):
            n_name, n_blob = _INLINE_ITEM.unpack_from(view, at)
            at += _INLINE_ITEM.size
            name = bytes(view[at:at + n_name]).decode()
            at += n_name
            if at + n_blob > len(view):
                raise ValueError("truncated")
            out[name] = view[at:at + n_blob]
            at += n_blob
    except (struct.error, ValueError) as exc:
        raise TamperedPayloadError(f"{what}: a garbled inline run spec ({exc})") from exc
    return out


# -- the client's cut ------------------------------------------------------------------------
class Slicer:
    """Cuts a planned run into group slices (see module docstring). ``pieces`` collects
    the shared pieces of every slice it encodes."""

    def __init__(self, dag: DAG, plan: Plan, layout: Layout, run_id: str):
        self.dag, self.plan, self.layout, self.run_id = dag, plan, layout, run_id
        self.pieces = Pieces()
        self.members: list[list[int]] = [[] for _ in range(layout.n_groups)]
        for tid, g in enumerate(layout.group):
            self.members[g].append(tid)
        self.name_of: list[str] = [""] * layout.n_groups
        for wid, roots in layout.root_groups.items():
            self.name_of[layout.group[roots[0]]] = root_slice(wid)
        for g, tids in enumerate(self.members):
            if not self.name_of[g]:
                self.name_of[g] = entry_slice(tids[0])  # its entry: the group's first task

    def order(self) -> list[int]:
        """Groups in the order to store them: root groups first (their invocations go out
        as soon as they are stored), then the others by their entry's id (lower levels
        fire first)."""
        roots = [self.layout.group[r[0]] for r in self.layout.root_groups.values()]
        first = set(roots)
        return roots + [g for g in range(self.layout.n_groups) if g not in first]

    def slice(self, g: int) -> GroupSlice:
        dag, plan, layout = self.dag, self.plan, self.layout
        tasks, assignment, opt = dag.tasks, plan.assignment, plan.optimizations
        ids = self.members[g]
        members = set(ids)
        group = [tasks[t] for t in ids]
        inputs: dict[int, Any] = {}
        entries: dict[int, tuple[tuple[int, ...], str]] = {}
        for t in group:
            for d in t.deps:
                if d not in members:
                    inputs[d] = tasks[d].key
        for t in ids:
            for e in layout.entry_dependents[t]:
                entries[e] = (tasks[e].deps, assignment[e])
        for e_deps, _ in entries.values():  # read when a fan-in is held here (pre-load)
            for d in e_deps:
                if d not in members:
                    inputs.setdefault(d, tasks[d].key)
        worker = assignment[ids[0]]
        workers = {w: plan.workers[w] for w in {worker, *(w for _, w in entries.values())}}
        delay = {t: opt.delay[t] for t in ids if t in opt.delay} if opt.delay else {}
        duplicate = {e: opt.duplicate[e] for e in entries if e in opt.duplicate} \
            if opt.duplicate else {}
        candidates = [self._candidate(b) for b in sorted({b for bs in duplicate.values()
                                                          for b in bs})]
        for c in candidates:
            for d in c.deps:
                inputs.setdefault(d, tasks[d].key)
        stream = {t: opt.stream[t] for t in (*ids, *inputs) if t in opt.stream} \
            if opt.stream else {}
        stored: list[tuple[int, ...]] = []
        refs: dict[int, Any] = {}
        if dag.stored:  # stored inputs its tasks (and task-dup candidates) read
            stored = [t.stored for t in group]
            for sid in {s for t in (*group, *candidates) for s in t.stored}:
                ref = dag.stored_input(sid).ref
                if ref is not None:
                    refs[sid] = (dag.stored_input(sid).key, ref)
        return GroupSlice(
            self.name_of[g], worker, ids, [t.key for t in group], [t.node for t in group],
            [t.func_name for t in group], [t.deps for t in group], [t.size for t in group],
            [t.annotations for t in group], [layout.local_dependents[t] for t in ids],
            [layout.entry_dependents[t] for t in ids],
            bytes(layout.upload[t] for t in ids), [t for t in ids if t in dag.output_set],
            inputs, entries, workers, delay, stream, duplicate, candidates, stored, refs)

    def _candidate(self, b: int) -> SliceTask:
        t, layout = self.dag.tasks[b], self.layout
        return SliceTask(b, t.key, t.node, t.func_name, t.deps, (), t.annotations, t.size,
                         layout.local_dependents[b], layout.entry_dependents[b],
                         layout.upload[b], self.plan.assignment[b], stored=t.stored)

    def encode(self, g: int) -> tuple[str, bytes]:
        """(name, sealed bytes) of group ``g``'s slice."""
        name = self.name_of[g]
        return name, encode(self.slice(g), SLICE, self.run_id, name, self.pieces)

    def pieces_to_store(self) -> dict[str, bytes]:
        """Shared pieces found since the last call, sealed (digest -> bytes)."""
        out = {d: serialize.seal(b, Purpose.SPEC, self.run_id, seal_name(piece_name(d)))
               for d, b in self.pieces.blobs.items()}
        self.pieces.blobs.clear()
        return out


# -- the invocation's view -----------------------------------------------------------------
class MissingSliceError(KeyError):
    """A task's facts were asked for but no loaded slice holds them, nor names the slice
    that does."""


class _Facts(dict):
    """A per-task fact (``view.deps[t]``, ``view.upload[t]``...): a plain dict of the
    tasks known so far (read at C speed in the core's loops); a task not in it is looked
    up through ``view.task`` (``whole``: loading an entry's slice first), and a loaded
    slice fills it (``SlicedView.add``)."""

    __slots__ = ("attr", "view", "whole")

    def __init__(self, view: SlicedView, attr: str, whole: bool):
        super().__init__()
        self.view, self.attr, self.whole = view, attr, whole

    def __missing__(self, tid: int) -> Any:
        task = self.view.task(tid, whole=self.whole)
        return self.get(tid, getattr(task, self.attr))


class _Tasks:
    """``tasks[t]``: a ``SliceTask`` (see ``SlicedView.task``); iterating and ``in``
    cover the tasks of the loaded groups."""

    __slots__ = ("own", "view")

    def __init__(self, view: SlicedView):
        self.view, self.own = view, view.own

    def __getitem__(self, tid: int) -> SliceTask:
        found = self.own.get(tid)
        return found if found is not None else self.view.task(tid)

    def __contains__(self, tid: int) -> bool:
        return tid in self.own

    def __iter__(self) -> Iterator[int]:
        return iter(self.own)

    def __len__(self) -> int:
        return len(self.own)


class SlicedView:
    """A run as one invocation sees it: the run header and the slices it loaded, merged.

    Per-task facts are read the way a whole run's are (``deps[t]``,
    ``local_dependents[t]``, ``entry_dependents[t]``, ``upload[t]``, ``t in final``,
    ``assignment[t]``, ``workers``, ``optimizations``, ``worker_of(t)``, ``tasks[t]``); a
    fact of an entry task of another group loads that group's slice through ``load``
    (``name -> GroupSlice``) on first use. ``nbytes`` / ``load_s`` total what was loaded.
    The run header's options are attributes too (``ttl``, ``deadline_at``...).
    """

    def __init__(self, header: RunHeader, load: Callable[[list[str]], list[GroupSlice]]):
        self.header = header
        for f in dataclasses.fields(header):  # plain attributes: read per task
            setattr(self, f.name, getattr(header, f.name))
        self._load = load
        self.own: dict[int, SliceTask] = {}  # tasks of the loaded groups
        self.candidates: dict[int, SliceTask] = {}  # task-dup's, of other groups
        self.entries: dict[int, tuple[tuple[int, ...], str]] = {}
        self.inputs: dict[int, Any] = {}
        self.workers: dict[str, WorkerSpec] = {}
        self.final: set[int] = set()
        self.optimizations = Optimizations(preload=header.preload)
        self.loaded: set[str] = set()
        self.nbytes = 0  # bytes of the slices loaded (set by the loader)
        self.load_s = 0.0
        # of loaded tasks; deps and assignment also of the entries they fire and of
        # task-dup candidates; more through ``task`` when asked
        self.deps = _Facts(self, "deps", whole=False)
        self.reads = _Facts(self, "reads", whole=False)  # deps, then stored inputs
        self.stored_refs: dict[int, Any] = {}  # stored input id -> its reference
        self.stored_keys: dict[int, Any] = {}  # stored input id -> its Dask key
        self.assignment = _Facts(self, "worker", whole=False)
        self.local_dependents = _Facts(self, "local_dependents", whole=True)
        self.entry_dependents = _Facts(self, "entry_dependents", whole=True)
        self.upload = _Facts(self, "upload", whole=True)
        self.tasks = _Tasks(self)

    def ensure(self, names: Iterable[str]) -> None:
        """Load the slices ``names`` not loaded yet (one round trip)."""
        wanted = [n for n in dict.fromkeys(names) if n not in self.loaded]
        if wanted:
            for s in self._load(wanted):
                self.add(s)

    def add(self, s: GroupSlice) -> None:
        """Merge a slice into the view."""
        if s.name in self.loaded:
            return
        self.loaded.add(s.name)
        own, deps, assignment = self.own, self.deps, self.assignment
        local, entry, upload = self.local_dependents, self.entry_dependents, self.upload
        reads = self.reads
        for sid, (key, ref) in s.refs.items():
            self.stored_keys[sid] = key
            self.stored_refs[sid] = ref
        for c in s.candidates:
            self.candidates[c.id] = c
            deps.setdefault(c.id, c.deps)
            reads.setdefault(c.id, c.reads)
            assignment.setdefault(c.id, c.worker)
        for e, (e_deps, worker) in s.entries.items():
            self.entries[e] = (e_deps, worker)
            deps[e] = e_deps
            assignment[e] = worker
        for t in s.tasks():
            own[t.id] = t
            deps[t.id] = t.deps
            reads[t.id] = t.reads
            assignment[t.id] = t.worker
            local[t.id] = t.local_dependents
            entry[t.id] = t.entry_dependents
            upload[t.id] = t.upload
        self.inputs.update(s.inputs)
        self.workers.update(s.workers)
        self.final.update(s.final)
        opt = self.optimizations
        opt.delay.update(s.delay)
        opt.stream.update(s.stream)
        opt.duplicate.update(s.duplicate)

    def task(self, tid: int, whole: bool = False) -> SliceTask:
        """Task ``tid`` of a loaded group; unless ``whole``, a task-dup candidate (its
        node and dependencies) or an input from another group (its key only); an entry
        of another group after loading its slice (``whole``: its group's facts are about
        to be read)."""
        found = self.own.get(tid)
        if found is not None:
            return found
        if not whole and tid in self.candidates:
            return self.candidates[tid]
        if tid in self.entries:
            self.ensure([entry_slice(tid)])
            found = self.own.get(tid)
            if found is not None:
                return found
        found = self.candidates.get(tid)
        if found is not None:
            return found
        if not whole and tid in self.inputs:  # another group's output: only its key
            found = self.candidates[tid] = SliceTask(tid, self.inputs[tid], None, "")
            return found
        raise MissingSliceError(f"task {tid} is in no slice this invocation loaded "
                                f"({sorted(self.loaded)[:5]})")

    def key(self, tid: int) -> Any:
        """The key of a loaded task, of one of their inputs or of a stored input."""
        found = self.own.get(tid) or self.candidates.get(tid)
        if found is not None:
            return found.key
        stored = self.stored_keys.get(tid)
        return stored if stored is not None else self.inputs[tid]

    def arguments(self, tid: int, values: dict[int, Any]) -> dict[Any, Any]:
        """Task ``tid``'s inputs by Dask key (what its node is called with), from
        ``values`` by id: its dependencies, then its stored inputs."""
        key = self.key
        return {key(d): values[d] for d in self.reads[tid]}

    def worker_of(self, tid: int) -> WorkerSpec:
        return self.workers[self.assignment[tid]]

    def runs_in(self, entry: int, worker: WorkerSpec) -> bool:
        """Whether an invocation of ``worker`` runs ``entry`` itself once it fires it: the
        entry is that worker's, or floats and the memory config matches."""
        spec = self.worker_of(entry)
        return spec.id == worker.id or (spec.floating and spec.config == worker.config)


# -- what a slice costs (for the simulator and cost model) --------------------------------
SLICE_BASE_BYTES = 700  # a slice's fixed part: frame, head, class references, its worker
ENTRY_BYTES = 40  # one entry it can fire: its dependencies and its worker's id
INPUT_BYTES = 30  # one input from another group: its key
SAMPLES_PER_FUNCTION = 8


class SliceSizes:
    """Predicted bytes of each group's slice without encoding the run: a task costs what
    tasks of its function cost on average in a sample (each encoded alone, as slices
    encode it), plus fixed parts per slice, entry and input. ``of_group(g)`` /
    ``of_task(t)`` (the slice of ``t``'s group). ``per_function``: the samples' sizes,
    shared by the plans of one DAG (a planner simulates hundreds; the layout changes a
    task's size by a few bytes only)."""

    def __init__(self, dag: DAG, plan: Plan, layout: Layout,
                 per_function: dict[str, float] | None = None):
        self.dag, self.plan, self.layout = dag, plan, layout
        self._per_function = per_function if per_function is not None else {}
        self._groups: dict[int, int] = {}
        self._members: list[list[int]] | None = None

    def of_task(self, tid: int) -> int:
        return self.of_group(self.layout.group[tid])

    def of_group(self, g: int) -> int:
        found = self._groups.get(g)
        if found is None:
            found = self._groups[g] = self._estimate(g)
        return found

    def _estimate(self, g: int) -> int:
        if self._members is None:
            self._members = [[] for _ in range(self.layout.n_groups)]
            for tid, group in enumerate(self.layout.group):
                self._members[group].append(tid)
        tasks, layout = self.dag.tasks, self.layout
        ids = self._members[g]
        members = set(ids)
        total = float(SLICE_BASE_BYTES)
        inputs: set[int] = set()
        entries = 0
        for t in ids:
            total += self._task_bytes(tasks[t].func_name)
            entries += len(layout.entry_dependents[t])
            inputs.update(d for d in tasks[t].deps if d not in members)
        return int(total + entries * ENTRY_BYTES + len(inputs) * INPUT_BYTES)

    def _task_bytes(self, function: str) -> float:
        if not self._per_function:
            by_function: dict[str, list[int]] = {}
            for t in self.dag.tasks:
                by_function.setdefault(t.func_name, []).append(t.id)
            for name, ids in by_function.items():
                step = max(1, len(ids) // SAMPLES_PER_FUNCTION)
                sample = [self.dag.tasks[t] for t in ids[::step][:SAMPLES_PER_FUNCTION]]
                if len(sample) == 1:
                    self._per_function[name] = self._bytes(sample)
                else:  # the marginal task: what one more costs in a slice (memo shared)
                    self._per_function[name] = (self._bytes(sample) - self._bytes(
                        sample[:1])) / (len(sample) - 1)
        return self._per_function[function]

    def _bytes(self, tasks: list[TaskNode]) -> int:
        """Bytes of ``tasks`` pickled together, as a slice's columns hold them."""
        buf = io.BytesIO()
        layout = self.layout
        _SlicePickler(buf, Pieces()).dump(
            [(t.id, t.key, t.node, t.func_name, t.deps, t.size, t.annotations,
              layout.local_dependents[t.id], layout.entry_dependents[t.id]) for t in tasks])
        return buf.tell()
