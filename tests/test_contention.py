"""Learning what recorded times would be alone, on shared cores: hand-computed records,
and real runs on the local backend (real subprocess workers, both Redis servers)."""

from __future__ import annotations

import time

import dask
import pytest
from dask import delayed

from dask_serverless import serverless_get, session
from dask_serverless.capacity import Capacity
from dask_serverless.metrics import MetricsStore
from dask_serverless.metrics.contention import CpuDemand, solo_times
from dask_serverless.metrics.predictor import Predictor
from dask_serverless.metrics.records import InvocationRecord, TaskRecord
from dask_serverless.plan import ResourceConfig
from dask_serverless.runtime import get as get_mod
from dask_serverless.simulator import simulate


def task(start: float, exec_s: float, cpu_s: float) -> TaskRecord:
    return TaskRecord("r", "i", "w", 1024, 0, "k", "f", start, start + exec_s, exec_s, [],
                      0, cpu_s=cpu_s)


def cold(invoke: float, start: float) -> InvocationRecord:
    return InvocationRecord("r", "i", "w", "client", 1024, invoke, start, start + 1, True,
                            0.0, 1)


def test_demand_is_the_time_average_of_overlapping_spans():
    d = CpuDemand([(0, 2, 1.0), (1, 3, 1.0), (1, 2, 0.5)])
    assert d.mean(0, 1) == pytest.approx(1.0)
    assert d.mean(1, 2) == pytest.approx(2.5)
    assert d.mean(0, 4) == pytest.approx((2 + 2 + 0.5) / 4)
    assert d.mean(5, 6) == 0.0


def test_four_computing_tasks_on_two_cores_were_twice_as_slow():
    tasks = [task(0, 2.0, 1.0) for _ in range(4)]  # 1 s of CPU each, 2 s wall
    alone, _ = solo_times(tasks, [], cores=2)
    assert alone == pytest.approx([1.0] * 4)
    # a sleeper next to them needs no core and took as long as it would alone
    alone, _ = solo_times([*tasks, task(0, 2.0, 0.0)], [], cores=2)
    assert alone[-1] == pytest.approx(2.0)
    assert solo_times(tasks, [], cores=8)[0] == pytest.approx([2.0] * 4)


def test_cold_starts_at_once_are_divided_by_their_crowding():
    starts = [cold(0, 1.5)] * 3  # three 0.5 s spawns on one core end together at 1.5
    _, alone = solo_times([], starts, cores=1)
    assert alone == pytest.approx([0.5] * 3)


def sleeper(i):
    time.sleep(0.05)
    return i


def spinner(i):
    end = time.thread_time() + 0.05
    while time.thread_time() < end:
        pass
    return i


def test_real_runs_record_cpu_time_and_a_local_predictor_uses_it(any_redis):
    work = [delayed(sleeper)(i) for i in range(3)] + [delayed(spinner)(i) for i in range(3)]
    for _ in range(3):
        assert dask.compute(delayed(sum)(work), scheduler=serverless_get) == (6,)
    run = get_mod.last_run
    store = MetricsStore.from_url(any_redis)
    recorded = {t.function: t for t in store.tasks(run.run_id)}
    assert recorded["sleeper"].cpu_s < 0.5 * recorded["sleeper"].exec_s
    assert recorded["spinner"].cpu_s >= 0.05
    capacity = session.backend().capacity()
    assert capacity.shared and capacity.containers > 0
    assert not capacity.cpu_follows_memory  # a memory cap does not slow a process
    p = Predictor.from_store(store, signature=run.record.signature, limit=3,
                             capacity=capacity)
    # a spinner's share is its CPU over its wall time: below 1 on a busy machine, but
    # always above a sleeper's
    assert p.cpu_share("sleeper") < 0.5 and p.cpu_share("sleeper") < p.cpu_share("spinner")
    assert p.cpu_share("spinner") <= 1.0
    assert p.cpu_share("never-seen") == 1.0
    assert p.exec_time("spinner", 0, ResourceConfig(1024)) >= 0.045
    assert p.exec_time("spinner", 0, ResourceConfig(512)) == p.exec_time(
        "spinner", 0, ResourceConfig(3008))
    shared = simulate(run.dag, run.plan, p)
    alone = simulate(run.dag, run.plan, p, capacity=Capacity())
    assert shared.makespan >= alone.makespan - 1e-9  # float rounding
