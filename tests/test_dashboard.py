"""Dashboards over metrics of real runs (real subprocess workers, real redis-server and
fakeredis): every page through Streamlit's AppTest, the static report, the plan record
that rebuilds a run's DAG, task log lines, and the live feed of a running workflow."""

from __future__ import annotations

import base64
import json
import logging
import statistics
import threading
import time
from pathlib import Path

import dask
import numpy as np
import pytest
from dask import delayed

pytest.importorskip("streamlit")
pytest.importorskip("plotly")

from streamlit.testing.v1 import AppTest

from dask_serverless import cli, serverless_get
from dask_serverless.dashboard.comparison import combination
from dask_serverless.dashboard.history import load_run
from dask_serverless.metrics.plans import recorded_dag
from dask_serverless.metrics.predictor import Predictor
from dask_serverless.metrics.store import MetricsStore
from dask_serverless.planners import PLANNERS
from dask_serverless.runtime import get as get_mod
from dask_serverless.simulator import simulate
from dask_serverless.storage.embedded import free_port
from dask_serverless.storage.keys import MetricsKeys

VIEWS = Path(__file__).parent.parent / "dask_serverless" / "dashboard" / "views"
log = logging.getLogger("dashboard-test.task")


def load(n):
    log.info("loading %d bytes", n)
    time.sleep(0.01)
    return b"x" * n


def grow(data):
    log.warning("growing %d bytes", len(data))
    return data + data


def combine(*parts):
    return sum(len(p) for p in parts)


SIZES = (1000, 2000, 3000, 4000)


def workflow():
    return delayed(combine)(*[delayed(grow)(delayed(load)(n)) for n in SIZES])


# planner, passes: three combinations, two runs each
PLANS = [("wukong", []), ("per-task", []), ("wukong", ["task-dup", "pre-warm"])]


@pytest.fixture(scope="module", params=["redis-server", "fakeredis"])
def recorded(request):
    """Six real runs of one workflow (three planner combinations) recorded in a real
    redis-server or a fakeredis server: yields (url, run ids oldest first)."""
    server = request.getfixturevalue("redis_server" if request.param == "redis-server"
                                     else "fake_redis_server")
    url = server.rsplit("/", 1)[0] + "/3"  # a database of its own: other tests flush 0
    MetricsStore.from_url(url).r.flushdb()
    ids = []
    with dask.config.set({"serverless.redis-url": url}):
        for planner, passes in PLANS:
            for _ in range(2):
                (total,) = dask.compute(workflow(), scheduler=serverless_get, planner=planner,
                                        optimizations=passes)
                assert total == 2 * sum(SIZES)
                ids.append(get_mod.last_run.run_id)
        yield url, ids


def app(page: str, url: str, **query: str) -> AppTest:
    at = AppTest.from_file(str(VIEWS / page), default_timeout=90)
    for k, v in query.items():
        at.query_params[k] = v
    with dask.config.set({"serverless.metrics.redis-url": url}):
        at.run()
    assert not at.exception, at.exception
    return at


def charts(at: AppTest) -> list:
    return at.get("plotly_chart")


def chart_json(element) -> dict:
    return json.loads(element.proto.spec)


def values(data) -> list:
    """A Plotly array from a chart's JSON (plain list, or base64 typed array)."""
    if isinstance(data, dict) and "bdata" in data:
        return np.frombuffer(base64.b64decode(data["bdata"]), dtype=data["dtype"]).tolist()
    return list(data)


# -- what the runs recorded ---------------------------------------------------------------
def test_plan_record_rebuilds_the_dag_the_simulator_sees(any_redis):
    dask.compute(workflow(), scheduler=serverless_get, planner="uniform")
    original = get_mod.last_run
    again = load_run(MetricsStore.from_url(any_redis), original.run_id)
    dag = recorded_dag(again.tasks, again.plan)
    assert [t.func_name for t in dag.tasks] == [t.func_name for t in original.dag.tasks]
    assert [t.deps for t in dag.tasks] == [t.deps for t in original.dag.tasks]
    assert dag.outputs == original.dag.outputs
    assert again.plan.plan.assignment == original.plan.assignment
    assert again.plan.capacity == original.backend.capacity()
    predictor = Predictor.from_records([again.record], again.tasks, again.invocations)
    # equal but for spec loads: a slice's bytes are estimated from its tasks' runnable
    # nodes (protocol.slices.SliceSizes), which the record does not keep
    assert simulate(dag, again.plan.plan, predictor).makespan == pytest.approx(
        simulate(original.dag, original.plan, predictor).makespan, rel=1e-3)


def test_task_log_lines_are_recorded_per_task(recorded):
    url, ids = recorded
    run = load_run(MetricsStore.from_url(url), ids[0])
    by_function = {}
    for tid, lines in run.logs.items():
        by_function.setdefault(run.task_by_id[tid].function, []).extend(lines)
    assert sorted(m for _, _, _, m in by_function["load"]) == sorted(
        f"loading {n} bytes" for n in SIZES)
    assert {lvl for _, lvl, _, _ in by_function["grow"]} == {"WARNING"}
    assert "combine" not in by_function
    assert all(name == "dashboard-test.task" for _, _, name, _ in by_function["load"])


