"""Output streaming on a chain across two workers: one task makes a large array, a task
pinned to another worker sums it. Makespan with and without the ``stream`` optimisation
(chunks of ``serverless.stream-chunk-bytes``), median of interleaved warm runs, as a
ratio; and what the simulator predicts for both, with Redis round trip and bandwidth
measured here.

    python benchmarks/streaming.py [--mb 100] [--repeat 5] [--chunk-mb 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

from dask_serverless import session
from dask_serverless.adapter import to_dag
from dask_serverless.backends.local import LocalBackend
from dask_serverless.costmodel import FixedCostModel
from dask_serverless.plan import Optimizations, Plan, ResourceConfig, WorkerSpec
from dask_serverless.runtime.run import Run
from dask_serverless.simulator import simulate
from dask_serverless.storage.store import connect


def make(nbytes: int) -> np.ndarray:
    return np.ones(nbytes // 8)


def total(x: np.ndarray) -> float:
    return float(x.sum())


def redis_speed(url: str, nbytes: int) -> tuple[float, float]:
    """Round trip (s) and bandwidth (bytes/s) of a SET and GET of ``nbytes``."""
    r = connect(url)
    t0 = time.perf_counter()
    for _ in range(50):
        r.ping()
    rtt = (time.perf_counter() - t0) / 50
    blob = os.urandom(nbytes)
    t0 = time.perf_counter()
    r.set("bench:stream", blob)
    r.get("bench:stream")
    bandwidth = 2 * nbytes / max(time.perf_counter() - t0 - 2 * rtt, 1e-6)
    r.delete("bench:stream")
    return rtt, bandwidth


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=100, help="output size (MB)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--chunk-mb", type=float, default=1.0)
    args = ap.parse_args()
    nbytes, chunk = args.mb * 10**6, int(args.chunk_mb * 2**20)
    url = session.redis_url()
    graph = {"big": (make, nbytes), "sum": (total, "big")}
    dag = to_dag(graph, ["sum"])
    workers = {w: WorkerSpec(w, ResourceConfig(2048)) for w in ("w0", "w1")}
    plans = {"plain": Plan(["w0", "w1"], workers, "bench"),
             "stream": Plan(["w0", "w1"], workers, "bench",
                            optimizations=Optimizations(stream={0: chunk}))}
    backend = LocalBackend(max_containers=4, keep_alive=120)
    print(f"load average at start: {os.getloadavg()}", flush=True)
    times: dict[str, list[float]] = {name: [] for name in plans}
    try:
        for plan in plans.values():  # untimed: start both containers
            Run(dag, plan, backend, url).execute()
        for _ in range(args.repeat):
            for name, plan in plans.items():
                run = Run(dag, plan, backend, url)
                run.execute()
                times[name].append(run.makespan)
        rtt, bandwidth = redis_speed(url, min(nbytes, 64 * 10**6))
    finally:
        backend.close()
        session.close()
    load = os.getloadavg()
    med = {name: statistics.median(ts) for name, ts in times.items()}
    model = FixedCostModel(exec_s=0.0, out_bytes={"make": nbytes, "*": 30}, cold_s=0.0,
                           warm_s=0.0, latency_s=rtt, bandwidth=bandwidth)
    pred = {name: simulate(dag, plan, model).makespan for name, plan in plans.items()}
    print(f"{args.mb} MB output, chunks of {chunk / 2**20:g} MiB, {args.repeat} warm runs "
          f"each (interleaved); Redis rtt {rtt * 1e3:.2f} ms, {bandwidth / 1e6:.0f} MB/s")
    for name in plans:
        runs = ", ".join(f"{t:.3f}" for t in times[name])
        print(f"  {name:6s} median {med[name]:.3f} s (runs {runs}); predicted transfers "
              f"{pred[name]:.3f} s")
    print(f"stream / plain makespan: {med['stream'] / med['plain']:.2f} measured, "
          f"{pred['stream'] / pred['plain']:.2f} predicted (transfers only)")
    print(f"load average at end: {load}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
