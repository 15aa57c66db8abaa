"""Per-task scheduling overhead: serverless_get against Dask's own schedulers.

Two raw graphs of ~10k trivial tasks, handed straight to each scheduler's ``get`` (so the
numbers hold scheduling only, not collection building): a binary tree reduction and an
embarrassingly parallel map whose 10k results all return to the caller.

    python benchmarks/overhead.py [--tasks 10000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

from workloads import map_graph, tree_graph  # benchmarks/workloads (this script's folder)


def timed(get: Callable, dsk: dict, keys, repeat: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = get(dsk, keys)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    import dask
    import dask.multiprocessing
    import dask.threaded
    from distributed import Client, LocalCluster

    from dask_serverless import serverless_get, session

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                           dashboard_address=None)
    client = Client(cluster)
    schedulers: dict[str, Callable] = {
        "dask sync": dask.get,
        "dask threads": dask.threaded.get,
        "dask processes": dask.multiprocessing.get,
        "LocalCluster(2)": client.get,
        "serverless (cold)": None,  # type: ignore[dict-item]
        "serverless (warm)": serverless_get,
    }
    rows = []
    for name, (dsk, keys) in {"tree reduction": tree_graph(args.tasks),
                              "parallel map": map_graph(args.tasks)}.items():
        expected = dask.get(dsk, keys)
        for sched, get in schedulers.items():
            if sched == "serverless (cold)":
                session.close()  # new embedded Redis and containers: everything cold
                t0 = time.perf_counter()
                result = serverless_get(dsk, keys)
                seconds = time.perf_counter() - t0
            else:
                seconds, result = timed(get, dsk, keys, args.repeat)
            if list(result if isinstance(result, list | tuple) else [result]) != list(
                    expected if isinstance(expected, list | tuple) else [expected]):
                raise SystemExit(f"{sched} gave a wrong result on {name}")
            rows.append((name, sched, len(dsk), seconds))
    client.close()
    cluster.close()

    out = sys.stdout
    out.write(f"\n{'workload':<16}{'scheduler':<20}{'tasks':>7}{'seconds':>10}"
              f"{'ms/task':>9}{'vs LocalCluster':>17}{'vs threads':>12}\n")
    for name, sched, n, seconds in rows:
        ref = {s: t for w, s, _, t in rows if w == name}
        out.write(f"{name:<16}{sched:<20}{n:>7}{seconds:>10.3f}{1000 * seconds / n:>9.3f}"
                  f"{seconds / ref['LocalCluster(2)']:>17.2f}"
                  f"{seconds / ref['dask threads']:>12.2f}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
