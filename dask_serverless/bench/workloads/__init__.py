"""Benchmark workloads written as plain Dask code; each builder returns a ``Workload``
(the materialised graph and the keys to compute), at ``quick`` or full size.

This package is the one home of the workloads (so ``dask-serverless bench`` works from an
installed package); ``benchmarks/workloads`` re-exports it for the scripts there. Builders
are imported on first use, so listing the names needs neither numpy nor pandas.
"""

from __future__ import annotations

import importlib
from typing import Any

from .base import Builder, Workload, from_collections, from_graph
from .graphs import map_graph, tree_graph

# name -> "module:builder" inside this package
WORKLOADS: dict[str, str] = {
    "tree-1k": "trees:tree_1k",
    "tree-10k": "trees:tree_10k",
    "gemm": "arrays:gemm",
    "tsqr": "arrays:tsqr",
    "svd": "arrays:svd",
    "image": "image:image_pipeline",
    "wordcount": "text:word_count",
    "fanout": "synthetic:fanout",
    "groupby": "frames:groupby",
}


def builder(name: str) -> Builder:
    """The builder function of workload ``name``."""
    try:
        module, func = WORKLOADS[name].split(":")
    except KeyError:
        raise ValueError(f"unknown workload {name!r}; choose from {list(WORKLOADS)}") from None
    return getattr(importlib.import_module(f"{__name__}.{module}"), func)


def build(name: str, quick: bool = False, **params: Any) -> Workload:
    """The workload ``name`` (see ``WORKLOADS``) at quick or full size; ``params``
    override its sizes (unknown ones are an error naming the known ones)."""
    try:
        return builder(name)(quick, **params)
    except ValueError as exc:
        raise ValueError(f"workload {name!r}: {exc}") from None


__all__ = ["WORKLOADS", "Builder", "Workload", "build", "builder", "from_collections",
           "from_graph", "map_graph", "tree_graph"]
