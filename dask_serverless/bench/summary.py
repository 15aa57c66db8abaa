"""Samples -> one row per (workload, scheduler): medians, spread, ratios; the target
checks of the benchmark issue; text and Markdown tables."""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .runner import BenchResult, Sample
from .schedulers import LOCALCLUSTER_WORKERS, SERVERLESS_PREFIX

BASELINE = f"LocalCluster({LOCALCLUSTER_WORKERS})"
OVERHEAD_WORKLOAD = "tree-10k"
MAKESPAN_WORKLOADS = ("tree-1k", "tree-10k", "gemm", "image")
CRITICAL_PATH_SLACK = 1.2


@dataclass
class Row:
    workload: str
    scheduler: str
    tasks: int
    runs: int
    makespan_s: float | None  # median
    spread: float | None  # (max - min) / median over the timed runs
    vs_baseline: float | None  # median makespan / LocalCluster's
    vs_critical_path: float | None
    vs_lower_bound: float | None  # median makespan / max(critical path, work / cores)
    overhead_ms_per_task: float | None
    cost_usd: float | None
    workers: float | None
    cold_starts: int | None  # summed over the timed runs
    bytes_moved: float | None
    predicted_s: float | None
    actual_s: float | None  # the serverless run's own makespan (submit -> outputs)
    error: str | None

    @property
    def serverless(self) -> bool:
        return self.scheduler.startswith(SERVERLESS_PREFIX)


def _median(values: Iterable[float | int | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def summarise(result: BenchResult) -> list[Row]:
    groups: dict[tuple[str, str], list[Sample]] = {}
    for s in result.samples:
        groups.setdefault((s.workload, s.scheduler), []).append(s)
    rows = []
    for (workload, scheduler), samples in groups.items():
        ok = [s for s in samples if s.makespan_s is not None]
        times = [s.makespan_s for s in ok]
        med = _median(times)
        cold = [s.cold_starts for s in ok if s.cold_starts is not None]
        bytes_moved = _median(s.bytes_moved if s.bytes_moved is not None else
                              s.redis_net_bytes for s in ok)
        rows.append(Row(
            workload, scheduler, samples[0].tasks, len(ok), med,
            (max(times) - min(times)) / med if med else None, None,
            _ratio(med, samples[0].critical_path_s), _ratio(med, samples[0].lower_bound_s),
            _median(s.overhead_ms_per_task for s in ok), _median(s.cost_usd for s in ok),
            _median(s.workers for s in ok), sum(cold) if cold else None, bytes_moved,
            _median(s.predicted_s for s in ok), _median(s.run_makespan_s for s in ok),
            next((s.error for s in samples if s.error), None)))
    base = {r.workload: r.makespan_s for r in rows if r.scheduler == BASELINE}
    for r in rows:
        if r.makespan_s is not None and base.get(r.workload):
            r.vs_baseline = r.makespan_s / base[r.workload]
    return rows


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def best_serverless(rows: list[Row], workload: str) -> Row | None:
    done = [r for r in rows if r.workload == workload and r.serverless and r.makespan_s]
    return min(done, key=lambda r: r.makespan_s) if done else None


@dataclass
class Target:
    """One target of the benchmark issue: ``met`` is None when this run did not measure
    what it needs."""

    name: str
    ratio: float | None
    limit: float
    met: bool | None
    note: str = ""


def targets(rows: list[Row]) -> list[Target]:
    """The issue's targets, as ratios measured in this run."""
    out = []
    by = {(r.workload, r.scheduler): r for r in rows}
    best = best_serverless(rows, OVERHEAD_WORKLOAD)
    lc = by.get((OVERHEAD_WORKLOAD, BASELINE))
    ratio = None
    if best and lc and best.overhead_ms_per_task is not None and lc.overhead_ms_per_task:
        ratio = best.overhead_ms_per_task / lc.overhead_ms_per_task
    out.append(_target(f"per-task overhead on {OVERHEAD_WORKLOAD}: best serverless / "
                       f"{BASELINE}", ratio, 1.0))
    for w in MAKESPAN_WORKLOADS:
        best = best_serverless(rows, w)
        out.append(_target(f"makespan on {w}: best serverless / {BASELINE}",
                           best.vs_baseline if best else None, 1.0))
    for w in dict.fromkeys(r.workload for r in rows):
        best = best_serverless(rows, w)
        if best is None:
            continue
        note = (f"{best.scheduler}; / max(critical path, work / cores): "
                f"{_fmt(best.vs_lower_bound, 'x')}")
        out.append(_target(f"makespan on {w}: best serverless / critical path",
                           best.vs_critical_path, CRITICAL_PATH_SLACK, note))
    return out


def _target(name: str, ratio: float | None, limit: float, note: str = "") -> Target:
    return Target(name, ratio, limit, None if ratio is None else ratio <= limit, note)


# -- formatting ---------------------------------------------------------------------------
COLUMNS = ("workload", "scheduler", "tasks", "makespan s", "spread", "x LocalCluster",
           "x crit. path", "overhead ms/task", "cost USD", "workers", "cold starts",
           "bytes moved", "predicted s", "actual s")


def _fmt(value: Any, kind: str = "g") -> str:
    if value is None:
        return "n/a"
    if kind == "pct":
        return f"±{50 * value:.0f}%"
    if kind == "x":
        return f"{value:.2f}x"
    if kind == "s":
        return f"{value:.3f}" if abs(value) < 1e4 else f"{value:.2e}"
    if kind == "ms":
        return f"{value:.3f}"
    if kind == "usd":
        return f"{value:.2e}"
    if kind == "bytes":
        return _human_bytes(value)
    if kind == "int":
        return f"{value:.0f}"
    return str(value)


def _human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def cells(row: Row) -> list[str]:
    if row.makespan_s is None:
        error = row.error if len(row.error or "") <= 48 else row.error[:45] + "..."
        return [row.workload, row.scheduler, str(row.tasks), f"failed: {error}"] + \
            [""] * (len(COLUMNS) - 4)
    return [row.workload, row.scheduler, str(row.tasks), _fmt(row.makespan_s, "s"),
            _fmt(row.spread, "pct"), _fmt(row.vs_baseline, "x"),
            _fmt(row.vs_critical_path, "x"), _fmt(row.overhead_ms_per_task, "ms"),
            _fmt(row.cost_usd, "usd"), _fmt(row.workers, "int"),
            _fmt(row.cold_starts, "int"), _fmt(row.bytes_moved, "bytes"),
            _fmt(row.predicted_s, "s"), _fmt(row.actual_s, "s")]


def text_table(rows: list[Row]) -> str:
    table = [list(COLUMNS)] + [cells(r) for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(COLUMNS))]
    lines = []
    for n, line in enumerate(table):
        lines.append("  ".join(c.ljust(w) if i < 2 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(line, widths, strict=True))))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(rows: list[Row]) -> str:
    head = "| " + " | ".join(COLUMNS) + " |"
    rule = "| " + " | ".join("---" if i < 2 else "---:" for i in range(len(COLUMNS))) + " |"
    return "\n".join([head, rule] + ["| " + " | ".join(cells(r)) + " |" for r in rows])


