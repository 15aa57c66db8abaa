"""What recording metrics costs on the hot path: the same ~10k trivial-task graphs with
``serverless.metrics.enabled`` on and off, runs alternating, reported as ratios (on / off)
of the median and of the fastest wall time measured in this script (on a shared machine
the fastest run is the one least disturbed by other load; the load average is printed).

    python benchmarks/metrics_overhead.py [--tasks 10000] [--repeat 5]

Metrics go to a throw-away data directory, not your history.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from overhead import map_graph, tree_graph  # the same graphs as overhead.py


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    import dask

    from dask_serverless import serverless_get, session
    from dask_serverless.runtime import get as get_mod

    data_dir = tempfile.mkdtemp(prefix="ds-metrics-bench-")
    print(f"load average: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"{'graph':<6} {'tasks':>6} {'off median':>11} {'on median':>10} {'ratio':>6} "
          f"{'off min':>8} {'on min':>7} {'ratio':>6}  recorded (invocations, task rows)")
    try:
        with dask.config.set({"serverless.metrics.data-dir": data_dir}):
            for name, (dsk, keys) in (("tree", tree_graph(args.tasks)),
                                      ("map", map_graph(args.tasks))):
                times: dict[bool, list[float]] = {False: [], True: []}
                for i in range(2 * args.repeat + 2):  # first pair: warm-up, not counted
                    enabled = i % 2 == 1
                    with dask.config.set({"serverless.metrics.enabled": enabled}):
                        t0 = time.perf_counter()
                        serverless_get(dsk, keys)
                        elapsed = time.perf_counter() - t0
                    if enabled:
                        rec = get_mod.last_run.record
                    if i >= 2:
                        times[enabled].append(elapsed)
                off, on = statistics.median(times[False]), statistics.median(times[True])
                off_min, on_min = min(times[False]), min(times[True])
                print(f"{name:<6} {len(dsk):>6} {off:>10.3f}s {on:>9.3f}s {on / off:>6.3f} "
                      f"{off_min:>7.3f}s {on_min:>6.3f}s {on_min / off_min:>6.3f}  "
                      f"({rec.invocations}, {rec.tasks})")
    finally:
        session.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
