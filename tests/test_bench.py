"""The benchmark machinery on tiny workloads: real schedulers, real serverless runs."""

from __future__ import annotations

import csv

import dask
import numpy as np
import pandas as pd
import pytest

from dask_serverless.bench.compare import same_result
from dask_serverless.bench.runner import BenchOptions, Sample, run_bench
from dask_serverless.bench.schedulers import Scheduler, serverless_variants
from dask_serverless.bench.summary import BASELINE, summarise, targets
from dask_serverless.bench.timing import reference_run
from dask_serverless.bench.workloads import WORKLOADS, build
from dask_serverless.cli import main as cli_main

TINY = {"tree-1k": {"leaves": "40"},
        "fanout": {"width": "3", "stages": "1", "sleep_s": "0.01", "out_bytes": "2000"}}


def test_run_bench_records_serverless_figures(any_redis, redis_server):
    options = BenchOptions(["tree-1k", "fanout"], quick=True, repeat=2, warmup=1,
                           dask_schedulers=["sync", "threads"], planners=["wukong"],
                           passes=[], params=TINY)
    result = run_bench(options)
    assert len(result.samples) == 2 * 3 * 2  # workloads x schedulers x repeat
    assert {s.scheduler for s in result.samples} == {"dask sync", "dask threads",
                                                    "serverless:wukong"}
    for s in result.samples:
        assert s.error is None, s
        assert s.makespan_s > 0 and s.overhead_ms_per_task >= 0
        assert s.tasks == result.workloads[s.workload].n_tasks
    tree = result.bounds["tree-1k"]
    assert 0 < tree.critical_path_s < tree.work_s  # 79 tasks, the path is 7 of them
    for s in (s for s in result.samples if s.scheduler.startswith("serverless")):
        assert s.invocations >= 1 and s.plan_workers >= 1
        assert 0 < s.run_makespan_s <= s.makespan_s
        assert s.workers == s.plan_workers
        # from the run's metrics record and the plan simulator
        assert s.cost_usd > 0 and s.gb_seconds > 0 and s.bytes_moved >= 0
        assert s.predicted_s > 0 and s.prediction_model in ("history", "default")
        if any_redis == redis_server:
            assert s.redis_net_bytes > 0
        else:  # fakeredis keeps no network counters
            assert s.redis_net_bytes is None
    rows = summarise(result)
    assert len(rows) == 6 and all(r.runs == 2 for r in rows)


def test_wrong_result_is_reported_not_timed():
    workload = build("tree-1k", True, leaves=8)
    root = workload.keys[0]

    def off_by_one(graph, keys):  # a scheduler with a bug: the root's value is wrong
        return dask.get({**graph, "bad": (lambda x: x + 1, root)}, ["bad"])

    from dask_serverless.bench.runner import _timed

    expected, bounds, _dag = reference_run(workload)
    failed: dict[str, str] = {}
    sample = _timed(Scheduler("buggy", off_by_one, 1), workload, expected, bounds, 0, failed)
    assert sample.makespan_s is None and sample.error == "wrong result"
    assert failed == {"buggy": "wrong result"}


