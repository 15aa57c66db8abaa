"""Output streaming (pass ``stream``): real subprocess workers on redis-server and on
fakeredis give the results of ``scheduler="sync"``, survive a producer killed mid-stream
(retried, or a clear error: never a hang) and leave no stream keys behind."""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid

import dask
import dask.array as da
import numpy as np
import pytest
import redis
from dask.core import flatten
from plan_dags import dag_of, plan_of

from dask_serverless.adapter import to_dag
from dask_serverless.backends.local import LocalBackend
from dask_serverless.config import ConfigError
from dask_serverless.costmodel import FixedCostModel
from dask_serverless.errors import DeadlineExceededError, RunDataLostError, WorkerCrashedError
from dask_serverless.layout import build_layout
from dask_serverless.plan import Optimizations, Plan, PlanError
from dask_serverless.planners import Objective, apply_passes, get_planner
from dask_serverless.runtime.get import make_plan
from dask_serverless.runtime.run import Run
from dask_serverless.simulator import Simulator
from dask_serverless.storage import serialize, streams
from dask_serverless.storage.store import RunStore, connect

pytestmark = pytest.mark.timeout(120)

MB = 2**20
# what the planner believes: slow branches (one worker each), 4 MB outputs moved at
# 50 MB/s, so streaming pays
BIG = FixedCostModel(exec_s={"scale": 1.0, "*": 0.05}, out_bytes=4_000_000, cold_s=0.3,
                     warm_s=0.01, latency_s=0.0005, bandwidth=50e6)


@pytest.fixture(scope="module")
def backend():
    b = LocalBackend(max_containers=4, keep_alive=60)
    yield b
    b.close()


class WatchedRun(Run):
    """A run that notes which outputs were streamed before its keys are deleted."""

    heads: dict[int, streams.StreamHead] = {}
    left: list[bytes] = []

    @property
    def streamed(self) -> set[int]:
        return set(self.heads)

    def _cleanup(self) -> None:
        k = self.store.keys
        self.heads = {}
        for t in self.plan.optimizations.stream:
            raw = self.store.r.get(k.stream(t))
            if raw is not None:
                self.heads[t] = streams.open_head(self.store, t, raw)
        super()._cleanup()
        self.left = sorted(self.store.r.scan_iter(match=f"{k.prefix}*"))

    @property
    def stream_keys_left(self) -> list[bytes]:
        """Heads, chunk lists and their registry still in Redis (a consumer invoked
        twice, by a retried producer, may write its own output after the cleanup)."""
        return [k for k in self.left if b"}:s:" in k or b"}:c:" in k or k.endswith(b"streams")]


def stream_everything(dag, plan: Plan, chunk: int) -> Plan:
    layout = build_layout(dag, plan)
    plan.optimizations = Optimizations(
        stream={t: chunk for t in range(len(dag)) if layout.upload[t]})
    return plan


# -- workloads -------------------------------------------------------------------------
def source(seed, n):
    return np.random.RandomState(seed).random_sample(n)


def scale(x, k):
    return x * k


def join(*xs):
    return np.concatenate(xs)


def total(x):
    return float(x.sum())


def fan_graph(width=3, n=500_000):
    """A 4 MB source fanned out to ``width`` 4 MB branches, joined (12 MB) and summed."""
    graph = {"src": (source, 0, n), "join": (join, *[f"b{i}" for i in range(width)]),
             "total": (total, "join")}
    graph.update({f"b{i}": (scale, "src", i + 1) for i in range(width)})
    return graph, ["total", "src"]  # "src" is also a final output the client reads


def same(got: list, expected) -> None:
    expected = list(expected)
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_array_equal(g, e)


