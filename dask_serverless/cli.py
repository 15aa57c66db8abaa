"""The ``dask-serverless`` command."""

from __future__ import annotations

import argparse
import logging
import sys
import time

from .bench import command as bench_command


def _demo(args: argparse.Namespace) -> int:
    import dask
    import dask.array as da

    from . import session
    from .runtime import get as get_mod

    n, chunk = args.size, args.chunk
    x = da.random.RandomState(42).random((n, n), chunks=chunk)
    expr = (x @ x.T).sum()
    backend = session.backend()
    before = dict(getattr(backend, "pool", None).stats()) if hasattr(backend, "pool") else {}
    t0 = time.perf_counter()
    (result,) = dask.compute(expr, scheduler=get_mod.serverless_get)
    elapsed = time.perf_counter() - t0
    (expected,) = dask.compute(expr, scheduler="sync")
    run = get_mod.last_run
    after = backend.pool.stats() if hasattr(backend, "pool") else {}
    out = sys.stdout
    out.write(f"result: sum(x @ x.T) for a {n}x{n} array in {chunk}x{chunk} chunks = "
              f"{result:.6f}\n")
    out.write(f"matches scheduler='sync': {abs(result - expected) <= 1e-9 * abs(expected)}\n")
    if run is not None:
        invocations = after.get("cold_starts", 0) + after.get("warm_starts", 0) - \
            before.get("cold_starts", 0) - before.get("warm_starts", 0)
        out.write(
            f"tasks: {len(run.dag)}  workers (plan): {len(run.plan.workers)}  "
            f"invocations: {invocations}  cold starts: "
            f"{after.get('cold_starts', 0) - before.get('cold_starts', 0)}  warm starts: "
            f"{after.get('warm_starts', 0) - before.get('warm_starts', 0)}\n"
            f"makespan: {run.makespan:.3f} s (compute call {elapsed:.3f} s)  "
            f"planner: {run.plan.planner}  backend: {backend.name}  "
            f"redis: {session.redis_url()}\n")
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
    bench_command.add_parser(sub)
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
