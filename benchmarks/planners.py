"""Planners and passes on seven workloads: predicted and actual makespan, cost, workers,
cold starts and bytes moved, against the lower bound (critical path, or all CPU work
spread over the shared cores when that is longer); and planning speed.

The cost model is calibrated in this script on this machine: per-function run time and
output size from one ``scheduler="sync"`` pass with callbacks (with each function's share
of CPU time), container cold/warm start from the local backend, Redis round trip and
bandwidth from a 4 MB SET/GET; capacity (shared cores, container cap) from the backend. Each actual
run gets a fresh local backend so cold starts happen as predicted.

    python benchmarks/planners.py [--quick] [--out benchmarks/out/planners.md]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pickle
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import dask
import dask.array as da
import dask.bag as db
import numpy as np
from dask import delayed
from dask.callbacks import Callback

from dask_serverless import session
from dask_serverless.adapter import to_dag
from dask_serverless.backends.local import LocalBackend
from dask_serverless.capacity import Capacity
from dask_serverless.costmodel import FixedCostModel
from dask_serverless.plan import ResourceConfig
from dask_serverless.planners import Objective, apply_passes, get_planner
from dask_serverless.runtime.run import Run
from dask_serverless.simulator import Simulator
from dask_serverless.storage.store import connect

PARALLELISM = 16
MAX_CONTAINERS = 16


# -- workloads ---------------------------------------------------------------------------
def work(x, seconds):
    time.sleep(seconds)
    return x


def leaf(i):
    time.sleep(0.15)
    return np.full(1000, float(i))


def add(a, b):
    return a + b


def source():
    time.sleep(0.05)
    return np.arange(500_000, dtype=float)  # 4 MB fanned out to every branch


def branch(x, i):
    time.sleep(0.25)
    return float(x[i::17].sum())


def gather(*xs):
    return sum(xs)


def widen(x, i):
    time.sleep(0.05)
    return np.tile(x, 4) + i  # 16 MB: a large intermediate for the next task


def summarize(y):
    return float(y[::1000].sum())


def make_image(i):
    return np.random.RandomState(i).random_sample((256, 256))


def blur(img):
    out = img.copy()
    out[1:-1, 1:-1] = (img[:-2, 1:-1] + img[2:, 1:-1] + img[1:-1, :-2] + img[1:-1, 2:]) / 4
    time.sleep(0.1)
    return out


def threshold(img):
    return (img > 0.5).astype(np.uint8)


def stats(mask):
    return float(mask.mean())


def workloads() -> dict[str, tuple[object, object]]:
    leaves = [delayed(leaf)(i) for i in range(32)]
    while len(leaves) > 1:
        leaves = [delayed(add)(leaves[i], leaves[i + 1]) for i in range(0, len(leaves), 2)]
    tree = leaves[0].sum()
    x = da.random.RandomState(1).random((1200, 1200), chunks=400)
    gemm = (x @ x.T).sum()
    tall = da.random.RandomState(2).random((20_000, 40), chunks=(2_500, 40))
    _, s, _ = da.linalg.svd(tall)
    images = [delayed(stats)(delayed(threshold)(delayed(blur)(delayed(make_image)(i))))
              for i in range(16)]
    image = delayed(gather)(*images)
    text = [f"the quick brown fox jumps over the lazy dog {i % 50}" for i in range(4000)]
    words = db.from_sequence(text, npartitions=8).str.split().flatten().frequencies()
    src = delayed(source)()
    fan = delayed(gather)(*[delayed(work)(delayed(branch)(src, i), 0.25) for i in range(16)])
    big = delayed(gather)(*[delayed(summarize)(delayed(widen)(src, i)) for i in range(16)])
    return {"tree reduction": tree, "GEMM": gemm, "TSQR/SVD": s, "image pipeline": image,
            "word count": words, "fan-out/fan-in, large intermediates": big,
            "fan-out/fan-in": fan}


def graph_of(collection):
    (c,) = dask.optimize(collection)
    return c.__dask_graph__(), c.__dask_keys__()


# -- calibration ---------------------------------------------------------------------------
class _Timings(Callback):
    def __init__(self, dag):
        super().__init__()
        self.dag, self.t0, self.times, self.sizes = dag, {}, defaultdict(list), defaultdict(list)
        self.cpu: dict[str, list[float]] = defaultdict(list)

    def _pretask(self, key, dsk, state):
        self.t0[key] = (time.perf_counter(), time.thread_time())

    def _posttask(self, key, result, dsk, state, worker_id):
        name = self.dag.tasks[self.dag.key_to_id[key]].func_name
        t0, c0 = self.t0.pop(key)
        self.times[name].append(time.perf_counter() - t0)
        self.cpu[name].append(time.thread_time() - c0)
        try:
            self.sizes[name].append(len(pickle.dumps(result, protocol=5)))
        except Exception:
            self.sizes[name].append(1000)


def calibrate(cases, redis_url: str, capacity: Capacity) -> FixedCostModel:
    exec_s, out_bytes, cpu_s = defaultdict(list), defaultdict(list), defaultdict(list)
    for graph, keys in cases.values():
        dag = to_dag(graph, keys)
        cb = _Timings(dag)
        with cb:
            dask.get(graph, keys)
        for name, ts in cb.times.items():
            exec_s[name] += ts
            out_bytes[name] += cb.sizes[name]
            cpu_s[name] += cb.cpu[name]
    r = connect(redis_url)
    t0 = time.perf_counter()
    for _ in range(50):
        r.ping()
    rtt = (time.perf_counter() - t0) / 50
    blob = os.urandom(4 * 2**20)
    t0 = time.perf_counter()
    r.set("bench:blob", blob)
    r.get("bench:blob")
    bandwidth = 2 * len(blob) / max(time.perf_counter() - t0 - 2 * rtt, 1e-6)
    r.delete("bench:blob")
    cold, warm = container_starts(redis_url)
    return FixedCostModel(exec_s={k: statistics.median(v) for k, v in exec_s.items()},
                          out_bytes={k: int(statistics.median(v)) for k, v in out_bytes.items()},
                          cold_s=cold, warm_s=warm, latency_s=rtt, bandwidth=bandwidth,
                          cpu_fraction={k: min(1.0, sum(cpu_s[k]) / max(sum(v), 1e-9))
                                        for k, v in exec_s.items()},
                          capacity=capacity)


def container_starts(redis_url: str) -> tuple[float, float]:
    """Invocation latency of a fresh container and of a reused one (makespan of a one-task
    run minus nothing: an upper bound of the start)."""
    graph = {"one": (work, 1, 0.0)}
    dag = to_dag(graph, ["one"])
    plan = get_planner("wukong").plan(dag, parallelism=1, memory_mb=1024)
    backend = LocalBackend(max_containers=2, keep_alive=60)
    backend.pool.prepare()  # the fork server is up, as in a session after its first run
    try:
        run = Run(dag, plan, backend, redis_url)
        run.execute()
        cold = run.makespan
        warms = []
        for _ in range(5):
            run = Run(dag, plan, backend, redis_url)
            run.execute()
            warms.append(run.makespan)
    finally:
        backend.close()
    return cold, statistics.median(warms)


# -- plans and runs -------------------------------------------------------------------------
VARIANTS = [
    ("per-task", "per-task", False, []),
    ("dask (8 workers)", "dask", True, []),
    ("wukong, structural", "wukong", False, []),
    ("wukong + clustering + delayed I/O", "wukong", True, []),
    ("wukong + clustering + delayed I/O + pre-warm", "wukong", True, ["pre-warm"]),
    ("uniform", "uniform", True, []),
    ("non-uniform", "non-uniform", True, []),
    ("wukong + all passes", "wukong", True, ["task-dup", "pre-load", "pre-warm"]),
]


def actual(dag, plan, redis_url: str) -> dict:
    backend = LocalBackend(max_containers=MAX_CONTAINERS, keep_alive=60)
    backend.pool.prepare()
    spans: list[tuple[float, int]] = []
    backend.pool.on_done = lambda inv, report, cold: spans.append(
        (report["end_time"] - report["start_time"], inv.memory_mb))
    try:
        run = Run(dag, plan, backend, redis_url)
        run.execute()
        time.sleep(0.2)  # the last "done" reports
        st = backend.pool.stats()
    finally:
        backend.close()
    gb_s = sum(s * mb / 1024 for s, mb in spans)
    requests = len(spans) + sum(w.count for w in plan.optimizations.prewarm)
    return {"makespan": run.makespan, "gb_s": gb_s, "requests": requests,
            "cold": st["cold_starts"], "invocations": st["cold_starts"] + st["warm_starts"]}


def bench(quick: bool, out: Path, lambda_model: bool = False) -> int:
    redis_url = session.redis_url()
    cases = {name: graph_of(c) for name, c in workloads().items()}
    if quick:
        names = [*list(cases)[:2], *list(cases)[-2:]]
        cases = {n: cases[n] for n in names}
    backend = LocalBackend(max_containers=MAX_CONTAINERS)
    capacity = backend.capacity()
    backend.close()
    cm = calibrate(cases, redis_url, capacity if not lambda_model else Capacity())
    if lambda_model:  # Lambda's starts (serverless.metrics.defaults), not this machine's
        cm = dataclasses.replace(
            cm, cold_s=dask.config.get("serverless.metrics.defaults.cold-start"),
            warm_s=dask.config.get("serverless.metrics.defaults.warm-start"))
    print(f"calibrated: cold {cm.cold_s:.3f}s warm {cm.warm_s:.4f}s redis rtt "
          f"{cm.latency_s * 1e3:.2f}ms bandwidth {cm.bandwidth / 1e6:.0f} MB/s, "
          f"{cm.capacity}", flush=True)
    lines = ["| workload | plan | predicted makespan (s) | actual makespan (s) | "
             "predicted cost (µ$) | actual cost (µ$) | invocations pred/actual | "
             "cold starts pred/actual | bytes moved (pred) | makespan / bound (pred) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    summary = []
    for wname, (graph, keys) in cases.items():
        dag = to_dag(graph, keys)
        sim = Simulator(dag, cm)
        cp, _ = dag.critical_path(sim.est.exec_times(ResourceConfig(1024)))
        cpu = sim.est.cpu_times(ResourceConfig(1024))
        work = max(cp, sum(cpu) / cm.capacity.cores)  # shared cores: all the CPU work too
        bound = cm.cold_s + work + sim.est.download(
            sum(sim.est.out_bytes[o] for o in dag.outputs))
        results = {}
        for label, pname, predicted, passes in VARIANTS:
            planner = get_planner(pname)
            plan = planner.plan(dag, parallelism=PARALLELISM, memory_mb=1024,
                                predictor=cm if predicted else None)
            if passes:
                plan = apply_passes(dag, plan, passes, sim, Objective())
            p = sim.run(plan)
            a = actual(dag, plan, redis_url)
            a_cost = a["gb_s"] * cm.price_gb_s + a["requests"] * cm.price_request
            results[label] = (p, a, a_cost)
            lines.append(
                f"| {wname} | {label} | {p.makespan:.2f} | {a['makespan']:.2f} | "
                f"{p.cost * 1e6:.2f} | {a_cost * 1e6:.2f} | {len(p.invocations)}/"
                f"{a['invocations']} | {p.cold_starts}/{a['cold']} | {p.bytes_moved:,} | "
                f"{p.makespan / bound:.2f} |")
            print(lines[-1], flush=True)
        lines.append(f"| {wname} | *critical-path bound* | {bound:.2f} | | | | | | | 1.00 |")
        naive = results["per-task"]
        best = results["wukong + clustering + delayed I/O + pre-warm"]
        summary.append(
            f"{wname}: wukong+clustering+delayed I/O+pre-warm vs per-task: makespan "
            f"{1 - best[1]['makespan'] / naive[1]['makespan']:+.0%} actual "
            f"({1 - best[0].makespan / naive[0].makespan:+.0%} predicted), cost "
            f"{1 - best[2] / naive[2]:+.0%} actual ({1 - best[0].cost / naive[0].cost:+.0%} "
            f"predicted); best plan / bound = "
            f"{min(r[0].makespan for r in results.values()) / bound:.2f} predicted, "
            f"{min(r[1]['makespan'] for r in results.values()) / bound:.2f} actual "
            f"({min(results, key=lambda k: results[k][1]['makespan'])})")
    lines += ["", "Savings (positive = better than per-task):", ""]
    lines += [f"- {s}" for s in summary]
    lines += ["", planning_speed()]
    text = "\n".join(lines)
    print("\n".join(lines[-len(summary) - 4:]))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
    session.close()
    return 0


def planning_speed(n_leaves: int = 50_000) -> str:
    """Planning and simulating a 100k-task tree, as ratios to building its DAG."""
    from dask_serverless.dag import DAG, TaskNode

    deps: list[tuple[int, ...]] = [() for _ in range(n_leaves)]
    level = list(range(n_leaves))
    while len(level) > 1:
        nxt = []
        for i in range(0, len(level) - 1, 2):
            deps.append((level[i], level[i + 1]))
            nxt.append(len(deps) - 1)
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    t0 = time.perf_counter()
    dag = DAG([TaskNode(i, i, None, "leaf" if not d else "add", d) for i, d in enumerate(deps)],
              [len(deps) - 1])
    t_dag = time.perf_counter() - t0
    cm = FixedCostModel(exec_s={"leaf": 0.05, "add": 0.001})
    rows = []
    for label, fn in [
        ("wukong (structural)", lambda: get_planner("wukong").plan(
            dag, parallelism=64, memory_mb=1024)),
        ("wukong + clustering + delayed I/O", lambda: get_planner("wukong").plan(
            dag, parallelism=64, memory_mb=1024, predictor=cm)),
        ("uniform", lambda: get_planner("uniform").plan(dag, parallelism=64, memory_mb=1024,
                                                          predictor=cm)),
    ]:
        t0 = time.perf_counter()
        plan = fn()
        rows.append((label, time.perf_counter() - t0))
    t0 = time.perf_counter()
    Simulator(dag, cm).run(plan)
    rows.append(("simulate the uniform plan", time.perf_counter() - t0))
    body = "\n".join(f"| {label} | {s:.2f} | {s / t_dag:.1f}x |" for label, s in rows)
    return (f"Planning {len(dag):,} tasks (binary tree), building the DAG took {t_dag:.2f} s:"
            f"\n\n| step | seconds | vs building the DAG |\n|---|---|---|\n{body}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="four workloads only")
    parser.add_argument("--lambda-model", action="store_true",
                        help="plan and predict as on Lambda (unlimited capacity, the "
                             "configured default cold/warm starts); actual runs stay local")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/planners.md"))
    args = parser.parse_args()
    return bench(args.quick, args.out, args.lambda_model)


if __name__ == "__main__":
    sys.exit(main())
