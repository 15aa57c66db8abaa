"""``Workload``: a named, materialised Dask task graph plus the keys to compute.

Every scheduler under test receives the same graph through its ``get`` (the way
``dask.compute`` calls a scheduler after optimising), so graph construction and
optimisation are paid once, outside the timings, and all schedulers run identical tasks.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

from dask.core import flatten


@dataclass
class Workload:
    """``get(graph, keys)`` computes it; ``params`` records the sizes it was built with."""

    name: str
    description: str
    graph: dict[Hashable, Any]
    keys: list[Hashable]
    params: dict[str, Any] = field(default_factory=dict)
    # what ``dask.compute`` would hand a scheduler (the optimised expression): carries
    # dask.array chunk sizes, which the serverless planners use on a first run
    source: Any = None

    @property
    def n_tasks(self) -> int:
        return len(self.graph)


Builder = Callable[..., Workload]


def from_collections(name: str, description: str, collections: list[Any],
                     params: dict[str, Any]) -> Workload:
    """Optimise and materialise Dask collections exactly as ``dask.compute`` does; the
    result of ``get(graph, keys)`` then holds one finalised value per collection."""
    from dask._expr import FinalizeCompute
    from dask.base import collections_to_expr

    expr = FinalizeCompute(collections_to_expr(collections, True)).optimize()
    graph = dict(expr.__dask_graph__())
    keys = list(flatten(expr.__dask_keys__()))
    return Workload(name, description, graph, keys, params, expr)


def from_graph(name: str, description: str, graph: dict, keys: Any,
               params: dict[str, Any]) -> Workload:
    """A raw graph; a single key is wrapped so every workload returns a list."""
    return Workload(name, description, graph, keys if isinstance(keys, list) else [keys],
                    params)


def sized(quick: bool, params: dict[str, Any], quick_values: dict[str, Any],
          full_values: dict[str, Any]) -> dict[str, Any]:
    """The workload's parameters: its quick or full sizes, then caller overrides
    (``--param name.key=value``); an unknown override names the known ones."""
    chosen = dict(quick_values if quick else full_values)
    unknown = sorted(set(params) - set(chosen))
    if unknown:
        raise ValueError(f"unknown workload parameter(s) {unknown}; this workload takes "
                         f"{sorted(chosen)}")
    for k, v in params.items():
        chosen[k] = type(chosen[k])(v)
    return chosen
