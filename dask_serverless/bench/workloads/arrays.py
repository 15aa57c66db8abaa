"""``dask.array`` linear algebra: GEMM, TSQR and SVD of tall-skinny matrices."""

from __future__ import annotations

from typing import Any

from .base import Workload, from_collections, sized


def gemm(quick: bool = False, **params: Any) -> Workload:
    """``x @ y`` for two random square matrices, returned to the caller."""
    import dask.array as da

    p = sized(quick, params, {"n": 1000, "chunk": 250}, {"n": 4000, "chunk": 1000})
    x = da.random.RandomState(0).random((p["n"], p["n"]), chunks=p["chunk"])
    y = da.random.RandomState(1).random((p["n"], p["n"]), chunks=p["chunk"])
    return from_collections("gemm", f"{p['n']}x{p['n']} matmul in {p['chunk']}-blocks",
                            [x @ y], p)


def _tall(p: dict[str, Any]):
    import dask.array as da

    return da.random.RandomState(2).random((p["rows"], p["cols"]),
                                           chunks=(p["chunk_rows"], p["cols"]))


def tsqr(quick: bool = False, **params: Any) -> Workload:
    """QR of a tall-skinny matrix (``dask.array.linalg.tsqr``): R and Q's column sums."""
    import dask.array as da

    p = sized(quick, params, {"rows": 40_000, "cols": 40, "chunk_rows": 5_000},
              {"rows": 200_000, "cols": 100, "chunk_rows": 25_000})
    q, r = da.linalg.tsqr(_tall(p))
    return from_collections("tsqr", f"QR of {p['rows']}x{p['cols']} in "
                            f"{p['chunk_rows']}-row blocks", [r, abs(q).sum(axis=0)], p)


def svd(quick: bool = False, **params: Any) -> Workload:
    """SVD of a tall-skinny matrix (``dask.array.linalg.svd``): s, V and U's column sums."""
    import dask.array as da

    p = sized(quick, params, {"rows": 40_000, "cols": 40, "chunk_rows": 5_000},
              {"rows": 200_000, "cols": 100, "chunk_rows": 25_000})
    u, s, v = da.linalg.svd(_tall(p))
    return from_collections("svd", f"SVD of {p['rows']}x{p['cols']} in "
                            f"{p['chunk_rows']}-row blocks", [s, v, abs(u).sum(axis=0)], p)
