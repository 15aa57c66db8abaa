"""Control data anyone with access to Redis could write: run events, the dashboard
registration. Forged or malformed ones are ignored; the run completes as if they were not
there; the browser opens nothing but a loopback dashboard."""

from __future__ import annotations

import json
import os
import threading
import time
import uuid

import dask
import dask.array as da
import numpy as np
import pytest
import redis
from dask import delayed
from dask.callbacks import Callback
from dask.core import flatten

from dask_serverless import serverless_get
from dask_serverless.adapter import to_dag
from dask_serverless.backends.local import LocalBackend
from dask_serverless.dashboard import launcher
from dask_serverless.errors import DeadlineExceededError
from dask_serverless.layout import build_layout
from dask_serverless.plan import Optimizations
from dask_serverless.planners import get_planner
from dask_serverless.runtime.run import Run
from dask_serverless.storage import run_events, serialize, streams
from dask_serverless.storage.embedded import free_port
from dask_serverless.storage.keys import MetricsKeys, RunKeys
from dask_serverless.storage.serialize import Purpose
from dask_serverless.storage.store import RunStore, connect


def bad_events(run_id: str) -> list[bytes]:
    """Messages a client of ``run_id`` must ignore: unsealed, sealed for another run or
    purpose, malformed however well sealed, oversized."""
    def sealed(data: bytes) -> bytes:
        return serialize.seal(data, Purpose.EVENT, run_id, RunKeys(run_id).events)

    tasks = {"kind": "tasks", "started": [], "worker": "w", "invocation": "i",
             "cold": False, "end": False}
    return [
        b"not json at all",
        b'{"kind": "tasks", "ids": [0]}',  # unsealed, however plausible
        run_events.encode({"kind": "error"}, "another-run"),
        serialize.seal(b'{"kind": "error"}', Purpose.OUTPUT, run_id, RunKeys(run_id).events),
        run_events.encode({**tasks, "ids": [10**9]}, run_id),
        run_events.encode({**tasks, "ids": "0,1"}, run_id),
        run_events.encode({**tasks, "ids": [-1]}, run_id),
        run_events.encode({**tasks, "ids": [True]}, run_id),
        run_events.encode({"kind": "tasks"}, run_id),
        run_events.encode({"kind": "outputs", "ids": [10**9]}, run_id),
        run_events.encode({"kind": "outputs", "ids": "0"}, run_id),
        run_events.encode({"kind": "nonsense"}, run_id),
        run_events.encode(["kind", "error"], run_id),
        sealed(b"[1, 2"),
        sealed(b"x" * (run_events.MAX_EVENT_BYTES + 1)),
    ]


def slow_add(x, y):
    time.sleep(1.0)
    return x + y


class _Flood:
    """Publishes every bad event on every run event channel it sees, until stopped."""

    def __init__(self, url: str):
        self.r = redis.Redis.from_url(url)
        self.stop = threading.Event()
        self.sent = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            for channel in self.r.pubsub_channels("ds:*events"):
                run_id = channel.decode().split("{")[1].split("}")[0]
                for event in bad_events(run_id):
                    self.sent += self.r.publish(channel, event)
            time.sleep(0.01)

    def close(self) -> None:
        self.stop.set()
        self.thread.join()


class _Seen(Callback):
    def __init__(self):
        super().__init__()
        self.keys: list = []

    def _posttask(self, key, result, dsk, state, worker_id):
        self.keys.append(key)


def test_forged_and_malformed_events_are_ignored_and_the_run_completes(real_redis):
    parts = [delayed(slow_add)(i, i, dask_key_name=f"part-{i}") for i in range(3)]
    total = delayed(sum)(parts, dask_key_name="total")
    flood = _Flood(real_redis)
    seen = _Seen()
    try:
        with seen:
            (got,) = dask.compute(total, scheduler=serverless_get)
    finally:
        flood.close()
    assert got == 6
    assert flood.sent > 0  # the client did receive them
    assert sorted(seen.keys) == ["part-0", "part-1", "part-2", "total"]