def test_cli_bench_writes_csv_markdown_and_plots(real_redis, tmp_path, capsys):
    out = tmp_path / "results"
    code = cli_main(["bench", "--quick", "--workloads", "tree-1k", "--param",
                     "tree-1k.leaves=30", "--schedulers", "sync", "localcluster",
                     "--planners", "wukong", "--passes", "--repeat", "2", "--warmup", "1",
                     "--out", str(out), "--readme-table", "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert printed.startswith("Measured on ")
    assert "Command: `dask-serverless bench --quick --workloads tree-1k" in printed
    tasks = build("tree-1k", True, leaves=30).n_tasks
    assert f"| tree-1k | {BASELINE} | {tasks} |" in printed
    assert f"| tree-1k | serverless:wukong | {tasks} |" in printed
    with (out / "samples.csv").open() as f:
        samples = list(csv.DictReader(f))
    assert len(samples) == 3 * 2
    assert all(float(s["makespan_s"]) > 0 for s in samples)
    lc = [s for s in samples if s["scheduler"] == BASELINE]
    assert all(s["cost_usd"] == "" for s in lc)  # not measured: empty, never invented
    sl = [s for s in samples if s["scheduler"] == "serverless:wukong"]
    assert all(float(s["cost_usd"]) > 0 and float(s["predicted_s"]) > 0 for s in sl)
    with (out / "summary.csv").open() as f:
        summary = {r["scheduler"]: r for r in csv.DictReader(f)}
    assert float(summary[BASELINE]["vs_baseline"]) == 1.0
    assert (out / "results.md").read_text().strip() == printed.strip()
    for png in ("makespan_vs_localcluster.png", "overhead_ms_per_task.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"


def test_summary_medians_spread_and_targets():
    def sample(sched, t, wl="tree-10k"):
        return Sample(wl, 100, sched, 0, t, 1000 * t / 100, 0.01, 0.5, 2, None, 0.25)

    samples = [sample(BASELINE, t) for t in (2.0, 4.0, 3.0)] + \
        [sample("serverless:wukong", t) for t in (1.0, 1.5, 2.0)] + \
        [sample("serverless:uniform", t) for t in (5.0, 5.0, 5.0)]

    class Result:  # what summarise reads from a BenchResult
        pass

    result = Result()
    result.samples = samples
    rows = {r.scheduler: r for r in summarise(result)}
    assert rows[BASELINE].makespan_s == 3.0 and rows[BASELINE].spread == pytest.approx(2 / 3)
    assert rows["serverless:wukong"].vs_baseline == pytest.approx(0.5)
    assert rows["serverless:wukong"].vs_critical_path == pytest.approx(150)
    assert rows["serverless:wukong"].vs_lower_bound == pytest.approx(6)
    checks = {t.name: (t.ratio, t.met) for t in targets(list(rows.values()))}
    overhead = checks[f"per-task overhead on tree-10k: best serverless / {BASELINE}"]
    assert overhead == (pytest.approx(0.5), True)
    assert checks[f"makespan on gemm: best serverless / {BASELINE}"] == (None, None)
    assert checks["makespan on tree-10k: best serverless / critical path"] == (
        pytest.approx(150), False)


def test_same_result_detects_differences():
    a = np.arange(6.0).reshape(2, 3)
    assert same_result([a, 3, "x"], (a.copy(), 3, "x"))
    assert not same_result([a], [a + 1e-3])
    assert not same_result([a], [a.astype(np.float32)])
    df = pd.DataFrame({"k": [1, 2], "v": [0.5, 1.5]})
    assert same_result(df, df.copy()) and not same_result(df, df.assign(v=[0.5, 1.6]))
    assert same_result({"f": 0.1 + 0.2}, {"f": 0.3}) and not same_result({"f": 1}, {"g": 1})


@pytest.mark.parametrize("name", list(WORKLOADS))
def test_every_workload_builds_a_graph_with_its_keys(name):
    w = build(name, quick=True)
    assert w.n_tasks > 0 and w.keys and all(k in w.graph for k in w.keys)


def test_bad_names_are_clear_errors():
    with pytest.raises(ValueError, match=r"unknown workload 'nope'.*tree-1k"):
        build("nope")
    with pytest.raises(ValueError, match=r"unknown workload parameter\(s\) \['size'\].*leaves"):
        build("tree-1k", True, size=3)
    with pytest.raises(ValueError, match=r"unknown planner\(s\) \['fast'\].*wukong"):
        serverless_variants(["fast"], [])
    with pytest.raises(ValueError, match=r"unknown optimisation pass\(es\) \['zip'\]"):
        serverless_variants(["wukong"], ["zip"])
    with pytest.raises(ValueError, match="--param given for workload"):
        run_bench(BenchOptions(["tree-1k"], params={"gemm": {"n": "10"}}))
