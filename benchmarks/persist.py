"""Persist of an ~800 MB array, then 5 reductions over it: end-to-end seconds and bytes
through Redis (the server's own network counters), for one scheduler per process.

    python benchmarks/persist.py --mode serverless      # this code (references)
    python benchmarks/persist.py --mode localcluster    # distributed.LocalCluster
    PYTHONPATH=/path/to/old/checkout python benchmarks/persist.py --mode serverless
                                                         # the code before persist kept data

Each mode prints one JSON line (``phase`` timings, Redis bytes in and out, peak RSS of
this process); ``--json FILE`` appends it there. A failing phase is reported with its
exception's first line, not raised.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from typing import Any

import dask
import dask.array as da


def reductions(y: da.Array) -> list:
    return [y.sum(), y.mean(), y.std(), y.max(), y.min()]


def redis_bytes(url: str) -> tuple[int, int]:
    import redis

    info = redis.Redis.from_url(url).info("stats")
    return int(info["total_net_input_bytes"]), int(info["total_net_output_bytes"])


def run_serverless(x: da.Array, out: dict[str, Any]) -> None:
    import dask_serverless
    from dask_serverless import serverless_get, session

    out["code"] = dask_serverless.__file__
    url = session.redis_url()
    before = redis_bytes(url)
    t0 = time.perf_counter()
    try:
        y = x.persist(scheduler=serverless_get)
    except Exception as exc:
        out["error"] = f"persist: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        return
    out["persist_s"] = time.perf_counter() - t0
    mid = redis_bytes(url)
    out["persist_redis_in"], out["persist_redis_out"] = mid[0] - before[0], mid[1] - before[1]
    t1 = time.perf_counter()
    try:
        values = [r.compute(scheduler=serverless_get) for r in reductions(y)]
    except Exception as exc:
        out["error"] = f"reductions: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        out["reductions_failed_after_s"] = time.perf_counter() - t1
        return
    out["reductions_s"] = time.perf_counter() - t1
    after = redis_bytes(url)
    out["reductions_redis_in"] = after[0] - mid[0]
    out["reductions_redis_out"] = after[1] - mid[1]
    out["values"] = [float(v) for v in values]
    out["total_s"] = out["persist_s"] + out["reductions_s"]


def run_localcluster(x: da.Array, out: dict[str, Any], workers: int) -> None:
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=workers, threads_per_worker=1, memory_limit="3GiB",
                      dashboard_address=None) as cluster, Client(cluster) as client:
        t0 = time.perf_counter()
        y = client.persist(x)
        from distributed import wait

        wait(y)
        out["persist_s"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        values = [client.compute(r).result() for r in reductions(y)]
        out["reductions_s"] = time.perf_counter() - t1
        out["values"] = [float(v) for v in values]
        out["total_s"] = out["persist_s"] + out["reductions_s"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", choices=("serverless", "localcluster"), required=True)
    ap.add_argument("--side", type=int, default=10_000, help="array side (float64)")
    ap.add_argument("--chunk", type=int, default=2_500)
    ap.add_argument("--workers", type=int, default=2, help="LocalCluster workers")
    ap.add_argument("--threads", type=int, default=1,
                    help="serverless.threads (None: the planner's; it may pick 8-16 threads "
                         "of 50 MB chunks on a 1024 MB worker, which runs out of memory)")
    ap.add_argument("--label", default="")
    ap.add_argument("--json", default=None, help="append the result line to this file")
    args = ap.parse_args()
    x = da.random.RandomState(42).random_sample((args.side, args.side), chunks=args.chunk)
    out: dict[str, Any] = {"mode": args.mode, "label": args.label,
                           "array_mb": x.nbytes / 1e6, "chunks": x.npartitions}
    out["threads"] = args.threads
    with dask.config.set({"serverless.deadline": 1800.0, "serverless.threads": args.threads}):
        if args.mode == "serverless":
            run_serverless(x, out)
        else:
            run_localcluster(x, out, args.workers)
    out["client_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    line = json.dumps(out)
    print(line)
    if args.json:
        with open(args.json, "a") as f:
            f.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