def test_task_logs_off_records_none(real_redis):
    with dask.config.set({"serverless.metrics.task-logs": None}):
        dask.compute(workflow(), scheduler=serverless_get)
    run = load_run(MetricsStore.from_url(real_redis), get_mod.last_run.run_id)
    assert run.logs == {} and len(run.tasks) == 9


def test_bad_task_log_level_is_named(real_redis):
    with dask.config.set({"serverless.metrics.task-logs": "LOUD"}), \
            pytest.raises(ValueError, match=r"serverless\.metrics\.task-logs"):
        dask.compute(workflow(), scheduler=serverless_get)


# -- pages -----------------------------------------------------------------------------------
def test_workflow_page_shows_a_run_planned_vs_actual(recorded):
    url, ids = recorded
    store = MetricsStore.from_url(url)
    run = load_run(store, ids[1])
    at = app("workflow.py", url, run=ids[1])
    assert at.selectbox[1].value == ids[1]
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["makespan"] == f"{run.record.makespan:.3f} s"
    assert metrics["tasks"] == "9"
    gantt, pie, edges, dag = (chart_json(c) for c in charts(at))
    # Gantt: planned (simulator) and actual rows; every task appears in the actual one
    actual_bars = [b for b in gantt["data"] if b.get("yaxis") == "y2" and b["type"] == "bar"
                   and "start" not in b["name"]]
    assert sum(len(values(b["base"])) for b in actual_bars) == 9
    assert {b["name"] for b in actual_bars} == {"load", "grow", "combine"}
    # the pie's exec part is the sum of recorded execution times
    parts = dict(zip(pie["data"][0]["labels"], values(pie["data"][0]["values"]), strict=True))
    assert parts["exec"] == pytest.approx(sum(t.exec_s for t in run.tasks))
    # data per edge: 8 edges, sizes as recorded
    assert sum(len(values(tr["x"])) for tr in edges["data"]) == 8
    # the DAG: one point per task, coloured by worker
    points = [tr for tr in dag["data"] if tr["mode"] == "markers"]
    assert sum(len(values(tr["customdata"])) for tr in points) == 9
    assert {tr["name"] for tr in points} == {t.worker_id for t in run.tasks}
    # picking a task shows its details and log lines
    load_task = next(t for t in run.tasks if t.function == "load")
    at.selectbox(key="task").set_value(load_task.task_id).run()
    assert not at.exception
    details = json.loads(at.json[0].proto.body)
    assert details["key"] == load_task.key and details["worker"] == load_task.worker_id
    assert details["resource config"] == f"{load_task.memory_mb} MB"
    (line,) = run.logs[load_task.task_id]
    assert line[3].startswith("loading ") and line[3] in at.code[0].value


def test_planners_page_compares_combinations(recorded):
    url, ids = recorded
    store = MetricsStore.from_url(url)
    at = app("planners.py", url)
    summary = at.dataframe[0].value
    combos = sorted(summary["combination"])
    assert len(combos) == 3 and combos[0] == "per-task"
    assert combos[2].startswith("wukong + ") and "pre-warm, task-dup" in combos[2]
    assert set(summary["runs"]) == {2}
    records = store.runs(ids)
    for combo in summary["combination"]:
        actual = [r.makespan for r in records if combination(r) == combo]
        row = summary[summary["combination"] == combo].iloc[0]
        assert row["actual makespan median"] == pytest.approx(statistics.median(actual))
        assert row["predicted makespan median"] > 0
    assert len(charts(at)) == 2


def test_predictions_page_scores_every_kind(recorded):
    url, ids = recorded
    at = app("predictions.py", url)
    over_time = chart_json(charts(at)[0])
    kinds = {tr["name"] for tr in over_time["data"]}
    assert {"exec", "output", "warm start"} <= kinds
    assert all(len(values(tr["x"])) <= len(ids) - 1 for tr in over_time["data"])
    worst = at.dataframe[1].value
    assert set(worst["function"]) == {"load", "grow", "combine"}


def test_simulator_page_plans_every_planner_without_running(recorded):
    url, _ = recorded
    store = MetricsStore.from_url(url)
    before = store.run_ids()
    at = app("simulator.py", url)
    table = at.dataframe[0].value
    assert sorted(set(table["planner"])) == sorted(PLANNERS)
    assert len(table) == 2 * len(PLANNERS)
    assert (table["predicted_makespan"] > 0).all() and (table["predicted_cost"] > 0).all()
    assert store.run_ids() == before  # nothing was executed
    at.multiselect[0].set_value(["per-task"]).run()
    assert list(at.dataframe[0].value["planner"]) == ["per-task", "per-task"]


