"""Workers running several tasks at once (``serverless.threads``): real subprocess
workers on real redis-server and fakeredis."""

from __future__ import annotations

import logging
import time
import traceback

import dask
import numpy as np
import pytest
from dask import delayed

from dask_serverless import serverless_get
from dask_serverless.config import ConfigError
from dask_serverless.metrics import MetricsStore
from dask_serverless.plan import Plan, PlanError, ResourceConfig, WorkerSpec
from dask_serverless.runtime import get as get_mod

WAIT_S = 0.4


def wait_then(i):
    logging.getLogger("user.task").warning("task %d waited", i)
    time.sleep(WAIT_S)
    return np.full(1000, float(i))


def total(*xs):
    return float(sum(x.sum() for x in xs))


def fail_on(i):
    time.sleep(0.05 * i)
    if i == 2:
        raise KeyError(f"no row {i}")
    return i


def _max_overlap(intervals: list[tuple[float, float]]) -> int:
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    best = now = 0
    for _, step in events:
        now += step
        best = max(best, now)
    return best


def test_one_worker_runs_its_ready_tasks_at_once(any_redis):
    graph = delayed(total)(*[delayed(wait_then)(i) for i in range(4)])
    with dask.config.set({"serverless.threads": 4, "serverless.parallelism": 1,
                          "serverless.metrics.task-logs": "INFO"}):
        (got,) = dask.compute(graph, scheduler=serverless_get)
    assert got == dask.compute(graph, scheduler="sync")[0]
    run = get_mod.last_run
    assert {w.threads for w in run.plan.workers.values()} == {4}
    store = MetricsStore.from_url(any_redis)
    tasks = [t for t in store.tasks(run.record.run_id) if t.function == "wait_then"]
    assert len({t.invocation_id for t in tasks}) == 1  # one worker ...
    assert _max_overlap([(t.start, t.end) for t in tasks]) == 4  # ... four at a time
    # each task's log line is kept under its own task, not a neighbour's
    logs = store.task_logs(run.record.run_id)
    assert all(len(logs.get(t.task_id, [])) == 1 for t in tasks)
    assert sorted(logs[t.task_id][0][3] for t in tasks) == [f"task {i} waited"
                                                             for i in range(4)]


def test_a_failing_task_among_threads_surfaces_its_own_exception(any_redis):
    graph = delayed(sum)([delayed(fail_on)(i) for i in range(4)])
    with dask.config.set({"serverless.threads": 4, "serverless.parallelism": 1}), \
            pytest.raises(KeyError, match="no row 2") as info:
        dask.compute(graph, scheduler=serverless_get)
    assert "fail_on" in "".join(traceback.format_exception(info.value))


def test_threads_are_validated_in_config_and_plans():
    with dask.config.set({"serverless.threads": 0}), \
            pytest.raises(ConfigError, match=r"serverless\.threads = 0"):
        dask.compute(delayed(sum)([1, 2]), scheduler=serverless_get)
    plan = Plan(["w0"], {"w0": WorkerSpec("w0", ResourceConfig(1024), threads=3)})
    assert Plan.from_json(plan.to_json()).workers["w0"].threads == 3
    bad = Plan(["w0"], {"w0": WorkerSpec("w0", ResourceConfig(1024), threads=0)})
    from plan_dags import dag_of

    with pytest.raises(PlanError, match="worker 'w0' has threads=0"):
        bad.validate(dag_of([[]]))


@pytest.mark.parametrize("planner", ["wukong", "uniform"])
def test_results_match_sync_with_threads(any_redis, planner):
    import dask.array as da
    import dask.bag as db
    import pandas as pd

    x = da.random.RandomState(3).random((300, 300), chunks=100)
    words = db.from_sequence(["a b", "b c", "c a a"] * 20, npartitions=6).str.split()
    df = pd.DataFrame({"k": np.arange(400) % 7, "v": np.arange(400.0)})
    import dask.dataframe as dd

    ddf = dd.from_pandas(df, npartitions=5)
    collections = ((x @ x.T).sum(axis=0), words.flatten().frequencies(),
                   ddf.groupby("k").v.sum())
    expected = dask.compute(*collections, scheduler="sync")
    with dask.config.set({"serverless.threads": 4, "serverless.planner": planner}):
        got = dask.compute(*collections, scheduler=serverless_get)
    np.testing.assert_allclose(got[0], expected[0])
    assert sorted(got[1]) == sorted(expected[1])
    pd.testing.assert_series_equal(got[2].sort_index(), expected[2].sort_index())
    assert {w.threads for w in get_mod.last_run.plan.workers.values()} == {4}


def test_many_threads_fit_a_small_memory_cap(real_redis):
    """16 threads in a 512 MB container: thread stacks and malloc arenas must not eat
    the address-space cap (they used to: "can't start new thread")."""
    graph = delayed(total)(*[delayed(wait_then)(i) for i in range(16)])
    with dask.config.set({"serverless.threads": 16, "serverless.parallelism": 1,
                          "serverless.memory": 512}):
        (got,) = dask.compute(graph, scheduler=serverless_get)
    assert got == sum(1000.0 * i for i in range(16))
