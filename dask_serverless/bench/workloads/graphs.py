"""Raw Dask task graphs (plain dicts) of trivial tasks: they measure scheduling only.

Shared by ``dask-serverless bench`` (the tree reductions) and
``benchmarks/overhead.py`` (both graphs).
"""

from __future__ import annotations

import operator


def tree_graph(n_tasks: int) -> tuple[dict, tuple]:
    """A binary tree reduction of ``(n_tasks + 1) // 2`` leaves: ``(graph, root key)``."""
    leaves = (n_tasks + 1) // 2
    dsk: dict = {("t", 0, i): (operator.add, i, 1) for i in range(leaves)}
    level, names = 0, [("t", 0, i) for i in range(leaves)]
    while len(names) > 1:
        level += 1
        nxt = []
        for j in range(0, len(names), 2):
            key = ("t", level, j // 2)
            dsk[key] = (operator.add, names[j], names[j + 1]) if j + 1 < len(names) else \
                (operator.pos, names[j])
            nxt.append(key)
        names = nxt
    return dsk, names[0]


def map_graph(n_tasks: int) -> tuple[dict, list]:
    """``n_tasks`` independent tasks whose results all return to the caller."""
    dsk = {("m", i): (operator.mul, i, 2) for i in range(n_tasks)}
    return dsk, list(dsk)
