"""Simulator: plan a workflow already seen with every planner and set of passes and
compare the simulator's predicted makespan and cost, without executing anything."""

from __future__ import annotations

import os

import streamlit as st

from dask_serverless import config
from dask_serverless.dashboard import comparison, figures_history, ui
from dask_serverless.planners import PLANNERS

st.header("Simulator: every planner on a recorded workflow")
url = ui.metrics_url()
workflow = ui.pick_workflow(url)
ids = ui.run_ids(url, workflow.signature)
hist = ui.cached_history(url, workflow.signature, ids)
source = next((r for r in reversed(hist.runs) if r.dag is not None), None)
if source is None:
    st.warning("No run of this workflow recorded its plan and every task: nothing to "
               "rebuild the DAG from.")
    st.stop()

cols = st.columns(3)
parallelism = cols[0].number_input(
    "parallelism (workers at once)", min_value=1, max_value=100_000,
    value=config.get("parallelism") or min(2 * (os.cpu_count() or 1), 16))
memory = cols[1].number_input("default memory (MB)", min_value=128, max_value=10240,
                              value=config.get("memory"), step=64)
planners = cols[2].multiselect("planners", list(PLANNERS), default=list(PLANNERS))
choices = {"none": ()} | {name: (name,) for name in comparison.PASS_NAMES} | {
    "all passes": comparison.PASS_NAMES}
pass_sets = st.multiselect("passes", list(choices), default=["none", "all passes"])


@st.cache_data(show_spinner="planning and simulating...")
def simulate_all(url: str, signature: str, ids: tuple[str, ...], parallelism: int,
                 memory: int, planners: tuple[str, ...], passes: tuple[tuple[str, ...], ...]):
    h = ui.cached_history(url, signature, ids)
    dag = next(r for r in reversed(h.runs) if r.dag is not None).dag
    return comparison.what_if(dag, h.predictor(), parallelism=parallelism, memory_mb=memory,
                              inline_bytes=config.get("payload-inline-bytes"),
                              planners=planners, pass_sets=passes)


st.caption(f"DAG of run {source.run_id} ({len(source.dag)} tasks); predictions learned from "
           f"the workflow's {len(hist.runs)} newest runs.")
if not planners or not pass_sets:
    st.info("Pick at least one planner and one set of passes.")
    st.stop()
table = simulate_all(url, workflow.signature, ids, int(parallelism), int(memory),
                     tuple(planners), tuple(choices[p] for p in pass_sets))
st.plotly_chart(figures_history.what_if_figure(table), key="what_if")
best = table.loc[table["predicted_makespan"].idxmin()]
cheapest = table.loc[table["predicted_cost"].idxmin()]
st.markdown(f"Fastest: **{best['planner']}** with passes *{best['passes']}* "
            f"({best['predicted_makespan']:.3f} s); cheapest: **{cheapest['planner']}** with "
            f"passes *{cheapest['passes']}* (${cheapest['predicted_cost']:.6f}).")
st.dataframe(table, hide_index=True)
