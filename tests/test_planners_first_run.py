"""The default planner on a first run (no history) and with history: what the data sizes
known before the run tell (``costmodel.SizePrior``), and the best of the simulated
candidates. A GEMM must not move a gigabyte to save nothing."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest
from dask._expr import FinalizeCompute
from dask.base import collections_to_expr
from dask.core import flatten
from plan_dags import dag_of

from dask_serverless import serverless_get
from dask_serverless.adapter import to_dag
from dask_serverless.capacity import Capacity
from dask_serverless.costmodel import FixedCostModel, SizePrior
from dask_serverless.estimates import Estimates
from dask_serverless.planners import get_planner
from dask_serverless.planners.wukong import CHOICE_MARGIN
from dask_serverless.runtime import get as get_mod
from dask_serverless.runtime import history
from dask_serverless.simulator import Simulator

TWO_CORES = Capacity(cores=2, containers=4)


def dag_of_collections(*collections):
    """The DAG a ``dask.compute`` of ``collections`` hands the scheduler (with sizes)."""
    expr = FinalizeCompute(collections_to_expr(list(collections), True)).optimize()
    return to_dag(expr, list(flatten(expr.__dask_keys__())))


def gemm(n: int = 4000, chunk: int = 1000):
    x = da.random.RandomState(0).random((n, n), chunks=chunk)
    y = da.random.RandomState(1).random((n, n), chunks=chunk)
    return x @ y


def test_the_prior_follows_the_largest_input():
    dag = dag_of_collections(gemm())
    est = Estimates(dag, SizePrior())
    roots = [t.id for t in dag.tasks if not t.deps]
    assert len(roots) == 32 and {est.out_bytes[r] for r in roots} == {8 * 10**6}
    inner = [t.id for t in dag.tasks if t.deps and t.id not in dag.outputs]
    assert inner and all(est.out_bytes[t] == 8 * 10**6 for t in inner)  # not their sum


def test_first_run_gemm_keeps_its_gigabyte_local():
    dag = dag_of_collections(gemm())
    assert history.known_data(dag) == 256 * 10**6
    prior = history.prior_for(dag, TWO_CORES)
    assert isinstance(prior, SizePrior) and prior.capacity == TWO_CORES
    sim = Simulator(dag, prior)
    structural = sim.run(get_planner("wukong").plan(dag, parallelism=2, memory_mb=1024))
    plan = get_planner("wukong").plan(dag, parallelism=2, memory_mb=1024, predictor=prior)
    chosen = sim.run(plan)
    assert structural.bytes_moved > 900 * 10**6  # what the structural plan ships
    assert chosen.bytes_moved < structural.bytes_moved / 10
    assert chosen.makespan < structural.makespan
    assert plan.planner == "wukong" and plan.options["picked"] in ("uniform", "wukong")
    plan.validate(dag)


def test_small_or_unsized_graphs_keep_the_structural_default():
    small = dag_of_collections(gemm(400, 100))  # 2.6 MB of roots
    assert history.prior_for(small) is None
    assert not history.wants_history("wukong", [], small)
    unsized = dag_of([[], [0], [0], [1, 2]])
    assert history.prior_for(unsized) is None
    big = dag_of_collections(gemm())
    with dask.config.set({"serverless.use-history": "auto"}):
        assert history.wants_history("wukong", [], big)


def test_with_history_the_best_candidate_is_kept():
    """A predictor where spreading pays (slow tasks, cheap moves) keeps wukong's own
    plan; one where moving is dear picks a plan that moves less."""
    import random

    from plan_dags import random_deps

    dag = dag_of(random_deps(random.Random(5), 80, max_deps=3))
    cheap_moves = FixedCostModel(exec_s=0.5, out_bytes=1000, cold_s=0.05, bandwidth=1e9)
    dear_moves = FixedCostModel(exec_s=0.001, out_bytes=50_000_000, cold_s=0.5,
                                bandwidth=50e6, capacity=TWO_CORES)
    for model in (cheap_moves, dear_moves):
        sim = Simulator(dag, model)
        own = get_planner("wukong", choose=False).plan(dag, parallelism=8, memory_mb=1024,
                                                        predictor=model)
        best = get_planner("wukong").plan(dag, parallelism=8, memory_mb=1024,
                                          predictor=model)
        assert sim.run(best).makespan <= sim.run(own).makespan * (1 + CHOICE_MARGIN)
        assert "picked" in best.options
    assert sim.run(best).bytes_moved < sim.run(own).bytes_moved


@pytest.mark.timeout(300)
def test_a_first_run_through_serverless_get_plans_with_the_sizes(real_redis):
    x = da.random.RandomState(0).random((3000, 3000), chunks=1500)  # 72 MB of roots
    y = (x @ x.T).sum()
    with dask.config.set({"serverless.metrics.enabled": False}):
        got = dask.compute(y, scheduler=serverless_get)[0]
    assert np.isclose(got, dask.compute(y, scheduler="sync")[0])
    run = get_mod.last_run
    assert run is not None and "picked" in run.plan.options


def test_peak_bytes_follows_releases_fetches_and_threads():
    from plan_dags import plan_of

    from dask_serverless.planners.base import THREAD_RESERVE, fits, peak_bytes

    dag = dag_of([[], [], [0, 1], [2], [2]])  # two roots -> fan-in -> two consumers
    out = [10, 20, 5, 1, 2]
    one = plan_of(["a"] * 5)
    assert peak_bytes(dag, one, out) == {"a": 35}  # both roots and the fan-in's output
    split = plan_of(["a", "b", "b", "b", "a"])  # "a" fetches the fan-in's output
    assert peak_bytes(dag, split, out) == {"a": 10, "b": 35}
    threaded = plan_of(["a"] * 5, threads=2)
    assert peak_bytes(dag, threaded, out)["a"] == 35 + 1  # the next task runs alongside
    assert fits(dag, one, out) and not fits(dag, one, [2**30] * 5)
    many = plan_of(["a"] * 5, threads=16)  # 16 threads' reserve is over half of 1 GB
    assert 16 * THREAD_RESERVE > 2**29 - 40 and not fits(dag, many, out)


def test_a_near_tie_goes_to_the_plan_that_moves_less():
    import dataclasses

    from dask_serverless.planners import Objective
    from dask_serverless.planners.wukong import _preferred

    dag = dag_of([[], [0], [0], [1, 2]])
    base = Simulator(dag, FixedCostModel()).run(
        get_planner("wukong").plan(dag, parallelism=2, memory_mb=1024))
    own = dataclasses.replace(base, makespan=1.0, bytes_uploaded=10**9, bytes_downloaded=0)
    local = dataclasses.replace(own, makespan=1.03, bytes_uploaded=10**6)
    slow = dataclasses.replace(local, makespan=1.2)
    fast = dataclasses.replace(own, makespan=0.9)
    makespan = Objective()
    assert _preferred(local, own, makespan)  # 3% slower in prediction, 1000x less moved
    assert not _preferred(slow, own, makespan)  # 20% slower: not a tie
    assert _preferred(fast, own, makespan) and not _preferred(own, local, makespan)
