"""The dashboard app (``dask-serverless dashboard`` serves it with Streamlit)."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

PAGES = Path(__file__).parent / "pages"

st.set_page_config(page_title="dask-serverless dashboard", layout="wide")
st.navigation([
    st.Page(PAGES / "workflow.py", title="Workflow analysis", url_path="workflow",
            default=True),
    st.Page(PAGES / "planners.py", title="Planners", url_path="planners"),
    st.Page(PAGES / "predictions.py", title="Predictions", url_path="predictions"),
    st.Page(PAGES / "realtime.py", title="Realtime", url_path="realtime"),
    st.Page(PAGES / "simulator.py", title="Simulator", url_path="simulator"),
]).run()