# -- runtime -----------------------------------------------------------------------------
def test_pass_selected_by_name_streams_and_matches_sync(any_redis, backend):
    graph, keys = fan_graph()
    dag = to_dag(graph, keys)
    fresh = LocalBackend(max_containers=4)  # planned as for a first run: nothing warm
    try:  # (with four warm containers on two cores the model sees no gain)
        with dask.config.set({"serverless.stream-chunk-bytes": MB // 2}):
            plan = make_plan(dag, "wukong", fresh, parallelism=3, optimizations=["stream"],
                             predictor=BIG)
    finally:
        fresh.close()
    assert plan.options["passes"]["stream"].startswith("predicted makespan")
    src = dag.key_to_id["src"]
    assert plan.optimizations.stream[src] == MB // 2
    run = WatchedRun(dag, Plan.from_json(plan.to_json()), backend, any_redis)
    same(run.execute(), dask.get(graph, keys))
    assert src in run.streamed  # announced and written in chunks, read by the branches
    assert run.left == []


def test_dask_array_workflow_streamed_matches_sync(any_redis, backend):
    x = da.random.RandomState(1).random_sample((1200, 1200), chunks=600)  # 2.9 MB chunks
    y = ((x + x.T) * 2).sum(axis=0)  # not optimised: no fusion, more large intermediates
    graph, keys = dict(y.__dask_graph__()), list(flatten(y.__dask_keys__()))
    dag = to_dag(graph, keys)
    plan = get_planner("per-task").plan(dag, parallelism=4, memory_mb=1024)
    run = WatchedRun(dag, stream_everything(dag, plan, MB), backend, any_redis)
    same(run.execute(), dask.get(graph, keys))
    assert len(run.streamed) >= 4 and run.left == []


N_BIG = 2_000_000  # a 16 MB output: 3907 chunks of 4 KiB
CHUNKS = -(-serialize.encode(np.arange(N_BIG, dtype=np.float64), serialize.Purpose.OUTPUT,
                             "run", "key").nbytes // 4096)


def recorded_source(url, log, n):
    """A large output whose producer's pid is left in Redis (for the killer)."""
    redis.Redis.from_url(url).set(log, os.getpid())
    return np.arange(n, dtype=np.float64)


def kill_mid_stream(url: str, log: str, killed: list[int], min_chunks: int = 8) -> None:
    """Kill the producer once its stream holds ``min_chunks`` chunks (of ``CHUNKS``)."""
    r = redis.Redis.from_url(url)
    deadline = time.monotonic() + 30
    while not killed and time.monotonic() < deadline:
        for registry in r.scan_iter(match="ds:*:streams"):
            if any(r.llen(lst) >= min_chunks for lst in r.smembers(registry)):
                pid = int(r.get(log))
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
        time.sleep(0.001)


def chain_with_killer(url: str, retries: int):
    log = f"pid-{uuid.uuid4().hex}"
    graph = {"big": (recorded_source, url, log, N_BIG), "sum": (total, "big")}
    dag = to_dag(graph, ["sum"])
    plan = plan_of(["w0", "w1"])  # the consumer is pinned to another worker
    plan.optimizations = Optimizations(stream={dag.key_to_id["big"]: 4096})
    with dask.config.set({"serverless.retries": retries, "serverless.retry-backoff": 0.05}):
        b = LocalBackend(max_containers=4, keep_alive=30)
    killed: list[int] = []
    killer = threading.Thread(target=kill_mid_stream, args=(url, log, killed))
    killer.start()
    return dag, plan, b, killer, killed, log


def test_producer_killed_mid_stream_is_retried_to_the_right_answer(any_redis):
    dag, plan, b, killer, killed, log = chain_with_killer(any_redis, retries=2)
    try:
        run = WatchedRun(dag, plan, b, any_redis)
        assert run.execute() == [float(np.arange(N_BIG, dtype=np.float64).sum())]
        killer.join()
        assert killed  # the first attempt died mid-stream; its retry started the stream over
        assert int(redis.Redis.from_url(any_redis).get(log)) != killed[0]
        assert run.heads[0].attempt == 1 and run.heads[0].worker == "w0"
        assert run.stream_keys_left == []
    finally:
        killer.join()
        b.close()


def test_producer_killed_mid_stream_without_retries_is_a_clear_error(any_redis):
    dag, plan, b, killer, killed, _ = chain_with_killer(any_redis, retries=0)
    try:
        run = WatchedRun(dag, plan, b, any_redis)
        t0 = time.monotonic()
        with pytest.raises(WorkerCrashedError, match=r"worker w0 .*killed by SIGKILL"):
            run.execute()
        assert time.monotonic() - t0 < 30 and killed
        for _ in range(50):  # the waiting consumer was stopped with the run
            if not b.pool.busy_pids():
                break
            time.sleep(0.1)
        assert b.pool.busy_pids() == []
        assert run.stream_keys_left == []
    finally:
        killer.join()
        b.close()


def test_producer_dying_unnoticed_mid_stream_ends_at_the_deadline_naming_it(any_redis):
    dag, plan, b, killer, killed, _ = chain_with_killer(any_redis, retries=0)
    b.pool.on_crash = None  # nobody reports the death (as when Lambda drops an event)
    try:
        # the deadline leaves room for a busy machine to start both containers and write
        # some chunks first (the error names the stream only once it was announced)
        run = WatchedRun(dag, plan, b, any_redis, deadline=15.0)
        t0 = time.monotonic()
        # the client's deadline error, or the waiting consumer's if it lands first
        with pytest.raises(DeadlineExceededError,
                           match=r"'big' streamed by worker w0 \(invocation \w+, "
                                 rf"attempt 1\).* \d+ of {CHUNKS} chunks"):
            run.execute()
        assert killed and time.monotonic() - t0 < 30
        for _ in range(50):  # the waiting consumer was stopped with the run
            if not b.pool.busy_pids():
                break
            time.sleep(0.1)
        assert b.pool.busy_pids() == []
    finally:
        killer.join()
        b.close()


# -- the protocol on its own ---------------------------------------------------------------
def test_a_retry_takes_over_a_partial_stream_and_readers_follow(any_redis):
    store = RunStore(connect(any_redis), f"s{uuid.uuid4().hex[:8]}", ttl=60)
    data = store.encode_output(7, np.arange(1000))
    first = streams.StreamHead.new("inv-a", 0, "w0", data.nbytes, 1000)
    assert streams.announce(store, 7, first, []) == (True, [])
    store.r.rpush(store.keys.stream_chunks(7, first.token),
                  next(data.chunks(1000)))  # then it died
    twin = streams.StreamHead.new("inv-a", 0, "w0", data.nbytes, 1000)  # duplicate delivery
    other = streams.StreamHead.new("inv-b", 1, "w3", data.nbytes, 1000)
    assert not streams.announce(store, 7, twin, [])[0]
    assert not streams.announce(store, 7, other, [])[0]
    retry = streams.StreamHead.new("inv-a", 1, "w0", data.nbytes, 1000)
    got: list = []
    reader = threading.Thread(target=lambda: got.append(
        streams.read(store, 7, "input 't7'", time.time() + 20)[0]))
    reader.start()
    time.sleep(0.05)  # the reader holds the first chunk of the dead attempt
    assert streams.announce(store, 7, retry, [(7, 9)]) == (True, [1])
    assert not store.r.exists(store.keys.stream_chunks(7, first.token))
    streams.write(store, 7, retry, data, 1000, final=True)
    reader.join()
    assert store.decode_output(7, got[0]).tolist() == list(range(1000))
    assert store.done_outputs() == {7}
    later = streams.StreamHead.new("inv-a", 2, "w0", data.nbytes, 1000)
    assert not streams.announce(store, 7, later, [])[0]  # complete: left alone
    store.cleanup([7], [9], [7])
    assert list(store.r.scan_iter(match=f"{store.keys.prefix}*")) == []


def test_a_reader_gives_up_at_the_deadline_or_when_cancelled(any_redis):
    store = RunStore(connect(any_redis), f"s{uuid.uuid4().hex[:8]}", ttl=60)
    head = streams.StreamHead.new("inv-a", 0, "w0", 5000, 1000)
    streams.announce(store, 3, head, [])
    t0 = time.monotonic()
    with pytest.raises(DeadlineExceededError,
                       match=r"input 'x' streamed by worker w0 .*0 of 5 chunks"):
        streams.read(store, 3, "input 'x'", time.time() + 0.3)
    assert 0.3 <= time.monotonic() - t0 < 5
    with pytest.raises(streams.StreamCancelled):
        streams.read(store, 3, "input 'x'", 0.0, lambda: True)
    store.cleanup([3], [], [3])
    with pytest.raises(RunDataLostError, match=r"input 'x' is missing .*nor announced"):
        streams.read(store, 3, "input 'x'")


# -- plan, pass and config ---------------------------------------------------------------------
def test_plan_json_round_trip_and_validation():
    dag = dag_of([[], [0], [0]])
    plan = plan_of(["w0", "w1", "w2"])
    plan.optimizations = Optimizations(stream={0: 4096})
    again = Plan.from_json(plan.to_json(dag))
    assert again.optimizations == plan.optimizations and again.optimizations.stream == {0: 4096}
    again.validate(dag)
    for bad in ({5: 4096}, {0: 0}, {0: 1.5}):
        plan.optimizations = Optimizations(stream=bad)
        with pytest.raises(PlanError, match="output streaming"):
            plan.validate(dag)


def test_pass_streams_large_outputs_only_when_predicted_to_help():
    dag = dag_of([[], [0], [0]], {0: "big"})
    plan = plan_of(["w0", "w1", "w2"])
    cm = FixedCostModel(exec_s=0.1, out_bytes={"big": 8 * MB, "*": 10}, bandwidth=50e6)
    sim = Simulator(dag, cm, inline_bytes=1000)
    with dask.config.set({"serverless.stream-chunk-bytes": MB}):
        streamed = apply_passes(dag, plan, ["stream", "pre-warm"], sim, Objective())
    assert streamed.optimizations.stream == {0: MB}
    assert streamed.options["optimizations"] == ["stream", "pre-warm"]
    assert sim.run(streamed).makespan < sim.run(plan).makespan
    with dask.config.set({"serverless.stream-chunk-bytes": 16 * MB}):  # one chunk: no
        kept = apply_passes(dag, plan_of(["w0", "w1", "w2"]), ["stream"], sim, Objective())
    assert not kept.optimizations and kept.options["passes"]["stream"] == "nothing to do"


@pytest.mark.parametrize("value", [0, -1, 1.5, "1MB", True])
def test_stream_chunk_bytes_is_validated(value):
    dag = dag_of([[], [0]])
    with dask.config.set({"serverless.stream-chunk-bytes": value}), \
            pytest.raises(ConfigError, match=r"serverless.stream-chunk-bytes = .* positive"):
        make_plan(dag, parallelism=2, optimizations=["stream"])
