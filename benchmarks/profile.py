"""Profile serverless_get on one benchmark workload, client and containers together.

    py-spy record --subprocesses --format raw -o gemm.folded --rate 100 -- \\
        python benchmarks/profile.py run gemm --runs 3 [--full]
    python benchmarks/profile.py summarise gemm.folded

``run`` warms the containers, then times ``--runs`` computes; ``summarise`` splits py-spy's
raw (folded) samples into client and container processes and ranks, for each, the
innermost frame from dask or dask_serverless (where the time goes, in our terms).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter, defaultdict


def run(workload: str, runs: int, full: bool) -> None:
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as in `dask-serverless bench`
    from workloads import build  # benchmarks/workloads (this script's folder)

    from dask_serverless import serverless_get

    w = build(workload, quick=not full)
    graph = w.graph if w.source is None else w.source  # the source: with its array sizes
    serverless_get(graph, w.keys)  # warm-up
    for _ in range(runs):
        t0 = time.perf_counter()
        serverless_get(graph, w.keys)
        sys.stdout.write(f"{workload}: {time.perf_counter() - t0:.3f} s\n")


def summarise(path: str, top: int) -> None:
    per_kind: Counter[str] = Counter()
    frames_by_kind: dict[str, Counter[str]] = defaultdict(Counter)
    with open(path) as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            frames = stack.split(";")
            procs = [fr for fr in frames if fr.startswith("process ")]
            kind = "container" if procs and any(  # spawned, or forked by the fork server
                m in procs[-1] for m in ("backends.local.container", "backends.local.zygote")) \
                else "client"
            ours = [fr for fr in frames if "dask_serverless" in fr or "dask/" in fr]
            per_kind[kind] += int(count)
            frames_by_kind[kind][(ours[-1] if ours else frames[-1])[:110]] += int(count)
    for kind, total in per_kind.most_common():
        sys.stdout.write(f"{kind}: {total} samples\n")
        for frame, n in frames_by_kind[kind].most_common(top):
            sys.stdout.write(f"  {100 * n / total:5.1f}%  {frame}\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run")
    r.add_argument("workload")
    r.add_argument("--runs", type=int, default=3)
    r.add_argument("--full", action="store_true", help="full sizes (default: quick)")
    s = sub.add_parser("summarise")
    s.add_argument("folded")
    s.add_argument("--top", type=int, default=12)
    args = parser.parse_args()
    if args.command == "run":
        run(args.workload, args.runs, args.full)
    else:
        summarise(args.folded, args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
