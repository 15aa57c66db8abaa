"""Planner invariants on random DAGs, objectives, passes, JSON and drawings."""

from __future__ import annotations

import json
import random

import dask
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from plan_dags import dag_of, plan_of, random_deps

from dask_serverless.costmodel import FixedCostModel
from dask_serverless.plan import Optimizations, Plan, PlanError, ResourceConfig, Warmup
from dask_serverless.plan_drawing import draw_plan
from dask_serverless.planners import PASSES, PLANNERS, Objective, apply_passes, get_planner
from dask_serverless.runtime.get import make_plan
from dask_serverless.simulator import Simulator

COST = FixedCostModel(exec_s={"f": 0.05, "g": 0.4}, out_bytes={"f": 2000, "g": 500_000},
                      cold_s=0.3, warm_s=0.01, latency_s=0.001, bandwidth=50e6,
                      cpu_bound=0.7)


@st.composite
def dags(draw):
    seed = draw(st.integers(0, 2**32 - 1))
    n = draw(st.integers(1, 60))
    rng = random.Random(seed)
    deps = random_deps(rng, n, max_deps=draw(st.integers(1, 4)),
                       p_root=draw(st.floats(0.05, 0.5)))
    names = {i: rng.choice("fg") for i in range(n)}
    memory = {i: 2048 for i in range(n) if rng.random() < 0.05}
    return dag_of(deps, names, memory)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dag=dags(), planner=st.sampled_from(sorted(PLANNERS)),
       passes=st.lists(st.sampled_from(sorted(PASSES)), max_size=4, unique=True),
       objective=st.sampled_from(["makespan", "cost", "budget"]),
       parallelism=st.integers(1, 8))
def test_every_task_planned_once_on_a_valid_worker(dag, planner, passes, objective,
                                                   parallelism):
    obj = Objective(objective, 5.0 if objective == "budget" else None)
    p = get_planner(planner)
    if hasattr(p, "objective"):
        p.objective = obj
    plan = p.plan(dag, parallelism=parallelism, memory_mb=1024, predictor=COST)
    sim = Simulator(dag, COST)
    with dask.config.set({"serverless.stream-chunk-bytes": 100_000}):  # "g" outputs stream
        plan = apply_passes(dag, plan, passes, sim, obj)
    plan.validate(dag)
    assert len(plan.assignment) == len(dag)
    assert set(plan.assignment) <= set(plan.workers)
    for t in dag.tasks:
        spec = plan.worker_of(t.id)
        assert isinstance(spec.config, ResourceConfig)
        if "memory" in t.annotations:
            assert spec.config.memory_mb == t.annotations["memory"]
    again = Plan.from_json(plan.to_json(dag))
    assert again.assignment == plan.assignment and again.workers == plan.workers
    assert again.optimizations == plan.optimizations
    result = sim.run(plan)
    bound, _ = dag.critical_path(sim.est.exec_times(ResourceConfig(3008)))
    assert result.makespan >= bound
    ran = set(result.task_invocation)
    assert ran <= set(range(len(result.invocations))) and -1 not in ran
    if not result.duplicates:  # a duplicate's own invocation may run nothing first
        assert len(ran) == len(result.invocations)
    assert all(s >= 0 for s in result.task_start)


def test_planning_is_deterministic_and_wukong_without_history_is_structural():
    dag = dag_of(random_deps(random.Random(3), 200))
    a = get_planner("wukong").plan(dag, parallelism=8, memory_mb=1024)
    b = get_planner("wukong").plan(dag, parallelism=8, memory_mb=1024)
    assert a.to_json() == b.to_json()
    assert not a.optimizations and len({w for w in a.assignment}) > 1


def fan_out_fan_in(width: int, depth: int) -> list[list[int]]:
    deps: list[list[int]] = [[]]
    ends = []
    for _ in range(width):
        prev = 0
        for _ in range(depth):
            deps.append([prev])
            prev = len(deps) - 1
        ends.append(prev)
    deps.append(ends)
    return deps


