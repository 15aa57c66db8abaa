"""A static, self-contained HTML report of one run (``dask-serverless report RUN_ID``):
the workflow page's charts, its workflow's planner comparison and prediction errors, and
a table of every task with its details and log lines. Plotly's JavaScript is inlined
once, so the file opens anywhere without a network."""

from __future__ import annotations

import html
import time
from pathlib import Path

import plotly.graph_objects as go

from .. import config
from ..metrics.report import format_size
from ..metrics.store import MetricsStore
from . import comparison, figures_history, figures_run, timeline
from .history import RunData, load_history, load_run

MAX_TASK_ROWS = 2000
_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
h1 { font-size: 1.6em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.85em; }
td, th { border: 1px solid #ddd; padding: 3px 6px; text-align: left; vertical-align: top; }
th { background: #f4f4f4; } .num { text-align: right; } pre { margin: 0; font-size: 0.9em; }
.summary td:first-child { font-weight: 600; } .crit { color: #d62728; font-weight: 600; }
"""


class _Page:
    """Sections of the report; the first figure carries plotly.js."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self._js = True

    def heading(self, text: str, level: int = 2) -> None:
        self.parts.append(f"<h{level}>{html.escape(text)}</h{level}>")

    def text(self, text: str) -> None:
        self.parts.append(f"<p>{html.escape(text)}</p>")

    def figure(self, fig: go.Figure) -> None:
        self.parts.append(fig.to_html(full_html=False, include_plotlyjs=self._js,
                                      config={"displaylogo": False}))
        self._js = False

    def table(self, header: list[str], rows: list[list[str]], css: str = "") -> None:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
        body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>"
                       for row in rows)
        self.parts.append(f'<table class="{css}"><tr>{head}</tr>{body}</table>')

    def html(self, title: str) -> str:
        return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>"
                f"{html.escape(title)}</title><style>{_STYLE}</style></head><body>"
                + "\n".join(self.parts) + "</body></html>")


def _summary(page: _Page, run: RunData) -> None:
    r = run.record
    rows = [("run", r.run_id), ("workflow", r.signature), ("status", r.status),
            ("planner", f"{comparison.combination(r)} {r.planner_options}"),
            ("backend", r.backend),
            ("submitted", time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.submit_time))),
            ("makespan", f"{r.makespan:.3f} s"), ("tasks", str(r.tasks)),
            ("workers", f"{r.workers} ({r.workers_planned} planned)"),
            ("invocations", f"{r.invocations} ({r.cold_starts} cold, {r.warm_starts} warm"
                            + (f"; {r.retries} re-sent after a death" if r.retries else "")
                            + (f"; {r.backups} straggler backups" if r.backups else "")
                            + ")"),
            ("data moved", f"{format_size(r.bytes_moved)} (up {format_size(r.upload_bytes)}, "
                           f"down {format_size(r.download_bytes)}, inline "
                           f"{format_size(r.inline_bytes)})"),
            ("cost", f"${r.cost_usd:.6f} ({r.gb_seconds:.4f} GB-s)")]
    page.table(["", ""], [[html.escape(k), html.escape(v)] for k, v in rows], "summary")


def _tasks(page: _Page, run: RunData, tasks) -> None:
    header = ["id", "key", "function", "worker", "config", "start s", "end s", "exec s",
              "in B", "out B", "up B", "inputs (task: bytes via)", "log lines"]
    rows = []
    for row in tasks.head(MAX_TASK_ROWS).itertuples():
        t = run.task_by_id[row.task_id]
        inputs = ", ".join(f"{i.dep}: {i.nbytes} {i.source}" for i in t.inputs)
        logs = "\n".join(timeline.log_lines(run, row.task_id))
        key = html.escape(str(row.key))
        rows.append([str(row.task_id), f'<span class="crit">{key}</span>' if row.critical
                     else key, html.escape(row.function), html.escape(row.worker),
                     f"{row.memory_mb} MB", f"{row.start:.4f}", f"{row.end:.4f}",
                     f"{row.exec_s:.4f}", str(row.input_bytes), str(row.output_bytes),
                     str(row.upload_bytes), html.escape(inputs),
                     f"<pre>{html.escape(logs)}</pre>"])
    page.table(header, rows)
    if len(tasks) > MAX_TASK_ROWS:
        page.text(f"(first {MAX_TASK_ROWS} of {len(tasks)} tasks)")


