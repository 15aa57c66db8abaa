"""Recorded metrics of real runs (real subprocess workers, real redis-server and fakeredis):
complete, consistent with each other and with the real sizes of the data."""

from __future__ import annotations

import time

import dask
import pandas as pd
import pytest
from dask import delayed
from dask.sizeof import sizeof

import dask_serverless
from dask_serverless import cli, serverless_get
from dask_serverless.metrics import MetricsStore
from dask_serverless.metrics.predictor import Predictor
from dask_serverless.metrics.reader import MetricsReader
from dask_serverless.plan import ResourceConfig
from dask_serverless.runtime import get as get_mod
from dask_serverless.storage import serialize

SIZES = [1000, 2000, 3000, 4000]
SLEEP = {"load": 0.02, "grow": 0.03, "combine": 0.02}


def load(n):
    time.sleep(SLEEP["load"])
    return b"x" * n


@dask_serverless.hints(io="linear")
def grow(data):
    time.sleep(SLEEP["grow"])
    return data + data


def combine(*parts):
    time.sleep(SLEEP["combine"])
    return sum(len(p) for p in parts)


def workflow():
    grown = [delayed(grow)(delayed(load)(n)) for n in SIZES]
    return delayed(combine)(*grown)


def expected_bytes(value, uploaded: bool) -> int:
    """What crossed to Redis (sealed pickle) when uploaded, else dask's sizeof."""
    if not uploaded:
        return sizeof(value)
    return serialize.encode(value, serialize.Purpose.OUTPUT, "run", "ds:{run}:o:0").nbytes


def run_once():
    (total,) = dask.compute(workflow(), scheduler=serverless_get)
    assert total == 2 * sum(SIZES)
    return get_mod.last_run


def test_three_runs_record_complete_consistent_metrics(any_redis):
    runs = [run_once() for _ in range(3)]
    store = MetricsStore.from_url(any_redis)
    signatures = set()
    for run in runs:
        rec = store.run(run.run_id)
        assert rec is not None and rec == run.record
        assert rec.status == "ok" and rec.complete and rec.tasks == 9
        signatures.add(rec.signature)
        invocations = store.invocations(run.run_id)
        tasks = store.tasks(run.run_id)
        _check_run(rec, invocations, tasks)
    assert len(signatures) == 1  # same program -> same workflow signature
    assert store.run_ids(signature=signatures.pop())[:3] == [r.run_id for r in runs[::-1]]


def _check_run(rec, invocations, tasks):
    assert sorted(t.task_id for t in tasks) == list(range(9))
    by_id = {t.task_id: t for t in tasks}
    # invocations: totals of the run record add up
    assert rec.invocations == len(invocations) == rec.cold_starts + rec.warm_starts
    assert rec.cold_starts == sum(i.cold for i in invocations)
    assert rec.workers == len({i.worker_id for i in invocations})
    assert sum(i.tasks for i in invocations) == 9
    ids = {i.invocation_id for i in invocations}
    assert {c for i in invocations for c in i.invoked} <= ids  # every child reported
    assert rec.upload_bytes == sum(t.upload_bytes for t in tasks)
    assert rec.download_bytes == sum(t.download_bytes for t in tasks)
    assert rec.inline_bytes == sum(i.nbytes for t in tasks for i in t.inputs
                                   if i.source == "inline")
    gbs = sum(i.memory_mb / 1024 * (i.end_time - i.start_time) for i in invocations)
    assert rec.gb_seconds == pytest.approx(gbs)
    assert rec.cost_usd == pytest.approx(gbs * 0.0000166667 + len(invocations) * 0.2e-6)
    # times: inside the run, inside their invocation, and adding up
    end_of_run = rec.submit_time + rec.makespan
    for inv in invocations:
        assert rec.submit_time <= inv.invoke_time <= inv.start_time <= inv.end_time
        mine = [t for t in tasks if t.invocation_id == inv.invocation_id]
        assert len(mine) == inv.tasks
        busy = sum(t.exec_s + t.download_s + t.upload_s + t.fanin_s for t in mine)
        assert busy + inv.spec_fetch_s <= inv.end_time - inv.start_time
        for t in mine:
            assert inv.start_time <= t.start <= t.end <= inv.end_time
            assert t.worker_id == inv.worker_id and t.memory_mb == inv.memory_mb
    for t in tasks:
        assert t.exec_s >= SLEEP[t.function]  # the sleeps ran inside exec
        assert t.exec_s <= t.end - t.start
    sink = max(tasks, key=lambda t: t.task_id if t.function == "combine" else -1)
    assert sink.function == "combine" and sink.end <= end_of_run
    for d in sink.inputs:  # each load -> grow -> combine chain fits in the makespan
        grown = by_id[d.dep]
        chain = by_id[grown.inputs[0].dep].exec_s + grown.exec_s + sink.exec_s
        assert chain <= rec.makespan
    # bytes: the real sizes, and every input as big as what its producer made
    for t in tasks:
        for i in t.inputs:
            producer = by_id[i.dep]
            assert i.nbytes == producer.output_bytes
            assert (i.download_s > 0) == (i.source == "redis")
        if t.function == "combine":
            assert t.output_bytes == expected_bytes(2 * sum(SIZES), True)
            assert t.upload_bytes == t.output_bytes
    made = {"load": [b"x" * n for n in SIZES], "grow": [b"x" * (2 * n) for n in SIZES]}
    for function, values in made.items():
        mine = [t for t in tasks if t.function == function]
        sizes = {t.output_bytes for t in mine}
        assert len(sizes) == len(SIZES)  # one task per value, each its own exact size
        for t in mine:
            assert t.output_bytes in {expected_bytes(v, t.upload_bytes > 0) for v in values}
            assert t.upload_bytes in (0, t.output_bytes)

