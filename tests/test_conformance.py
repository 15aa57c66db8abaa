"""serverless_get gives exactly the results of the synchronous scheduler, on many graphs,
with real subprocess workers, on real redis-server and on fakeredis."""

from __future__ import annotations

import operator

import dask
import dask.array as da
import dask.bag as db
import numpy as np
import pandas as pd
import pytest
from dask import delayed

from dask_serverless import serverless_get
from dask_serverless.runtime import get as get_mod

pytestmark = pytest.mark.usefixtures("any_redis")


def same(a, b):
    if isinstance(a, tuple | list):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            same(x, y)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            same(a[k], b[k])
    elif isinstance(a, np.ndarray):
        np.testing.assert_allclose(a, b)
    elif isinstance(a, pd.DataFrame | pd.Series):
        pd.testing.assert_frame_equal(a.to_frame() if isinstance(a, pd.Series) else a,
                                      b.to_frame() if isinstance(b, pd.Series) else b)
    elif isinstance(a, float | np.floating):
        assert a == pytest.approx(b, rel=1e-9)
    else:
        assert a == b


def check(*collections, **kw):
    expected = dask.compute(*collections, scheduler="sync", **kw)
    got = dask.compute(*collections, scheduler=serverless_get, **kw)
    same(got, expected)
    run = get_mod.last_run  # the run's spec went to its workers as one slice per group
    assert run.slices is not None and len(run.slices.names) == run.layout.n_groups
    return got


@delayed
def inc(x):
    return x + 1


@delayed
def add(*xs):
    return sum(xs)


@delayed
def nothing(*_):
    return None


def test_chain_and_diamond():
    a = inc(1)
    b, c = inc(a), inc(inc(a))
    check(add(b, c), a)


def test_tree_reduction():
    level = [inc(i) for i in range(64)]
    while len(level) > 1:
        level = [add(level[i], level[i + 1]) for i in range(0, len(level), 2)]
    check(level[0])


def test_wide_fan_out_and_fan_in():
    root = inc(0)
    mids = [delayed(operator.mul)(root, i) for i in range(200)]
    check(add(*mids), mids[:5])


def test_nested_arguments_and_literals():
    a, b = inc(1), inc(2)
    f = delayed(lambda d, lst, t: d["x"] + lst[1][0] + t[0] + d["y"]["z"])
    check(f({"x": a, "y": {"z": b}}, [1, [b, 7]], (a, "s")))


def test_none_results_and_none_inputs():
    n = nothing(inc(1))
    check(n, nothing(n), delayed(lambda x: x is None)(n))


def test_shared_upstream_and_multiple_outputs():
    shared = inc(10)
    outs = [inc(shared) for _ in range(5)] + [add(shared, shared)]
    check(outs, shared)


def test_tuple_keys_and_raw_dict_graph():
    dsk = {("x", 0): 1, ("x", 1): (operator.add, ("x", 0), 10),
           "y": (sum, [("x", 0), ("x", 1)]), "z": (lambda: None,)}
    got = serverless_get(dsk, [["y", ("x", 1)], "z"])
    assert got == dask.get(dsk, [["y", ("x", 1)], "z"])
    assert serverless_get(dsk, "y") == 12


def test_array_reductions_matmul_rechunk():
    x = da.random.RandomState(0).random((300, 200), chunks=(60, 50))
    check(x.sum(), x.mean(axis=0), (x @ x.T)[:10, :10], x.rechunk((100, 100)).std())


def test_array_linalg():
    x = da.random.RandomState(1).random((400, 40), chunks=(100, 40))
    q, r = da.linalg.qr(x)
    u, s, v = da.linalg.svd(x)
    check(r, s)
    qr_back, svd_back = dask.compute(q @ r, (u * s) @ v, scheduler=serverless_get)
    np.testing.assert_allclose(qr_back, x.compute(scheduler="sync"), rtol=1e-8)
    np.testing.assert_allclose(svd_back, x.compute(scheduler="sync"), rtol=1e-8)


def test_bag_map_foldby_frequencies():
    b = db.from_sequence(["a b", "b c", "c a b", "d"] * 10, npartitions=4)
    words = b.map(str.split).flatten()
    check(words.frequencies(sort=True), words.foldby(lambda w: w, lambda acc, _: acc + 1, 0),
          b.map(len).sum())


def test_dataframe_groupby_and_merge():
    import dask.dataframe as dd

    pdf = pd.DataFrame({"k": np.arange(200) % 7, "v": np.arange(200.0)})
    other = pd.DataFrame({"k": range(7), "name": list("abcdefg")})
    df = dd.from_pandas(pdf, npartitions=4)
    g = df.groupby("k").v.sum()
    m = df.merge(dd.from_pandas(other, npartitions=2), on="k").groupby("name").v.mean()
    got_g, got_m = dask.compute(g, m, scheduler=serverless_get)
    exp_g, exp_m = dask.compute(g, m, scheduler="sync")
    pd.testing.assert_series_equal(got_g.sort_index(), exp_g.sort_index())
    pd.testing.assert_series_equal(got_m.sort_index(), exp_m.sort_index())


def test_several_collections_at_once():
    x = da.arange(100, chunks=10)
    b = db.from_sequence(range(10), npartitions=3)
    check(x.sum(), b.map(lambda v: v * 2), inc(5), {"k": inc(1)})


def test_config_set_scheduler():
    x = da.ones((50, 50), chunks=10)
    with dask.config.set(scheduler=serverless_get):
        assert (x + 1).sum().compute() == 5000


def test_persist():
    x = da.arange(40, chunks=10) * 2
    (p,) = dask.persist(x, scheduler=serverless_get)
    assert len(p.__dask_graph__()) == 4
    np.testing.assert_array_equal(p.compute(scheduler="sync"), np.arange(40) * 2)


def test_alias_and_data_nodes():
    dsk = {"a": 1, "b": "a", "c": (operator.add, "b", 2), "d": "c", "lit": [1, 2, 3]}
    assert serverless_get(dsk, ["d", "b", "lit"]) == dask.get(dsk, ["d", "b", "lit"])
