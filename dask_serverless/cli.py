"""The ``dask-serverless`` command."""

from __future__ import annotations

import argparse
import logging
import sys
import time


def _demo(args: argparse.Namespace) -> int:
    import dask
    import dask.array as da

    from .runtime import get as get_mod

    n, chunk = args.size, args.chunk
    x = da.random.RandomState(42).random((n, n), chunks=chunk)
    expr = (x @ x.T).sum()
    t0 = time.perf_counter()
    (result,) = dask.compute(expr, scheduler=get_mod.serverless_get)
    elapsed = time.perf_counter() - t0
    (expected,) = dask.compute(expr, scheduler="sync")
    run = get_mod.last_run
    out = sys.stdout
    out.write(f"result: sum(x @ x.T) for a {n}x{n} array in {chunk}x{chunk} chunks = "
              f"{result:.6f}\n")
    out.write(f"matches scheduler='sync': {abs(result - expected) <= 1e-9 * abs(expected)}\n")
    rec = run.record if run is not None else None
    if rec is not None:  # the summary comes from the recorded metrics
        out.write(
            f"run {rec.run_id}: tasks: {rec.tasks}  workers: {rec.workers} "
            f"({rec.workers_planned} planned)  invocations: {rec.invocations}  cold starts: "
            f"{rec.cold_starts}  warm starts: {rec.warm_starts}\n"
            f"makespan: {rec.makespan:.3f} s (compute call {elapsed:.3f} s)  "
            f"planner: {rec.planner}  backend: {rec.backend}  est. cost: "
            f"${rec.cost_usd:.6f}\n"
            f"recorded runs so far: {len(_store().run_ids())} "
            f"(`dask-serverless runs`, `dask-serverless show {rec.run_id}`)\n")
    elif run is not None:
        out.write(f"tasks: {len(run.dag)}  makespan: {run.makespan:.3f} s (metrics off)\n")
    return 0


def _store():
    from . import session
    from .metrics.store import MetricsStore

    url = session.metrics_url()
    if url is None:
        raise SystemExit("serverless.metrics.enabled is off: no metrics to read")
    return MetricsStore.from_url(url)


def _runs(args: argparse.Namespace) -> int:
    from .metrics.report import format_runs

    store = _store()
    runs = store.runs(store.run_ids(args.limit, args.signature))
    sys.stdout.write((format_runs(runs) if runs else "no recorded runs") + "\n")
    return 0


def _show(args: argparse.Namespace) -> int:
    from .metrics.report import format_show

    store = _store()
    try:
        run_id = store.resolve(args.run_id)
    except KeyError as exc:
        sys.stderr.write(f"dask-serverless show: {exc.args[0]}\n")
        return 2
    sys.stdout.write(format_show(store.run(run_id), store.invocations(run_id),
                                 store.tasks(run_id)) + "\n")
    return 0


def _export(args: argparse.Namespace) -> int:
    from .metrics.reader import MetricsReader

    reader = MetricsReader(_store())
    ids = reader.run_ids(args.limit)
    for path in reader.export(args.output, args.format, ids):
        sys.stdout.write(f"{path}\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dask-serverless",
                                     description="Run Dask graphs on serverless workers.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run an example workflow on the embedded default")
    demo.add_argument("--size", type=int, default=4000)
    demo.add_argument("--chunk", type=int, default=1000)
    demo.set_defaults(func=_demo)
    runs = sub.add_parser("runs", help="list recent recorded runs")
    runs.add_argument("--limit", type=int, default=20)
    runs.add_argument("--signature", help="only runs of this workflow signature")
    runs.set_defaults(func=_runs)
    show = sub.add_parser("show", help="where one run's time went, per worker")
    show.add_argument("run_id", help="a run id (or a unique prefix of one)")
    show.set_defaults(func=_show)
    metrics = sub.add_parser("metrics", help="recorded metrics")
    metrics_sub = metrics.add_subparsers(dest="metrics_command", required=True)
    export = metrics_sub.add_parser("export", help="write runs, invocations, tasks, inputs")
    export.add_argument("--format", choices=("parquet", "csv"), default="parquet")
    export.add_argument("-o", "--output", default="dask-serverless-metrics",
                        help="directory to write <table>.<format> files into")
    export.add_argument("--limit", type=int, default=None, help="newest runs only")
    export.set_defaults(func=_export)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
