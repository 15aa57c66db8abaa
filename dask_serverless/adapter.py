"""Dask graph (expression, HighLevelGraph or dict; legacy tuples or Task spec) -> DAG."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from functools import partial
from typing import Any

from dask._task_spec import (
    Alias,
    DataNode,
    GraphNode,
    Task,
    TaskRef,
    _execute_subgraph,
    convert_legacy_graph,
    parse_input,
)
from dask.core import flatten
from dask.order import order
from dask.sizeof import sizeof
from dask.utils import apply, funcname

from . import config
from .dag import DAG, NO_ANNOTATIONS, StoredInput, TaskNode, key_prefix
from .errors import DiskShuffleError
from .hints import hints_of
from .sizes import RootSizes
from .storage.stored import ref_of

DASK_ORDER_MAX_TASKS = 20_000  # above this, a depth-first order replaces dask.order


def graph_and_annotations(dsk: Any) -> tuple[Mapping, dict[str, dict]]:
    """Materialise what a scheduler ``get`` receives: (dict graph, annotations by type)."""
    annotations: dict[str, dict] = {}
    if hasattr(dsk, "__dask_annotations__"):
        annotations = dict(dsk.__dask_annotations__() or {})
    if not isinstance(dsk, Mapping):
        dsk = dsk.__dask_graph__()
    if hasattr(dsk, "layers"):  # HighLevelGraph given directly
        from dask.highlevelgraph import HighLevelGraph

        if isinstance(dsk, HighLevelGraph):
            for layer in dsk.layers.values():
                for name, value in (layer.annotations or {}).items():
                    per_key = annotations.setdefault(name, {})
                    for k in layer:
                        per_key[k] = value(k) if callable(value) else value
        dsk = dict(dsk)
    return dsk, annotations


FINALIZE_PREFIX = "finalize-"  # dask.compute's last task per collection: assembles it


def to_dag(dsk: Any, keys: Any, embed_max_bytes: int | None = None,
           client_finals: bool = False) -> DAG:
    """Convert the graph, cull it to what ``keys`` (possibly nested lists) need, order it;
    root tasks get their size (``sizes``). Linear in tasks above ``DASK_ORDER_MAX_TASKS``:
    one walk culls and orders, names and hints are computed once per function.

    Stored values are not tasks: a graph's ``StoredNode``s (persisted results) and any
    value it embeds above ``embed_max_bytes`` (``serverless.embed-max-bytes``: a large
    DataNode, a large literal argument of a task, also inside a fused task) become the
    DAG's stored inputs (``DAG.stored``), read by the tasks that need them; the client
    stores the embedded ones before the run (``DAG.stored[i].value``).

    ``client_finals``: requested ``finalize-`` tasks (``dask.compute`` assembles each
    collection's result in one: blocks concatenated, partitions joined) are not tasks
    either; their inputs are outputs and the client runs them (``DAG.client_finals``),
    as Dask's ``compute`` did before its graphs carried them: the blocks then reach the
    client as each is stored, not as one value after the last."""
    sizes = RootSizes.of(dsk)
    graph, annotations = graph_and_annotations(dsk)
    wanted = list(flatten(keys)) if isinstance(keys, list) else [keys]
    graph = convert_legacy_graph(graph)  # a new dict: the caller's graph is left alone
    missing = [k for k in wanted if k not in graph]
    if missing:
        raise KeyError(f"requested keys are not in the graph: {missing[:5]!r}")
    finals = _finals(graph, wanted) if client_finals else {}
    if finals:
        wanted = list(dict.fromkeys(d for k in wanted for d in (
            sorted(finals[k].dependencies, key=str) if k in finals else [k])))
    stored_outputs = {k: ref for k in wanted if (ref := ref_of(graph[k])) is not None}
    if stored_outputs:  # nothing to run for them: the client reads them
        wanted = [k for k in wanted if k not in stored_outputs]
    tasks = _Tasks(annotations.get("serverless", {}), sizes,
                   config.get("embed-max-bytes", embed_max_bytes))
    dag = _order(tasks, graph, wanted)
    dag.stored_outputs = stored_outputs
    dag.client_finals = finals
    return dag


def _finals(graph: dict, wanted: list) -> dict[Hashable, Task]:
    """The requested ``finalize-`` tasks whose inputs are the graph's (``to_dag``)."""
    return {k: node for k in wanted if isinstance(k, str) and k.startswith(FINALIZE_PREFIX)
            and isinstance(node := graph[k], Task) and node.dependencies
            and all(d in graph for d in node.dependencies)}


def _order(tasks: _Tasks, graph: dict, wanted: list) -> DAG:
    if len(graph) > DASK_ORDER_MAX_TASKS:  # dask.order costs seconds at this size
        ordered = _post_order(graph, wanted)
        if len(ordered) > DASK_ORDER_MAX_TASKS:
            return tasks.dag(graph, ordered, wanted)
        needed = {k: graph[k] for k in ordered}
    else:
        needed = _cull(graph, wanted)
    del graph
    priority = order(needed) if len(needed) > 1 else {k: 0 for k in needed}
    ordered = sorted(needed, key=priority.__getitem__)
    try:
        return tasks.dag(needed, ordered, wanted)
    except _NotTopological:  # dask.order should never produce this
        return tasks.dag(needed, _post_order(needed, wanted), wanted)


class _NotTopological(ValueError):
    pass


class _Tasks:
    """Builds ``TaskNode``s; what depends only on a task's function (its name, its
    hints) is computed once per function, and equal names share one string."""

    def __init__(self, per_task: dict, sizes: RootSizes, embed_max_bytes: int):
        self.per_task, self.sizes = per_task, sizes
        self.by_func: dict[int, tuple[Any, str | None, dict, Any, bool]] = {}  # id(func)
        self.names: dict[str, str] = {}
        self.shuffle_stores = 0  # disk shuffles' stores moved to Redis
        self.warned_store = False  # da.store into an in-memory array (once a graph)
        self.limit = embed_max_bytes
        self.stored: list[StoredInput] = []
        self.literals: dict[int, tuple[Any, Hashable]] = {}  # id(value) -> (value, its key)
        self.ids: dict[Hashable, int] = {}
        self.n_tasks = 0

    def dag(self, graph: Mapping[Hashable, GraphNode], ordered: list[Hashable],
            wanted: list[Hashable]) -> DAG:
        ids: dict[Hashable, int] = {}
        self.ids, self.stored, self.literals = ids, [], {}
        tasks: list[TaskNode] = []
        per_task, sizes, by_func = self.per_task, self.sizes, self.by_func
        outputs = set(wanted)
        for k in ordered:  # stored nodes first: they get ids after the tasks
            stored = self._stored_node(k, graph[k]) if k not in outputs else None
            if stored is not None:
                self.stored.append(stored)
        n = len(ordered) - len(self.stored)
        self.n_tasks = n
        for j, s in enumerate(self.stored):
            ids[s.key] = n + j
        i = 0
        for k in ordered:  # one pass, inlined: it runs per task
            if k in ids:
                continue
            node = graph[k]
            if type(node) is Task:
                node = self._embedded(node)
            dependencies = node.dependencies
            reads: tuple[int, ...] = ()
            if not dependencies:
                deps: tuple[int, ...] = ()
            elif len(dependencies) == 1:
                deps = (ids[next(iter(dependencies))],)
            else:
                deps = tuple(sorted([ids[d] for d in dependencies]))
            if deps and deps[-1] >= n:  # stored inputs: read, not waited for
                reads = tuple(d for d in deps if d >= n)
                deps = tuple(d for d in deps if d < n)
            if deps and deps[-1] >= i:
                raise _NotTopological(k)
            ids[k] = i
            if isinstance(node, Task):
                known = by_func.get(id(node.func))
                if known is None or known[0] is not node.func:
                    known = self._function(k, node.func)
                if known[4]:
                    node = _shuffle_store_task(k, node)
                    self.shuffle_stores += 1
                name = known[1] or self._intern(_name(node))
                annotations, declared = known[2], known[3]
                if "load_store_chunk" in name and not self.warned_store:
                    self.warned_store = _warn_store_into_memory(k, node)
            else:
                name, annotations, declared = self._intern(_name(node)), NO_ANNOTATIONS, None
            annotated = per_task.get(k) if per_task else None
            if annotated is not None and isinstance(annotated, Mapping):  # else: none, or
                annotations = {**annotations, **annotated}  # Dask's tombstone
                declared = annotations.pop("size", declared)  # TaskNode.size holds it
            if deps or (declared is None and not sizes.by_layer and isinstance(node, Task)
                        and node.func is not _execute_subgraph):
                size = 0  # has inputs, or nothing can know its size (no size hint)
            else:
                size = sizes.size(k, node, declared, name)
            tasks.append(TaskNode(i, k, node, name, deps, (), annotations, size,
                                  stored=reads))
            i += 1
        dag = DAG(tasks, [ids[k] for k in wanted], self.stored)
        dag.shuffle_stores = self.shuffle_stores
        return dag

    # -- stored values -----------------------------------------------------------------------
    def _stored_node(self, key: Hashable, node: GraphNode) -> StoredInput | None:
        """The stored input graph node ``node`` is: a reference, or a large DataNode."""
        ref = ref_of(node)
        if ref is not None:
            return StoredInput(key, ref, None, ref.nbytes)
        if type(node) is DataNode:
            nbytes = _nbytes(node.value)
            if nbytes > self.limit:
                return StoredInput(key, None, node.value, nbytes)
        return None

    def _new_stored(self, stored: StoredInput) -> None:
        self.ids[stored.key] = self.n_tasks + len(self.stored)
        self.stored.append(stored)

    def _literal_key(self, value: Any, nbytes: int) -> Hashable:
        """The key of a large literal argument, stored once however many tasks use it."""
        known = self.literals.get(id(value))
        if known is not None and known[0] is value:
            return known[1]
        key = ("embedded", len(self.literals), type(value).__name__)
        self.literals[id(value)] = (value, key)
        self._new_stored(StoredInput(key, None, value, nbytes))
        return key

    def _embedded(self, node: Task) -> Task:
        """``node`` with its large literal arguments (and, for a fused task, its inner
        stored and large data nodes) replaced by references to stored inputs."""
        if node.func is _execute_subgraph and node.args and isinstance(node.args[0], dict):
            return self._fused(node)
        limit = self.limit
        changed = False
        args = list(node.args)
        for j, a in enumerate(args):
            if type(a) not in _SMALL:
                b = self._literal(a, limit)
                if b is not a:
                    args[j], changed = b, True
        kwargs = node.kwargs
        if kwargs:
            kwargs = dict(kwargs)
            for name, a in kwargs.items():
                if type(a) not in _SMALL:
                    b = self._literal(a, limit)
                    if b is not a:
                        kwargs[name], changed = b, True
        if not changed:
            return node
        return Task(node.key, node.func, *args, _data_producer=node.data_producer, **kwargs)

    def _literal(self, a: Any, limit: int) -> Any:
        """``a``, or a reference to it (or a container with references) when large."""
        if isinstance(a, GraphNode | TaskRef):
            return a
        t = type(a)
        if (t is list or t is tuple) and len(a) <= _MAX_SCANNED:
            items = [self._literal(x, limit) if type(x) not in _SMALL else x for x in a]
            if any(x is not y for x, y in zip(items, a, strict=True)):
                return parse_input(t(items))
            return a
        if t is dict and len(a) <= _MAX_SCANNED:
            values = {k: self._literal(v, limit) if type(v) not in _SMALL else v
                      for k, v in a.items()}
            if any(values[k] is not v for k, v in a.items()):
                return parse_input(values)
            return a
        nbytes = _nbytes(a)
        if nbytes > limit:
            return TaskRef(self._literal_key(a, nbytes))
        return a

    def _fused(self, node: Task) -> Task:
        """A fused task (``_execute_subgraph``) whose inner stored or large data nodes
        and large literals become external inputs (stored inputs)."""
        inner, outkey, inkeys, *refs = node.args
        extra: list[Hashable] = []
        new_inner = {}
        for k, v in inner.items():
            stored = self._stored_node(k, v) if isinstance(v, DataNode) else None
            if stored is not None:
                self._new_stored(stored)
                extra.append(k)
                continue
            if type(v) is Task:
                v2 = self._embedded(v)
                if v2 is not v:
                    extra += [d for d in v2.dependencies - v.dependencies
                              if d not in inner]
                v = v2
            new_inner[k] = v
        if not extra:
            return node
        extra = list(dict.fromkeys(extra))
        return Task(node.key, _execute_subgraph, new_inner, outkey,
                    tuple(inkeys) + tuple(extra), *refs, *(TaskRef(k) for k in extra),
                    _data_producer=node.data_producer)


    def _function(self, key: Hashable, func: Any) -> tuple[Any, str | None, dict, Any, bool]:
        """What tasks of ``func`` share: (func, its name or None when each task is named
        by its key (see ``_name``), its ``@hints`` but ``size`` (one dict), the ``size``
        hint or None, whether it makes a disk shuffle's partd store). ``key``: the first
        task found running it."""
        makes_store = _makes_partd_store(func)
        name: str | None = _func_name(func)
        if not name or name in _GENERIC or func is _execute_subgraph:
            name = None
        hints = hints_of(func)
        declared = hints.pop("size", None)
        known = self.by_func[id(func)] = (func, name, hints or NO_ANNOTATIONS, declared,
                                          makes_store)
        return known

    def _intern(self, name: str) -> str:
        return self.names.setdefault(name, name)


def _post_order(graph: Mapping[Hashable, GraphNode], wanted: list) -> list[Hashable]:
    """The tasks ``wanted`` need, depth-first post-order from the outputs: topological,
    subtrees contiguous, dependencies visited in key order (deterministic).

    A key is pushed to expand it; once expanded it is pushed again above its
    dependencies, and popped that second time it is done. Copies of a key pushed
    before it was expanded sit below that second push, so they find it done."""
    ordered: list[Hashable] = []
    done: dict[Hashable, bool] = {}  # False: expanded, its dependencies pending
    stack = list(reversed(wanted))
    push, pop, emit = stack.append, stack.pop, ordered.append
    while stack:
        k = pop()
        state = done.get(k)
        if state is None:
            done[k] = False
            push(k)
            try:
                deps = graph[k].dependencies
            except KeyError:
                raise KeyError(f"task key {k!r} is referenced but missing from the "
                               "graph") from None
            if len(deps) > 1:
                stack.extend([d for d in _sorted_keys(deps) if d not in done])
            elif deps:
                (d,) = deps
                if d not in done:
                    push(d)
        elif state is False:
            done[k] = True
            emit(k)
    return ordered


def _sorted_keys(keys: Any) -> list:
    """Descending (popped last first); by ``str`` when keys of mixed types do not compare."""
    try:
        return sorted(keys, reverse=True)
    except TypeError:
        return sorted(keys, key=str, reverse=True)


def _cull(graph: dict[Hashable, GraphNode], wanted: list) -> dict[Hashable, GraphNode]:
    needed: dict[Hashable, GraphNode] = {}
    stack = list(wanted)
    while stack:
        k = stack.pop()
        if k in needed:
            continue
        try:
            node = graph[k]
        except KeyError:
            raise KeyError(f"task key {k!r} is referenced but missing from the graph") from None
        needed[k] = node
        stack.extend(d for d in node.dependencies if d not in needed)
    return needed


def _makes_partd_store(func: Any) -> bool:
    """Whether tasks of ``func`` make a partd store (Dask's "disk" shuffle of bags and
    dataframes)."""
    while isinstance(func, partial):
        func = func.func
    made_by = getattr(func, "__module__", None) or type(func).__module__
    return made_by.split(".")[0] == "partd" or type(func).__name__ == "maybe_buffered_partd"


def _shuffle_store_task(key: Hashable, node: Task) -> Task:
    """The task that makes a disk shuffle's partd store, made to keep it in the run's
    Redis (``worker/shuffle_store.py``): partd's files would stay on the disk of the
    worker that made them, which the others do not share. A form of the task not known
    here is refused (``DiskShuffleError``), naming the fix."""
    layers = _partd_layers(node)
    if layers is None:
        raise DiskShuffleError(
            f"task {key!r} starts a disk-based shuffle (partd files on the disk of the "
            "worker that runs it) in a form dask-serverless cannot move to Redis. Use a "
            "task-based shuffle: shuffle='tasks' (bags) or shuffle_method='tasks' "
            "(dataframes) in the call, or dask.config.set({'dataframe.shuffle.method': "
            "'tasks'}) before the collection is built ('tasks' is the default once "
            "dask_serverless is imported, unless that option was set)")
    from .worker.shuffle_store import open_store

    name = "".join(c for c in str(key[0] if isinstance(key, tuple) else key)
                   if c.isalnum() or c in "-_")[-48:]
    return Task(key, partial(open_store, tuple(layers), name))


def _partd_layers(node: Task) -> list[Any] | None:
    """partd's encoding layers (outermost first) over the ``partd.File`` the task makes,
    or None for another form: a ``maybe_buffered_partd`` (dataframes: its encoding and
    compression; its buffer is one process's memory, dropped), or nested partd calls
    ending in ``partd.File()`` (bags)."""
    import partd

    func = node.func
    if type(func).__name__ == "maybe_buffered_partd":
        if node.args or node.kwargs:
            return None
        compression = getattr(func, "compression", None)
        layers = [func.encode_cls]
        if compression:
            try:
                layers.append(getattr(partd.compressed, compression))
            except AttributeError as exc:  # Dask's own error for it, at once
                raise ImportError(
                    f"Not able to import and load {compression} as compression algorithm."
                    "Please check if the library is installed and supported by Partd."
                ) from exc
        return layers
    layers = []
    current: Any = node
    while isinstance(current, Task):
        f, args = current.func, current.args
        if f is partd.File or (f is apply and args and args[0] is partd.File):
            return layers or None  # File(), or apply(File, (), {"dir": ...})
        if len(args) != 1 or current.kwargs or not _makes_partd_store(f):
            return None
        layers.append(f)
        current = args[0]
    return None


def _warn_store_into_memory(key: Hashable, node: Task) -> bool:
    """Warn when a ``da.store`` task writes into an in-memory NumPy array: the workers
    write into their copies of it and the caller's stays as it was (as with
    ``distributed``). True when it warned."""
    import sys
    import warnings

    numpy = sys.modules.get("numpy")
    from dask.array.core import load_store_chunk

    target = _store_target(node, {}, load_store_chunk)
    if numpy is None or not isinstance(target, numpy.ndarray):
        return False
    warnings.warn(
        f"task {key!r} stores into an in-memory {type(target).__name__} (da.store): "
        "serverless workers write into their own copies of it, and yours stays as it "
        "was. Store into a target the workers reach (Zarr, HDF5, files on shared "
        "storage), or assign the computed array: target[:] = x.compute()",
        UserWarning, stacklevel=2)
    return True


def _store_target(node: Task, bound: dict, load_store_chunk: Any) -> Any:
    """What the ``load_store_chunk`` call in ``node`` (perhaps in nested fused
    subgraphs) stores into, when it is given as data; ``bound``: the values of the
    enclosing subgraph's inputs."""
    def value(x: Any) -> Any:
        if isinstance(x, DataNode):
            return x.value
        key = getattr(x, "key", None)  # a TaskRef: an input of the subgraph
        return bound.get(key) if key is not None else x

    if node.func is load_store_chunk and len(node.args) > 1:
        return value(node.args[1])
    if node.func is _execute_subgraph and len(node.args) >= 3:
        inner, _out, inkeys, *values = node.args
        inner_bound = {k: value(v) for k, v in zip(inkeys, values, strict=False)}
        for t in inner.values():
            if isinstance(t, Task):
                found = _store_target(t, inner_bound, load_store_chunk)
                if found is not None:
                    return found
    return None


_GENERIC = {"apply", "execute_task", "Compose", "compose"}


def _name(node: GraphNode) -> str:
    """A task's function name; generic wrappers are named by their key prefix, fused
    subgraphs by their key prefix and the functions inside."""
    if isinstance(node, Task):
        name = _func_name(node.func)
        if name == "_execute_subgraph" and node.args and isinstance(node.args[0], Mapping):
            inner = sorted({_name(n) for n in node.args[0].values() if isinstance(n, Task)})
            return f"{key_prefix(node.key)}[{','.join(inner)}]"
        return key_prefix(node.key) if not name or name in _GENERIC else name
    if isinstance(node, Alias):
        return "alias"
    if isinstance(node, DataNode):
        return "data"
    return type(node).__name__.lower()


def _func_name(func: Any) -> str:
    try:
        return funcname(func)
    except Exception:
        return ""


_SMALL = frozenset({int, float, bool, complex, type(None), slice, range, TaskRef, Alias})
_MAX_SCANNED = 64  # a literal list, tuple or dict argument this long or shorter is scanned


def _nbytes(value: Any) -> int:
    """Bytes of a literal value (0 for what cannot be large)."""
    t = type(value)
    if t in _SMALL:
        return 0
    if t is str or t is bytes or t is bytearray:
        return len(value)
    try:
        return int(sizeof(value))
    except Exception:
        return 0