def targets_text(rows: list[Row]) -> str:
    lines = []
    for t in targets(rows):
        verdict = "not measured" if t.met is None else ("met" if t.met else "MISSED")
        note = f" ({t.note})" if t.note else ""
        lines.append(f"- {t.name}: {_fmt(t.ratio, 'x')} (target <= {t.limit:g}x): "
                     f"{verdict}{note}")
    return "\n".join(lines)


LEGEND = (
    "makespan: median wall time of the scheduler's get(graph, keys) over the timed runs; "
    "spread: ±half the range (max - min) over those runs, relative to the median; "
    "x crit. path: makespan / the critical path of per-task times measured with the sync "
    "scheduler; overhead: (makespan - max(critical path, work / cores used)) / tasks; "
    "workers: fixed parallelism, or the plan's worker count for serverless; cold starts: "
    "summed over the timed runs; bytes moved: task data up and down (metrics) or else "
    "network bytes through Redis; predicted: the simulator's makespan for the plan; "
    "actual: the serverless run's own makespan (submit to outputs collected); "
    "n/a: not measured by this build or scheduler.")


def markdown_report(result: BenchResult, rows: list[Row], command: str) -> str:
    m = result.machine
    return "\n".join([
        f"Measured on {m['cpu']}, {m['cores']} cores, {m['system']}, Python {m['python']}, "
        f"dask {m['dask']}, distributed {m['distributed']}; {m['date']}; load average "
        f"{m['loadavg_start']} at start, {m['loadavg_end']} at end. Command: `{command}`.",
        "", markdown_table(rows), "", "Targets (ratios from this run):", "",
        targets_text(rows), "", LEGEND])