def test_clustering_keeps_cheap_branches_local_and_spreads_heavy_ones():
    deps = fan_out_fan_in(8, 2)
    cheap = dag_of(deps)
    cm = FixedCostModel(exec_s=0.001, cold_s=0.5)
    plan = get_planner("wukong").plan(cheap, parallelism=8, memory_mb=1024, predictor=cm)
    assert len(set(plan.assignment)) == 1  # nothing is worth a cold start
    heavy = FixedCostModel(exec_s=1.0, cold_s=0.5)
    plan = get_planner("wukong").plan(cheap, parallelism=8, memory_mb=1024, predictor=heavy)
    branch_workers = {plan.assignment[i] for i in range(1, len(deps) - 1)}
    assert len(branch_workers) == 8


def test_planners_beat_one_task_per_worker_on_fan_out_fan_in():
    dag = dag_of(fan_out_fan_in(16, 4), {0: "src"})
    cm = FixedCostModel(exec_s={"src": 0.05, "*": 0.2}, out_bytes=200_000, cold_s=0.5,
                        warm_s=0.01, latency_s=0.001, bandwidth=50e6)
    sim = Simulator(dag, cm)
    naive = sim.run(get_planner("per-task").plan(dag, parallelism=16, memory_mb=1024))
    for name in ("wukong", "uniform", "non-uniform"):
        plan = get_planner(name).plan(dag, parallelism=16, memory_mb=1024, predictor=cm)
        r = sim.run(plan)
        assert r.makespan < naive.makespan and r.cost < naive.cost, name


def test_uniform_narrows_to_the_cores_a_shared_backend_has():
    """16 CPU-bound branches: on Lambda (a core each) all 16 go wide; on 2 shared cores
    where cold starts need a core too, fewer workers finish sooner, and ``uniform``
    finds that by simulation (``parallelism`` is an upper bound)."""
    from dask_serverless.capacity import Capacity

    dag = dag_of(fan_out_fan_in(16, 1), {0: "src"})
    kw = dict(exec_s={"src": 0.01, "*": 0.2}, cold_s=0.4, warm_s=0.01)
    wide = FixedCostModel(**kw)
    shared = FixedCostModel(**kw, capacity=Capacity(cores=2))
    lam = get_planner("uniform").plan(dag, parallelism=16, memory_mb=1024, predictor=wide)
    local = get_planner("uniform").plan(dag, parallelism=16, memory_mb=1024, predictor=shared)
    assert len(lam.workers) >= 16
    assert len(local.workers) < 8
    sim = Simulator(dag, shared)
    assert sim.run(local).makespan < sim.run(lam).makespan


def test_uniform_gives_waiting_tasks_threads_instead_of_cold_workers():
    """16 branches that wait (I/O, not CPU) on 2 shared cores: a few workers with
    threads come close to one cold start plus the critical path; one task at a time
    per worker cannot."""
    from dask_serverless.capacity import Capacity

    dag = dag_of(fan_out_fan_in(16, 1), {0: "src", 17: "sink"})
    cm = FixedCostModel(exec_s={"src": 0.01, "sink": 0.01, "*": 0.5}, cold_s=0.4,
                        warm_s=0.01, cpu_fraction=0.0, capacity=Capacity(cores=2))
    sim = Simulator(dag, cm)
    single = sim.run(get_planner("uniform").plan(dag, parallelism=16, memory_mb=1024,
                                                 predictor=cm, threads=1))
    plan = get_planner("uniform").plan(dag, parallelism=16, memory_mb=1024, predictor=cm)
    best = sim.run(plan)
    assert max(w.threads for w in plan.workers.values()) > 1
    bound = 0.4 + 0.01 + 0.5 + 0.01  # one cold start and the critical path
    assert best.makespan < 1.2 * bound < single.makespan


def test_uniform_runs_computing_tasks_on_no_more_threads_than_shared_cores():
    """Tasks that compute half their time (a CPU share as recorded under contention)
    on 2 shared cores: more threads than cores are predicted faster but run no faster
    (SVD: 1 worker x 4 threads predicted 1.3 s, ran 1.4 s; x 2 threads 1.2 s), so they are
    not candidates; on Lambda (a core per container) they still are."""
    from dask_serverless.capacity import Capacity

    dag = dag_of(fan_out_fan_in(16, 1), {0: "src", 17: "sink"})
    kw = dict(exec_s={"src": 0.01, "sink": 0.01, "*": 0.5}, cold_s=0.4, warm_s=0.01,
              cpu_fraction=0.5)
    shared = FixedCostModel(**kw, capacity=Capacity(cores=2))
    plan = get_planner("uniform").plan(dag, parallelism=16, memory_mb=1024,
                                       predictor=shared)
    threads = max(w.threads for w in plan.workers.values())
    assert threads == 1 or plan.options["parallelism"] * threads <= 2
    lam = get_planner("uniform").plan(dag, parallelism=2, memory_mb=1024,
                                      predictor=FixedCostModel(**kw))
    assert max(w.threads for w in lam.workers.values()) > 1


