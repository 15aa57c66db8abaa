"""Root task sizes in the DAG (``dask_serverless.sizes``), from what a scheduler ``get``
really receives: hints, ``dask.annotate``, dask.array chunks, embedded data."""

from __future__ import annotations

import functools
import math

import dask
import dask.array as da
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest
from dask import delayed
from dask.sizeof import sizeof

import dask_serverless
from dask_serverless.adapter import to_dag
from dask_serverless.errors import HintError


class _Captured(Exception):
    def __init__(self, dag):
        self.dag = dag


def _capture(dsk, keys, **kwargs):
    raise _Captured(to_dag(dsk, keys))


def dag_of(*collections):
    """The DAG ``serverless_get`` would build for ``dask.compute(*collections)``."""
    with pytest.raises(_Captured) as got:
        dask.compute(*collections, scheduler=_capture)
    return got.value.dag


def root_sizes(dag):
    return {t.key: t.size for t in dag.tasks if not t.deps}


def chunk_bytes(chunks, itemsize):
    """Expected bytes of every block, by block index."""
    return {idx: math.prod(dim[i] for dim, i in zip(chunks, idx, strict=True)) * itemsize
            for idx in np.ndindex(*(len(dim) for dim in chunks))}


@pytest.mark.parametrize("shape, chunks, dtype", [
    ((1000, 1000), (500, 300), "f8"),  # ragged last column of blocks
    ((10, 7), (4, 3), "i4"),  # ragged in both dimensions
    ((12,), (5,), "u1"),
    ((6, 4, 5), ((1, 5), (4,), (2, 2, 1)), "f4"),  # explicit irregular chunks, 3-d
])
def test_array_roots_get_their_chunk_bytes(shape, chunks, dtype):
    x = da.ones(shape, chunks=chunks, dtype=dtype)
    dag = dag_of(x)
    expected = chunk_bytes(x.chunks, np.dtype(dtype).itemsize)
    sizes = root_sizes(dag)
    assert len(sizes) == len(expected)
    assert {k[1:]: v for k, v in sizes.items()} == expected
    assert len(set(expected.values())) > 1  # the ragged blocks really differ


def test_fused_array_roots_use_the_root_inside_and_reductions_are_not_trusted():
    x = da.random.RandomState(0).random((1000, 1000), chunks=(500, 300))
    dag = dag_of((da.sin(x) ** 2 + 1).sum())
    roots = [t for t in dag.tasks if not t.deps]
    assert roots and all(t.node.func.__name__ == "_execute_subgraph" for t in roots)
    assert sorted(t.size for t in roots) == sorted(chunk_bytes(x.chunks, 8).values())
    # the reduction's layers claim tiny chunks: tasks with inputs never get a size
    assert all(t.size == 0 for t in dag.tasks if t.deps)


def test_array_roots_feeding_one_blockwise_each_get_their_bytes():
    x = da.random.RandomState(0).random((600, 600), chunks=(200, 500))
    y = da.random.RandomState(1).random((600, 600), chunks=(200, 500))
    dag = dag_of((x + y).sum())
    per_block = chunk_bytes(x.chunks, 8)
    sizes = [t.size for t in dag.tasks if not t.deps]
    # fused into one task per block or not, each block of each array is counted once
    assert sum(sizes) == 2 * sum(per_block.values())
    assert set(sizes) <= {k * n for n in per_block.values() for k in (1, 2)}


