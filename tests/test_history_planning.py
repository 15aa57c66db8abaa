"""Planners other than the structural default learn from earlier runs of the workflow."""

from __future__ import annotations

import time

import dask
import pytest
from dask import delayed

from dask_serverless import serverless_get
from dask_serverless.plan import ResourceConfig
from dask_serverless.runtime import get as get_mod
from dask_serverless.runtime import history


def nap(x):
    time.sleep(0.05)
    return x


def workflow():
    return delayed(sum)([delayed(nap)(i) for i in range(4)])


@pytest.fixture
def metrics_here(real_redis):
    client_keys = {"serverless.metrics.redis-url": real_redis}
    with dask.config.set(client_keys):
        yield real_redis


def test_auto_mode_uses_history_only_when_a_planner_needs_it(metrics_here):
    with dask.config.set({"serverless.use-history": "auto"}):
        assert not history.wants_history("wukong", [])
        assert history.wants_history("wukong", ["task-dup"])
        assert history.wants_history("uniform", [])
    with dask.config.set({"serverless.use-history": False}):
        assert not history.wants_history("uniform", ["pre-warm"])


def test_second_run_plans_with_what_the_first_measured(metrics_here):
    assert dask.compute(workflow(), scheduler=serverless_get, planner="uniform") == (6,)
    run = get_mod.last_run
    dag = run.dag
    predictor = history.predictor_for(dag, metrics_here)
    assert predictor is not None
    nap_task = next(t.id for t in dag.tasks if t.func_name == "nap")
    used = run.plan.worker_of(nap_task).config  # predictions scale with memory otherwise
    guess = predictor.exec_time("nap", 0, used)
    assert guess.samples >= 3 and 0.04 < guess < 0.2
    # below one vCPU (1769 MB) more memory is faster; the planner may have used more
    assert (predictor.exec_time("nap", 0, ResourceConfig(1024))
            < predictor.exec_time("nap", 0, ResourceConfig(512)))
    assert dask.compute(workflow(), scheduler=serverless_get, planner="uniform") == (6,)
    assert history.predictor_for(get_mod.last_run.dag, metrics_here) is not predictor


def test_queueing_for_a_container_is_not_counted_as_worker_start(metrics_here):
    """With one container and two root workers, the second invocation waits for the
    first: that wait is queue time, and its warm start stays short."""
    from dask_serverless.backends.local import LocalBackend
    from dask_serverless.metrics.store import MetricsStore

    def slow(i):
        time.sleep(0.4)
        return i

    b = LocalBackend(max_containers=1, keep_alive=30)
    try:
        x = delayed(sum)([delayed(slow)(i) for i in range(2)])
        assert dask.compute(x, scheduler=serverless_get, backend=b, parallelism=2) == (1,)
    finally:
        b.close()
    invs = MetricsStore.from_url(metrics_here).invocations(get_mod.last_run.run_id)
    queued = [i for i in invs if i.queue_s > 0.2]
    assert queued, [(i.worker_id, i.queue_s, i.startup_s) for i in invs]
    for i in queued:
        assert not i.cold and i.startup_s < 0.2
        assert i.start_time - i.invoke_time >= i.queue_s
