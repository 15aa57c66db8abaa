"""The data path against raw redis-py, same Redis, same process, interleaved rounds.

1. A float64 array of ``--sizes`` MB: the project's ``encode`` (pickle protocol 5, sealed)
   + ``RunStore.publish`` + ``RunStore.get_outputs`` + ``decode`` (the value back,
   writable) against redis-py ``SET`` + ``GET`` of the array's bytes (the bytes made
   before the clock starts; values over 512 MB, which one ``SET`` refuses, as 256 MB
   slices). Throughput = array bytes / seconds; the ratio is ours / raw (>= 1: faster).
2. One task returning a ``--task-mb`` MB array, run on a local container and collected by
   the client (``Run.makespan``: submit to value), against raw ``SET`` + ``GET`` of the same
   bytes; the ratio is ours / raw time (<= 1: faster).

    python benchmarks/datapath.py [--sizes 100 1000] [--task-mb 200] [--repeat 5] [--url URL]

Medians of ``--repeat`` rounds after one warm-up; the load average is printed with them.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import time
from collections.abc import Callable

import numpy as np

from dask_serverless import session
from dask_serverless.adapter import to_dag
from dask_serverless.plan import Plan, ResourceConfig, WorkerSpec
from dask_serverless.storage.store import RunStore, connect

RAW_SLICE = 256 * 2**20  # raw SETs of larger values go in slices (Redis's 512 MB limit)


def make(nbytes: int) -> np.ndarray:
    return np.ones(nbytes // 8)


def raw_round(r, data: memoryview) -> float:
    """Seconds for redis-py SET + GET of ``data`` (sliced when over RAW_SLICE)."""
    keys = [f"bench:raw:{i}" for i in range(-(-data.nbytes // RAW_SLICE))]
    t0 = time.perf_counter()
    for i, k in enumerate(keys):
        r.set(k, data[i * RAW_SLICE:(i + 1) * RAW_SLICE])
    back = [r.get(k) for k in keys]
    seconds = time.perf_counter() - t0
    assert sum(len(b) for b in back) == data.nbytes
    del back
    r.delete(*keys)
    return seconds


def ours_round(store: RunStore, x: np.ndarray) -> float:
    """Seconds for encode + publish + get_outputs + decode of ``x``."""
    t0 = time.perf_counter()
    data = store.encode_output(0, x)
    store.publish(0, data, True, [], [], "bench")
    del data
    (blob,) = store.get_outputs([0])
    y = store.decode_output(0, blob)
    seconds = time.perf_counter() - t0
    assert y.shape == x.shape and y[-1] == x[-1] and y.flags.writeable
    del y, blob
    store.cleanup([0], [])
    return seconds


def interleaved(rounds: int, named: dict[str, Callable[[], float]]) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in named}
    for i in range(rounds + 1):  # round 0: warm-up
        for name, fn in named.items():
            t = fn()
            gc.collect()
            if i:
                times[name].append(t)
    return times


def show(label: str, times: dict[str, list[float]], nbytes: int) -> dict[str, float]:
    med = {name: statistics.median(ts) for name, ts in times.items()}
    for name, ts in times.items():
        runs = ", ".join(f"{t:.3f}" for t in ts)
        print(f"  {label} {name:5s} median {med[name]:.3f} s = "
              f"{nbytes / med[name] / 1e9:.2f} GB/s (runs {runs})", flush=True)
    return med


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="*", default=[100, 1000], help="MB")
    ap.add_argument("--task-mb", type=int, default=200, help="task result MB (0: skip)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--url", default=None, help="Redis URL (default: a private server)")
    args = ap.parse_args()
    url = session.redis_url(args.url)
    r = connect(url)
    print(f"load average at start: {os.getloadavg()}", flush=True)
    try:
        store = RunStore(r, "datapathbench")
        for mb in args.sizes:
            x = np.random.default_rng(0).random(mb * 10**6 // 8)
            view = memoryview(x).cast("B")
            times = interleaved(args.repeat, {"raw": lambda v=view: raw_round(r, v),
                                              "ours": lambda x=x: ours_round(store, x)})
            med = show(f"{mb} MB", times, x.nbytes)
            print(f"{mb} MB array round trip: ours / raw throughput "
                  f"{med['raw'] / med['ours']:.2f}x", flush=True)
            del x, view
            gc.collect()
        if args.task_mb:
            task_result(url, r, args.task_mb * 10**6, args.repeat)
    finally:
        session.close()
    print(f"load average at end: {os.getloadavg()}")
    return 0


def task_result(url: str, r, nbytes: int, repeat: int) -> None:
    from dask_serverless.backends.local import LocalBackend
    from dask_serverless.runtime.run import Run

    dag = to_dag({"big": (make, nbytes)}, ["big"])
    plan = Plan(["w0"], {"w0": WorkerSpec("w0", ResourceConfig(2048))}, "bench")
    backend = LocalBackend(max_containers=2, keep_alive=120)
    blob = memoryview(make(nbytes)).cast("B")

    def ours() -> float:
        run = Run(dag, plan, backend, url, metrics_url=None, echo_output=False)
        (value,) = run.execute()
        assert value.nbytes == nbytes
        return run.makespan

    try:
        times = interleaved(repeat, {"raw": lambda: raw_round(r, blob), "ours": ours})
    finally:
        backend.close()
    med = show(f"task {nbytes // 10**6} MB", times, nbytes)
    print(f"{nbytes // 10**6} MB task result to the client: ours / raw SET+GET time "
          f"{med['ours'] / med['raw']:.2f}x", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