def test_uniform_keeps_the_memory_size_of_warm_containers_unless_another_is_better():
    """Predictions fitted on noisy runs put near-equal sizes within a few per cent of
    each other: a size other than the warm containers' must be ``switch_margin`` better
    (SVD flipped between 1769 and 3008 MB, starting a cold container each time)."""
    from dataclasses import dataclass

    from dask_serverless.planners import UniformPlanner

    @dataclass
    class BigIsFaster(FixedCostModel):
        speedup: float = 0.97

        def exec_time(self, function, input_bytes, resource_config, size=0):
            base = super().exec_time(function, input_bytes, resource_config, size)
            return base * (self.speedup if resource_config.memory_mb >= 3008 else 1.0)

    dag = dag_of(fan_out_fan_in(4, 1), {0: "src", 5: "sink"})

    def pick(speedup, warm):
        cm = BigIsFaster(exec_s=0.5, cold_s=0.01, warm_s=0.01, speedup=speedup)
        return UniformPlanner(threads=(1,)).plan(dag, parallelism=4, memory_mb=1024,
                                                 predictor=cm, warm=warm)
    assert pick(0.97, {1769: 1}).options["memory_mb"] == 1769
    assert pick(0.97, {}).options["memory_mb"] == 1024
    assert pick(0.5, {1769: 1}).options["memory_mb"] == 3008


def test_uniform_tries_one_memory_size_where_memory_buys_no_cpu():
    """On the local backend a size other than the warm containers' computes no faster,
    it only starts cold: once a plan fits, uniform simulates no other size for the
    makespan (SVD: 31 simulations down to 11); for cost, and on Lambda, it still does."""
    from dask_serverless.capacity import Capacity
    from dask_serverless.planners import UniformPlanner

    dag = dag_of(fan_out_fan_in(4, 1), {0: "src", 5: "sink"})
    local = Capacity(cores=2, containers=4, cpu_follows_memory=False)

    def sizes_simulated(capacity, objective):
        cm = FixedCostModel(exec_s=0.5, cold_s=0.4, warm_s=0.01, capacity=capacity)
        sim = Simulator(dag, cm, warm={1769: 1})
        seen = []
        run = sim.run
        sim.run = lambda plan, *a, **k: (
            seen.extend(w.config.memory_mb for w in plan.workers.values()), run(plan))[1]
        UniformPlanner(objective=objective).best(dag, 4, 1024, sim)
        return set(seen)

    assert sizes_simulated(local, "makespan") == {1769}
    assert len(sizes_simulated(local, "cost")) > 1
    assert len(sizes_simulated(Capacity(cores=2, containers=4), "makespan")) > 1


def test_uniform_plans_no_longer_than_a_share_of_the_makespan_it_predicts():
    """A search may not cost more than it could save: with no time allowed beyond the
    first candidate, that one (the default memory, full width, one thread) is kept."""
    from dask_serverless.planners import UniformPlanner

    dag = dag_of(fan_out_fan_in(16, 1), {0: "src", 17: "sink"})
    cm = FixedCostModel(exec_s=0.5, cold_s=0.4, warm_s=0.01, cpu_fraction=0.0)
    quick = UniformPlanner(search_share=0.0, min_search_s=0.0).plan(
        dag, parallelism=4, memory_mb=1024, predictor=cm)
    assert quick.options["parallelism"] == 4 and quick.options["memory_mb"] == 1024
    assert {w.threads for w in quick.workers.values()} == {1}
    full = UniformPlanner().plan(dag, parallelism=4, memory_mb=1024, predictor=cm)
    assert max(w.threads for w in full.workers.values()) > 1


