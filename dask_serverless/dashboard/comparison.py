"""Planners side by side: predicted vs actual over a workflow's recorded runs, what the
simulator predicts for plans never run, and how prediction errors evolve.

Each run's prediction uses only what was recorded before it (``WorkflowHistory.
predictor_before``) and replays the run's recorded plan in the simulator, with the
containers the run found warm at submission, on its backend's recorded capacity (cores
shared by containers, container cap).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..dag import DAG
from ..metrics.accuracy import prediction_errors
from ..metrics.records import RunRecord
from ..planners import PASSES, PLANNERS, Objective, apply_passes, get_planner
from ..simulator import Simulator
from .history import WorkflowHistory
from .timeline import planned

if TYPE_CHECKING:
    import pandas as pd

PASS_NAMES = tuple(PASSES)


def combination(record: RunRecord) -> str:
    """``planner`` plus the passes the run asked for, e.g. ``wukong + pre-warm, task-dup``."""
    passes = sorted(record.planner_options.get("passes", {}))
    return record.planner + (" + " + ", ".join(passes) if passes else "")


def runs_table(history: WorkflowHistory, history_runs: int,
               inline_bytes: int) -> pd.DataFrame:
    """One row per run: its planner combination, predicted and actual makespan, cost,
    workers, cold and warm starts."""
    import pandas as pd

    rows = []
    for index, run in enumerate(history.runs):
        rec = run.record
        sim = planned(run, history.predictor_before(index, history_runs), inline_bytes)
        rows.append({
            "run_id": rec.run_id, "submitted": rec.submit_time, "combination": combination(rec),
            "status": rec.status, "history_runs": min(index, history_runs),
            "actual_makespan": rec.makespan, "predicted_makespan": sim.makespan if sim else None,
            "actual_cost": rec.cost_usd, "predicted_cost": sim.cost if sim else None,
            "actual_workers": rec.workers, "predicted_workers": sim.workers if sim else None,
            "actual_cold": rec.cold_starts, "predicted_cold": sim.cold_starts if sim else None,
            "actual_warm": rec.warm_starts, "predicted_warm": sim.warm_starts if sim else None,
        })
    return pd.DataFrame(rows)


METRICS = ("makespan", "cost", "workers", "cold", "warm")


def summary_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Per combination: runs, and median and spread (interquartile range) of each
    predicted and actual metric over its successful runs."""
    import pandas as pd

    rows = []
    ok = runs[runs["status"] == "ok"]
    for combo, group in ok.groupby("combination", sort=True):
        row: dict[str, object] = {"combination": combo, "runs": len(group)}
        for metric in METRICS:
            for side in ("predicted", "actual"):
                values = [float(v) for v in group[f"{side}_{metric}"] if v == v and v is not None]
                row[f"{side}_{metric}_median"] = statistics.median(values) if values else None
                row[f"{side}_{metric}_iqr"] = _iqr(values)
        rows.append(row)
    return pd.DataFrame(rows)


def _iqr(values: Sequence[float]) -> float | None:
    if len(values) < 2:
        return 0.0 if values else None
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[2] - q[0]


def what_if(dag: DAG, predictor, *, parallelism: int, memory_mb: int, inline_bytes: int,
            planners: Sequence[str] = tuple(PLANNERS),
            pass_sets: Sequence[tuple[str, ...]] = ((), PASS_NAMES)) -> pd.DataFrame:
    """Plan ``dag`` with each planner and each set of passes and simulate every plan
    under ``predictor``, executing nothing: predicted makespan, cost, workers, starts."""
    import pandas as pd

    sim = Simulator(dag, predictor, inline_bytes=inline_bytes)
    rows = []
    for name in planners:
        t0 = time.perf_counter()
        base = get_planner(name).plan(dag, parallelism=parallelism, memory_mb=memory_mb,
                                      predictor=predictor)
        plan_s = time.perf_counter() - t0
        for passes in pass_sets:
            plan = apply_passes(dag, base, list(passes), sim, Objective()) if passes else base
            result = sim.run(plan)
            rows.append({"planner": name, "passes": ", ".join(passes) or "none",
                         "predicted_makespan": result.makespan, "predicted_cost": result.cost,
                         "workers": result.workers, "invocations": len(result.invocations),
                         "cold_starts": result.cold_starts, "warm_starts": result.warm_starts,
                         "bytes_moved": result.bytes_moved, "planning_s": plan_s})
    return pd.DataFrame(rows)


def errors_table(history: WorkflowHistory, history_runs: int,
                 min_exec_s: float = 1e-3) -> pd.DataFrame:
    """One row per prediction scored on each run, learning only from earlier runs:
    run, submitted, kind, function, predicted, actual, error %. The first run (nothing
    learned yet) is left out. Times are compared as recorded (a predictor without the
    backend's capacity): this scores the fits, contention included."""
    import pandas as pd

    rows = []
    for index, run in enumerate(history.runs):
        if index == 0:
            continue
        predictor = history.predictor_before(index, history_runs, capacity=False)
        for e in prediction_errors(predictor, run.tasks, run.invocations,
                                   min_exec_s=min_exec_s):
            rows.append({"run_id": run.run_id, "submitted": run.record.submit_time,
                         "run": index, "kind": e.kind, "function": e.function,
                         "predicted": e.predicted, "actual": e.actual, "error_pct": e.pct})
    return pd.DataFrame(rows, columns=["run_id", "submitted", "run", "kind", "function",
                                       "predicted", "actual", "error_pct"])


def worst_functions(errors: pd.DataFrame) -> pd.DataFrame:
    """Per function: median error % of execution time and output size, worst first."""
    import pandas as pd

    per_fn = errors[errors["function"] != ""]
    if per_fn.empty:
        return pd.DataFrame(columns=["function", "exec_error_pct", "output_error_pct",
                                     "samples"])
    table = per_fn.pivot_table(index="function", columns="kind", values="error_pct",
                               aggfunc="median")
    counts = per_fn.groupby("function").size()
    out = pd.DataFrame({"function": table.index,
                        "exec_error_pct": table.get("exec"),
                        "output_error_pct": table.get("output"),
                        "samples": counts.reindex(table.index).values}).reset_index(drop=True)
    worst = out[["exec_error_pct", "output_error_pct"]].max(axis=1, skipna=True)
    return out.assign(_w=worst).sort_values("_w", ascending=False).drop(columns="_w")
