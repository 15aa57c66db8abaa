"""One run's timeline as tables: what ran where and when (actual, and planned by the
simulator), the critical path, the data each edge moved and each task's details.

Times are seconds after the run's submission.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..metrics.predictor import Predictor
from ..metrics.report import PARTS, breakdown, idle_time
from ..simulator import SimResult, simulate
from .history import RunData

if TYPE_CHECKING:
    import pandas as pd


def _pandas():
    import pandas

    return pandas


def task_table(run: RunData) -> pd.DataFrame:
    """One row per task as it ran: worker, invocation, times, sizes, config."""
    rows = []
    critical = set(critical_path(run))
    for t in run.task_by_id.values():
        inv = run.invocation_by_id.get(t.invocation_id)
        rows.append({"task_id": t.task_id, "key": t.key, "function": t.function,
                     "worker": t.worker_id, "invocation": t.invocation_id[:8],
                     "memory_mb": t.memory_mb, "start": t.start - run.t0,
                     "end": t.end - run.t0, "exec_s": t.exec_s,
                     "input_bytes": t.input_bytes, "download_bytes": t.download_bytes,
                     "download_s": t.download_s, "output_bytes": t.output_bytes,
                     "upload_bytes": t.upload_bytes, "upload_s": t.upload_s,
                     "fanin_s": t.fanin_s, "cold": bool(inv and inv.cold),
                     "critical": t.task_id in critical,
                     "log_lines": len(run.logs.get(t.task_id, []))})
    columns = ["task_id", "key", "function", "worker", "invocation", "memory_mb", "start",
               "end", "exec_s", "input_bytes", "download_bytes", "download_s",
               "output_bytes", "upload_bytes", "upload_s", "fanin_s", "cold", "critical",
               "log_lines"]
    return _pandas().DataFrame(rows, columns=columns).sort_values("task_id")


STARTUP_COLUMNS = ["worker", "invocation", "invoked", "started", "ended", "cold",
                   "memory_mb", "tasks", "invoker", "spec_bytes", "spec_s"]


def startup_table(run: RunData) -> pd.DataFrame:
    """One row per invocation: worker, invoked / started / ended, cold or warm, and the
    run spec it fetched (bytes, seconds to fetch and decode)."""
    rows = [{"worker": i.worker_id, "invocation": i.invocation_id[:8],
             "invoked": i.invoke_time - run.t0, "started": i.start_time - run.t0,
             "ended": i.end_time - run.t0, "cold": i.cold, "memory_mb": i.memory_mb,
             "tasks": i.tasks, "invoker": i.invoker, "spec_bytes": i.spec_bytes,
             "spec_s": i.spec_fetch_s}
            for i in run.invocations if not i.warmup]
    return _pandas().DataFrame(rows, columns=STARTUP_COLUMNS)


def critical_path(run: RunData) -> list[int]:
    """The chain that set the makespan: from the output that finished last, back through
    the input that arrived last at each task (task ids, first to last)."""
    tasks = run.task_by_id
    if not tasks:
        return []
    outputs = run.plan.outputs if run.plan is not None else []
    ends = [tasks[o] for o in outputs if o in tasks] or list(tasks.values())
    current: Any = max(ends, key=lambda t: t.end)
    path = [current.task_id]
    while current.inputs:
        deps = [tasks[i.dep] for i in current.inputs if i.dep in tasks]
        if not deps:
            break
        current = max(deps, key=lambda t: t.end)
        path.append(current.task_id)
    return path[::-1]


def edge_table(run: RunData) -> pd.DataFrame:
    """One row per DAG edge: producer, consumer, bytes, how it arrived, seconds."""
    tasks = run.task_by_id
    rows = []
    for t in tasks.values():
        for i in t.inputs:
            producer = tasks.get(i.dep)
            rows.append({"producer": i.dep, "consumer": t.task_id,
                         "producer_function": producer.function if producer else "?",
                         "consumer_function": t.function, "bytes": i.nbytes,
                         "source": i.source, "download_s": i.download_s,
                         "cross_worker": bool(producer and producer.worker_id != t.worker_id)})
    return _pandas().DataFrame(rows, columns=["producer", "consumer", "producer_function",
                                              "consumer_function", "bytes", "source",
                                              "download_s", "cross_worker"])


@dataclass
class TimeBreakdown:
    """Worker-seconds per part (``metrics.report.PARTS``) and the makespan's waiting."""

    seconds: dict[str, float]
    waiting_s: float  # of the makespan, no task running anywhere
    makespan_s: float


