"""The simulator and the executor drive one decision core: for the same plan, the
predicted invocations, the tasks each ran and the kind of every input transfer (inline,
Redis, local) equal what a real run recorded.

Real subprocess workers and redis-server. Each workflow's timing is set by sleeps far
apart (tenths of a second against seconds), and it runs once before the compared run so
containers are warm: which invocation completes a fan-in does not depend on the
machine's load.
"""

from __future__ import annotations

import time
from collections import Counter

import dask
import pytest
from dask import delayed

from dask_serverless import serverless_get
from dask_serverless.adapter import to_dag
from dask_serverless.backends.local import LocalBackend
from dask_serverless.capacity import Capacity
from dask_serverless.costmodel import FixedCostModel
from dask_serverless.metrics import MetricsStore
from dask_serverless.plan import Optimizations, Plan, ResourceConfig, WorkerSpec
from dask_serverless.runtime import get as get_mod
from dask_serverless.simulator import Simulator

pytestmark = pytest.mark.timeout(180)

SLOW_S, QUICK_S = 1.5, 0.05
BIG_BYTES = 2_000_000  # far above the inline threshold
SMALL_BYTES = 100


def quick(*_):
    time.sleep(QUICK_S)
    return b"q" * SMALL_BYTES


def slow(*_):
    time.sleep(SLOW_S)
    return b"s" * SMALL_BYTES


def big(*_):
    time.sleep(QUICK_S)
    return b"b" * BIG_BYTES


def join(*parts):
    time.sleep(QUICK_S)
    assert all(len(p) in (SMALL_BYTES, BIG_BYTES) for p in parts)
    return b"j" * SMALL_BYTES


def call(fn, key, *args):
    """A task of ``fn`` with key ``key`` (its worker is chosen by the key's prefix)."""
    return delayed(fn)(*args, dask_key_name=key)


MODEL = dict(exec_s={"slow": SLOW_S, "*": QUICK_S},
             out_bytes={"big": BIG_BYTES + 60, "*": SMALL_BYTES + 60},
             cold_s=0.2, warm_s=0.01, latency_s=0.001, bandwidth=500e6)


def plan_for(dag, workers: dict[str, str], floating=(), threads=None, opt=None) -> Plan:
    """``workers``: task key prefix -> worker id (keys are ``<name>-<n>``)."""
    assignment = [workers[str(t.key).rsplit("-", 1)[0]] for t in dag.tasks]
    specs = {w: WorkerSpec(w, ResourceConfig(1024), w in floating, (threads or {}).get(w, 1))
             for w in set(assignment)}
    return Plan(assignment, specs, "test", {}, optimizations=opt or Optimizations())


def recorded(store: MetricsStore, run_id: str):
    """(worker, tasks) per invocation, and each task input's source, as recorded."""
    tasks = store.tasks(run_id)
    workers = {i.invocation_id: i.worker_id for i in store.invocations(run_id)}
    ran: dict[str, set[int]] = {}
    kinds = {}
    for t in tasks:
        ran.setdefault(t.invocation_id, set()).add(t.task_id)
        for i in t.inputs:
            kinds[t.task_id, i.dep] = i.source
    return Counter((workers[i], frozenset(ts)) for i, ts in ran.items()), kinds


def predicted(result, dag):
    """The same from the simulator: an input that came into an invocation is its first
    reader's transfer (as the recorder counts it); later readers there hold it."""
    ran = Counter((inv.worker_id, frozenset(inv.tasks)) for inv in result.invocations)
    arrived: dict[int, dict[int, str]] = {}
    for x in result.transfers:
        arrived.setdefault(x.invocation, {}).setdefault(x.dep, x.kind)
    kinds = {}
    for idx, inv in enumerate(result.invocations):
        came = dict(arrived.get(idx, {}))
        for t in inv.tasks:
            for d in dag.tasks[t].deps:
                kinds[t, d] = came.pop(d, "local")
    return ran, kinds


def compare(x, workers, real_redis, floating=(), threads=None, opt=None, backend=None,
            capacity=None):
    graph, key = dict(x.dask), x.key
    dag = to_dag(graph, key)
    plan = plan_for(dag, workers, floating, threads, opt)
    expected = dask.compute(x, scheduler="sync")[0]
    for _ in range(2):  # the first run warms the containers
        assert serverless_get(graph, key, plan=plan, backend=backend) == expected
    run = get_mod.last_run
    store = MetricsStore.from_url(real_redis)
    sim = Simulator(dag, FixedCostModel(**MODEL, capacity=capacity or Capacity()))
    got_ran, got_kinds = recorded(store, run.run_id)
    result = sim.run(plan)
    want_ran, want_kinds = predicted(result, dag)
    assert got_ran == want_ran
    assert got_kinds == want_kinds
    return got_kinds, result