class SlowPickle:
    """Takes SEAL_S to pickle and to unpickle: a stand-in for a big object."""

    def __reduce__(self):
        time.sleep(SEAL_S)
        return (_slow_unpickle, ())


SEAL_S = 0.15


def _slow_unpickle():
    time.sleep(SEAL_S)
    return "unpickled"


def make_slow(i):
    return SlowPickle()


def join_slow(*xs):
    return len(xs)


def test_upload_and_download_times_include_pickling(any_redis):
    """A transfer is only done once the value is pickled (and sealed) or unpickled: the
    times the predictor learns from must include that, not just the Redis round trip."""
    (n,) = dask.compute(delayed(join_slow)(*[delayed(make_slow)(i) for i in range(2)]),
                        scheduler=serverless_get)
    assert n == 2
    tasks = MetricsStore.from_url(any_redis).tasks(get_mod.last_run.record.run_id)
    made = [t for t in tasks if t.function == "make_slow"]
    joined = [t for t in tasks if t.function == "join_slow"]
    uploaded = [t for t in made if t.upload_bytes]
    assert uploaded, "a make_slow output on the other worker must cross Redis"
    assert all(t.upload_s >= SEAL_S for t in uploaded)
    assert sum(i.download_s for t in joined for i in t.inputs
               if i.source == "redis") >= SEAL_S * 0.99


def test_reader_dataframes_export_and_cli(any_redis, tmp_path, capsys):
    run = run_once()
    reader = MetricsReader(MetricsStore.from_url(any_redis))
    runs = reader.runs()
    assert run.run_id in set(runs["run_id"])
    tasks = reader.tasks([run.run_id])
    assert len(tasks) == 9 and set(tasks["function"]) == {"load", "grow", "combine"}
    inputs = reader.inputs([run.run_id])
    assert len(inputs) == 8 and set(inputs["source"]) <= {"redis", "inline", "local"}
    inv = reader.invocations([run.run_id])
    assert inv["tasks"].sum() == 9 and (inv["startup_s"] >= 0).all()

    for fmt in ("parquet", "csv"):
        out = tmp_path / fmt
        assert cli.main(["metrics", "export", "--format", fmt, "-o", str(out),
                         "--limit", "1"]) == 0
        read = pd.read_parquet if fmt == "parquet" else pd.read_csv
        assert len(read(out / f"tasks.{fmt}")) == 9
        assert list(read(out / f"runs.{fmt}")["run_id"]) == [run.run_id]
    capsys.readouterr()

    assert cli.main(["runs", "--limit", "5"]) == 0
    listing = capsys.readouterr().out
    assert run.run_id in listing and "makespan" in listing
    assert cli.main(["show", run.run_id[:8]]) == 0
    shown = capsys.readouterr().out
    for part in ("exec", "download", "upload", "start cold", "start warm", "waiting"):
        assert part in shown
    assert f"run {run.run_id}" in shown
    assert cli.main(["show", "no-such-run"]) == 2
    assert "no recorded run" in capsys.readouterr().err