def build_report(store: MetricsStore, run_id: str, history_limit: int = 50) -> str:
    """The report's HTML (``run_id`` may be a unique prefix)."""
    run = load_run(store, run_id)
    hist = load_history(store, run.record.signature, history_limit)
    history_runs = config.get("metrics.history")
    inline = config.get("payload-inline-bytes")
    page = _Page()
    page.heading(f"dask-serverless run {run.run_id}", 1)
    _summary(page, run)

    tasks = timeline.task_table(run)
    startups = timeline.startup_table(run)
    page.heading("Tasks per worker: planned vs actual")
    index = next((i for i, r in enumerate(hist.runs) if r.run_id == run.run_id), None)
    sim = None
    if index is not None:
        sim = timeline.planned(run, hist.predictor_before(index, history_runs), inline)
    if sim is None:
        page.text("No planned timeline: the run recorded no plan or not all of its tasks.")
        page.figure(figures_run.gantt(tasks, startups))
    else:
        page.text(f"Planned: the simulator replaying this run's plan with what the runs "
                  f"before it taught the predictor (makespan {sim.makespan:.3f} s, cost "
                  f"${sim.cost:.6f}). Red outline: critical path.")
        page.figure(figures_run.gantt(tasks, startups, timeline.planned_table(run, sim),
                                      timeline.planned_startups(sim)))
    page.heading("Where the time went")
    page.figure(figures_run.breakdown_pie(timeline.time_breakdown(run)))
    edges = timeline.edge_table(run)
    if not edges.empty:
        page.heading("Data moved per edge")
        page.figure(figures_run.edges_figure(edges))
    if run.dag is not None:
        page.heading("DAG by worker")
        worker_of = dict(zip(tasks["task_id"], tasks["worker"], strict=True))
        labels = [worker_of.get(t.id, "?") for t in run.dag.tasks]
        hover = [f"{t.id}: {html.escape(str(t.key))}<br>{t.func_name} on {labels[t.id]}"
                 for t in run.dag.tasks]
        page.figure(figures_run.dag_figure(run.dag, labels, hover,
                                           critical=timeline.critical_path(run),
                                           title="colour: worker · red: critical path"))

    page.heading(f"Planners on this workflow ({len(hist.runs)} newest runs)")
    runs = comparison.runs_table(hist, history_runs, inline)
    page.figure(figures_history.planners_boxes(runs))
    summary = comparison.summary_table(runs)
    page.table(list(summary.columns), [[html.escape(_cell(v)) for v in row]
                                       for row in summary.itertuples(index=False)])
    page.heading("Prediction errors on this workflow")
    errors = comparison.errors_table(hist, history_runs)
    if errors.empty:
        page.text("Nothing scored yet: a run is predicted from the runs before it.")
    else:
        page.figure(figures_history.errors_over_time(errors))
        worst = comparison.worst_functions(errors)
        if not worst.empty:
            page.figure(figures_history.worst_functions_figure(worst))

    page.heading("Tasks (critical path in red)")
    _tasks(page, run, tasks)
    return page.html(f"dask-serverless run {run.run_id}")


def _cell(v: object) -> str:
    if isinstance(v, float):
        return "" if v != v else f"{v:.4g}"
    return "" if v is None else str(v)


def write_report(store: MetricsStore, run_id: str, path: str | Path) -> Path:
    path = Path(path)
    path.write_text(build_report(store, run_id), encoding="utf-8")
    return path
