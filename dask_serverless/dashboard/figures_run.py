"""Plotly figures of one run: Gantt (planned vs actual), time breakdown, data per edge and
the DAG (coloured by worker or by state, critical path highlighted)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import TYPE_CHECKING

import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from ..dag import DAG

if TYPE_CHECKING:
    import pandas as pd

    from .timeline import TimeBreakdown

PALETTE = qualitative.Plotly + qualitative.D3 + qualitative.Set2 + qualitative.Pastel
CRITICAL = "#d62728"
STATE_COLOURS = {"waiting": "#c7c7c7", "running": "#ff7f0e", "finished": "#2ca02c",
                 "failed": CRITICAL}
SOURCE_COLOURS = {"redis": "#1f77b4", "inline": "#ff7f0e", "local": "#2ca02c"}
LARGE_DAG = 3000  # tasks: draw with WebGL above this


def worker_order(workers: Sequence[str]) -> list[str]:
    """Worker ids in natural order (w2 before w10)."""
    return sorted(set(workers), key=lambda w: (len(w), w))


def colours_for(labels: Sequence[str]) -> dict[str, str]:
    return {label: PALETTE[i % len(PALETTE)] for i, label in enumerate(labels)}


def _gantt_traces(fig: go.Figure, tasks: pd.DataFrame, startups: pd.DataFrame, row: int,
                  fn_colour: dict[str, str], show_legend: bool) -> None:
    for kind, colour in (("cold start", "#444444"), ("warm start", "#bbbbbb")):
        part = startups[startups["cold"] == (kind == "cold start")]
        if part.empty:
            continue
        fig.add_trace(go.Bar(
            y=part["worker"], x=part["started"] - part["invoked"], base=part["invoked"],
            orientation="h", marker_color=colour, name=kind, legendgroup=kind,
            showlegend=show_legend, opacity=0.8,
            hovertemplate="%{y} " + kind + ": %{x:.3f}s<extra></extra>"), row=row, col=1)
    for function, part in tasks.groupby("function", sort=True):
        critical = part["critical"] if "critical" in part else [False] * len(part)
        fig.add_trace(go.Bar(
            y=part["worker"], x=(part["end"] - part["start"]).clip(lower=1e-4),
            base=part["start"], orientation="h", name=str(function),
            legendgroup=str(function), showlegend=show_legend,
            marker={"color": fn_colour[str(function)],
                    "line": {"color": [CRITICAL if c else "rgba(0,0,0,0)" for c in critical],
                             "width": 2}},
            customdata=part[["task_id", "key"]].to_numpy(),
            hovertemplate=("task %{customdata[0]} %{customdata[1]}<br>worker %{y}<br>"
                           "%{base:.3f}s + %{x:.4f}s<extra>" + str(function) + "</extra>")),
            row=row, col=1)


def gantt(actual: pd.DataFrame, actual_startups: pd.DataFrame,
          planned: pd.DataFrame | None = None,
          planned_startups: pd.DataFrame | None = None) -> go.Figure:
    """Tasks per worker over time; with ``planned``, the simulator's timeline above the
    recorded one on a shared time axis. Grey bars: worker starts (dark: cold); red
    outline: the critical path."""
    functions = sorted(set(actual["function"]) | set(
        planned["function"] if planned is not None else []))
    fn_colour = colours_for(functions)
    rows = 2 if planned is not None else 1
    workers = worker_order(list(actual["worker"]) + list(
        planned["worker"] if planned is not None else []) + list(actual_startups["worker"]))
    titles = ("planned (simulator)", "actual (recorded)") if rows == 2 else ("actual",)
    fig = make_subplots(rows=rows, cols=1, shared_xaxes=True, subplot_titles=titles,
                        vertical_spacing=0.08)
    if planned is not None and planned_startups is not None:
        _gantt_traces(fig, planned, planned_startups, 1, fn_colour, False)
    _gantt_traces(fig, actual, actual_startups, rows, fn_colour, True)
    for r in range(1, rows + 1):
        fig.update_yaxes(categoryorder="array", categoryarray=workers[::-1], title="worker",
                         row=r, col=1)
    fig.update_xaxes(title="seconds after submission", row=rows, col=1)
    fig.update_layout(barmode="overlay", height=max(300, 120 + 26 * len(workers) * rows),
                      legend_title="function", margin={"t": 40, "b": 40})
    return fig


def breakdown_pie(b: TimeBreakdown) -> go.Figure:
    """Where the workers' time went (worker-seconds over all invocations)."""
    labels = {"other": "other (waiting, bookkeeping)"}
    parts = [(labels.get(p, p), s) for p, s in b.seconds.items() if s > 0]
    fig = go.Figure(go.Pie(labels=[p for p, _ in parts], values=[s for _, s in parts],
                           sort=False, hole=0.35, textinfo="percent", textposition="inside",
                           hovertemplate="%{label}: %{value:.4f} worker-s<extra></extra>"))
    fig.update_layout(
        title={"text": f"worker time: {sum(b.seconds.values()):.3f} s",
               "subtitle": {"text": f"makespan {b.makespan_s:.3f} s, {b.waiting_s:.3f} s of "
                                    "it with no task running"}},
        uniformtext={"minsize": 10, "mode": "hide"}, margin={"t": 70, "b": 20})
    return fig