def test_decode_accepts_only_sealed_bounded_well_formed_events():
    good = {"kind": "tasks", "ids": [0, 2], "started": [1], "worker": "w0",
            "invocation": "abc", "cold": True, "end": False}
    assert run_events.decode(run_events.encode(good, "run"), "run", 3) == good
    extra = run_events.encode({**good, "url": "http://evil.example"}, "run")
    assert run_events.decode(extra, "run", 3) == good  # unknown fields are dropped
    assert run_events.decode(run_events.encode({"kind": "error"}, "run"), "run", 3) == {
        "kind": "error"}
    outputs = {"kind": "outputs", "ids": [2]}  # ids optional: older workers leave them out
    assert run_events.decode(run_events.encode(outputs, "run"), "run", 3) == outputs
    assert run_events.decode(run_events.encode({"kind": "outputs"}, "run"), "run", 3) == {
        "kind": "outputs"}
    for bad in bad_events("run"):
        assert run_events.decode(bad, "run", 3) is None
    assert run_events.decode(None, "run", 3) is None
    with dask.config.set({"serverless.secret": "another-secret-" + "z" * 40}):
        serialize.reset_key()
        try:
            forged = run_events.encode({"kind": "error"}, "run")
        finally:
            serialize.reset_key()
    assert run_events.decode(forged, "run", 3) is None


@pytest.mark.parametrize("planted", [
    b"not json", b"[]", json.dumps({"url": 5}).encode(), json.dumps({"pid": 1}).encode(),
    json.dumps({"url": "http://evil.example:8501"}).encode(),
    json.dumps({"url": "https://127.0.0.1:8501"}).encode(),
    json.dumps({"url": "javascript:alert(1)"}).encode(),
    json.dumps({"url": "http://127.0.0.1:8501/../../x"}).encode(),
    json.dumps({"url": "http://user:pw@127.0.0.1:8501"}).encode(),
    json.dumps({"url": "http://127.0.0.1.evil.example:8501"}).encode(),
    json.dumps({"url": "http://0.0.0.0:8501"}).encode(),
])
def test_a_planted_dashboard_registration_is_ignored(redis_server, planted):
    connect(redis_server).set(MetricsKeys.dashboard, planted)
    try:
        assert launcher.registered(redis_server) is None
    finally:
        connect(redis_server).delete(MetricsKeys.dashboard)


def test_a_loopback_registration_is_used():
    assert launcher.loopback_url(json.dumps({"url": "http://127.0.0.1:8502",
                                             "pid": 1}).encode()) == "http://127.0.0.1:8502"


