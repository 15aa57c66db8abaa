"""Persisted and embedded data stay in Redis; graphs and run specs hold references.

Real path: a real Redis server, local containers (1024 MB workers, the default), the
client's ``persist`` through Dask's own ``persist`` (its scheduler protocol), results
checked against ``scheduler="sync"``.
"""

from __future__ import annotations

import gc
import operator
import os
import time

import dask
import dask.array as da
import dask.bag as db
import numpy as np
import pandas as pd
import pytest
import redis

from dask_serverless import serverless_get
from dask_serverless.adapter import to_dag
from dask_serverless.dag import DAG, StoredInput, TaskNode
from dask_serverless.errors import PersistedDataLostError
from dask_serverless.layout import build_layout
from dask_serverless.plan import Plan, ResourceConfig, WorkerSpec
from dask_serverless.protocol import core
from dask_serverless.protocol.view import RunView
from dask_serverless.runtime import get as get_mod
from dask_serverless.storage import stored
from dask_serverless.storage.stored import StoredNode, StoredRef

pytestmark = pytest.mark.usefixtures("real_redis")


def _stored_nodes(collection) -> list[StoredNode]:
    return [v for v in dict(collection.__dask_graph__()).values() if isinstance(v, StoredNode)]


def _keys(url: str) -> set[bytes]:
    """Keys holding values: outputs, their parts, embedded values (not run bookkeeping)."""
    return {k for k in redis.Redis.from_url(url).scan_iter("ds:*")
            if any(m in k for m in (b":o:", b":op:", b":v"))}


def _spec_bytes() -> int:
    assert get_mod.last_run is not None
    return get_mod.last_run.spec_bytes


# -- dask.array ----------------------------------------------------------------------------
def test_array_persist_then_reduction_matmul_svd(real_redis):
    x = da.random.RandomState(0).random_sample((3000, 3000), chunks=750)  # 16 x 4.5 MB
    y = x.persist(scheduler=serverless_get)
    refs = _stored_nodes(y)
    assert len(refs) == 16  # every chunk stays in Redis: the graph holds references
    assert all(isinstance(n.ref, StoredRef) for n in refs)
    expected = x.compute(scheduler="sync")

    total = y.sum().compute(scheduler=serverless_get)
    assert total == pytest.approx(expected.sum())
    assert _spec_bytes() < 200_000  # no chunk rides in the spec (72 MB persisted)

    mm = (y @ y.T)[:5, :5].compute(scheduler=serverless_get)
    np.testing.assert_allclose(mm, (expected @ expected.T)[:5, :5])

    _u, s, _v = da.linalg.svd_compressed(y, k=5, seed=1)
    s_ours = s.compute(scheduler=serverless_get)
    s_sync = da.linalg.svd_compressed(y, k=5, seed=1)[1].compute(scheduler="sync")
    np.testing.assert_allclose(s_ours, s_sync)

    np.testing.assert_array_equal(y.compute(scheduler=serverless_get), expected)


def test_persisted_collection_computes_under_other_schedulers(real_redis):
    x = da.arange(400_000, chunks=200_000)  # 2 x 1.6 MB chunks: stored
    y = (x * 2).persist(scheduler=serverless_get)
    assert len(_stored_nodes(y)) == 2
    assert y.sum().compute(scheduler="sync") == (np.arange(400_000) * 2).sum()
    assert y.sum().compute(scheduler="threads") == (np.arange(400_000) * 2).sum()


def test_small_results_stay_in_the_graph(real_redis):
    x = da.arange(1000, chunks=100)
    y = (x + 1).persist(scheduler=serverless_get)
    assert _stored_nodes(y) == []  # 800-byte chunks: plain values, as with Dask
    assert y.sum().compute(scheduler=serverless_get) == sum(range(1, 1001))


def test_persist_of_several_collections_and_a_stored_output(real_redis):
    x = da.ones((1000, 1000), chunks=500)
    a, b = dask.persist(x + 1, x * 3, scheduler=serverless_get)
    assert len(_stored_nodes(a)) == len(_stored_nodes(b)) == 4
    # the requested keys are the stored chunks themselves: read without a run
    chunk = dask.compute(a.blocks[0, 0], scheduler=serverless_get)[0]
    np.testing.assert_array_equal(chunk, np.full((500, 500), 2.0))
    assert (a + b).sum().compute(scheduler=serverless_get) == 5.0 * 10**6


