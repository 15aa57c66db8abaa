"""End to end: ``dask-serverless dashboard`` over metrics of real runs, loaded in headless
Chromium (Debian ``chromium``), renders its charts."""

from __future__ import annotations

import dask
import pytest
from dask import delayed

pytest.importorskip("streamlit")
pytest.importorskip("plotly")

from dask_serverless import cli, serverless_get
from dask_serverless.dashboard import launcher
from dask_serverless.dashboard.screenshot import Chromium, charts_ready, find_chromium
from dask_serverless.metrics.store import MetricsStore
from dask_serverless.runtime import get as get_mod
from dask_serverless.storage.embedded import free_port

pytestmark = pytest.mark.skipif(
    find_chromium() is None,
    reason="headless Chromium is not installed (apt-get install chromium; .ci/run does)")


def square(x):
    return x * x


def add(*xs):
    return sum(xs)


def test_dashboard_renders_charts_in_headless_chromium(redis_server, tmp_path):
    url = redis_server.rsplit("/", 1)[0] + "/4"
    store = MetricsStore.from_url(url)
    store.r.flushdb()
    with dask.config.set({"serverless.redis-url": url}):
        for planner in ("wukong", "per-task"):
            (total,) = dask.compute(delayed(add)(*[delayed(square)(i) for i in range(6)]),
                                    scheduler=serverless_get, planner=planner)
            assert total == sum(i * i for i in range(6))
    run_id = get_mod.last_run.run_id
    proc, dashboard = launcher.start(url, free_port())
    try:
        assert launcher.wait_healthy(dashboard, 90, proc), "the dashboard did not start"
        assert launcher.registered(url) == dashboard
        with Chromium() as browser:
            page = browser.capture(launcher.page_url(dashboard, run=run_id),
                                   tmp_path / "workflow.png", charts_ready(4))
            assert page["charts"] >= 4  # Gantt, time breakdown, edges, DAG
            assert run_id in page["text"] and "Tasks per worker" in page["text"]
            assert page["png"] > 20_000
            page = browser.capture(launcher.page_url(dashboard, "planners"), None,
                                   charts_ready(2))
            assert "per-task" in page["text"] and "wukong" in page["text"]
    finally:
        launcher.stop(proc)
    assert store.r.get("dsm:dashboard") is None  # it unregistered on exit


@pytest.mark.timeout(600)  # four pages, each rendered in full
def test_cli_screenshots_every_page_of_recorded_runs(redis_server, tmp_path, capsys):
    url = redis_server.rsplit("/", 1)[0] + "/5"
    MetricsStore.from_url(url).r.flushdb()
    with dask.config.set({"serverless.redis-url": url}):
        dask.compute(delayed(add)(*[delayed(square)(i) for i in range(4)]),
                     scheduler=serverless_get)
    out = tmp_path / "shots"
    assert cli.main(["dashboard", "--redis-url", url, "--screenshot", str(out)]) == 0
    pngs = sorted(p.name for p in out.iterdir())
    assert pngs == ["planners.png", "predictions.png", "simulator.png", "workflow.png"]
    assert all((out / name).stat().st_size > 10_000 for name in pngs)
    assert "workflow.png" in capsys.readouterr().out