def test_predictor_from_store_learns_the_workflow(any_redis):
    runs = [run_once() for _ in range(3)]
    sig = runs[0].record.signature
    dag = runs[0].dag
    p = Predictor.from_store(MetricsStore.from_url(any_redis), signature=sig, limit=3, dag=dag)
    assert p.functions() == ["combine", "grow", "load"]
    store = MetricsStore.from_url(any_redis)
    grows = sorted(t.exec_s for r in runs for t in store.tasks(r.run_id) if t.function == "grow")
    assert len(grows) == 12
    grow_time = p.exec_time("grow", 4000, ResourceConfig(1024))
    assert 6 <= grow_time.samples <= 12  # the MAD filter may drop a jittery sleep or two
    assert grows[0] <= grow_time <= grows[-1]
    out = p.output_bytes("grow", sizeof(b"x" * 4000))
    assert out == pytest.approx(sizeof(b"x" * 8000), rel=0.01) and out.samples == 12
    for state, seen in (("cold", sum(r.record.cold_starts for r in runs)),
                        ("warm", sum(r.record.warm_starts for r in runs))):
        start = p.predict_worker_invocation_time(ResourceConfig(1024), state)
        assert start.samples <= seen and (start.samples > 0) == (seen > 0)
        assert start.source == ("fit" if seen else "default")
    assert p._hints["grow"] == {"io": 1.0}  # the @hints decorator reached the predictor


def test_metrics_can_be_switched_off(any_redis):
    before = MetricsStore.from_url(any_redis).run_ids()
    with dask.config.set({"serverless.metrics.enabled": False}):
        run = run_once()
    assert run.record is None
    assert MetricsStore.from_url(any_redis).run_ids() == before


def test_failed_run_is_recorded_as_failed(any_redis):
    def boom(x):
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        dask.compute(delayed(boom)(delayed(load)(10)), scheduler=serverless_get)
    rec = get_mod.last_run.record
    assert rec is not None and rec.status == "failed"
    stored = MetricsStore.from_url(any_redis).run(rec.run_id)
    assert stored.status == "failed" and stored.invocations >= 1


@pytest.mark.parametrize("key, value, message", [
    ("metrics.percentile", 150, "between 0 and 100"),
    ("metrics.half-life", 0, "positive number"),
    ("metrics.min-samples", 1.5, "positive integer"),
    ("metrics.prices.gb-second", -1, ">= 0"),
    ("metrics.redis-url", "http://x", "must start with redis://"),
])
def test_bad_metrics_config_fails_before_any_work(real_redis, key, value, message):
    from dask_serverless.config import ConfigError

    with dask.config.set({f"serverless.{key}": value}), \
            pytest.raises(ConfigError, match=f"serverless.{key}.*{message}"):
        dask.compute(workflow(), scheduler=serverless_get)


def test_bad_hints_name_the_problem():
    from dask_serverless.plan import PlanError

    with pytest.raises(ValueError, match="io='cubic'"):
        dask_serverless.hints(io="cubic")
    with pytest.raises(PlanError, match="memory_mb=99"):
        dask_serverless.hints(memory=99)
    wrapped = dask_serverless.hints(io="constant")(len)  # builtins get a wrapper
    assert wrapped([1, 2]) == 2 and wrapped.__name__ == "len"


def test_predictor_drives_the_plan_simulator(any_redis):
    """The Predictor is the planners' CostModel: the simulator runs on learned history."""
    from dask_serverless.costmodel import CostModel
    from dask_serverless.simulator import simulate

    runs = [run_once() for _ in range(3)]
    p = Predictor.from_store(MetricsStore.from_url(any_redis),
                             signature=runs[-1].record.signature, limit=3)
    assert isinstance(p, CostModel)
    assert (p.price_gb_s, p.price_request) == pytest.approx((0.0000166667, 0.2e-6))
    sim = simulate(runs[-1].dag, runs[-1].plan, p)
    chain = SLEEP["load"] + SLEEP["grow"] + SLEEP["combine"]
    assert sim.makespan >= chain  # the learned exec times include the sleeps
    assert sim.invocations and sim.cost > 0