def test_uniform_prefers_the_memory_size_whose_containers_are_warm():
    """1769 MB computes 1.7x faster than 1024 MB (one full vCPU), but a cold start costs
    2 s: with two idle 1024 MB containers the planner stays on them."""
    dag = dag_of(fan_out_fan_in(2, 1), {0: "src", 3: "sink"})
    cm = FixedCostModel(exec_s=0.1, cold_s=2.0, warm_s=0.01, cpu_bound=1.0)
    cold = get_planner("uniform").plan(dag, parallelism=2, memory_mb=1024, predictor=cm)
    assert {w.config.memory_mb for w in cold.workers.values()} != {1024}
    warm = get_planner("uniform").plan(dag, parallelism=2, memory_mb=1024, predictor=cm,
                                       warm={1024: 2})
    assert {w.config.memory_mb for w in warm.workers.values()} == {1024}
    sim = Simulator(dag, cm, warm={1024: 2})
    assert sim.run(warm).makespan < sim.run(cold).makespan


def test_objectives_trade_makespan_for_cost():
    dag = dag_of(fan_out_fan_in(8, 3))
    cm = FixedCostModel(exec_s=0.5, cold_s=0.3, cpu_bound=1.0)
    sim = Simulator(dag, cm)
    whole = {"search_s": 60.0, "search_share": 60.0}  # every candidate, whatever the load
    fast = sim.run(get_planner("uniform", objective="makespan", **whole).plan(
        dag, parallelism=8, memory_mb=1024, predictor=cm))
    cheap = sim.run(get_planner("uniform", objective="cost", **whole).plan(
        dag, parallelism=8, memory_mb=1024, predictor=cm))
    assert fast.makespan <= cheap.makespan and cheap.cost <= fast.cost
    budget = fast.makespan * 1.5
    mid = sim.run(get_planner("non-uniform", objective="budget", budget_s=budget,
                              search_s=60.0, search_share=60.0).plan(
        dag, parallelism=8, memory_mb=1024, predictor=cm))
    assert mid.makespan <= budget and mid.cost <= fast.cost


def test_non_uniform_upgrades_the_critical_path_only_when_it_pays():
    deps = [[], [0], [1], [2], [], [4]]  # a long chain and a short one
    dag = dag_of(deps, {i: "g" for i in range(4)})
    cm = FixedCostModel(exec_s={"g": 1.0, "*": 0.1}, cold_s=0.3, cpu_bound=0.5)
    plan = get_planner("non-uniform", memories=(512, 1024, 1769)).plan(
        dag, parallelism=2, memory_mb=512, predictor=cm)
    long_cfg = plan.config_of(3).memory_mb
    short_cfg = plan.config_of(5).memory_mb
    assert long_cfg == 1769 and short_cfg < long_cfg


def test_dask_baseline_uses_a_fixed_pool_with_locality():
    deps = fan_out_fan_in(6, 3)
    dag = dag_of(deps)
    plan = get_planner("dask", workers=3).plan(dag, parallelism=8, memory_mb=1024,
                                               predictor=COST)
    assert len(set(plan.assignment)) <= 3 and plan.options["cluster_makespan_s"] > 0
    for i in range(2, len(deps) - 1):  # a branch's chain stays where its data is
        if deps[i][0] != 0:
            assert plan.assignment[i] == plan.assignment[deps[i][0]]
    assert not any(w.floating for w in plan.workers.values())


