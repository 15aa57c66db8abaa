"""The dashboard app (``dask-serverless dashboard`` serves it with Streamlit)."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from dask_serverless import config
from dask_serverless.dashboard import access

VIEWS = Path(__file__).parent / "views"  # not "pages/": Streamlit would list its files itself

st.set_page_config(page_title="dask-serverless dashboard", layout="wide")
page = st.navigation([
    st.Page(VIEWS / "workflow.py", title="Workflow analysis", url_path="workflow",
            default=True),
    st.Page(VIEWS / "planners.py", title="Planners", url_path="planners"),
    st.Page(VIEWS / "predictions.py", title="Predictions", url_path="predictions"),
    st.Page(VIEWS / "realtime.py", title="Realtime", url_path="realtime"),
    st.Page(VIEWS / "simulator.py", title="Simulator", url_path="simulator"),
])
if access.allowed(config.get("dashboard.token")):  # nothing is read before this
    page.run()