@dask_serverless.hints(size=lambda i, n: n)
def blob(i, n):
    return bytes(n)


def lengths(*parts):
    return sum(len(p) for p in parts)


def sized_run(n: int):
    (total,) = dask.compute(delayed(lengths)(*[delayed(blob)(i, n) for i in range(2)]),
                            scheduler=serverless_get)
    assert total == 2 * n
    return get_mod.last_run


def test_runs_at_two_sizes_predict_a_third_sizes_root_output(any_redis):
    """The size hint is recorded with each root and lets the predictor (and the planner's
    estimates, before the run) follow the data size of a run it never saw."""
    from dask_serverless.estimates import Estimates

    store = MetricsStore.from_url(any_redis)
    seen = [sized_run(n) for n in (20_000, 40_000)]
    assert seen[0].record.signature == seen[1].record.signature
    for run, n in zip(seen, (20_000, 40_000), strict=True):
        tasks = store.tasks(run.run_id)
        assert sorted(t.size for t in tasks if t.function == "blob") == [n, n]
        assert all(t.size == 0 for t in tasks if t.inputs)
    p = Predictor.from_store(store, run_ids=[r.run_id for r in seen])
    new = 160_000
    predicted = p.output_bytes("blob", 0, size=new)
    planned = Estimates(sized_run(new).dag, p)  # the DAG a plan for this size would see
    actual = [t.output_bytes for t in store.tasks(get_mod.last_run.run_id)
              if t.function == "blob"]
    assert len(actual) == 2 and predicted.source == "fit"
    for a in actual:
        assert predicted == pytest.approx(a, rel=0.05)
    roots = [t.id for t in planned.dag.tasks if t.func_name == "blob"]
    assert [planned.out_bytes[t] for t in roots] == [int(predicted)] * 2
    # what the same history predicts without the size: the sizes seen, not the new one
    assert p.output_bytes("blob", 0) < 0.5 * min(actual)


def test_a_large_invocation_keeps_its_task_rows_encoded_and_writes_them_all(real_redis):
    """Rows past ``ENCODE_ROWS`` are kept as JSON text; rows of outputs waiting in a
    client batch stay open until the batch is written, then carry its upload."""
    import redis

    from dask_serverless.dag import TaskNode
    from dask_serverless.metrics.recorder import ENCODE_ROWS, InvocationRecorder
    from dask_serverless.protocol.wire import Invocation

    n = 3 * ENCODE_ROWS + 10
    inv = Invocation("rows-run", "w0", 1024, real_redis, [0])
    rec = InvocationRecorder(inv, False, time.time())
    later = {5, ENCODE_ROWS + 7, n - 1}
    for i in range(n):
        task = TaskNode(i, ("t", i), None, "f", (i - 1,) if i else ())
        rec.output(i, 10)
        rec.task(task, rec.t0, 0.0, rec.t0 + 1e-3, i in later)
    assert rec.tasks == n and len(rec.encoded) >= 2 and len(rec.rows) < ENCODE_ROWS + 3
    rec.batch_uploaded([(t, 100 + t) for t in sorted(later)], 0.01)
    client = redis.Redis.from_url(real_redis)
    rec.flush(client, rec.record(rec.t0, rec.t0 + 1, 0.0, False, spec_bytes=123))
    rows = MetricsStore(client).tasks("rows-run")
    assert sorted(t.task_id for t in rows) == list(range(n))
    assert {t.task_id: t.upload_bytes for t in rows if t.upload_bytes} == \
        {t: 100 + t for t in later}
    assert all(t.inputs[0].dep == t.task_id - 1 for t in rows if t.task_id)
    (record,) = MetricsStore(client).invocations("rows-run")
    assert record.tasks == n and record.spec_bytes == 123
    client.delete(*client.keys("dsm:{rows-run}:*"))