def test_passes_add_optimizations_when_predicted_to_help():
    # a worker whose fan-in waits for a cheap input on a cold worker: task-dup
    dag = dag_of([[], [], [0, 1]])
    plan = plan_of(["w0", "w1", "w2"], floating={"w2"})
    sim = Simulator(dag, FixedCostModel(exec_s=0.1, cold_s=0.5, warm_s=0.05), warm={1024: 1})
    dup = apply_passes(dag, plan, ["task-dup"], sim, Objective())
    assert dup.optimizations.duplicate == {2: (1,)}
    assert sim.run(dup).makespan < sim.run(plan).makespan
    # a chain of pinned workers invoked late: pre-warm
    dag = dag_of([[], [0], [1]])
    plan = plan_of(["w0", "w1", "w2"])
    sim = Simulator(dag, FixedCostModel(exec_s=1.0, cold_s=0.5, warm_s=0.05))
    warm = apply_passes(dag, plan, ["pre-warm"], sim, Objective())
    assert warm.optimizations.prewarm and sim.run(warm).cold_starts == 1
    # a large output and a slow small one: delayed I/O; three inputs: pre-load
    cm = FixedCostModel(exec_s={"big": 1.0, "slow": 2.0, "*": 0.1},
                        out_bytes={"big": 50_000_000, "*": 10}, bandwidth=10e6)
    dag = dag_of([[], [], [0, 1]], {0: "big", 1: "slow"})
    plan = plan_of(["w0", "w1", "w2"], floating={"w2"})
    held = apply_passes(dag, plan, ["delayed-io"], Simulator(dag, cm), Objective())
    assert 0 in held.optimizations.delay
    cm = FixedCostModel(exec_s={"big": 0.1, "slow": 3.0, "*": 0.1},
                        out_bytes={"big": 5_000_000, "*": 10}, bandwidth=10e6)
    dag = dag_of([[], [], [], [0, 1, 2]], {1: "big", 2: "slow"})
    plan = plan_of(["w0", "w1", "w2", "w3"], floating={"w3"})
    pre = apply_passes(dag, plan, ["pre-load"], Simulator(dag, cm), Objective())
    assert pre.optimizations.preload and 0 in pre.optimizations.delay
    assert "pre-load" in pre.options["passes"]


def test_clear_errors_for_bad_names_options_and_plans():
    with pytest.raises(ValueError, match="'fastest' is not a planner"):
        get_planner("fastest")
    with pytest.raises(ValueError, match=r"\['speed'\] are not options of planner 'uniform'"):
        get_planner("uniform", speed=3)
    with pytest.raises(ValueError, match="objective 'quick'"):
        Objective("quick")
    with pytest.raises(ValueError, match="needs a positive budget_s"):
        Objective("budget")
    dag = dag_of([[], [], [0, 1]])
    with pytest.raises(ValueError, match=r"\['pre-cook'\] are not passes"):
        apply_passes(dag, plan_of(["w0"] * 3), ["pre-cook"], Simulator(dag, COST), Objective())
    bad = plan_of(["w0"] * 3)
    bad.optimizations = Optimizations(duplicate={2: (2,)})
    with pytest.raises(PlanError, match=r"task ids \[2\] are not inputs of fan-in 't2'"):
        bad.validate(dag)
    bad.optimizations = Optimizations(prewarm=[Warmup(-1.0, 1024)])
    with pytest.raises(PlanError, match="pre-warm"):
        bad.validate(dag)
    with dask.config.set({"serverless.optimizations": "pre-warm"}), \
            pytest.raises(ValueError, match="must be a list of pass names"):
        make_plan(dag, parallelism=2)


def test_config_selects_planner_options_and_passes():
    dag = dag_of([[], [], [0, 1]])
    with dask.config.set({"serverless.planner": "uniform",
                          "serverless.planner-options": {"objective": "cost"},
                          "serverless.optimizations": ["pre-warm", "task-dup"]}):
        plan = make_plan(dag, parallelism=2)
    assert plan.planner == "uniform" and plan.options["objective"] == "cost"
    assert plan.options["optimizations"] == ["task-dup", "pre-warm"]
    data = json.loads(plan.to_json(dag))
    assert data["keys"] == ["'t0'", "'t1'", "'t2'"] and "optimizations" in data


@pytest.mark.parametrize("suffix", [".png", ".svg"])
def test_plans_can_be_drawn(tmp_path, suffix):
    dag = dag_of(fan_out_fan_in(4, 2))
    plan = get_planner("wukong").plan(dag, parallelism=4, memory_mb=1024, predictor=COST)
    path = draw_plan(dag, plan, tmp_path / f"plan{suffix}",
                     Simulator(dag, COST).run(plan) if suffix == ".svg" else None)
    head = path.read_bytes()[:200]
    assert head.startswith(b"\x89PNG") if suffix == ".png" else b"<svg" in head or \
        b"<?xml" in head
    with pytest.raises(ValueError, match=r"use a \.png or \.svg"):
        draw_plan(dag, plan, tmp_path / "plan.gif")
