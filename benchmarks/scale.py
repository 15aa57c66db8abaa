"""Million-task graphs: end-to-end time, client memory and spec bytes at scale.

Raw graphs (tree reductions of 10k, 100k and 1M tasks; a map of 100k tasks whose results
all return) handed straight to each scheduler's ``get``. Every (workload, scheduler) pair
runs in a fresh process of this script, one at a time, so peak RSS is that process's own
(the graph is built inside it: included for both schedulers) and a 1M-task run does not
share the machine's memory with another.

Measured for ``serverless_get`` (default settings: local backend, wukong, metrics on):
end-to-end seconds and client peak RSS, each against dask's threaded scheduler; time to
first invocation (from the call to the first root invocation handed to the backend); the
run spec bytes each invocation fetched (per invocation, and per task it ran); the bytes
Redis sent out per task. ``--simulate`` adds the simulator's predicted makespan of the
largest tree on a Lambda model at parallelism 1,000, each container charged the spec it
fetches.

    python benchmarks/scale.py [--quick] [--cases tree-10k,tree-1m] [--simulate]
                               [--out benchmarks/out/scale.md]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

logger = logging.getLogger("scale")

CASES: dict[str, tuple[str, int]] = {  # name -> (graph kind, tasks)
    "tree-10k": ("tree", 10_000),
    "tree-100k": ("tree", 100_000),
    "tree-1m": ("tree", 1_000_000),
    "map-100k": ("map", 100_000),
}
QUICK_CASES: dict[str, tuple[str, int]] = {
    "tree-2k": ("tree", 2_000),
    "tree-20k": ("tree", 20_000),
    "map-10k": ("map", 10_000),
}
SCHEDULERS = ("threads", "serverless")
LAMBDA_PARALLELISM = 1000
RESULT = "RESULT "  # prefix of the child's one line of JSON on stdout


# -- one measurement, in its own process -----------------------------------------------------
def graph_of(kind: str, n: int) -> tuple[dict, Any, Any]:
    """(graph, keys, expected result) of a workload."""
    from workloads import map_graph, tree_graph  # benchmarks/workloads (this folder)

    if kind == "tree":
        dsk, root = tree_graph(n)
        leaves = (n + 1) // 2
        return dsk, root, leaves * (leaves + 1) // 2  # sum of (i + 1) over the leaves
    dsk, keys = map_graph(n)
    return dsk, keys, [2 * i for i in range(n)]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def measure(case: str, scheduler: str, cases: dict[str, tuple[str, int]]) -> dict[str, Any]:
    kind, n = cases[case]
    if scheduler == "serverless":
        return _measure_serverless(kind, n)
    import dask.threaded

    dsk, keys, expected = graph_of(kind, n)
    t0 = time.perf_counter()
    result = dask.threaded.get(dsk, keys)
    seconds = time.perf_counter() - t0
    _check(result, expected, f"dask threads on {case}")
    return {"seconds": seconds, "peak_rss_mb": peak_rss_mb(), "tasks": len(dsk)}


def _measure_serverless(kind: str, n: int) -> dict[str, Any]:
    from dask_serverless import serverless_get, session
    from dask_serverless.runtime import get as runtime_get
    from dask_serverless.storage.store import connect

    small, small_keys, small_expected = graph_of("tree", 15)
    _check(serverless_get(small, small_keys), small_expected, "warm-up")  # Redis, containers
    redis = connect(session.redis_url())
    dsk, keys, expected = graph_of(kind, n)
    out_before = int(redis.info("stats")["total_net_output_bytes"])
    runtime_get.last_run = None
    t0 = time.time()
    try:
        result = serverless_get(dsk, keys)
    except Exception as exc:  # the failure is a result too (e.g. a worker's MemoryError)
        run = runtime_get.last_run
        return {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}",
                "seconds": time.time() - t0, "peak_rss_mb": peak_rss_mb(), "tasks": len(dsk),
                "first_invocation_s": run.first_invoke_at - t0 if run else None}
    seconds = time.time() - t0
    _check(result, expected, f"serverless_get on {kind} of {n} tasks")
    run = runtime_get.last_run
    assert run is not None
    redis_out = int(redis.info("stats")["total_net_output_bytes"]) - out_before
    return {"seconds": seconds, "peak_rss_mb": peak_rss_mb(), "tasks": len(dsk),
            "first_invocation_s": run.first_invoke_at - t0, "redis_out_bytes": redis_out,
            **_spec_fetches(run)}


def _spec_fetches(run: Any) -> dict[str, Any]:
    """Spec bytes each invocation fetched, from its metrics record (``spec_bytes`` when
    recorded; else the whole spec for each invocation that decoded one)."""
    from dask_serverless.metrics.store import MetricsStore

    if run.metrics_url is None:
        return {}
    records = MetricsStore.from_url(run.metrics_url).invocations(run.run_id)
    rows = []
    for r in records:
        spec = getattr(r, "spec_bytes", None)
        if spec is None:
            spec = run.spec_bytes if r.spec_fetch_s > 0 else 0
        rows.append((spec, r.tasks, r.spec_fetch_s))
    fetched = [(b, t, s) for b, t, s in rows if b]
    return {"invocations": len(rows), "spec_total_bytes": run.spec_bytes,
            "fetches": len(fetched),
            "spec_bytes_max": max((b for b, _, _ in fetched), default=0),
            "spec_bytes_median": statistics.median([b for b, _, _ in fetched] or [0]),
            "spec_bytes_per_task": sum(b for b, _, _ in rows) / max(1, sum(
                t for _, t, _ in rows)),
            "spec_s_max": max((s for _, _, s in fetched), default=0.0)}


def _check(result: Any, expected: Any, what: str) -> None:
    if isinstance(expected, list):
        result = list(result)
    if result != expected:
        raise SystemExit(f"{what} gave a wrong result")


# -- the simulator's prediction on a Lambda model -----------------------------------------
def simulate(case: str, cases: dict[str, tuple[str, int]]) -> dict[str, Any]:
    """Predicted makespan of ``case`` planned by wukong at parallelism 1,000 on a Lambda
    model: without spec transfers; when each cold container first fetches and decodes the
    whole spec (the former design); and with slices, where the simulator charges each
    invocation the slices it loads (fetched at the model's bandwidth, decoded at the rate
    measured here)."""
    import dataclasses

    import dask

    from dask_serverless.adapter import to_dag
    from dask_serverless.costmodel import FixedCostModel
    from dask_serverless.layout import build_layout
    from dask_serverless.planners import get_planner
    from dask_serverless.protocol import slices
    from dask_serverless.simulator import Simulator
    from dask_serverless.storage import serialize

    kind, n = cases[case]
    dsk, keys, _ = graph_of(kind, n)
    dag = to_dag(dsk, keys)
    del dsk
    plan = get_planner("wukong").plan(dag, parallelism=LAMBDA_PARALLELISM, memory_mb=1024)
    layout = build_layout(dag, plan)
    defaults = dask.config.get("serverless.metrics.defaults")
    model = FixedCostModel(exec_s=5e-5, out_bytes=64, cold_s=defaults["cold-start"],
                           warm_s=defaults["warm-start"], latency_s=defaults["latency"],
                           bandwidth=defaults["bandwidth"])
    # the former design's spec: DAG, plan and layout in one sealed pickle
    whole = serialize.dumps((dag, plan, layout), serialize.Purpose.SPEC, "sim", "spec",
                            by_value=True)
    t0 = time.perf_counter()
    serialize.loads(whole, serialize.Purpose.SPEC, "sim", "spec", "whole spec")
    whole_decode_s = time.perf_counter() - t0
    slicer = slices.Slicer(dag, plan, layout, "sim")
    roots = {layout.group[r[0]] for r in layout.root_groups.values()}
    encoded = {g: slicer.encode(g) for g in range(layout.n_groups)}
    root_g = max(roots, key=lambda g: len(encoded[g][1]))
    entry_g = max((g for g in encoded if g not in roots), key=lambda g: len(encoded[g][1]),
                  default=None)
    t0 = time.perf_counter()
    slices.decode(encoded[root_g][1], "sim", encoded[root_g][0], slices.SLICE, "root slice")
    per_byte = (time.perf_counter() - t0) / len(encoded[root_g][1])
    root_bytes = len(encoded[root_g][1])
    entry_bytes = len(encoded[entry_g][1]) if entry_g is not None else 0
    encoded.clear()  # memory for the simulations
    nospec = Simulator(dag, model).run(plan)  # FixedCostModel: spec loads not modelled
    before = Simulator(dag, dataclasses.replace(
        model, cold_s=model.cold_s + model.transfer_time(len(whole), "download")
        + whole_decode_s)).run(plan)
    # the simulator charges each invocation its own slices (SliceSizes), fetched at the
    # model's bandwidth and decoded at the rate measured here
    after = Simulator(dag, dataclasses.replace(
        model, spec_load_bps=1 / (1 / model.bandwidth + per_byte))).run(plan)
    return {"tasks": len(dag), "parallelism": LAMBDA_PARALLELISM,
            "invocations": len(before.invocations), "spec_bytes": len(whole),
            "spec_decode_s": whole_decode_s, "largest_root_slice_bytes": root_bytes,
            "largest_entry_slice_bytes": entry_bytes, "slice_decode_s_per_mb": per_byte * 2**20,
            "makespan_without_spec_s": nospec.makespan,
            "makespan_whole_spec_s": before.makespan, "makespan_slices_s": after.makespan}


# -- the driver ------------------------------------------------------------------------------
def run_child(args: list[str]) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True,
                          env=os.environ.copy(), check=False)
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT):
            return json.loads(line[len(RESULT):])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
    return {"error": " | ".join(tail) or f"exit status {proc.returncode}"}


def table(results: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    lines = ["| workload | tasks | threads s | serverless s | x threads | threads RSS MB | "
             "serverless RSS MB | x threads | first invocation s | invocations | spec bytes "
             "fetched (median / max) | spec bytes / task | Redis out bytes / task |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for case, by in results.items():
        th, sv = by.get("threads", {}), by.get("serverless", {})
        tasks = sv.get("tasks", th.get("tasks", 0))
        done = "error" not in sv and "seconds" in sv
        took = _num(sv, "seconds") if done else \
            f"failed after {_num(sv, 'seconds')} s: {sv.get('error', '')}"
        lines.append(
            f"| {case} | {tasks:,} | {_num(th, 'seconds')} | {took} | "
            f"{_ratio(sv, th, 'seconds', 2) if done else ''} | {_num(th, 'peak_rss_mb', 0)} | "
            f"{_num(sv, 'peak_rss_mb', 0)} | {_ratio(sv, th, 'peak_rss_mb', 2)} | "
            f"{_num(sv, 'first_invocation_s')} | {sv.get('invocations', '')} | "
            + (f"{sv.get('spec_bytes_median', 0):,.0f} / {sv.get('spec_bytes_max', 0):,} | "
               f"{sv.get('spec_bytes_per_task', 0):.0f} | "
               f"{sv['redis_out_bytes'] / tasks:.0f} |" if done else " | | |"))
    return lines


def _ratio(a: dict[str, Any], b: dict[str, Any], name: str, digits: int) -> str:
    if a.get(name) is None or not b.get(name):
        return ""
    return f"{a[name] / b[name]:.{digits}f}"


def _num(row: dict[str, Any], name: str, digits: int = 1) -> str:
    value = row.get(name)
    return "" if value is None else f"{value:.{digits}f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2k/20k trees, a 10k map")
    parser.add_argument("--cases", help="comma-separated workloads (default: all)")
    parser.add_argument("--schedulers", default=",".join(SCHEDULERS))
    parser.add_argument("--simulate", action="store_true",
                        help="also predict the largest tree on a Lambda model")
    parser.add_argument("--out", type=Path, help="also write the table here (markdown)")
    parser.add_argument("--child", nargs=2, metavar=("CASE", "SCHEDULER"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--simulate-child", metavar="CASE", help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    cases = QUICK_CASES if args.quick else CASES
    if args.child:
        print(RESULT + json.dumps(measure(*args.child, cases)), flush=True)
        return 0
    if args.simulate_child:
        print(RESULT + json.dumps(simulate(args.simulate_child, cases)), flush=True)
        return 0

    names = args.cases.split(",") if args.cases else list(cases)
    unknown = [c for c in names if c not in cases]
    if unknown:
        parser.error(f"unknown cases {unknown}; choose from {list(cases)}")
    quick = ["--quick"] if args.quick else []
    results: dict[str, dict[str, dict[str, Any]]] = {}
    runs = [(c, s) for c in names for s in args.schedulers.split(",")]
    for case, sched in tqdm(runs, desc="scale", unit="run"):
        results.setdefault(case, {})[sched] = got = run_child([*quick, "--child", case, sched])
        tqdm.write(f"{case} {sched}: {json.dumps(got)}")
    lines = table(results)
    if args.simulate:
        largest = max((c for c in names if cases[c][0] == "tree"), key=lambda c: cases[c][1])
        sim = run_child([*quick, "--simulate-child", largest])
        tqdm.write(f"simulated {largest}: {json.dumps(sim)}")
        if "error" not in sim:
            lines += ["", f"Predicted makespan of {largest} ({sim['tasks']:,} tasks, wukong, "
                      f"{sim['invocations']:,} invocations) on a Lambda model at parallelism "
                      f"{sim['parallelism']:,}: {sim['makespan_without_spec_s']:.1f} s "
                      f"without spec transfers; {sim['makespan_whole_spec_s']:.1f} s when "
                      f"each cold container fetches and decodes the whole "
                      f"{sim['spec_bytes'] / 2**20:.0f} MiB spec "
                      f"({sim['spec_decode_s']:.1f} s to decode here); "
                      f"{sim['makespan_slices_s']:.1f} s with slices (each invocation "
                      f"charged its own; the largest root slice "
                      f"{sim['largest_root_slice_bytes'] / 2**10:.0f} KiB, the largest "
                      f"entry slice {sim['largest_entry_slice_bytes'] / 2**10:.1f} KiB)."]
    text = "\n".join(lines)
    print("\n" + text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
