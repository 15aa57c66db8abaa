"""Realtime: a running workflow's DAG fills in as its tasks finish (the run's live feed
on Redis pub/sub), with counts of running and finished tasks and workers.

Runs appear here when computed with ``serverless_dashboard=True`` or
``serverless.dashboard.enabled``.
"""

from __future__ import annotations

import time

import streamlit as st

from dask_serverless import config
from dask_serverless.dashboard import access, figures_run, live, ui
from dask_serverless.storage.keys import MetricsKeys

REDRAW_S = 0.5  # at most this often while events pour in
IDLE_TIMEOUT_S = 3600.0  # stop following a run that sent nothing for this long

st.header("Realtime")
store = ui.store()
runs = live.live_runs(store.r)
if not runs:
    st.info("No run is going on. Compute with `dask.compute(..., scheduler=serverless_get, "
            "serverless_dashboard=True)` (or set `serverless.dashboard.enabled`); this page "
            "picks the run up.")

    @st.fragment(run_every="2s")
    def _watch() -> None:
        if live.live_runs(store.r):
            st.rerun()

    _watch()
    st.stop()

wanted = st.query_params.get("run")
run_id = st.selectbox("live run", runs, index=runs.index(wanted) if wanted in runs else 0)
pubsub = store.r.pubsub()
pubsub.subscribe(MetricsKeys.live_events(run_id))  # before reading the list: nothing missed
state = live.load_state(store.r, run_id)
if state is None:
    pubsub.close()
    st.warning(f"run {run_id} is no longer listed; reload the page.")
    st.stop()

counts_box = st.empty()
figure_box = st.empty()
draws = [0]


def draw() -> None:
    draws[0] += 1
    c = state.counts()
    with counts_box.container():
        cols = st.columns(6)
        cols[0].metric("status", state.status)
        cols[1].metric("elapsed", f"{state.elapsed():.1f} s")
        cols[2].metric("tasks finished", f"{c['finished']} / {c['tasks']}")
        cols[3].metric("tasks running", c["running"])
        cols[4].metric("workers running / seen", f"{c['workers running']} / {c['workers seen']}")
        cols[5].metric("starts cold / warm", f"{c['cold starts']} / {c['warm starts']}")
    labels = state.task_states()
    hover = [f"{t.id}: {t.key}<br>{t.func_name} · planned on {state.planned_worker[t.id]}"
             f" · {labels[t.id]}" for t in state.dag.tasks]
    figure_box.plotly_chart(
        figures_run.dag_figure(state.dag, labels, hover, colours=figures_run.STATE_COLOURS,
                               legend_title="task", title=f"run {run_id}"),
        key=f"live-{draws[0]}")


try:
    draw()
    drawn, last_news = time.monotonic(), time.monotonic()
    while state.status == "running" and time.monotonic() - last_news < IDLE_TIMEOUT_S:
        news = live.wait_for_events(pubsub, REDRAW_S)
        if live.catch_up(store.r, state):
            last_news = time.monotonic()
        if news or time.monotonic() - drawn >= REDRAW_S:
            draw()
            drawn = time.monotonic()
finally:
    pubsub.close()
draw()
if state.status != "running":
    analysis = access.page_url("", config.get("dashboard.token"),
                               workflow=state.signature, run=run_id)
    st.markdown(f"[Analyse this run]({analysis})")
