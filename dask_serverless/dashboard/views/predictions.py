"""Predictions: how far the predictor was from what each run then recorded (execution
time, output size, transfers, cold and warm starts) and which functions predict worst."""

from __future__ import annotations

import streamlit as st

from dask_serverless import config
from dask_serverless.dashboard import comparison, figures_history, ui

st.header("Prediction accuracy")
url = ui.metrics_url()
workflow = ui.pick_workflow(url, allow_all=True)
signature = workflow.signature if workflow is not None else None
ids = ui.run_ids(url, signature)
errors = ui.cached_errors(url, signature, ids, config.get("metrics.history"))
st.caption(f"Each of the {len(ids)} newest runs is predicted by a predictor that learned "
           "only from the runs before it; error = |predicted - actual| / actual.")
if errors.empty:
    st.info("Nothing to score yet: a run can only be predicted from the runs before it.")
    st.stop()

st.plotly_chart(figures_history.errors_over_time(errors), key="over_time")
medians = errors.groupby("kind")["error_pct"].agg(["median", "count"]).reset_index()
st.dataframe(medians.rename(columns={"median": "median |error| %", "count": "samples"}),
             hide_index=True, column_config={"median |error| %": st.column_config.NumberColumn(
                 format="%.2f")})
worst = comparison.worst_functions(errors)
st.subheader("Functions that predict worst")
if worst.empty:
    st.caption("No per-function samples yet.")
else:
    st.plotly_chart(figures_history.worst_functions_figure(worst), key="worst")
    st.dataframe(worst, hide_index=True, column_config={
        c: st.column_config.NumberColumn(format="%.2f")
        for c in ("exec_error_pct", "output_error_pct")})
