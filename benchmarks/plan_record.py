"""What recording a run's plan costs (``metrics.plans.plan_record``, written with the run
record so dashboards can rebuild and re-plan the DAG): time and size for the ~10k-task
graphs of ``overhead.py``, as a ratio of building the same DAG (the baseline, timed in
this script). Best of ``--repeat`` runs each.

    python benchmarks/plan_record.py [--tasks 10000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from overhead import map_graph, tree_graph  # the same graphs as overhead.py


def best(fn, repeat: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    from dask_serverless.adapter import to_dag
    from dask_serverless.capacity import Capacity
    from dask_serverless.metrics.plans import plan_record
    from dask_serverless.planners import get_planner

    print(f"{'graph':<6} {'tasks':>6} {'build DAG':>10} {'plan record':>12} {'ratio':>6} "
          f"{'bytes':>9}")
    for name, (dsk, keys) in (("tree", tree_graph(args.tasks)), ("map", map_graph(args.tasks))):
        build_s, dag = best(lambda dsk=dsk, keys=keys: to_dag(dsk, keys), args.repeat)
        plan = get_planner("wukong").plan(dag, parallelism=8, memory_mb=1024)
        record_s, text = best(lambda dag=dag, plan=plan: plan_record(
            dag, plan, capacity=Capacity(os.cpu_count() or 1, 16)), args.repeat)
        print(f"{name:<6} {len(dag):>6} {build_s * 1000:>8.1f}ms {record_s * 1000:>10.1f}ms "
              f"{record_s / build_s:>6.3f} {len(text):>9,}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