# -- dask.dataframe ------------------------------------------------------------------------
def _frame(rows: int, parts: int):
    import dask.dataframe as dd

    rng = np.random.default_rng(0)
    pdf = pd.DataFrame({"k": rng.integers(0, 50, rows), "x": rng.random(rows),
                        "y": rng.random(rows)})
    return pdf, dd.from_pandas(pdf, npartitions=parts)


def test_dataframe_persist_groupby_assign_to_csv_repeated(real_redis, tmp_path):
    pdf, ddf = _frame(2_000_000, 8)  # 48 MB in 8 partitions
    p = ddf.persist(scheduler=serverless_get)
    assert len(_stored_nodes(p)) == 8
    want = pdf.groupby("k").x.sum()
    for _ in range(6):  # repeated computes: nothing piles up in the workers
        got = p.groupby("k").x.sum().compute(scheduler=serverless_get)
        pd.testing.assert_series_equal(got.sort_index(), want.sort_index())
        assert _spec_bytes() < 300_000
    assigned = p.assign(z=p.x + p.y).z.sum().compute(scheduler=serverless_get)
    assert assigned == pytest.approx((pdf.x + pdf.y).sum())
    p[p.k == 3].to_csv(str(tmp_path / "part-*.csv"), index=False,
                       compute_kwargs={"scheduler": serverless_get})
    back = pd.concat(pd.read_csv(tmp_path / f) for f in sorted(os.listdir(tmp_path)))
    assert len(back) == int((pdf.k == 3).sum())
    assert back.x.sum() == pytest.approx(pdf[pdf.k == 3].x.sum())


# -- dask.bag ------------------------------------------------------------------------------
def test_bag_persist_then_compute(real_redis):
    b = db.from_sequence(range(400_000), npartitions=4).map(lambda i: (i % 7, i))
    with dask.config.set({"serverless.embed-max-bytes": 100_000}):
        p = b.persist(scheduler=serverless_get)
    assert len(_stored_nodes(p)) == 4  # lists of 100k tuples: above the threshold
    def fold(bag):
        return bag.foldby(lambda kv: kv[0], lambda acc, kv: acc + kv[1], 0, operator.add, 0)

    got = dict(fold(p).compute(scheduler=serverless_get))
    want = dict(fold(b).compute(scheduler="sync"))
    assert got == want
    assert p.count().compute(scheduler=serverless_get) == 400_000


# -- lifetime ------------------------------------------------------------------------------
def test_keys_of_a_persisted_collection_go_when_it_is_garbage_collected(real_redis):
    before = _keys(real_redis)
    y = da.ones((2000, 2000), chunks=1000).persist(scheduler=serverless_get)
    y.sum().compute(scheduler=serverless_get)  # a compute read them (and last_run kept)
    held = _keys(real_redis) - before
    assert len(held) == 4
    z = y + 1  # another collection sharing the references keeps them alive
    del y
    gc.collect()
    assert _keys(real_redis) - before == held
    assert z.sum().compute(scheduler=serverless_get) == 2.0 * 4 * 10**6
    del z
    gc.collect()
    assert not (_keys(real_redis) & held)


def test_the_ttl_backstop_and_a_clear_error_for_expired_data(real_redis):
    with dask.config.set({"serverless.persist.ttl": 1}):
        y = da.ones((2000, 2000), chunks=1000).persist(scheduler=serverless_get)
    ttls = [redis.Redis.from_url(real_redis).pttl(k) for n in _stored_nodes(y)
            for k in n.ref.redis_keys()]
    assert len(ttls) == 4  # one part per 8 MB chunk
    assert all(0 < t <= 1000 for t in ttls)
    time.sleep(1.5)
    with pytest.raises(PersistedDataLostError, match="persist it again"):
        y.sum().compute(scheduler=serverless_get)
    with pytest.raises(PersistedDataLostError):  # another scheduler: the same error
        y.sum().compute(scheduler="sync")


