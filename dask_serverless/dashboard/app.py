"""The dashboard app (``dask-serverless dashboard`` serves it with Streamlit)."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

VIEWS = Path(__file__).parent / "views"  # not "pages/": Streamlit would list its files itself

st.set_page_config(page_title="dask-serverless dashboard", layout="wide")
st.navigation([
    st.Page(VIEWS / "workflow.py", title="Workflow analysis", url_path="workflow",
            default=True),
    st.Page(VIEWS / "planners.py", title="Planners", url_path="planners"),
    st.Page(VIEWS / "predictions.py", title="Predictions", url_path="predictions"),
    st.Page(VIEWS / "realtime.py", title="Realtime", url_path="realtime"),
    st.Page(VIEWS / "simulator.py", title="Simulator", url_path="simulator"),
]).run()