def test_chain_with_leaves_and_a_floating_sink(real_redis):
    c0 = call(quick, "c0-0")
    c1 = call(quick, "c1-0", c0)
    leaves = [call(quick, "leaf-0", c0), call(slow, "late-0", c1)]
    x = call(join, "sink-0", c1, *leaves)
    kinds, _ = compare(x, {"c0": "w0", "c1": "w0", "leaf": "w1", "late": "w2", "sink": "s"},
                       real_redis, floating={"s"})
    assert "inline" in kinds.values() and "redis" in kinds.values()


def test_fan_out_of_a_large_output_and_a_fan_in(real_redis):
    root = call(big, "root-0")
    branches = [call(quick, f"b{i}-0", root) for i in range(2)]
    branches.append(call(slow, "b2-0", root))
    x = call(join, "sink-0", *branches)
    kinds, result = compare(x, {"root": "w0", "b0": "w1", "b1": "w2", "b2": "w3",
                                "sink": "s"}, real_redis, floating={"s"})
    assert result.invocations[result.task_invocation[4]].worker_id == "w3"  # the slow one
    assert "redis" in kinds.values()


def test_delayed_io_keeps_a_large_output_for_the_fan_in_it_runs(real_redis):
    held = call(big, "held-0")
    other = call(slow, "other-0")
    x = call(join, "sink-0", held, other)
    dag = to_dag(dict(x.dask), x.key)
    producer = next(t.id for t in dag.tasks if str(t.key) == "held-0")
    kinds, _ = compare(x, {"held": "w0", "other": "w1", "sink": "s"}, real_redis,
                       floating={"s"}, opt=Optimizations(delay={producer: 10.0}))
    assert kinds[next(t.id for t in dag.tasks if str(t.key) == "sink-0"), producer] == "local"


def test_streamed_output_to_a_pinned_consumer(real_redis):
    root = call(big, "root-0")
    x = call(join, "use-0", root)
    dag = to_dag(dict(x.dask), x.key)
    producer = next(t.id for t in dag.tasks if str(t.key) == "root-0")
    _, result = compare(x, {"root": "w0", "use": "w1"}, real_redis,
                        opt=Optimizations(stream={producer: 256 * 1024}))
    assert [x.source for x in result.transfers] == ["stream"]


def test_threads_run_a_group_and_fire_a_fan_in(real_redis):
    roots = [call(quick, f"r{i}-0") for i in range(4)]
    part = call(join, "part-0", *roots)
    x = call(join, "sink-0", part, call(slow, "far-0"))
    workers = {f"r{i}": "w0" for i in range(4)} | {"part": "w0", "far": "w1", "sink": "s"}
    _, result = compare(x, workers, real_redis, floating={"s"}, threads={"w0": 2})
    assert result.task_start[0] == result.task_start[1]  # two at once


def test_task_dup_runs_a_queued_input_and_then_the_fan_in(real_redis):
    """Two containers at most, one busy with a slow task: the worker of ``first`` fires
    ``cheap`` (queued: no container), runs it itself (task-dup), completes and runs the
    fan-in; ``cheap``'s own invocation runs later and loses the claim."""
    first = call(quick, "first-0")
    cheap = call(quick, "cheap-0", first)
    x = call(join, "end-0", call(join, "sink-0", first, cheap), call(slow, "late-0"))
    dag = to_dag(dict(x.dask), x.key)
    ids = {str(t.key): t.id for t in dag.tasks}
    workers = {"first": "wb", "cheap": "wc", "sink": "s", "late": "wa", "end": "e"}
    backend = LocalBackend(max_containers=2)
    try:
        kinds, result = compare(
            x, workers, real_redis, floating={"s", "e"},
            opt=Optimizations(duplicate={ids["sink-0"]: (ids["cheap-0"],)}),
            backend=backend, capacity=Capacity(containers=2))
    finally:
        backend.close()
    ran_sink = result.invocations[result.task_invocation[ids["sink-0"]]]
    assert ran_sink.worker_id == "wb" and ran_sink.duplicates == [ids["cheap-0"]]
    assert kinds[ids["sink-0"], ids["cheap-0"]] == "local"
