"""How well the Predictor foresees the next run, learning only from earlier runs.

For each workflow, input sizes grow step by step; each size runs ``--runs`` times. Before
every run a Predictor is built from the workflow's recorded history (its signature: same
chunk count, other data sizes), then compared with what the run records, per task:

- "same size": the run after ``--runs`` earlier runs of this size (the issue's "after 3
  runs"), and the ``--scored`` - 1 runs after it (each predicted from all before it);
- "new size": the first run of a size never seen (extrapolation through the learned
  I/O fits). Root tasks have 0 input bytes (their size parameter is baked into the
  task); they are scored there when they have a size feature (``TaskNode.size``: the
  delayed workflows declare it with ``@hints(size=...)``, dask.array roots get their
  chunk bytes), which the predictor extrapolates over;
- "new, no size": the same runs and history, predicted as if no task had a size (what
  the predictor did before root sizes existed; same tasks scored as "new size").

Reported: median absolute % error of the makespan (the plan simulator replaying the run's
plan with the Predictor as its cost model), of per-task execution time and output bytes,
and of worker start time (cold / warm). The makespan is predicted twice from the same
history: as on Lambda (every container its own CPU, ``lambda model``) and with the local
backend's capacity (shared cores, container cap; times learned alone, ``capacity``). The
task and start columns are the capacity predictor's times alone against the recorded
(crowded) times, so they measure contention as much as the fits.

    python benchmarks/predictions.py [--runs 3] [--quick]

Metrics go to a throw-away data directory unless ``--data-dir`` is given.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable

import numpy as np
from dask import delayed

from dask_serverless import hints

CHUNKS = 6


@hints(size=lambda i, n: 8 * n)
def gen(i: int, n: int) -> np.ndarray:
    return np.random.default_rng(i).random(n)


def sort(x: np.ndarray) -> np.ndarray:
    return np.sort(x)


def tail(*xs: np.ndarray) -> float:
    return float(sum(x[-1] for x in xs))


@hints(size=lambda i, n: 8 * n * n)
def square_matrix(i: int, n: int) -> np.ndarray:
    return np.random.default_rng(i).random((n, n))


def matmul(a: np.ndarray) -> np.ndarray:
    return a @ a


def trace_sum(*ms: np.ndarray) -> float:
    return float(sum(np.trace(m) for m in ms))


@hints(size=lambda i, n: n)
def payload(i: int, n: int) -> bytes:
    return bytes(n)


def pause(data: bytes) -> bytes:
    """Sleeps 1 s per 50 MB: a 'function' whose cost is exactly linear in its input."""
    time.sleep(len(data) / 50e6)
    return data[: len(data) // 2]


def count(*parts: bytes) -> int:
    return sum(len(p) for p in parts)


def fan(source: Callable, work: Callable, reduce: Callable, n: int):
    return delayed(reduce)(*[delayed(work)(delayed(source)(i, n)) for i in range(CHUNKS)])


def array_workflow(n: int):
    import dask.array as da

    x = da.random.RandomState(0).random((n, n), chunks=(n // 2, n // 2))
    return (da.sin(x) ** 2 + da.cos(x) ** 2).sum()


WORKFLOWS: dict[str, tuple[Callable, list[int]]] = {
    "sort": (lambda n: fan(gen, sort, tail, n), [250_000, 500_000, 1_000_000, 2_000_000]),
    "matmul": (lambda n: fan(square_matrix, matmul, trace_sum, n), [300, 450, 650, 900]),
    "sleep-linear": (lambda n: fan(payload, pause, count, n),
                     [500_000, 1_000_000, 2_000_000, 4_000_000]),
    "dask.array": (array_workflow, [1600, 2400, 3200, 4000]),
}


def pct_error(pred: float, actual: float) -> float:
    return abs(pred - actual) / actual * 100 if actual > 0 else float("nan")


def med(values: list[float]) -> str:
    values = [v for v in values if v == v]
    return f"{statistics.median(values):6.1f}%" if values else "     -"


def unsized(dag):
    """``dag`` as if no task had a size feature."""
    from dataclasses import replace

    from dask_serverless.dag import DAG

    return DAG([replace(t, size=0, dependents=()) for t in dag.tasks], dag.outputs)


def score(predictor, unlimited, store, run, errors: dict[str, list[float]], min_exec: float,
          roots: bool, warm: dict[int, int], sizes: bool = True) -> None:
    """Add the % errors of ``predictor`` (and of the makespan of ``unlimited``, the same
    history without the backend's capacity) on what ``run`` (a ``Run``) recorded;
    ``warm``: live containers per memory config when the run started (those of the
    previous run are idle or about to be); ``roots``: score every root, else only roots
    with a size; ``sizes``: predict with the tasks' size feature (else as without)."""
    from dask_serverless.plan import ResourceConfig
    from dask_serverless.simulator import simulate

    dag = run.dag if sizes else unsized(run.dag)
    predicted = simulate(dag, run.plan, predictor, warm=warm).makespan
    errors.setdefault("makespan", []).append(pct_error(predicted, run.record.makespan))
    predicted = simulate(dag, run.plan, unlimited, warm=warm).makespan
    errors.setdefault("lambda", []).append(pct_error(predicted, run.record.makespan))
    run = run.record

    for t in store.tasks(run.run_id):
        if not roots and not t.inputs and not t.size:
            continue
        cfg = ResourceConfig(t.memory_mb)
        size = t.size if sizes else 0
        if t.exec_s >= min_exec:
            errors.setdefault("exec", []).append(pct_error(
                predictor.exec_time(t.function, t.input_bytes, cfg, size), t.exec_s))
        errors.setdefault("output", []).append(pct_error(
            predictor.output_bytes(t.function, t.input_bytes, size), t.output_bytes))
    for inv in store.invocations(run.run_id):
        state = "cold" if inv.cold else "warm"
        predicted = predictor.predict_worker_invocation_time(ResourceConfig(inv.memory_mb),
                                                             state)
        errors.setdefault(state, []).append(pct_error(predicted, inv.startup_s))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per size before scoring")
    parser.add_argument("--scored", type=int, default=1,
                        help="same-size runs scored after --runs (more: steadier medians)")
    parser.add_argument("--quick", action="store_true", help="two sizes per workflow")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--min-exec", type=float, default=1e-3,
                        help="score exec time only for tasks at least this long (s)")
    args = parser.parse_args()

    import dask

    from dask_serverless import serverless_get, session
    from dask_serverless.metrics.predictor import Predictor
    from dask_serverless.metrics.store import MetricsStore
    from dask_serverless.runtime import get as get_mod

    data_dir = args.data_dir or tempfile.mkdtemp(prefix="ds-predictions-bench-")
    rows = []
    totals: dict[str, dict[str, list[float]]] = {}
    with dask.config.set({"serverless.metrics.data-dir": data_dir}):
        store = MetricsStore.from_url(session.metrics_url())
        capacity = session.backend().capacity()
        for name, (build, sizes) in WORKFLOWS.items():
            signature = None
            errors: dict[str, dict[str, list[float]]] = {"same size": {}, "new size": {},
                                                         "new, no size": {}}
            for size in sizes[:2] if args.quick else sizes:
                for k in range(args.runs + max(1, args.scored)):
                    t0 = time.perf_counter()
                    predictor = (Predictor.from_store(store, signature=signature,
                                                      capacity=capacity)
                                 if signature else None)
                    fit_s = time.perf_counter() - t0
                    unlimited = (Predictor.from_store(store, signature=signature)
                                 if signature else None)
                    warm = {dask.config.get("serverless.memory"):
                            session.backend().pool.stats()["containers"]}
                    dask.compute(build(size), scheduler=serverless_get)
                    run = get_mod.last_run
                    signature = run.record.signature
                    if predictor is None or 0 < k < args.runs:
                        continue
                    e = errors["new size" if k == 0 else "same size"]
                    score(predictor, unlimited, store, run, e, args.min_exec, roots=k > 0,
                          warm=warm)
                    e.setdefault("fit_s", []).append(fit_s)
                    if k == 0:
                        score(predictor, unlimited, store, run, errors["new, no size"],
                              args.min_exec, roots=False, warm=warm, sizes=False)
            for kind, e in errors.items():
                rows.append((name, kind, e))
                for key, vals in e.items():
                    totals.setdefault(kind, {}).setdefault(key, []).extend(vals)
    session.close()

    print(f"median absolute % error of predictions made before each run "
          f"(history: earlier runs of the workflow; {args.runs} runs per size)")
    print(f"{'workflow':<13} {'scored run':<12} {'makespan':>9} {'(lambda)':>9} "
          f"{'task exec':>9} {'(n)':>5} "
          f"{'output B':>9} {'cold start':>10} {'warm start':>10} {'fit time':>9}")
    for name, kind, e in rows + [("ALL", k, v) for k, v in totals.items()]:
        fit = f"{statistics.median(e['fit_s']) * 1000:7.1f}ms" if e.get("fit_s") else "-"
        print(f"{name:<13} {kind:<12} {med(e.get('makespan', [])):>9} "
              f"{med(e.get('lambda', [])):>9} "
              f"{med(e.get('exec', [])):>9} {len(e.get('exec', [])):>5} "
              f"{med(e.get('output', [])):>9} {med(e.get('cold', [])):>10} "
              f"{med(e.get('warm', [])):>10} {fit:>9}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
