"""``dask-serverless bench``: arguments, the progress bar, and the files it writes
(``samples.csv``, ``summary.csv``, ``results.md``, PNG plots, and the runs' metrics
in ``metrics/``) in ``--out``."""

from __future__ import annotations

import argparse
import csv
import dataclasses
import logging
import os
import shlex
import sys
import time
from pathlib import Path

import dask

from .schedulers import DASK_SCHEDULERS
from .workloads import WORKLOADS

QUICK_REPEAT, FULL_REPEAT = 3, 5


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmark workloads against Dask's schedulers",
                       description="Run each workload under Dask's sync, threads, processes "
                       "and LocalCluster schedulers and under serverless_get with each "
                       "planner and pass; print a table; write CSV, Markdown and plots.")
    p.add_argument("--quick", action="store_true",
                   help="small sizes and 3 repetitions (a few minutes on 2 cores)")
    p.add_argument("--workloads", nargs="+", default=list(WORKLOADS), metavar="NAME",
                   help=f"workloads to run (default: all of {', '.join(WORKLOADS)})")
    p.add_argument("--planners", nargs="*", default=None, metavar="NAME",
                   help="serverless planners (default: every registered planner)")
    p.add_argument("--passes", nargs="*", default=None, metavar="NAME",
                   help="optimisation passes, each run with the first planner "
                   "(default: every registered pass; none with --quick)")
    p.add_argument("--schedulers", nargs="*", default=list(DASK_SCHEDULERS),
                   metavar="NAME", help=f"Dask schedulers (default: {' '.join(DASK_SCHEDULERS)})")
    p.add_argument("--repeat", type=int, default=None,
                   help=f"timed runs per scheduler (default {QUICK_REPEAT} quick, "
                   f"{FULL_REPEAT} full)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs first (default 1)")
    p.add_argument("--param", action="append", default=[], metavar="WORKLOAD.KEY=VALUE",
                   help="override a workload size, e.g. fanout.sleep_s=0.1 (repeatable)")
    p.add_argument("--out", type=Path, default=None,
                   help="output folder (default: bench-results/<date-time>)")
    p.add_argument("--metrics-dir", type=Path, default=None,
                   help="where the runs' metrics are kept (default: OUT/metrics, so the "
                   "planners learn only from this benchmark's own runs)")
    p.add_argument("--readme-table", action="store_true",
                   help="print the Markdown results section instead of the text table")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=main)


def parse_params(items: list[str]) -> dict[str, dict[str, str]]:
    """``["fanout.sleep_s=0.1"]`` -> ``{"fanout": {"sleep_s": "0.1"}}``."""
    out: dict[str, dict[str, str]] = {}
    for item in items:
        name, sep, value = item.partition("=")
        workload, dot, key = name.partition(".")
        if not sep or not dot or not workload or not key:
            raise SystemExit(f"--param {item!r}: expected WORKLOAD.KEY=VALUE, "
                             "e.g. fanout.sleep_s=0.1")
        out.setdefault(workload, {})[key] = value
    return out


BLAS_THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def single_threaded_blas() -> None:
    """One BLAS thread per task everywhere, as in LocalCluster workers and serverless
    containers: else the sync and threads schedulers (and the per-task times the bounds
    come from) would use a BLAS thread pool the others do not get. Must run before
    numpy is imported; child processes inherit it."""
    if "numpy" in sys.modules:
        logging.getLogger(__name__).warning(
            "numpy was imported before the benchmark set %s=1: the sync and threads "
            "schedulers may use several BLAS threads per task", BLAS_THREAD_VARS[0])
    for var in BLAS_THREAD_VARS:
        os.environ.setdefault(var, "1")


def main(args: argparse.Namespace) -> int:
    single_threaded_blas()
    from .runner import BenchOptions
    from .summary import LEGEND, markdown_report, summarise, targets_text, text_table

    if not args.verbose:
        _quiet_distributed()
    options = BenchOptions(
        workloads=args.workloads, quick=args.quick,
        repeat=args.repeat or (QUICK_REPEAT if args.quick else FULL_REPEAT),
        warmup=args.warmup, dask_schedulers=args.schedulers, planners=args.planners,
        passes=args.passes if args.passes is not None or not args.quick else [],
        params=parse_params(args.param))
    out_dir = args.out or Path("bench-results") / time.strftime("%Y%m%d-%H%M%S")
    out_dir.mkdir(parents=True, exist_ok=True)
    command = "dask-serverless " + shlex.join(args.argv)
    metrics_dir = args.metrics_dir or out_dir / "metrics"
    try:
        with dask.config.set({"serverless.metrics.data-dir": str(metrics_dir)}):
            result = _run_with_progress(options, not args.no_progress)
    except ValueError as exc:
        raise SystemExit(f"dask-serverless bench: {exc}") from exc
    rows = summarise(result)
    report = markdown_report(result, rows, command)
    _write_csv(out_dir / "samples.csv", [s.as_row() for s in result.samples])
    _write_csv(out_dir / "summary.csv", [dataclasses.asdict(r) for r in rows])
    (out_dir / "results.md").write_text(report + "\n")
    written = [] if args.no_plots else _plots(rows, out_dir)
    out = sys.stdout
    if args.readme_table:
        out.write(report + "\n")
    else:
        out.write(text_table(rows) + "\n\nTargets:\n" + targets_text(rows) + "\n\n" +
                  LEGEND + "\n")
    sys.stderr.write(f"wrote {out_dir}/samples.csv, summary.csv, results.md"
                     + "".join(f", {p.name}" for p in written) + "\n")
    return 0


def _quiet_distributed() -> None:
    """distributed sets its loggers to INFO when imported: import it first, then lower."""
    try:
        import distributed  # noqa: F401
    except ImportError:
        return
    logging.getLogger("distributed").setLevel(logging.ERROR)


def _run_with_progress(options, show: bool):
    from .runner import run_bench

    if not show:
        return run_bench(options)
    from tqdm import tqdm

    with tqdm(desc="bench", unit="run", file=sys.stderr, dynamic_ncols=True) as bar:
        return run_bench(options, bar)


def _plots(rows, out_dir: Path) -> list[Path]:
    import importlib.util

    from .plots import write_plots

    if importlib.util.find_spec("matplotlib") is None:
        sys.stderr.write("matplotlib is not installed: no plots (pip install "
                         "'dask-serverless[bench]')\n")
        return []
    return write_plots(rows, out_dir)


def _write_csv(path: Path, rows: list[dict]) -> None:
    if not rows:
        path.write_text("")
        return
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if v is None else v for k, v in row.items()})
