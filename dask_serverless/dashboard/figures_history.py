"""Plotly figures across runs: planners (predicted vs actual), prediction errors over
time and per function, and the simulator's what-if comparison."""

from __future__ import annotations

from typing import TYPE_CHECKING

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..metrics.accuracy import KINDS
from .figures_run import colours_for

if TYPE_CHECKING:
    import pandas as pd

SIDES = {"actual": "#1f77b4", "predicted": "#ff7f0e"}
FLOOR_PCT = 0.01  # errors below this are drawn at it (exact predictions, e.g. sizes)


def planners_boxes(runs: pd.DataFrame) -> go.Figure:
    """Per planner combination: the spread of actual and predicted makespan and cost over
    its successful runs (box: median and quartiles; points: runs)."""
    ok = runs[runs["status"] == "ok"]
    fig = make_subplots(rows=1, cols=2, subplot_titles=("makespan (s)", "cost (USD)"))
    for col, metric in ((1, "makespan"), (2, "cost")):
        for side, colour in SIDES.items():
            values = ok[f"{side}_{metric}"]
            fig.add_trace(go.Box(x=ok["combination"], y=values, name=side,
                                 marker_color=colour, boxpoints="all", jitter=0.3,
                                 legendgroup=side, showlegend=col == 1,
                                 customdata=ok["run_id"],
                                 hovertemplate="run %{customdata}<br>%{y:.4g}<extra>"
                                               + side + "</extra>"),
                          row=1, col=col)
    fig.update_layout(boxmode="group", height=420, margin={"t": 50},
                      title="planner / passes: predicted vs actual over runs")
    return fig


def predicted_vs_actual(runs: pd.DataFrame) -> go.Figure:
    """One point per run: predicted against actual makespan; the diagonal is a perfect
    prediction."""
    ok = runs[(runs["status"] == "ok") & runs["predicted_makespan"].notna()]
    fig = go.Figure()
    colours = colours_for(sorted(set(ok["combination"])))
    for combo, part in ok.groupby("combination", sort=True):
        fig.add_trace(go.Scatter(x=part["predicted_makespan"], y=part["actual_makespan"],
                                 mode="markers", name=str(combo), customdata=part["run_id"],
                                 marker={"size": 10, "color": colours[str(combo)]},
                                 hovertemplate="run %{customdata}<br>predicted %{x:.3f}s"
                                               "<br>actual %{y:.3f}s<extra></extra>"))
    top = float(max(ok["predicted_makespan"].max(), ok["actual_makespan"].max())) \
        if not ok.empty else 1.0
    fig.add_trace(go.Scatter(x=[0, top], y=[0, top], mode="lines", name="exact",
                             line={"dash": "dot", "color": "grey"}))
    fig.update_layout(xaxis_title="predicted makespan (s)", yaxis_title="actual makespan (s)",
                      title="makespan per run", height=420, margin={"t": 50})
    return fig


def errors_over_time(errors: pd.DataFrame) -> go.Figure:
    """Median prediction error (%) per run, one line per kind of prediction."""
    fig = go.Figure()
    colours = colours_for(list(KINDS))
    per_run = errors.groupby(["run", "run_id", "kind"], sort=True)["error_pct"].median()
    per_run = per_run.reset_index()
    per_run["error_pct"] = per_run["error_pct"].clip(lower=FLOOR_PCT)  # log axis: no zeros
    for kind in KINDS:
        part = per_run[per_run["kind"] == kind]
        if part.empty:
            continue
        fig.add_trace(go.Scatter(x=part["run"], y=part["error_pct"], mode="lines+markers",
                                 name=kind, marker_color=colours[kind],
                                 customdata=part["run_id"],
                                 hovertemplate="run %{customdata}<br>%{y:.1f}%<extra>"
                                               + kind + "</extra>"))
    fig.update_layout(xaxis_title="run (oldest first; each predicted from the runs before)",
                      yaxis={"title": "median |error| (%)", "type": "log"},
                      title="prediction error over time", height=420, margin={"t": 50})
    return fig


def worst_functions_figure(worst: pd.DataFrame, top: int = 15) -> go.Figure:
    """Median error (%) of execution time and output size for the worst functions."""
    part = worst.head(top).iloc[::-1]
    fig = go.Figure()
    for column, name, colour in (("exec_error_pct", "exec time", "#1f77b4"),
                                 ("output_error_pct", "output size", "#ff7f0e")):
        fig.add_trace(go.Bar(y=part["function"], x=part[column], orientation="h", name=name,
                             marker_color=colour,
                             hovertemplate="%{y}: %{x:.1f}%<extra>" + name + "</extra>"))
    fig.update_layout(barmode="group", title="functions that predict worst",
                      xaxis_title="median |error| (%)", height=max(300, 90 + 40 * len(part)),
                      margin={"t": 50})
    return fig


def what_if_figure(table: pd.DataFrame) -> go.Figure:
    """Predicted makespan and cost per planner, one bar per set of passes."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("predicted makespan (s)",
                                                        "predicted cost (USD)"))
    pass_sets = list(dict.fromkeys(table["passes"]))
    colours = colours_for(pass_sets)
    for passes in pass_sets:
        part = table[table["passes"] == passes]
        for col, metric in ((1, "predicted_makespan"), (2, "predicted_cost")):
            fig.add_trace(go.Bar(x=part["planner"], y=part[metric], name=f"passes: {passes}",
                                 marker_color=colours[passes], legendgroup=passes,
                                 showlegend=col == 1,
                                 hovertemplate="%{x}<br>%{y:.4g}<extra>" + passes
                                               + "</extra>"),
                          row=1, col=col)
    fig.update_layout(barmode="group", height=420, margin={"t": 50},
                      title="simulated plans (nothing executed)")
    return fig