def test_realtime_page_without_runs_says_how_to_start_one(fake_redis_server):
    MetricsStore.from_url(fake_redis_server).r.flushdb()
    at = app("realtime.py", fake_redis_server)
    assert "serverless_dashboard=True" in at.info[0].value


def slow(i):
    time.sleep(0.4)
    return i


def total(*xs):
    return sum(xs)


def test_realtime_page_follows_a_running_workflow(real_redis):
    """A compute with ``serverless_dashboard=True`` streams its progress; the page,
    opened while it runs, follows it to the end over pub/sub."""
    from dask_serverless.dashboard import launcher

    MetricsStore.from_url(real_redis).r.flushdb()
    graph = delayed(total)(*[delayed(slow)(i) for i in range(8)])
    result = {}

    def compute():
        result["value"] = dask.compute(graph, scheduler=serverless_get, parallelism=2,
                                       serverless_dashboard=True)

    store = MetricsStore.from_url(real_redis)
    with dask.config.set({"serverless.dashboard.open-browser": False,
                          "serverless.dashboard.port": free_port()}):
        worker = threading.Thread(target=compute)
        worker.start()
        deadline = time.monotonic() + 30
        while not store.r.zrange(MetricsKeys.live_runs, 0, -1):
            assert time.monotonic() < deadline, "the run was never announced"
            time.sleep(0.05)
        at = app("realtime.py", real_redis)
        worker.join(60)
    assert result["value"] == (sum(range(8)),)
    run_id = get_mod.last_run.run_id
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["status"] == "ok"
    assert metrics["tasks finished"] == "9 / 9"
    dag = chart_json(charts(at)[-1])
    finished = next(tr for tr in dag["data"] if tr.get("name") == "finished")
    assert len(values(finished["customdata"])) == 9
    # the feed: workers reported starts and ends, the client the run's end
    events = [json.loads(e) for e in store.r.lrange(MetricsKeys.live_log(run_id), 0, -1)]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    started = {t for e in events if e["kind"] == "tasks" for t in e["started"]}
    assert started == set(range(9))
    assert events[0]["kind"] == "start" and events[-1]["kind"] == "finished"
    # and a dashboard process was started over the same metrics Redis
    url = launcher.registered(real_redis) or launcher._known[real_redis]
    assert launcher.wait_healthy(url, 60)
    launcher._stop_children()
    launcher._known.clear()


def test_dashboard_flag_without_metrics_is_a_warning_not_a_feed(real_redis, caplog):
    with dask.config.set({"serverless.dashboard.enabled": True,
                          "serverless.metrics.enabled": False}):
        (value,) = dask.compute(workflow(), scheduler=serverless_get)
    assert value == 2 * sum(SIZES)
    assert get_mod.last_run.live is None
    assert "serverless.dashboard.enabled needs serverless.metrics.enabled" in caplog.text


def test_bad_dashboard_config_is_named(real_redis):
    with dask.config.set({"serverless.dashboard.port": "80a"}), \
            pytest.raises(ValueError, match=r"serverless\.dashboard\.port"):
        dask.compute(workflow(), scheduler=serverless_get)


def broken(x):
    raise ValueError(f"bad chunk {x}")


def test_workflow_page_shows_a_failed_run(real_redis):
    graph = delayed(combine)(*[delayed(broken)(1), delayed(load)(10)])
    with pytest.raises(ValueError, match="bad chunk 1"):
        dask.compute(graph, scheduler=serverless_get)
    run_id = get_mod.last_run.run_id
    record = MetricsStore.from_url(real_redis).run(run_id)
    assert record.status == "failed"
    at = app("workflow.py", real_redis, run=run_id)
    assert "status failed" in at.caption[0].value
    assert any("cannot be drawn" in c.value for c in at.caption)
    assert len(charts(at)) >= 2  # the Gantt and where the time went


def test_default_compute_streams_nothing(real_redis):
    store = MetricsStore.from_url(real_redis)
    store.r.flushdb()
    dask.compute(workflow(), scheduler=serverless_get)
    assert get_mod.last_run.live is None
    assert store.r.keys("*live*") == []


# -- static report ---------------------------------------------------------------------------
def test_report_cli_writes_self_contained_html(recorded, tmp_path, capsys):
    url, ids = recorded
    run = load_run(MetricsStore.from_url(url), ids[0])
    out = tmp_path / "report.html"
    assert cli.main(["report", ids[0][:8], "-o", str(out), "--redis-url", url]) == 0
    page = out.read_text()
    assert page.count('class="plotly-graph-div"') >= 6
    assert "<script src=" not in page  # plotly.js is inlined
    assert run.run_id in page and "loading 1000 bytes" in page
    for t in run.tasks:
        assert t.key.replace("'", "&#x27;") in page
    assert cli.main(["report", "nosuchrun", "-o", str(out), "--redis-url", url]) == 2
    assert "no recorded run" in capsys.readouterr().err
