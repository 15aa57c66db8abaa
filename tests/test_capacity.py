"""The simulator on a machine of shared cores and a container cap, computed by hand.

Transfers are free here (no latency, empty outputs), so timelines are starts and tasks.
"""

from __future__ import annotations

import pytest
from plan_dags import dag_of, plan_of

from dask_serverless.capacity import UNLIMITED, Capacity, capacity_of
from dask_serverless.costmodel import FixedCostModel
from dask_serverless.simulator import simulate

FOUR_ROOTS = [[], [], [], []]


def model(cores: float = float("inf"), containers: int = 0, cold_s: float = 0.0,
          warm_s: float = 0.0, cpu=1.0) -> FixedCostModel:
    return FixedCostModel(exec_s=1.0, out_bytes=0, cold_s=cold_s, warm_s=warm_s,
                          latency_s=0.0, bandwidth=1e9, cpu_fraction=cpu,
                          capacity=Capacity(cores, containers))


def four_workers(cm: FixedCostModel):
    return simulate(dag_of(FOUR_ROOTS), plan_of(["w0", "w1", "w2", "w3"]), cm)


def test_four_equal_tasks_on_two_cores_take_two_task_times():
    assert four_workers(model()).makespan == pytest.approx(1.0)
    r = four_workers(model(cores=2))
    assert r.makespan == pytest.approx(2.0)
    assert sorted(r.task_end) == pytest.approx([1.0, 1.0, 2.0, 2.0])


def test_tasks_that_do_not_compute_need_no_core():
    assert four_workers(model(cores=2, cpu=0.0)).makespan == pytest.approx(1.0)
    # half of each task on a core: CPU parts 0-0.5, 0-0.5, 0.5-1, 0.5-1, then 0.5 s off-core
    r = four_workers(model(cores=2, cpu=0.5))
    assert sorted(r.task_end) == pytest.approx([1.0, 1.0, 1.5, 1.5])


def test_cold_starts_share_the_cores_with_tasks():
    # four 0.5 s cold starts take both cores until 1.0; the first two tasks (asking at
    # 0.5) get cores at 1.0, the others at 2.0: 4 * (0.5 + 1) CPU seconds over 2 cores
    r = four_workers(model(cores=2, cold_s=0.5))
    assert [i.start_time for i in r.invocations] == pytest.approx([0.5, 0.5, 1.0, 1.0])
    assert r.makespan == pytest.approx(3.0)
    assert four_workers(model(cold_s=0.5)).makespan == pytest.approx(1.5)


def test_invocations_beyond_the_container_cap_queue_and_reuse_warm_containers():
    r = four_workers(model(containers=2, cold_s=0.5, warm_s=0.05))
    # two cold containers run 0.5-1.5; the queued invocations (made at 0) start warm
    assert [i.cold for i in r.invocations] == [True, True, False, False]
    assert [i.invoke_time for i in r.invocations] == [0.0, 0.0, 0.0, 0.0]
    assert r.makespan == pytest.approx(1.5 + 0.05 + 1.0)


def test_a_chain_is_not_slowed_by_the_cores():
    dag = dag_of([[], [0], [1]])
    r = simulate(dag, plan_of(["w0", "w0", "w0"]), model(cores=1, cold_s=0.5))
    assert r.makespan == pytest.approx(3.5)


def test_capacity_is_validated_and_defaults_to_unlimited():
    assert capacity_of(object()) is UNLIMITED and not UNLIMITED.shared
    assert Capacity(cores=2).shared
    with pytest.raises(ValueError, match="cores"):
        Capacity(cores=0)
    with pytest.raises(ValueError, match="containers"):
        Capacity(containers=-1)


def test_the_plan_record_keeps_whether_memory_buys_cpu():
    """Replays predict with the capacity recorded beside the plan: the local backend's
    (memory buys no CPU) survives the round trip, and a record from before the field
    reads as local when it had shared cores."""
    import json

    from dask_serverless.metrics.plans import PlanRecord, plan_record

    local = Capacity(cores=2, containers=4, cpu_follows_memory=False)
    dag, plan = dag_of(FOUR_ROOTS), plan_of(["w0", "w0", "w1", "w1"])
    for capacity in (local, UNLIMITED):
        text = plan_record(dag, plan, capacity=capacity)
        assert PlanRecord.loads(text).capacity == capacity
        old = json.loads(text)
        del old["capacity"]["cpu_follows_memory"]
        assert PlanRecord.loads(json.dumps(old)).capacity == capacity
