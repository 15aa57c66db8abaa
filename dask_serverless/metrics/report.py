"""Plain-text views of recorded runs for the CLI: a list of runs, and where one run's time
went, per worker (no pandas needed)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .records import InvocationRecord, RunRecord, TaskRecord

PARTS = ("exec", "download", "upload", "fan-in", "start cold", "start warm", "spec fetch",
         "other")


@dataclass
class Breakdown:
    """Seconds per part of the work, summed over invocations (worker-seconds)."""

    invocations: int = 0
    cold: int = 0
    warm: int = 0
    tasks: int = 0
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PARTS, 0.0))

    def add(self, inv: InvocationRecord, tasks: Sequence[TaskRecord]) -> None:
        s = self.seconds
        self.invocations += 1
        self.cold += inv.cold
        self.warm += not inv.cold
        self.tasks += len(tasks)
        s["start cold" if inv.cold else "start warm"] += inv.startup_s
        s["spec fetch"] += inv.spec_fetch_s
        inside = inv.spec_fetch_s
        for part, value in (("exec", sum(t.exec_s for t in tasks)),
                            ("download", sum(t.download_s for t in tasks)),
                            ("upload", sum(t.upload_s for t in tasks)),
                            ("fan-in", sum(t.fanin_s for t in tasks))):
            s[part] += value
            inside += value
        s["other"] += max(0.0, inv.duration_s - inside)


def breakdown(invocations: Sequence[InvocationRecord],
              tasks: Sequence[TaskRecord]) -> tuple[Breakdown, dict[str, Breakdown]]:
    """(whole run, per worker id) breakdowns."""
    by_inv: dict[str, list[TaskRecord]] = {}
    for t in tasks:
        by_inv.setdefault(t.invocation_id, []).append(t)
    total, per_worker = Breakdown(), {}
    for inv in invocations:
        mine = by_inv.get(inv.invocation_id, [])
        total.add(inv, mine)
        per_worker.setdefault(inv.worker_id, Breakdown()).add(inv, mine)
    return total, per_worker


def idle_time(run: RunRecord, tasks: Sequence[TaskRecord]) -> float:
    """Seconds of the makespan during which no task was running anywhere."""
    busy, cursor = 0.0, run.submit_time
    for start, end in sorted((t.start, t.end) for t in tasks):
        start, end = max(start, cursor), min(end, run.submit_time + run.makespan)
        if end > start:
            busy += end - start
            cursor = end
    return max(0.0, run.makespan - busy)


def format_runs(runs: Sequence[RunRecord]) -> str:
    header = (f"{'run id':<16}  {'submitted':<19}  {'workflow':<28}  {'planner':<8}  "
              f"{'tasks':>6}  {'inv':>5}  {'cold':>4}  {'warm':>4}  {'makespan':>9}  "
              f"{'moved':>9}  {'cost $':>10}  status")
    lines = [header]
    for r in runs:
        lines.append(
            f"{r.run_id:<16}  {_when(r.submit_time):<19}  {_workflow(r):<28}  "
            f"{r.planner:<8.8}  {r.tasks:>6}  {r.invocations:>5}  {r.cold_starts:>4}  "
            f"{r.warm_starts:>4}  {r.makespan:>8.3f}s  {format_size(r.bytes_moved):>9}  "
            f"{r.cost_usd:>10.3g}  {r.status}{'' if r.complete else ' (partial)'}")
    return "\n".join(lines)


def _workflow(run: RunRecord, width: int = 28) -> str:
    """The run's function names (its signature for runs recorded without them)."""
    text = run.functions or run.signature
    return text if len(text) <= width else text[:width - 3] + "..."


def format_show(run: RunRecord, invocations: Sequence[InvocationRecord],
                tasks: Sequence[TaskRecord]) -> str:
    total, per_worker = breakdown(invocations, tasks)
    worker_s = sum(total.seconds.values()) or 1.0
    lines = [
        f"run {run.run_id}  workflow {run.functions or '?'} (signature {run.signature})",
        f"planner {run.planner} {run.planner_options}  backend {run.backend}  "
        f"status {run.status}",
        *([f"failed: {run.error}"] if run.error else []),
        f"submitted {_when(run.submit_time)}  makespan {run.makespan:.3f} s  tasks {run.tasks}"
        f"  invocations {run.invocations} ({run.cold_starts} cold, {run.warm_starts} warm)"
        f"  workers {run.workers}/{run.workers_planned} planned",
        f"moved {format_size(run.bytes_moved)} (up {format_size(run.upload_bytes)}, down "
        f"{format_size(run.download_bytes)}, inline {format_size(run.inline_bytes)})  "
        f"{run.gb_seconds:.4f} GB-s  cost ${run.cost_usd:.6f}",
        f"waiting (no task running): {idle_time(run, tasks):.3f} s of the makespan",
        "",
        "where worker time went (seconds, summed over invocations):",
        "  " + "  ".join(f"{p}: {v:.3f} ({100 * v / worker_s:.0f}%)"
                         for p, v in total.seconds.items()),
        "",
        f"{'worker':<10} {'inv':>4} {'cold':>4} {'warm':>4} {'tasks':>6} "
        + " ".join(f"{p:>10}" for p in PARTS),
    ]
    for wid in sorted(per_worker, key=_natural):
        b = per_worker[wid]
        lines.append(f"{wid:<10} {b.invocations:>4} {b.cold:>4} {b.warm:>4} {b.tasks:>6} "
                     + " ".join(f"{b.seconds[p]:>10.4f}" for p in PARTS))
    if not run.complete:
        lines.append("(some invocation records arrived after the run was recorded or never)")
    return "\n".join(lines)


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def format_size(n: float) -> str:
    """Bytes as B, KiB, MiB or GiB."""
    if n < 1024:
        return f"{n:.0f} B"
    for unit in ("KiB", "MiB"):
        n /= 1024
        if n < 1024:
            return f"{n:.1f} {unit}"
    return f"{n / 1024:.1f} GiB"


def _natural(wid: str) -> tuple:
    digits = "".join(ch for ch in wid if ch.isdigit())
    return (wid.rstrip("0123456789"), int(digits) if digits else -1, wid)


def format_logs(run: RunRecord | None, tasks: Sequence[TaskRecord],
                logs: dict[int, list[list[Any]]], task_filter: str | None = None) -> str:
    """Every line a run's tasks printed (STDOUT, STDERR), warned (WARNING py.warnings) or
    logged, in time order: ``+seconds LEVEL (task key on worker) message``."""
    who = {t.task_id: f"{t.key} on {t.worker_id}" for t in tasks}
    t0 = run.submit_time if run is not None else 0.0
    rows = []
    for tid, lines in logs.items():
        name = who.get(tid, f"task id {tid}")
        if task_filter and task_filter not in name:
            continue
        for when, level, logger_name, message in lines:
            source = "" if logger_name in ("stdout", "stderr") else f"{logger_name}: "
            rows.append((when, f"+{when - t0:8.3f}s {level:<8} ({name}) {source}{message}"))
    return "\n".join(text for _, text in sorted(rows, key=lambda r: r[0]))
