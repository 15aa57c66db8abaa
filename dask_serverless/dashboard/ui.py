"""Streamlit pieces the pages share: the metrics store, cached loading, pickers.

Pages read ``?workflow=SIGNATURE`` and ``?run=RUN_ID`` from the URL, so a page can be
linked to (the realtime page links a finished run to its analysis).
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from .. import config, session
from ..metrics.store import MetricsStore
from . import comparison
from .history import RunData, Workflow, WorkflowHistory, load_history, load_run, workflows

HISTORY_LIMIT = 50  # runs of a workflow the history pages read


def metrics_url() -> str:
    url = session.metrics_url()
    if url is None:
        st.error("serverless.metrics.enabled is off: there are no recorded metrics to show.")
        st.stop()
    return url


@st.cache_resource(show_spinner=False)
def _store(url: str) -> MetricsStore:
    return MetricsStore.from_url(url)


def store() -> MetricsStore:
    return _store(metrics_url())


@st.cache_data(ttl=5, show_spinner=False)
def cached_workflows(url: str) -> list[Workflow]:
    return workflows(_store(url))


@st.cache_data(show_spinner="reading the run's records...")
def cached_run(url: str, run_id: str) -> RunData:
    return load_run(_store(url), run_id)


@st.cache_data(show_spinner="reading the workflow's runs...")
def cached_history(url: str, signature: str | None, run_ids: tuple[str, ...]) -> WorkflowHistory:
    # ``run_ids`` is part of the cache key: a new run makes a new entry
    return load_history(_store(url), signature, len(run_ids))


def run_ids(url: str, signature: str | None) -> tuple[str, ...]:
    """The newest ``HISTORY_LIMIT`` run ids of a workflow (None: of all), newest first:
    the cache key of everything computed over them."""
    return tuple(_store(url).run_ids(HISTORY_LIMIT, signature))


@st.cache_data(show_spinner="replaying each run's plan in the simulator...")
def cached_runs_table(url: str, signature: str, run_ids: tuple[str, ...],
                      history_runs: int) -> pd.DataFrame:
    return comparison.runs_table(cached_history(url, signature, run_ids), history_runs,
                                 config.get("payload-inline-bytes"))


@st.cache_data(show_spinner="scoring each run's predictions...")
def cached_errors(url: str, signature: str | None, run_ids: tuple[str, ...],
                  history_runs: int) -> pd.DataFrame:
    return comparison.errors_table(cached_history(url, signature, run_ids), history_runs)


def pick_workflow(url: str, *, allow_all: bool = False) -> Workflow | None:
    """A workflow selectbox (most recent first), preset from ``?workflow=`` (or that of
    ``?run=``); None means
    "all workflows" when ``allow_all``, or that nothing is recorded yet."""
    flows = cached_workflows(url)
    if not flows:
        st.info("No recorded runs yet: run a workflow with `scheduler=serverless_get` "
                "(metrics are on by default), then reload.")
        st.stop()
    options: list[Workflow | None] = ([None] if allow_all else []) + list(flows)
    wanted = st.query_params.get("workflow")
    if wanted is None and st.query_params.get("run"):  # the workflow of a linked run
        record = _store(url).run(st.query_params["run"])
        wanted = record.signature if record is not None else None
    match = [i for i, w in enumerate(options) if w is not None and w.signature == wanted]
    index = match[0] if match else (1 if allow_all else 0)  # default: the newest workflow
    return st.selectbox("workflow", options, index=index,
                        format_func=lambda w: "all workflows" if w is None else w.label)


def pick_run(url: str, workflow: Workflow) -> str:
    """A run of ``workflow`` (newest first), preset from ``?run=``."""
    ids = _store(url).run_ids(HISTORY_LIMIT, workflow.signature)
    records = {r.run_id: r for r in _store(url).runs(ids)}
    wanted = st.query_params.get("run")
    index = ids.index(wanted) if wanted in ids else 0

    def label(run_id: str) -> str:
        r = records.get(run_id)
        if r is None:
            return run_id
        return (f"{run_id} · {comparison.combination(r)} · {r.makespan:.3f}s · "
                f"{pd.Timestamp(r.submit_time, unit='s').strftime('%Y-%m-%d %H:%M:%S')} UTC"
                f"{'' if r.status == 'ok' else ' · ' + r.status}")

    return st.selectbox("run", ids, index=index, format_func=label)