def test_each_compute_renews_the_ttl(real_redis):
    with dask.config.set({"serverless.persist.ttl": 3}):
        y = da.ones((2000, 2000), chunks=1000).persist(scheduler=serverless_get)
        for _ in range(3):
            time.sleep(1.2)
            assert y.sum().compute(scheduler=serverless_get) == 4 * 10**6
    assert all(redis.Redis.from_url(real_redis).exists(k) for n in _stored_nodes(y)
               for k in n.ref.redis_keys())


def test_a_worker_reading_a_lost_value_raises_the_clear_error(real_redis):
    # a persisted value deleted after the client renewed it: the worker's fetch fails
    y = da.ones((2000, 2000), chunks=1000).persist(scheduler=serverless_get)
    nodes = _stored_nodes(y)
    r = redis.Redis.from_url(real_redis)
    real_touch = stored.touch

    def touch_then_lose(client, refs, ttl, names=None):
        real_touch(client, refs, ttl, names)
        r.delete(*nodes[0].ref.redis_keys())

    stored.touch = touch_then_lose
    try:
        with pytest.raises(PersistedDataLostError):
            y.sum().compute(scheduler=serverless_get)
    finally:
        stored.touch = real_touch


def test_a_tampered_stored_value_is_refused(real_redis):
    from dask_serverless.storage.serialize import TamperedPayloadError

    y = da.ones((2000, 2000), chunks=1000).persist(scheduler=serverless_get)
    a, b = _stored_nodes(y)[:2]
    r = redis.Redis.from_url(real_redis)
    (ka,), (kb,) = a.ref.redis_keys(), b.ref.redis_keys()
    r.set(ka, r.get(kb))  # another chunk's sealed bytes in place of a's
    with pytest.raises(TamperedPayloadError):
        y.sum().compute(scheduler=serverless_get)


# -- embedded data -------------------------------------------------------------------------
def test_embedded_values_are_stored_apart_once_while_they_live(real_redis):
    arr = np.random.default_rng(1).random((1000, 1000))  # 8 MB
    before = _keys(real_redis)
    r = redis.Redis.from_url(real_redis)
    total = dask.delayed(np.sum)(arr).compute(scheduler=serverless_get)
    assert total == pytest.approx(arr.sum())
    assert _spec_bytes() < 100_000
    x = da.from_array(arr, chunks=250)  # chunks embedded inside fused tasks
    first_in = r.info("stats")["total_net_input_bytes"]
    assert x.sum().compute(scheduler=serverless_get) == pytest.approx(arr.sum())
    assert _spec_bytes() < 200_000
    uploaded = r.info("stats")["total_net_input_bytes"] - first_in
    assert uploaded > 8 * 10**6  # the 16 chunks, stored
    again_in = r.info("stats")["total_net_input_bytes"]
    assert (x + 1).sum().compute(scheduler=serverless_get) == pytest.approx(arr.sum() + 1e6)
    assert r.info("stats")["total_net_input_bytes"] - again_in < 10**6  # not again
    items = [arr, arr]  # one value used twice is stored once
    dag = to_dag(*_graph(dask.delayed(sum)(items)), embed_max_bytes=2**20)
    assert len(dag.stored) == 1
    assert len(_keys(real_redis) - before) == 17  # arr and its 16 chunks, while they live
    del x, arr, items, dag
    gc.collect()
    assert _keys(real_redis) - before == set()


def test_embedded_values_that_cannot_be_watched_are_deleted_after_the_run(real_redis):
    blob = b"x" * 500_000  # bytes: no weak references
    before = _keys(real_redis)
    assert dask.delayed(len)(blob).compute(scheduler=serverless_get) == 500_000
    assert _spec_bytes() < 100_000
    assert _keys(real_redis) - before == set()


def _graph(collection):
    return collection.__dask_graph__(), collection.__dask_keys__()