def test_the_dashboard_child_gets_the_metrics_url_outside_its_command_line(
        tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    started = {}

    class Recorded:  # what launcher.start hands the OS, without starting Streamlit
        def __init__(self, args, **kwargs):
            started.update(args=args, env=kwargs["env"])

    monkeypatch.setattr(launcher.subprocess, "Popen", Recorded)
    url = "redis://:a-metrics-password@127.0.0.1:1/0"
    launcher.start(url, free_port())
    assert not any("a-metrics-password" in arg for arg in started["args"])
    assert started["env"]["DASK_SERVERLESS__METRICS__REDIS_URL"] == url
    log_dir = tmp_path / "state" / "dask-serverless"
    logs = list(log_dir.glob("dashboard-*.log"))
    assert logs and (os.stat(log_dir).st_mode & 0o777) == 0o700
    assert all((os.stat(p).st_mode & 0o777) == 0o600 for p in logs)


# -- stream heads ---------------------------------------------------------------------------
def _bad_heads(store: RunStore, task: int) -> list[bytes]:
    """What may sit under a stream head's key that is not a head of this run's task."""
    real = streams.StreamHead.new("inv-x", 0, "w9", 10**12, 1000)  # a terabyte announced
    other_run = RunStore(store.r, "another-run", 60)
    return [
        b"garbage",
        real.dumps().encode(),  # unsealed
        streams.seal_head(store, task + 1, real),  # replayed from another task
        streams.seal_head(other_run, task, real),  # ... or another run
        serialize.seal(b'{"token": "t"}', Purpose.STREAM_HEAD, store.keys.run_id,
                       store.keys.stream(task)),  # sealed, fields missing
        serialize.seal(json.dumps({"token": "t", "invocation": "i", "attempt": 0,
                                   "worker": "w", "nbytes": 10, "chunks": 11}).encode(),
                       Purpose.STREAM_HEAD, store.keys.run_id, store.keys.stream(task)),
    ]


def test_a_bad_stream_head_is_ignored_and_the_stream_completes(any_redis):
    for i, bad in enumerate(_bad_heads(RunStore(connect(any_redis), "probe", 60), 7)):
        store = RunStore(connect(any_redis), f"h{uuid.uuid4().hex[:8]}", ttl=60)
        bad = _bad_heads(store, 7)[i]
        store.r.set(store.keys.stream(7), bad, ex=60)  # there before the producer
        assert streams.open_head(store, 7, bad) is None
        assert streams.unfinished(store, [7]) == []
        got: list = []
        reader = threading.Thread(target=lambda s=store, out=got: out.append(
            streams.read(s, 7, "input 't7'", time.time() + 20)[0]))
        reader.start()  # waits: what it finds is not a head
        data = store.encode_output(7, np.arange(2000))
        head = streams.StreamHead.new("inv-a", 0, "w0", data.nbytes, 1000)
        assert streams.announce(store, 7, head, []) == (True, [])  # takes its place
        streams.write(store, 7, head, data, 1000, final=True)
        reader.join()
        assert store.decode_output(7, got[0]).tolist() == list(range(2000))
        store.cleanup([7], [], [7])


def test_a_reader_facing_only_a_bad_head_stops_at_the_deadline(any_redis):
    store = RunStore(connect(any_redis), f"h{uuid.uuid4().hex[:8]}", ttl=60)
    store.r.set(store.keys.stream(7), _bad_heads(store, 7)[0], ex=60)
    with pytest.raises(DeadlineExceededError, match="no valid stream head"):
        streams.read(store, 7, "input 't7'", time.time() + 0.5)
    store.cleanup([7], [], [7])


class _HeadPlanter:
    """Sets a garbage head under every stream key of every run it sees, before the
    producers announce (``SET NX``), until stopped."""

    def __init__(self, url: str, tasks: int):
        self.r = redis.Redis.from_url(url)
        self.tasks, self.planted = tasks, 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            for key in self.r.scan_iter(match="ds:*:dag"):
                keys = RunKeys(key.decode().split("{")[1].split("}")[0])
                for t in range(self.tasks):
                    self.planted += bool(self.r.set(keys.stream(t), b"garbage", nx=True,
                                                    ex=60))
            time.sleep(0.001)

    def close(self) -> None:
        self.stop.set()
        self.thread.join()


class _HeadsSeen(Run):
    """A run that notes its stream heads (valid ones) before its keys are deleted."""

    heads: dict[int, streams.StreamHead | None] = {}

    def _cleanup(self) -> None:
        k = self.store.keys
        self.heads = {t: streams.open_head(self.store, t, self.store.r.get(k.stream(t)))
                      for t in self.plan.optimizations.stream
                      if self.store.r.exists(k.stream(t))}
        super()._cleanup()


def test_planted_stream_heads_are_replaced_and_the_run_completes(real_redis):
    x = da.random.RandomState(3).random_sample((800, 800), chunks=400)  # 1.3 MB chunks
    y = ((x + x.T) * 2).sum(axis=0)
    graph, keys = dict(y.__dask_graph__()), list(flatten(y.__dask_keys__()))
    dag = to_dag(graph, keys)
    plan = get_planner("per-task").plan(dag, parallelism=4, memory_mb=1024)
    layout = build_layout(dag, plan)
    plan.optimizations = Optimizations(
        stream={t: 2**18 for t in range(len(dag)) if layout.upload[t]})
    backend = LocalBackend(max_containers=4, keep_alive=60)
    planter = _HeadPlanter(real_redis, tasks=len(dag))
    try:
        run = _HeadsSeen(dag, plan, backend, real_redis)
        got = run.execute()
    finally:
        planter.close()
        backend.close()
    for g, want in zip(got, dask.get(graph, keys), strict=True):
        np.testing.assert_allclose(g, want)
    assert planter.planted > 0
    streamed = {t: h for t, h in run.heads.items() if h is not None}
    assert streamed  # producers replaced planted heads with their own and streamed