def edges_figure(edges: pd.DataFrame, top: int = 25) -> go.Figure:
    """Bytes moved per edge: the ``top`` largest edges, coloured by how they arrived
    (redis download, inline in the invocation, local in the worker's memory)."""
    biggest = edges.nlargest(top, "bytes").iloc[::-1]
    labels = [f"{p} {pf} → {c} {cf}" for p, pf, c, cf in zip(
        biggest["producer"], biggest["producer_function"], biggest["consumer"],
        biggest["consumer_function"], strict=True)]
    fig = go.Figure()
    for source, colour in SOURCE_COLOURS.items():
        mask = (biggest["source"] == source).to_numpy()
        if not mask.any():
            continue
        fig.add_trace(go.Bar(
            y=[lab for lab, m in zip(labels, mask, strict=True) if m],
            x=biggest["bytes"][mask], orientation="h", name=source, marker_color=colour,
            customdata=biggest["download_s"][mask],
            hovertemplate="%{y}<br>%{x:,} bytes, download %{customdata:.4f}s<extra>"
                          + source + "</extra>"))
    total = edges.groupby("source")["bytes"].sum()
    summary = ", ".join(f"{s} {int(total.get(s, 0)):,} B" for s in SOURCE_COLOURS)
    fig.update_layout(showlegend=True, legend_title="arrived",
                      title={"text": f"largest {min(top, len(edges))} of {len(edges)} edges",
                             "subtitle": {"text": f"total: {summary}"}},
                      xaxis_title="bytes", yaxis={"categoryorder": "array",
                                                  "categoryarray": labels},
                      height=max(300, 100 + 22 * len(biggest)), margin={"t": 70})
    return fig


def dag_positions(dag: DAG, order_by: Sequence[str]) -> tuple[list[float], list[float]]:
    """x = depth, y = position in the depth's column (grouped by ``order_by`` label)."""
    depth = [0] * len(dag)
    for t in dag.tasks:
        if t.deps:
            depth[t.id] = 1 + max(depth[d] for d in t.deps)
    columns: dict[int, list[int]] = {}
    for t in dag.tasks:
        columns.setdefault(depth[t.id], []).append(t.id)
    y = [0.0] * len(dag)
    for ids in columns.values():
        ids.sort(key=lambda i: (order_by[i], i))
        for pos, i in enumerate(ids):
            y[i] = pos - (len(ids) - 1) / 2
    return [float(d) for d in depth], y


def dag_figure(dag: DAG, labels: Sequence[str], hover: Sequence[str], *,
               colours: dict[str, str] | None = None, critical: Sequence[int] = (),
               selected: int | None = None, legend_title: str = "worker",
               title: str = "") -> go.Figure:
    """The DAG by depth, one colour per label (worker, or state); the ``critical`` path
    in red; ``selected`` ringed. Points carry their task id as ``customdata``."""
    order = list(dict.fromkeys(worker_order(labels) if colours is None else colours))
    colours = colours or colours_for(order)
    x, y = dag_positions(dag, labels)
    large = len(dag) > LARGE_DAG
    scatter = go.Scattergl if large else go.Scatter
    on_path = set(itertools.pairwise(critical))
    ex: list[float | None] = []
    ey: list[float | None] = []
    cx: list[float | None] = []
    cy: list[float | None] = []
    for t in dag.tasks:
        for d in t.deps:
            xs, ys = (cx, cy) if (d, t.id) in on_path else (ex, ey)
            xs += [x[d], x[t.id], None]
            ys += [y[d], y[t.id], None]
    fig = go.Figure()
    fig.add_trace(scatter(x=ex, y=ey, mode="lines", hoverinfo="skip", showlegend=False,
                          line={"color": "rgba(120,120,120,0.45)", "width": 1}))
    if cx:
        fig.add_trace(scatter(x=cx, y=cy, mode="lines", hoverinfo="skip",
                              name="critical path", line={"color": CRITICAL, "width": 3}))
    path = set(critical)
    size = 7 if large else 14
    by_label: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        by_label.setdefault(label, []).append(i)
    for label in order:
        ids = by_label.get(label)
        if not ids:
            continue
        fig.add_trace(scatter(
            x=[x[i] for i in ids], y=[y[i] for i in ids], mode="markers", name=label,
            customdata=ids, hovertext=[hover[i] for i in ids], hoverinfo="text",
            marker={"size": size, "color": colours.get(label, "#999999"),
                    "line": {"width": [3 if i == selected else 2 if i in path else 0.5
                                       for i in ids],
                             "color": ["black" if i == selected else CRITICAL if i in path
                                       else "white" for i in ids]}}))
    fig.update_layout(title=title, legend_title=legend_title, clickmode="event+select",
                      showlegend=len(order) <= 40,
                      xaxis={"title": "depth", "showgrid": False},
                      yaxis={"visible": False}, height=max(350, min(900, 40 * max(
                          (sum(1 for v in x if v == c) for c in set(x)), default=1))),
                      margin={"t": 50, "b": 40})
    return fig