def time_breakdown(run: RunData) -> TimeBreakdown:
    total, _ = breakdown(run.invocations, run.tasks)
    return TimeBreakdown({p: total.seconds[p] for p in PARTS}, idle_time(run.record, run.tasks),
                         run.record.makespan)


def warm_at_start(run: RunData) -> dict[int, int]:
    """Containers per memory size the run found warm: its client-invoked invocations
    that started warm (what the simulator should assume was idle at submission)."""
    warm: Counter[int] = Counter()
    for i in run.invocations:
        if i.invoker == "client" and not i.cold and not i.warmup:
            warm[i.memory_mb] += 1
    return dict(warm)


def planned(run: RunData, predictor: Predictor, inline_bytes: int) -> SimResult | None:
    """The simulator's timeline of the run's recorded plan under ``predictor`` (None
    when the run did not record its plan or all its tasks)."""
    if run.dag is None or run.plan is None:
        return None
    return simulate(run.dag, run.plan.plan, predictor, inline_bytes=inline_bytes,
                    warm=warm_at_start(run))


def planned_table(run: RunData, sim: SimResult) -> pd.DataFrame:
    """The simulated timeline in ``task_table``'s terms (worker, start, end)."""
    dag = run.dag
    assert dag is not None
    rows = []
    for t in dag.tasks:
        inv = sim.invocations[sim.task_invocation[t.id]] if sim.task_invocation[t.id] >= 0 \
            else None
        rows.append({"task_id": t.id, "key": t.key, "function": t.func_name,
                     "worker": inv.worker_id if inv else "?",
                     "start": sim.task_start[t.id], "end": sim.task_end[t.id],
                     "cold": bool(inv and inv.cold)})
    return _pandas().DataFrame(rows)


def planned_startups(sim: SimResult) -> pd.DataFrame:
    """The simulated invocations in ``startup_table``'s terms."""
    rows = [{"worker": r.worker_id, "invoked": r.invoke_time, "started": r.start_time,
             "ended": r.end_time, "cold": r.cold, "memory_mb": r.memory_mb}
            for r in sim.invocations]
    return _pandas().DataFrame(rows, columns=["worker", "invoked", "started", "ended", "cold",
                                              "memory_mb"])


def task_details(run: RunData, task_id: int) -> dict[str, Any]:
    """Everything recorded about one task, for the details panel and the report."""
    t = run.task_by_id[task_id]
    inv = run.invocation_by_id.get(t.invocation_id)
    return {
        "key": t.key, "function": t.function, "task id": t.task_id, "worker": t.worker_id,
        "invocation": t.invocation_id, "resource config": f"{t.memory_mb} MB",
        "container": "cold" if inv and inv.cold else "warm",
        "start (s)": round(t.start - run.t0, 6), "end (s)": round(t.end - run.t0, 6),
        "exec (s)": round(t.exec_s, 6), "input bytes": t.input_bytes,
        "inputs": [{"from task": i.dep, "bytes": i.nbytes, "via": i.source,
                    "download s": round(i.download_s, 6)} for i in t.inputs],
        "output bytes": t.output_bytes, "upload bytes": t.upload_bytes,
        "upload (s)": round(t.upload_s, 6), "fan-in claim (s)": round(t.fanin_s, 6),
        "invoked": len(t.invoked),
    }


def log_lines(run: RunData, task_id: int) -> list[str]:
    """The task's captured log lines as text (time after submission, level, logger)."""
    return [f"+{when - run.t0:.3f}s {level} {name}: {message}"
            for when, level, name, message in run.logs.get(task_id, [])]
