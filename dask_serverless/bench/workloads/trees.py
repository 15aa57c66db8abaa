"""Tree reductions of trivial additions: pure scheduling overhead."""

from __future__ import annotations

from typing import Any

from .base import Workload, from_graph, sized
from .graphs import tree_graph


def _tree(name: str, leaves: int, quick: bool, params: dict[str, Any],
          quick_leaves: int | None = None) -> Workload:
    p = sized(quick, params, {"leaves": quick_leaves or leaves}, {"leaves": leaves})
    dsk, root = tree_graph(2 * p["leaves"] - 1)
    return from_graph(name, f"binary tree reduction of {p['leaves']} leaves (operator.add)",
                      dsk, root, p)


def tree_1k(quick: bool = False, **params: Any) -> Workload:
    return _tree("tree-1k", 1_000, quick, params)


def tree_10k(quick: bool = False, **params: Any) -> Workload:
    """10k leaves; quick: 5k leaves, the 10k-task reduction of ``benchmarks/overhead.py``."""
    return _tree("tree-10k", 10_000, quick, params, quick_leaves=5_000)