def test_two_array_sizes_same_signature_other_sizes():
    small, big = (dag_of(da.ones((n, n), chunks=(n // 2, n // 2)).sum()) for n in (400, 800))
    assert small.signature() == big.signature()
    assert sorted(root_sizes(big).values()) == [4 * s for s in sorted(root_sizes(small).values())]


def gen(i, n):
    return np.full(n, i, dtype="f8")


def tail(*xs):
    return sum(float(x[-1]) for x in xs)


@dask_serverless.hints(size=lambda i, n: 8 * n)
def gen_hinted(i, n):
    return gen(i, n)


@dask_serverless.hints(size=4096)
def gen_fixed(i, n):
    return gen(i, n)


def test_callable_and_int_hints_give_root_sizes_signature_unchanged():
    def workflow(n):
        xs = [delayed(gen_hinted)(i, n) for i in range(3)] + [delayed(gen_fixed)(9, n)]
        return delayed(tail)(*[delayed(np.sort)(x) for x in xs])

    small, big = dag_of(workflow(1000)), dag_of(workflow(5000))
    assert sorted(root_sizes(small).values()) == [4096, 8000, 8000, 8000]
    assert sorted(root_sizes(big).values()) == [4096, 40000, 40000, 40000]
    assert small.signature() == big.signature()
    assert all("size" not in t.annotations for t in big.tasks)  # TaskNode.size holds it
    assert all(t.size == 0 for t in big.tasks if t.deps)


def test_size_callable_gets_keyword_and_partial_arguments():
    seen = []

    @dask_serverless.hints(size=lambda i, n, scale=1: seen.append((i, n, scale)) or n * scale)
    def make(i, n, scale=1):
        return bytes(n * scale)

    dag = dag_of(delayed(make)(1, 10, scale=3), delayed(functools.partial(make, 2, 7))())
    assert sorted(root_sizes(dag).values()) == [7, 30]
    assert sorted(seen) == [(1, 10, 3), (2, 7, 1)]


def test_a_hinted_function_with_inputs_is_not_sized():
    calls = []

    @dask_serverless.hints(size=lambda x: calls.append(x) or 1)
    def double(x):
        return 2 * x

    dag = dag_of(delayed(double)(delayed(gen)(0, 5)))
    assert [t.size for t in dag.tasks] == [0, 0] and calls == []


def test_annotate_size_wins_over_the_hint():
    with dask.annotate(serverless={"size": 123_456}):
        a = delayed(gen_hinted)(0, 10)
    b = delayed(gen_hinted)(1, 10)
    dag = dag_of(delayed(tail)(a, b))
    assert sorted(root_sizes(dag).values()) == [80, 123_456]


def test_annotated_array_roots_use_the_annotation_even_when_fused():
    """dask.array's optimisation drops layer annotations: they come from the layers."""
    with dask.annotate(serverless={"size": 7}):
        x = da.ones((10,), chunks=5)
    assert set(root_sizes(dag_of(x)).values()) == {7}
    dag = dag_of((da.sin(x) + 1).sum())
    assert [t.size for t in dag.tasks if not t.deps] == [7, 7]
    with dask.annotate(serverless=lambda key: {"size": 100 + key[1]}):
        y = da.ones((10,), chunks=5)
    assert sorted(root_sizes(dag_of(y)).values()) == [100, 101]


def test_dataframe_from_pandas_roots_get_their_partition_bytes():
    pdf = pd.DataFrame({"a": np.arange(1000), "b": np.linspace(0, 1, 1000)})
    dag = dag_of(dd.from_pandas(pdf, npartitions=4).sum())
    sizes = sorted(root_sizes(dag).values())
    assert len(sizes) == 4
    assert sizes == sorted(sizeof(pdf.iloc[i * 250:(i + 1) * 250]) for i in range(4))


def test_unknown_roots_stay_zero():
    assert set(root_sizes(dag_of(delayed(gen)(0, 10))).values()) == {0}


def test_size_callable_failure_names_function_and_task():
    @dask_serverless.hints(size=lambda i, n: n // i)
    def split(i, n):
        return n

    node = delayed(split)(0, 10, dask_key_name="split-zero")
    with pytest.raises(HintError, match=r"size hint of 'split' failed for task 'split-zero'"
                                        r".*ZeroDivisionError"):
        dag_of(node)


@pytest.mark.parametrize("junk", [None, "big", -1, math.nan, math.inf, True])
def test_size_callable_returning_junk_names_function_task_and_value(junk):
    @dask_serverless.hints(size=lambda n: junk)
    def make(n):
        return n

    with pytest.raises(HintError, match=rf"size hint of 'make' for task 'make-1' returned "
                                        rf"{junk!r}: a size must be a number of bytes"):
        dag_of(delayed(make)(1, dask_key_name="make-1"))


def test_size_callable_may_return_numpy_numbers():
    @dask_serverless.hints(size=lambda n: np.int64(n) * 8 + np.float64(0.4))
    def make(n):
        return n

    assert set(root_sizes(dag_of(delayed(make)(5))).values()) == {40}


@pytest.mark.parametrize("junk", [-5, "1 MB", math.nan, False])
def test_bad_int_hint_fails_when_decorating(junk):
    with pytest.raises(HintError, match=rf"hint size {junk!r}: a size must be"):
        dask_serverless.hints(size=junk)


def test_bad_annotated_size_names_the_task():
    with dask.annotate(serverless={"size": "huge"}):
        node = delayed(gen)(0, 10, dask_key_name="gen-annotated")
    with pytest.raises(HintError, match=r"size of task 'gen-annotated' \(gen\) 'huge'"):
        dag_of(node)
