"""Plans of every planner, with every optimisation, give the results of
``scheduler="sync"`` on real subprocess workers; duplicates and holds are harmless."""

from __future__ import annotations

import os
import random
import time
import uuid

import dask
import pytest
import redis
from plan_dags import dask_graph, random_deps

from dask_serverless import serverless_get
from dask_serverless.adapter import to_dag
from dask_serverless.backends.local import LocalBackend
from dask_serverless.costmodel import FixedCostModel
from dask_serverless.layout import build_layout
from dask_serverless.plan import Optimizations, Plan, Warmup
from dask_serverless.planners import PASSES, PLANNERS, get_planner
from dask_serverless.runtime.run import Run

COST = FixedCostModel(exec_s=0.01, out_bytes=100, cold_s=0.3)


@pytest.fixture(scope="module")
def backend():
    b = LocalBackend(max_containers=4, keep_alive=60)
    yield b
    b.close()


def graph_and_keys():
    rng = random.Random(7)
    graph, keys = {}, []
    for j, n in enumerate((30, 25)):
        deps = random_deps(rng, n, max_deps=3, p_root=0.25)
        graph.update(dask_graph(deps, prefix=f"g{j}-"))
        used = {d for ds in deps for d in ds}
        keys += [f"g{j}-{i}" for i in range(n) if i not in used]
    return graph, keys


def forced(dag, plan: Plan, kind: str) -> Plan:
    """Switch an optimisation on everywhere it can apply (not only where it pays)."""
    layout = build_layout(dag, plan)
    fanins = [t.id for t in dag.tasks if layout.is_entry[t.id] and len(t.deps) > 1]
    opt = Optimizations()
    if kind in ("task-dup", "all"):
        opt.duplicate = {e: dag.tasks[e].deps for e in fanins}
    if kind in ("delayed-io", "pre-load", "all"):
        opt.delay = {d: 0.05 for e in fanins for d in dag.tasks[e].deps}
        opt.preload = kind != "delayed-io"
    if kind in ("pre-warm", "all"):
        opt.prewarm = [Warmup(0.0, 1024, 1), Warmup(0.05, 1024, 1)]
    if kind in ("stream", "all"):  # 16-byte chunks: every uploaded output streams
        opt.stream = {t: 16 for t in range(len(dag)) if layout.upload[t]}
    plan.optimizations = opt
    return plan


@pytest.mark.parametrize("planner", sorted(PLANNERS))
def test_every_planner_matches_sync(any_redis, backend, planner):
    graph, keys = graph_and_keys()
    dag = to_dag(graph, keys)
    plan = get_planner(planner).plan(dag, parallelism=3, memory_mb=1024, predictor=COST)
    expected = dask.get(graph, keys)
    assert Run(dag, plan, backend, any_redis).execute() == list(expected)


@pytest.mark.parametrize("kind", [*sorted(PASSES), "all"])
@pytest.mark.parametrize("planner", ["wukong", "dask", "per-task"])
def test_every_pass_matches_sync(any_redis, backend, planner, kind):
    graph, keys = graph_and_keys()
    dag = to_dag(graph, keys)
    plan = get_planner(planner).plan(dag, parallelism=3, memory_mb=1024, predictor=COST)
    plan = forced(dag, plan, kind)
    expected = dask.get(graph, keys)
    assert Run(dag, plan, backend, any_redis).execute() == list(expected)


def test_passes_selected_by_config_run(any_redis):
    graph, keys = graph_and_keys()
    with dask.config.set({"serverless.planner": "uniform",
                          "serverless.optimizations": sorted(PASSES)}):
        got = serverless_get(graph, keys)
    assert list(got) == list(dask.get(graph, keys))


# -- duplicates and holds, observed through what the tasks record ------------------------

def recorded(url, log, name, delay, *inputs):
    """Append (name, pid) to a Redis list, sleep, return a value of the inputs."""
    redis.Redis.from_url(url).rpush(log, f"{name}:{os.getpid()}")
    time.sleep(delay)
    return len(name) + sum(inputs)


def executions(url, log):
    entries = [x.decode().split(":") for x in redis.Redis.from_url(url).lrange(log, 0, -1)]
    counts: dict[str, int] = {}
    pids: dict[str, str] = {}
    for name, pid in entries:
        counts[name] = counts.get(name, 0) + 1
        pids.setdefault(name, pid)
    return counts, pids


def two_inputs_graph(url, log, slow_s):
    return {"k-fast": (recorded, url, log, "fast", 0.0),
            "k-slow": (recorded, url, log, "slow", slow_s),
            "k-join": (recorded, url, log, "join", 0.0, "k-fast", "k-slow")}


def expected(url, log):
    return dask.get(two_inputs_graph(url, log + "-sync", 0.0), "k-join")


def test_task_dup_never_changes_results_or_counters(any_redis, backend):
    log = f"log-{uuid.uuid4().hex}"
    graph = two_inputs_graph(any_redis, log, 1.0)
    dag = to_dag(graph, ["k-join"])
    plan = get_planner("wukong").plan(dag, parallelism=2, memory_mb=1024)
    join = dag.key_to_id["k-join"]
    assert plan.worker_of(join).floating
    plan.optimizations = Optimizations(duplicate={join: (dag.key_to_id["k-slow"],)})
    assert Run(dag, plan, backend, any_redis).execute() == [expected(any_redis, log)]
    counts, _ = executions(any_redis, log)
    # the fast worker found the fan-in waiting on "slow" and ran it too; whichever copy
    # of "slow" completed the fan-in first claimed it: the fan-in ran once
    assert counts == {"fast": 1, "slow": 2, "join": 1}


@pytest.mark.parametrize("preload", [False, True])
def test_delayed_io_runs_the_fan_in_where_the_output_was_held(any_redis, backend, preload):
    log = f"log-{uuid.uuid4().hex}"
    graph = two_inputs_graph(any_redis, log, 0.3)
    dag = to_dag(graph, ["k-join"])
    plan = get_planner("wukong").plan(dag, parallelism=2, memory_mb=1024)
    plan.optimizations = Optimizations(delay={dag.key_to_id["k-fast"]: 30.0}, preload=preload)
    assert Run(dag, plan, backend, any_redis).execute() == [expected(any_redis, log)]
    counts, pids = executions(any_redis, log)
    assert counts == {"fast": 1, "slow": 1, "join": 1}
    assert pids["join"] == pids["fast"] != pids["slow"]


def test_runtime_sends_the_plans_warm_ups(any_redis):
    backend = LocalBackend(max_containers=3, keep_alive=60)
    try:
        graph = {"a": (sum, [1, 2])}
        dag = to_dag(graph, ["a"])
        plan = get_planner("wukong").plan(dag, parallelism=1, memory_mb=1024)
        plan.optimizations = Optimizations(prewarm=[Warmup(0.0, 1536, 2)])
        assert Run(dag, plan, backend, any_redis).execute() == [3]
        sizes = [c.memory_mb for c in backend.pool._containers.values() if c.state != "dead"]
        assert sizes.count(1536) == 2
    finally:
        backend.close()
