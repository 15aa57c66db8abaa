"""Dask graph (expression, HighLevelGraph or dict; legacy tuples or Task spec) -> DAG."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from functools import partial
from typing import Any

from dask._task_spec import Alias, DataNode, GraphNode, Task, convert_legacy_graph
from dask.core import flatten
from dask.order import order
from dask.utils import funcname, key_split

from .dag import DAG, TaskNode
from .errors import DiskShuffleError
from .hints import hints_of
from .sizes import RootSizes

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


def to_dag(dsk: Any, keys: Any) -> DAG:
    """Convert the graph, cull it to what ``keys`` (possibly nested lists) need, order it;
    root tasks get their size (``sizes``)."""
    sizes = RootSizes.of(dsk)
    graph, annotations = graph_and_annotations(dsk)
    wanted = list(flatten(keys)) if isinstance(keys, list) else [keys]
    graph = convert_legacy_graph(dict(graph))
    missing = [k for k in wanted if k not in graph]
    if missing:
        raise KeyError(f"requested keys are not in the graph: {missing[:5]!r}")
    needed = _cull(graph, wanted)
    per_task = annotations.get("serverless", {})
    if len(needed) > DASK_ORDER_MAX_TASKS:  # dask.order costs seconds at this size
        return _to_dag_plain_topo(needed, wanted, per_task, sizes)
    priority = order(needed) if len(needed) > 1 else {k: 0 for k in needed}
    ordered = sorted(needed, key=priority.__getitem__)
    ids = {k: i for i, k in enumerate(ordered)}
    tasks = []
    for i, k in enumerate(ordered):
        node = needed[k]
        deps = tuple(sorted(ids[d] for d in node.dependencies))
        if deps and deps[-1] >= i:  # dask.order should never produce this
            return _to_dag_plain_topo(needed, wanted, per_task, sizes)
        tasks.append(_task(i, k, node, deps, per_task, sizes))
    return DAG(tasks, [ids[k] for k in wanted])


def _task(i: int, key: Hashable, node: GraphNode, deps: tuple[int, ...], per_task: dict,
          sizes: RootSizes) -> TaskNode:
    _refuse_disk_shuffle(key, node)
    name = _name(node)
    annotations = _annotations(node, per_task, key)
    declared = annotations.pop("size", None)  # TaskNode.size holds it
    size = 0 if deps else sizes.size(key, node, declared, name)
    return TaskNode(i, key, node, name, deps, (), annotations, size)


def _to_dag_plain_topo(needed: dict, wanted: list, per_task: dict,
                       sizes: RootSizes) -> DAG:
    """Depth-first post-order from the outputs: topological, subtrees contiguous."""
    ordered: list[Hashable] = []
    seen: set = set()
    for root in wanted:
        stack = [(root, False)]
        while stack:
            k, done = stack.pop()
            if done:
                ordered.append(k)
                continue
            if k in seen:
                continue
            seen.add(k)
            stack.append((k, True))
            deps = needed[k].dependencies
            if len(deps) > 1:
                deps = sorted(deps, key=str, reverse=True)
            stack.extend((d, False) for d in deps if d not in seen)
    ids = {k: i for i, k in enumerate(ordered)}
    tasks = [_task(i, k, needed[k], tuple(sorted(ids[d] for d in needed[k].dependencies)),
                   per_task, sizes) for i, k in enumerate(ordered)]
    return DAG(tasks, [ids[k] for k in wanted])


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


def _annotations(node: GraphNode, per_task: dict, key: Hashable) -> dict:
    """``@hints`` of the task's function, overridden by ``dask.annotate(serverless=...)``."""
    found = hints_of(node.func) if isinstance(node, Task) else {}
    annotated = per_task.get(key)
    if isinstance(annotated, Mapping):  # unannotated keys may hold Dask's tombstone
        found.update(annotated)
    return found


def _refuse_disk_shuffle(key: Hashable, node: GraphNode) -> None:
    """A task that makes a partd store (Dask's "disk" shuffle of bags and dataframes)
    would keep the shuffle's data on one worker's disk: refuse the graph, naming the fix."""
    if not isinstance(node, Task):
        return
    func = node.func
    while isinstance(func, partial):
        func = func.func
    made_by = getattr(func, "__module__", None) or type(func).__module__
    if made_by.split(".")[0] == "partd" or type(func).__name__ == "maybe_buffered_partd":
        raise DiskShuffleError(
            f"task {key!r} starts a disk-based shuffle (partd files on the disk of the "
            "worker that runs it), which serverless workers do not share. Use a task-based "
            "shuffle: shuffle='tasks' (bags) or shuffle_method='tasks' (dataframes) in the "
            "call, or dask.config.set({'dataframe.shuffle.method': 'tasks'}) before the "
            "collection is built ('tasks' is the default once dask_serverless is imported, "
            "unless that option was set)")


_GENERIC = {"apply", "execute_task", "Compose", "compose"}


def _name(node: GraphNode) -> str:
    """A task's function name; generic wrappers are named by their key prefix, fused
    subgraphs by their key prefix and the functions inside."""
    if isinstance(node, Task):
        try:
            name = funcname(node.func)
        except Exception:
            name = ""
        if name == "_execute_subgraph" and node.args and isinstance(node.args[0], Mapping):
            inner = sorted({_name(n) for n in node.args[0].values() if isinstance(n, Task)})
            return f"{key_split(node.key)}[{','.join(inner)}]"
        return key_split(node.key) if not name or name in _GENERIC else name
    if isinstance(node, Alias):
        return "alias"
    if isinstance(node, DataNode):
        return "data"
    return type(node).__name__.lower()
