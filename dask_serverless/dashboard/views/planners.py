"""Planners analysis: for one workflow, each planner / passes combination across its
runs: predicted vs actual makespan and cost, workers, cold and warm starts."""

from __future__ import annotations

import streamlit as st

from dask_serverless import config
from dask_serverless.dashboard import comparison, figures_history, ui

st.header("Planners analysis")
url = ui.metrics_url()
workflow = ui.pick_workflow(url)
ids = ui.run_ids(url, workflow.signature)
history_runs = config.get("metrics.history")
runs = ui.cached_runs_table(url, workflow.signature, ids, history_runs)
st.caption(f"{len(runs)} newest runs of this workflow. Predicted: the simulator replaying "
           "each run's recorded plan with a predictor that learned only from the runs "
           "before it (the first run: the predictor's defaults), starting with the "
           "containers the run found warm.")

summary = comparison.summary_table(runs)
st.plotly_chart(figures_history.planners_boxes(runs), key="boxes")
st.subheader("Median and spread (interquartile range) per combination")
shown = summary.rename(columns=lambda c: c.replace("_", " "))
st.dataframe(shown, hide_index=True)
st.plotly_chart(figures_history.predicted_vs_actual(runs), key="scatter")
with st.expander("every run"):
    st.dataframe(runs, hide_index=True)
