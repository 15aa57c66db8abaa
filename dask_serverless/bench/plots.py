"""PNG plots of a benchmark's summary rows (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path

from .summary import BASELINE, Row


def write_plots(rows: list[Row], out_dir: Path) -> list[Path]:
    """Makespan vs LocalCluster, per-task overhead, predicted vs actual: the files written."""
    import matplotlib

    matplotlib.use("Agg")
    written = [_bars(rows, out_dir / "makespan_vs_localcluster.png",
                     lambda r: r.vs_baseline, f"makespan / {BASELINE} (log)", log=True),
               _bars(rows, out_dir / "overhead_ms_per_task.png",
                     lambda r: r.overhead_ms_per_task, "per-task overhead (ms, log)", log=True)]
    predicted = [r for r in rows if r.predicted_s is not None and r.actual_s is not None]
    if predicted:
        written.append(_predicted_vs_actual(predicted, out_dir / "predicted_vs_actual.png"))
    return written


def _bars(rows: list[Row], path: Path, value, label: str, log: bool) -> Path:
    import matplotlib.pyplot as plt

    workloads = list(dict.fromkeys(r.workload for r in rows))
    schedulers = list(dict.fromkeys(r.scheduler for r in rows))
    by = {(r.workload, r.scheduler): value(r) for r in rows}
    width = 0.8 / max(1, len(schedulers))
    fig, ax = plt.subplots(figsize=(max(8, 1.2 * len(workloads)), 4.5))
    for i, sched in enumerate(schedulers):
        xs, ys = [], []
        for j, w in enumerate(workloads):
            v = by.get((w, sched))
            if v is not None and v > 0:
                xs.append(j + (i - (len(schedulers) - 1) / 2) * width)
                ys.append(v)
        ax.bar(xs, ys, width, label=sched)
    ax.set_xticks(range(len(workloads)), workloads, rotation=20)
    ax.set_ylabel(label)
    if log:
        ax.set_yscale("log")
    if "makespan" in label:
        ax.axhline(1.0, color="black", linewidth=0.8)
    ax.legend(fontsize="small", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _predicted_vs_actual(rows: list[Row], path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 5))
    for r in rows:
        ax.scatter(r.actual_s, r.predicted_s, s=18)
        ax.annotate(f"{r.workload}\n{r.scheduler.split(':', 1)[-1]}",
                    (r.actual_s, r.predicted_s), fontsize=6)
    hi = max(max(r.actual_s, r.predicted_s) for r in rows) * 1.2  # type: ignore[type-var]
    lo = min(min(r.actual_s, r.predicted_s) for r in rows) / 1.2  # type: ignore[type-var]
    ax.plot([lo, hi], [lo, hi], color="black", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("actual makespan (s)")
    ax.set_ylabel("predicted makespan (s)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
