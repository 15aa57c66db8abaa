"""Workflow analysis (the default page, at "/"): one run of a workflow, planned vs actual,
where the time and the data went, and the DAG (click a task for its details and log
lines). ``?workflow=``, ``?run=`` and ``?task=`` preselect."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dask_serverless import config
from dask_serverless.dashboard import figures_run, timeline, ui
from dask_serverless.metrics.report import format_size

st.header("Workflow analysis")
url = ui.metrics_url()
workflow = ui.pick_workflow(url)
run_id = ui.pick_run(url, workflow)
run = ui.cached_run(url, run_id)
rec = run.record


@st.cache_data(show_spinner="simulating the run's plan...")
def planned_tables(url: str, signature: str, run_id: str, ids: tuple[str, ...],
                   history_runs: int):
    """The simulator's timeline of the run's plan, learning from the runs before it."""
    hist = ui.cached_history(url, signature, ids)
    index = next((i for i, r in enumerate(hist.runs) if r.run_id == run_id), None)
    if index is None:
        return None
    this = hist.runs[index]
    sim = timeline.planned(this, hist.predictor_before(index, history_runs),
                           config.get("payload-inline-bytes"))
    if sim is None:
        return None
    return (timeline.planned_table(this, sim), timeline.planned_startups(sim), sim.makespan,
            sim.cost)


cols = st.columns(6)
cols[0].metric("makespan", f"{rec.makespan:.3f} s")
cols[1].metric("tasks", rec.tasks)
cols[2].metric("workers / planned", f"{rec.workers} / {rec.workers_planned}")
cols[3].metric("starts cold / warm", f"{rec.cold_starts} / {rec.warm_starts}")
cols[4].metric("data moved", format_size(rec.bytes_moved))
cols[5].metric("cost (µ$)", f"{rec.cost_usd * 1e6:.2f}")
st.caption(f"run {rec.run_id} · planner {rec.planner} {rec.planner_options} · backend "
           f"{rec.backend} · status {rec.status}"
           + (f" · {rec.retries} invocations re-sent after a death" if rec.retries else "")
           + (f" · {rec.backups} straggler backups" if rec.backups else "")
           + ("" if rec.complete else " · some invocation records arrived late or never"))

tasks = timeline.task_table(run)
startups = timeline.startup_table(run)
ids = ui.run_ids(url, workflow.signature)
plan = planned_tables(url, workflow.signature, run.run_id, ids,
                      config.get("metrics.history"))
st.subheader("Tasks per worker: planned vs actual")
if plan is None:
    st.caption("No planned timeline: this run recorded no plan or not all of its tasks.")
    st.plotly_chart(figures_run.gantt(tasks, startups), key="gantt")
else:
    planned, planned_startups, planned_makespan, planned_cost = plan
    st.caption(f"Planned: the simulator replaying this run's plan with what the runs before "
               f"it taught the predictor: makespan {planned_makespan:.3f} s, cost "
               f"${planned_cost:.6f}. Red outline: critical path.")
    st.plotly_chart(figures_run.gantt(tasks, startups, planned, planned_startups),
                    key="gantt")

st.subheader("Invocations and the run spec they fetched")
fetched = startups[startups["spec_bytes"] > 0]
st.caption(
    f"Each invocation fetches only the slices of the run spec its tasks need (its group's "
    f"tasks and the facts to fire their successors); a container keeps what it fetched for "
    f"the run's next invocations. {len(fetched)} of {len(startups)} invocations fetched "
    f"{format_size(int(startups['spec_bytes'].sum()))} in all, at most "
    f"{format_size(int(startups['spec_bytes'].max() if len(startups) else 0))} and "
    f"{startups['spec_s'].max() if len(startups) else 0.0:.3f} s in one.")
shown = startups.assign(spec_bytes_per_task=(startups["spec_bytes"]
                                             / startups["tasks"].clip(lower=1)).round())
st.dataframe(shown.sort_values("spec_bytes", ascending=False).head(200), hide_index=True)

left, right = st.columns(2)
with left:
    st.subheader("Where the time went")
    st.plotly_chart(figures_run.breakdown_pie(timeline.time_breakdown(run)), key="pie")
with right:
    st.subheader("Data moved per edge")
    edges = timeline.edge_table(run)
    if edges.empty:
        st.caption("No edges: every task was a root.")
    else:
        st.plotly_chart(figures_run.edges_figure(edges), key="edges")

st.subheader("DAG by worker")
dag = run.dag
if dag is None:
    st.caption("The DAG cannot be drawn: this run recorded no plan or not all of its tasks.")
    st.stop()
worker_of = dict(zip(tasks["task_id"], tasks["worker"], strict=True))
labels = [worker_of.get(t.id, "?") for t in dag.tasks]
hover = [f"{t.id}: {t.key}<br>{t.func_name} on {labels[t.id]}" for t in dag.tasks]
path = timeline.critical_path(run)
chosen = st.session_state.get("task")
event = st.plotly_chart(
    figures_run.dag_figure(dag, labels, hover, critical=path, selected=chosen,
                           title="colour: worker · red: critical path · click a task"),
    key="dag", on_select="rerun", selection_mode="points")
points = [p for p in event.selection.get("points", []) if p.get("customdata") is not None]
if points:
    clicked = points[0]["customdata"]
    st.session_state["task"] = int(clicked[0] if isinstance(clicked, list) else clicked)

task_ids = [t.id for t in dag.tasks]
if st.session_state.get("task") not in task_ids:  # ?task=ID, else where the critical path starts
    wanted = st.query_params.get("task", "")
    st.session_state["task"] = int(wanted) if wanted.isdigit() and int(wanted) in task_ids \
        else (path[0] if path else 0)
task_id = st.selectbox("task", task_ids, key="task",
                       format_func=lambda i: f"{i}: {dag.tasks[i].key}")
details = timeline.task_details(run, task_id)
left, right = st.columns(2)
with left:
    st.markdown(f"**{details['key']}**")
    st.json(details, expanded=True)
with right:
    st.markdown("**log lines**")
    lines = timeline.log_lines(run, task_id)
    st.code("\n".join(lines) if lines else "(this task logged nothing)", language="text")

with st.expander("all tasks"):
    st.dataframe(pd.DataFrame(tasks), hide_index=True)
