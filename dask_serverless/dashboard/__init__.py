"""Dashboards over recorded metrics: a Streamlit app (``dask-serverless dashboard``) with
workflow, planners, predictions, realtime and simulator pages, and a static HTML report
(``dask-serverless report RUN_ID``). Needs ``pip install 'dask-serverless[dashboard]'``.

Data flow: metrics store -> ``history`` (records of runs and workflows) -> ``timeline``,
``comparison``, ``metrics.accuracy`` (what the pages show) -> ``figures_*`` (Plotly) ->
``views/`` (Streamlit pages) and ``report`` (HTML). ``launcher`` starts the app for a compute
with ``serverless.dashboard.enabled``; ``live`` reads a running run's feed.
"""
