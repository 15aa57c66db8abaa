"""The size feature of root tasks: how many bytes of data a task without inputs makes.

A root task has 0 input bytes: its data size is baked into its arguments (``gen(i, n)``,
``da.random.random((n, n), chunks=...)``), so no input-size fit can see it change. The
adapter gives each root ``TaskNode.size`` from the first source that knows:

1. ``dask.annotate(serverless={"size": nbytes})``, then ``@hints(size=...)``: bytes, or a
   callable of the task's arguments returning bytes. dask.array's graph optimisation drops
   layer annotations, so they are also read from the unoptimised layers, by key name;
2. dask.array metadata: a root whose key is ``(name, i, j, ...)`` in an array layer makes
   ``prod(chunks[d][idx[d]]) * itemsize`` bytes (root layers only: an intermediate
   layer's annotations can be wrong, e.g. a reduction's). A root fused with its
   successors (``_execute_subgraph``) sums the roots inside it;
3. data embedded in the graph (a ``DataNode``, e.g. a ``from_pandas`` partition): its
   ``dask.sizeof``;
4. else 0 (unknown). Tasks with dependencies always get 0.

The predictor uses the size as the fit's x for tasks without inputs.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Any

from dask._task_spec import DataNode, GraphNode, Task, _execute_subgraph

from .errors import HintError
from .hints import hints_of

ARRAY_TYPE = "dask.array.core.Array"


@dataclass(frozen=True, slots=True)
class ArrayLayer:
    """A dask.array layer's block shape per dimension and its dtype's item size."""

    chunks: tuple[tuple[float, ...], ...]
    itemsize: int

    def block_bytes(self, index: tuple) -> int | None:
        """Bytes of block ``index``; None when the index does not fit or sizes are NaN."""
        if len(index) != len(self.chunks):
            return None
        n = self.itemsize
        for dim, i in zip(self.chunks, index, strict=True):
            if not isinstance(i, int) or not 0 <= i < len(dim) or not math.isfinite(dim[i]):
                return None
            n *= int(dim[i])
        return n


def _graphs(dsk: Any) -> list:
    """The HighLevelGraphs in what a scheduler ``get`` received: a dask expression
    (what ``dask.compute`` passes; they are its unoptimised graphs) or a HighLevelGraph."""
    from dask._expr import Expr
    from dask.highlevelgraph import HighLevelGraph

    if isinstance(dsk, Expr):
        return [op for e in dsk.walk() for op in e.operands if isinstance(op, HighLevelGraph)]
    return [dsk] if isinstance(dsk, HighLevelGraph) else []


def _array_layer(meta: Mapping | None) -> ArrayLayer | None:
    if not meta or meta.get("type") != ARRAY_TYPE:
        return None
    itemsize = getattr(meta.get("dtype"), "itemsize", None)
    chunks = meta.get("chunks")
    if not isinstance(itemsize, int) or not isinstance(chunks, tuple):
        return None
    return ArrayLayer(tuple(tuple(dim) for dim in chunks), itemsize)


def nbytes(value: Any, what: str) -> int:
    """``value`` as a number of bytes (an integer, or a finite float, >= 0); a
    HintError naming ``what`` otherwise."""
    if not isinstance(value, bool) and isinstance(value, numbers.Real) and value >= 0:
        if isinstance(value, numbers.Integral):
            return int(value)
        if math.isfinite(value):
            return round(float(value))
    raise HintError(f"{what} {value!r}: a size must be a number of bytes >= 0")


class RootSizes:
    """Sizes of one graph's root tasks (see module docstring). ``arrays``: array layers
    by name; ``annotated``: the ``serverless`` annotation of layers that have one."""

    def __init__(self, arrays: Mapping[str, ArrayLayer] | None = None,
                 annotated: Mapping[str, Any] | None = None):
        self.arrays = arrays or {}
        self.annotated = annotated or {}
        self.by_layer = bool(self.arrays or self.annotated)  # False: only hints, data

    @classmethod
    def of(cls, dsk: Any) -> RootSizes:
        """From the layers of what a scheduler ``get`` received."""
        arrays: dict[str, ArrayLayer] = {}
        annotated: dict[str, Any] = {}
        for graph in _graphs(dsk):
            for name, layer in graph.layers.items():
                found = _array_layer(layer.collection_annotations)
                if found is not None:
                    arrays[name] = found
                value = (layer.annotations or {}).get("serverless")
                if value is not None:
                    annotated[name] = value
        return cls(arrays, annotated)

    def size(self, key: Hashable, node: GraphNode, declared: Any, func_name: str) -> int:
        """Bytes ``node`` (a root task) makes; ``declared``: its ``size`` annotation or
        hint (None: none)."""
        if declared is not None:
            return _declared(declared, node, key, func_name)
        return self._derived(key, node) or 0

    def _derived(self, key: Hashable, node: GraphNode) -> int | None:
        name = key[0] if isinstance(key, tuple) and key else key
        declared = self._layer_annotation(name, key)
        if declared is None and isinstance(node, Task):
            declared = hints_of(node.func).get("size")
        if declared is not None:
            return _declared(declared, node, key, _func_name(node))
        if isinstance(node, DataNode):
            from dask.sizeof import sizeof

            return int(sizeof(node.value))
        layer = self.arrays.get(name) if isinstance(name, str) else None
        if layer is not None and isinstance(key, tuple):
            found = layer.block_bytes(key[1:])
            if found is not None:
                return found
        if isinstance(node, Task) and node.func is _execute_subgraph:
            return self._fused(node)
        return None

    def _layer_annotation(self, name: Any, key: Hashable) -> Any:
        value = self.annotated.get(name) if isinstance(name, str) else None
        if callable(value):  # dask.annotate(serverless=lambda key: {...})
            value = value(key)
        return value.get("size") if isinstance(value, Mapping) else None

    def _fused(self, node: Task) -> int | None:
        """A root fused with its successors: the sum over the roots inside it."""
        inner = node.args[0] if node.args else None
        if not isinstance(inner, Mapping):
            return None
        total, known = 0, False
        for k, n in inner.items():
            if not isinstance(n, GraphNode) or n.dependencies:
                continue
            found = self._derived(k, n)
            if found is not None:
                total, known = total + found, True
        return total if known else None


def _declared(spec: Any, node: GraphNode, key: Hashable, func_name: str) -> int:
    if not callable(spec):
        return nbytes(spec, f"size of task {key!r} ({func_name})")
    args, kwargs = _arguments(node)
    try:
        value = spec(*args, **kwargs)
    except Exception as exc:
        raise HintError(f"size hint of {func_name!r} failed for task {key!r}: "
                        f"{type(exc).__name__}: {exc}") from exc
    return nbytes(value, f"size hint of {func_name!r} for task {key!r} returned")


def _arguments(node: GraphNode) -> tuple[tuple, dict]:
    """The arguments a root task's function gets (those of a ``functools.partial``
    first), evaluated: a root has no dependencies, so nested nodes need no values."""
    if not isinstance(node, Task):
        return (), {}

    def value(a: Any) -> Any:
        return a({}) if isinstance(a, GraphNode) else a

    args = tuple(value(a) for a in node.args)
    kwargs = {k: value(v) for k, v in node.kwargs.items()}
    func = node.func
    while isinstance(func, functools.partial):
        args, kwargs = (*func.args, *args), {**func.keywords, **kwargs}
        func = func.func
    return args, kwargs


def _func_name(node: GraphNode) -> str:
    from dask.utils import funcname

    try:
        return funcname(node.func)  # type: ignore[attr-defined]
    except Exception:
        return type(node).__name__
