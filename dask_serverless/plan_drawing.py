"""Draw a plan: the DAG laid out by depth, each task coloured by its worker (PNG/SVG).

Needs matplotlib (``pip install 'dask-serverless[plot]'``). With a ``SimResult`` the
x axis is the predicted start time instead of the depth.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .dag import DAG
from .plan import Plan

if TYPE_CHECKING:
    from .simulator import SimResult


def draw_plan(dag: DAG, plan: Plan, path: str | Path, timeline: SimResult | None = None,
              title: str | None = None) -> Path:
    """Write the drawing to ``path`` (format from its suffix: .png or .svg)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError("drawing plans needs matplotlib: pip install "
                          "'dask-serverless[plot]'") from exc
    path = Path(path)
    if path.suffix.lower() not in (".png", ".svg"):
        raise ValueError(f"plan drawing {path}: use a .png or .svg file name")
    depth = [0] * len(dag)
    for t in dag.tasks:
        if t.deps:
            depth[t.id] = 1 + max(depth[d] for d in t.deps)
    x = timeline.task_start if timeline is not None else [float(d) for d in depth]
    rows: dict[float, int] = {}
    y = []
    for t in dag.tasks:
        key = round(x[t.id], 6)
        y.append(rows.get(key, 0))
        rows[key] = y[-1] + 1
    workers = sorted(set(plan.assignment), key=lambda w: (len(w), w))
    colour = {w: i for i, w in enumerate(workers)}
    cmap = plt.get_cmap("tab20")
    fig, ax = plt.subplots(figsize=(min(4 + len(rows) * 0.4, 30), min(3 + max(y, default=0)
                                                                        * 0.25, 30)))
    for t in dag.tasks:
        for d in t.deps:
            same = plan.assignment[d] == plan.assignment[t.id]
            ax.plot([x[d], x[t.id]], [y[d], y[t.id]], color="0.6" if same else "0.85",
                    linewidth=0.8, zorder=1)
    ax.scatter(x, y, c=[cmap(colour[w] % 20) for w in plan.assignment], s=40, zorder=2,
               edgecolors=["black" if plan.worker_of(t).floating else "none"
                           for t in range(len(dag))])
    ax.set_xlabel("predicted start (s)" if timeline is not None else "depth")
    ax.set_yticks([])
    ax.set_title(title or f"{plan.planner}: {len(dag)} tasks on {len(workers)} workers "
                 "(colour: worker; black edge: floating fan-in)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
