"""Cold starts of local containers: ``spawn`` (a fresh interpreter) against
``fork-server`` (forked from the pool's zygote), measured in the same script.

- first cold start of a new pool (for fork-server it includes starting the zygote);
- a cold start on a pool in use (a memory config not seen yet: a new container);
- makespan of a cold 16-worker run on a new pool (16 small tasks and their sum).

Start times are the recorded ``InvocationRecord.startup_s`` (invoke -> the worker starts),
makespans the run records'. Medians over ``--repeat`` rounds, methods interleaved.

    python benchmarks/cold_start.py [--repeat 5] [--workers 16]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import dask
from dask import delayed

METHODS = ("spawn", "fork-server")


def work(i: int) -> int:
    return sum(range(20_000 + i))  # ~1 ms of CPU


def cold_run(method: str, workers: int, memory_mb: int, backend=None):
    """One run on ``backend`` (a new pool of ``method`` when None): (record, invocations)."""
    from dask_serverless import serverless_get
    from dask_serverless.backends.local import LocalBackend
    from dask_serverless.metrics import MetricsStore
    from dask_serverless.runtime import get as get_mod

    own = backend is None
    if own:
        with dask.config.set({"serverless.local.start-method": method}):
            backend = LocalBackend(max_containers=max(16, workers), keep_alive=600)
    try:
        total = delayed(sum)([delayed(work)(i) for i in range(workers)])
        dask.compute(total, scheduler=serverless_get, backend=backend, parallelism=workers,
                     memory=memory_mb)
        run = get_mod.last_run
        store = MetricsStore.from_url(dask.config.get("serverless.metrics.redis-url"))
        return run.record, store.invocations(run.run_id)
    finally:
        if own:
            backend.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--workers", type=int, default=16)
    args = parser.parse_args()

    from dask_serverless import session
    from dask_serverless.backends.local import LocalBackend

    url = session.redis_url()  # the embedded Redis; metrics go there too (nothing kept)
    load_before = os.getloadavg()
    first: dict[str, list[float]] = {m: [] for m in METHODS}
    later: dict[str, list[float]] = {m: [] for m in METHODS}
    makespan: dict[str, list[float]] = {m: [] for m in METHODS}
    t0 = time.perf_counter()
    with dask.config.set({"serverless.metrics.redis-url": url}):
        for _ in range(args.repeat):
            for method in METHODS:
                with dask.config.set({"serverless.local.start-method": method}):
                    backend = LocalBackend(max_containers=16, keep_alive=600)
                try:
                    for k in range(4):  # each a memory config not seen yet: a cold start
                        _, (inv,) = cold_run(method, 1, 256 + 64 * k, backend)
                        assert inv.cold
                        (first if k == 0 else later)[method].append(inv.startup_s)
                finally:
                    backend.close()
                record, invocations = cold_run(method, args.workers, 1024)
                assert sum(i.cold for i in invocations) == record.cold_starts
                makespan[method].append(record.makespan)
    load_after = os.getloadavg()

    out = sys.stdout
    out.write(f"\ncold starts, medians of {args.repeat} rounds ({time.perf_counter() - t0:.0f}"
              f" s; load average {load_before[0]:.2f} before, {load_after[0]:.2f} after; "
              f"{os.cpu_count()} CPUs)\n")
    out.write(f"{'measure':<34}{'spawn s':>10}{'fork-server s':>15}{'ratio':>8}\n")
    rows = [("first cold start of a new pool", first),
            ("cold start, pool in use", later),
            (f"makespan, {args.workers} workers all cold", makespan)]
    for name, samples in rows:
        s, f = (statistics.median(samples[m]) for m in METHODS)
        out.write(f"{name:<34}{s:>10.3f}{f:>15.3f}{f / s:>8.2f}\n")
    out.write("ratio: fork-server / spawn (below 1: fork-server is faster)\n")
    session.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
