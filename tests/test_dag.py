"""The adapter, the DAG and the layout, without running anything."""

from __future__ import annotations

import operator

import dask
import dask.array as da
from dask import delayed

from dask_serverless.adapter import to_dag
from dask_serverless.layout import build_layout
from dask_serverless.planners import get_planner
from dask_serverless.protocol import slices


def _spec_bytes(n):
    blob = b"z" * 100_000
    big = delayed(lambda x: len(blob) + x, pure=True)  # a closure pickled by value
    parts = [big(i) for i in range(n)]
    x = delayed(sum)(parts)
    (expr,) = dask.base.collections_to_expr([x]).optimize().__dask_keys__()
    dag = to_dag(x.__dask_graph__(), x.key)
    plan = get_planner("wukong").plan(dag, parallelism=2, memory_mb=1024)
    slicer = slices.Slicer(dag, plan, build_layout(dag, plan), "r")
    spec = sum(len(slicer.encode(g)[1]) for g in slicer.order())
    return spec + sum(len(b) for b in slicer.pieces_to_store().values()), expr


def test_function_serialised_once_not_per_task():
    one, _ = _spec_bytes(1)
    many, _ = _spec_bytes(200)
    assert one > 100_000
    assert many < one + 200 * 400  # a few hundred bytes per extra task, not 100 KB


def test_signature_ignores_data_and_order_but_sees_structure():
    def graph(values, width):
        parts = [delayed(operator.add)(v, 1) for v in values]
        return delayed(sum)(parts[:width])

    def sig(x):
        return to_dag(x.__dask_graph__(), x.key).signature()

    assert sig(graph(range(8), 8)) == sig(graph(range(100, 108), 8))
    assert sig(graph(range(8), 8)) != sig(graph(range(8), 7))
    a = da.ones((100, 100), chunks=10).sum()
    b = (da.ones((100, 100), chunks=10) * 3).sum()
    assert sig_expr(a) != sig_expr(b)
    assert sig_expr(da.zeros((100, 100), chunks=10).sum()) == sig_expr(
        da.zeros((100, 100), chunks=10).sum())


def sig_expr(x):
    expr = dask.base.collections_to_expr([x]).optimize()
    return to_dag(expr, list(dask.core.flatten(expr.__dask_keys__()))).signature()


def test_layout_groups_local_chains_and_marks_entries():
    a = delayed(operator.add)(1, 1, dask_key_name="a")
    b = delayed(operator.add)(a, 1, dask_key_name="b")
    c = delayed(operator.add)(a, 2, dask_key_name="c")
    d = delayed(operator.add)(b, c, dask_key_name="d")
    dag = to_dag(d.__dask_graph__(), "d")
    ids = dag.key_to_id
    one = get_planner("wukong").plan(dag, parallelism=1, memory_mb=1024)
    lay = build_layout(dag, one)
    assert not any(lay.is_entry) and lay.n_groups == 1
    assert lay.upload == [t == ids["d"] for t in range(len(dag))]
    two = get_planner("wukong").plan(dag, parallelism=2, memory_mb=1024)
    lay2 = build_layout(dag, two)
    assert two.assignment[ids["b"]] != two.assignment[ids["c"]]
    assert lay2.is_entry[ids["d"]] and two.worker_of(ids["d"]).floating
    assert lay2.upload[ids["b"]] or lay2.upload[ids["c"]]