def test_values_over_the_redis_limit_are_chunked(real_redis, monkeypatch):
    # the chunking the 512 MiB limit needs, at a size this machine can afford
    monkeypatch.setattr(stored, "MAX_STRING_BYTES", 3 * 2**20)
    monkeypatch.setattr(stored, "CHUNK_BYTES", 2**20)
    arr = np.arange(10**6, dtype=np.float64)  # 8 MB: 8 chunks
    r = redis.Redis.from_url(real_redis)
    ref = stored.write(r, real_redis, arr, 60)
    assert len(ref.parts) == 8 and sum(ref.sizes) == ref.nbytes
    assert all(r.strlen(k) <= 2**20 for k in ref.redis_keys())
    np.testing.assert_array_equal(ref.load(), arr)
    # a worker reads a chunked embedded value
    total = dask.delayed(np.sum)(arr).compute(scheduler=serverless_get)
    assert total == arr.sum()
    stored.release(real_redis, ref.redis_keys())
    with pytest.raises(PersistedDataLostError):
        ref.load()


@pytest.mark.skipif(os.environ.get("DS_BIG_TESTS") != "1",
                    reason="600 MB: run alone with DS_BIG_TESTS=1 (shared machine)")
def test_a_graph_embedding_a_600_mb_array_computes(real_redis):
    arr = np.ones(600 * 2**20 // 8)  # 600 MiB: over Redis's 512 MiB limit
    d = dask.delayed(np.sum)(arr)
    with dask.config.set({"serverless.memory": 1024}):  # the worker holds it once
        assert d.compute(scheduler=serverless_get) == arr.size
    assert _spec_bytes() < 100_000


# -- the decision core and the simulator ---------------------------------------------------
def _dag_with_stored(n_readers: int, nbytes: int) -> DAG:
    """``n_readers`` tasks reading one stored input each (two share one), then a sum."""
    from dask._task_spec import Task, TaskRef

    stored_inputs = [StoredInput(f"s{i}", StoredRef("u", f"k{i}", "data", "r", nbytes),
                                 None, nbytes) for i in range(n_readers - 1)]
    n = n_readers + 1
    tasks = []
    for i in range(n_readers):
        sid = n + min(i, n_readers - 2)
        tasks.append(TaskNode(i, f"t{i}", Task(f"t{i}", len, TaskRef(f"s{i}")), "len",
                              stored=(sid,)))
    tasks.append(TaskNode(n_readers, "total", Task("total", sum, []), "sum",
                          deps=tuple(range(n_readers))))
    return DAG(tasks, [n_readers], stored_inputs)


def test_core_fetches_stored_inputs_for_the_tasks_that_read_them():
    dag = _dag_with_stored(4, 10**6)
    worker = WorkerSpec("w0", ResourceConfig(1024))
    plan = Plan(["w0"] * len(dag), {"w0": worker})
    view = RunView.of(dag, plan, build_layout(dag, plan))
    assert view.reads[0] == (5,) and view.deps[0] == ()
    state = core.InvocationState(view, worker, 1, inline_bytes=0)
    out = state.handle(core.Begin((0, 1, 2, 3)))
    fetches = [i for i in out if isinstance(i, core.Fetch)]
    assert fetches and set(fetches[0].ids) == {5, 6, 7}  # each stored input once
    ran = []
    while not state.done:
        execs = [i.task for i in out if isinstance(i, core.Execute)]
        assert execs, out
        ran += execs
        out = state.handle(core.TaskDone(execs[0], 8))
        state.validate_state()
        while any(isinstance(i, core.QUESTIONS) for i in out):
            q = next(i for i in out if isinstance(i, core.QUESTIONS))
            assert isinstance(q, core.Store)
            out = state.handle(core.Published(()))
    assert sorted(ran) == [0, 1, 2, 3, 4]


def test_simulator_charges_the_download_of_persisted_inputs():
    from dask_serverless.costmodel import FixedCostModel
    from dask_serverless.simulator import Simulator

    small, large = _dag_with_stored(4, 10**3), _dag_with_stored(4, 10**9)
    plan = Plan(["w0"] * len(small), {"w0": WorkerSpec("w0", ResourceConfig(1024))})
    cost = FixedCostModel()
    a = Simulator(small, cost).run(plan)
    b = Simulator(large, cost).run(plan)
    assert b.bytes_downloaded - a.bytes_downloaded == 3 * (10**9 - 10**3)
    assert b.makespan > a.makespan + 3 * 10**9 / 200e6  # at most 200 MB/s assumed


def test_recorded_runs_count_persisted_inputs_as_downloads(real_redis):
    from dask_serverless.metrics import MetricsStore
    from dask_serverless.metrics.plans import recorded_dag

    y = da.ones((2000, 2000), chunks=1000).persist(scheduler=serverless_get)
    sizes = {n.key: n.ref.nbytes for n in _stored_nodes(y)}
    (y + 1).sum().compute(scheduler=serverless_get)
    run_id = get_mod.last_run.record.run_id
    store = MetricsStore.from_url(real_redis)
    tasks = store.tasks(run_id)
    n = len(get_mod.last_run.dag)
    stored_inputs = [i for t in tasks for i in t.inputs if i.dep >= n]
    assert len(stored_inputs) == 4  # each chunk downloaded once, by the task reading it
    assert all(i.source == "redis" for i in stored_inputs)
    assert sorted(i.nbytes for i in stored_inputs) == sorted(sizes.values())
    readers = [t for t in tasks if any(i.dep >= n for i in t.inputs)]
    assert all(t.download_bytes >= 8 * 10**6 for t in readers)  # what the predictor fits
    dag = recorded_dag(tasks, store.plan(run_id))  # the structure: tasks only
    assert len(dag) == n and all(d < n for t in dag.tasks for d in t.deps)


@pytest.mark.skipif(os.environ.get("DS_BIG_TESTS") != "1",
                    reason="190 MiB frame: run alone with DS_BIG_TESTS=1 (shared machine)")
def test_issue_repro_a_190_mib_persisted_frame_on_1024_mb_workers(real_redis, tmp_path):
    # issue 18: MemoryError in RunSpec.loads (every worker unpickled every partition),
    # then in get_spec on repeated computes (specs piled up per container)
    pdf, ddf = _frame(8_000_000, 16)  # 192 MB
    p = ddf.persist(scheduler=serverless_get)
    want = pdf.groupby("k").x.sum().sort_index()
    with dask.config.set({"serverless.memory": 1024}):
        for _ in range(6):
            got = p.groupby("k").x.sum().compute(scheduler=serverless_get)
            pd.testing.assert_series_equal(got.sort_index(), want)
        assert p.assign(z=p.x * 2).z.sum().compute(scheduler=serverless_get) == \
            pytest.approx(2 * pdf.x.sum())


def test_mid_sized_results_stay_under_their_output_key(real_redis):
    # above embed-max-bytes, below the size outputs are stored in parts (1 MiB)
    y = (da.ones((1000, 1000), chunks=(250, 250)) * 3).persist(scheduler=serverless_get)
    nodes = _stored_nodes(y)
    assert len(nodes) == 16 and all(not n.ref.parts for n in nodes)  # 500 KB each
    assert y.sum().compute(scheduler=serverless_get) == 3.0 * 10**6
    assert all(redis.Redis.from_url(real_redis).exists(n.ref.key) for n in nodes)


def test_a_pickled_reference_names_its_redis_by_digest_not_password(monkeypatch):
    import pickle

    ref = StoredRef("redis://:s3cret-password@127.0.0.1:1/0", "ds:{x}:v", "data", "x", 10)
    blob = pickle.dumps(StoredNode("k", ref))
    assert b"s3cret-password" not in blob
    assert pickle.loads(blob).ref.url == ref.url  # resolved in the process that made it
    monkeypatch.setattr(stored, "_URLS", {})  # another process: it cannot load the value
    with pytest.raises(PersistedDataLostError, match="not known in this process"):
        pickle.loads(blob).ref.load()


def test_persist_then_compute_on_the_lambda_backend(real_redis, lambda_backend):
    # the local Lambda API server's functions: persisted chunks read by reference there too
    x = da.random.RandomState(3).random_sample((1000, 1000), chunks=500)
    y = x.persist(scheduler=serverless_get)
    assert len(_stored_nodes(y)) == 4
    assert y.sum().compute(scheduler=serverless_get) == pytest.approx(
        x.sum().compute(scheduler="sync"))
    assert _spec_bytes() < 100_000
