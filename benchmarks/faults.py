"""Fault handling: how fast a dead worker is noticed, what leases cost, what backups buy.

1. **Death to error / retry.** A task records the time and ``os._exit``s its worker
   (a stand-in for an OOM kill or a segfault). With ``serverless.retries = 0``: seconds
   from the death to ``WorkerCrashedError`` in the caller; with one retry: seconds from
   the death to the retried task's start. Local backend (the pool sees the death) and the
   ``lambda`` backend through the local Lambda API server (only the lease tells), at the
   default heartbeat (5 s) and at 1 s.
2. **Lease cost.** A tree reduction (10k tasks; ``--quick``: 2k) on the local backend,
   with leases (default heartbeat) and without (``heartbeat-interval = None``), runs
   alternating, median makespan of each and their ratio.
3. **A straggler.** Eight 0.2 s tasks on eight workers whose sum runs on a ninth; one
   takes ``--slow`` seconds (60) on its first attempt. With default speculation and
   without: makespan, invocations, backups, recorded cost; and the simulator's
   prediction with the same settings (``Recovery.from_config``).

    python benchmarks/faults.py [--quick] [--slow 60] [--out benchmarks/out/faults.md]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import dask
from dask import delayed

from dask_serverless.bench.faults import die_once, slow_first_time

logger = logging.getLogger("faults")


def _read(path: str) -> float:
    with open(path) as f:
        return float(f.read())


# -- 1. death to error / retry -----------------------------------------------------------------
def detection(backend: str, heartbeat: float) -> dict[str, Any]:
    from dask_serverless import serverless_get, session
    from dask_serverless.errors import WorkerCrashedError

    out: dict[str, Any] = {"backend": backend, "heartbeat_s": heartbeat}
    session.reset_backend("local")  # the local pool takes serverless.retries when made
    settings = {"serverless.heartbeat-interval": heartbeat, "serverless.deadline": 600}
    with tempfile.TemporaryDirectory() as d, dask.config.set({**settings,
                                                              "serverless.retries": 0}):
        try:
            dask.compute(delayed(die_once)(d), scheduler=serverless_get)
            out["error_s"] = None
        except WorkerCrashedError:
            out["error_s"] = time.time() - _read(os.path.join(d, "died"))
    with tempfile.TemporaryDirectory() as d, dask.config.set({**settings,
                                                              "serverless.retries": 1}):
        session.reset_backend("local")
        (got,) = dask.compute(delayed(die_once)(d), scheduler=serverless_get)
        assert got == 1
        out["retry_s"] = _read(os.path.join(d, "restarted")) - _read(os.path.join(d, "died"))
    session.reset_backend("local")
    return out


class LocalLambda:
    """A local Lambda API server with ``ds-faults-1024`` deployed; config points at it."""

    def __enter__(self) -> LocalLambda:
        from dask_serverless.backends.aws_lambda import LambdaSettings
        from dask_serverless.backends.aws_lambda.deploy import DeployOptions, deploy
        from dask_serverless.backends.aws_lambda.local_auth import Credentials
        from dask_serverless.backends.aws_lambda.local_server import LocalLambdaServer

        self.server = LocalLambdaServer(max_containers=4, keep_alive=60,
                                        credentials=Credentials.generate()).start()
        settings = LambdaSettings(function_prefix="ds-faults", endpoint_url=self.server.url,
                                  region="us-east-1")
        deploy(DeployOptions([1024], settings), say=lambda _: None)
        self.config = dask.config.set({"serverless.backend": "lambda",
                                       "serverless.lambda.endpoint-url": self.server.url,
                                       "serverless.lambda.function-prefix": "ds-faults",
                                       "serverless.lambda.region": "us-east-1"})
        self.config.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        from dask_serverless import session

        self.config.__exit__(None, None, None)
        session.reset_backend("lambda")
        self.server.stop()


# -- 2. lease cost -------------------------------------------------------------------------
def lease_cost(n: int, repeats: int) -> dict[str, Any]:
    from dask_serverless import serverless_get
    from dask_serverless.bench.workloads.graphs import tree_graph

    dsk, root = tree_graph(n)
    leaves = (n + 1) // 2
    expected = leaves * (leaves + 1) // 2
    serverless_get(*tree_graph(15))  # warm: Redis, fork server, containers
    times: dict[str, list[float]] = {"leases": [], "none": []}
    for _ in range(repeats):
        for name, hb in (("leases", 5.0), ("none", None)):
            with dask.config.set({"serverless.heartbeat-interval": hb}):
                t0 = time.perf_counter()
                got = serverless_get(dsk, root)
                times[name].append(time.perf_counter() - t0)
            assert got == expected, (got, expected)
    on, off = statistics.median(times["leases"]), statistics.median(times["none"])
    return {"tasks": len(dsk), "with_s": on, "without_s": off, "ratio": on / off,
            "runs": times}


# -- 3. a straggler --------------------------------------------------------------------------
def straggler(slow_s: float, speculation: bool) -> dict[str, Any]:
    from dask_serverless import serverless_get
    from dask_serverless.adapter import to_dag
    from dask_serverless.plan import Plan, ResourceConfig, WorkerSpec
    from dask_serverless.runtime import get as runtime_get

    with tempfile.TemporaryDirectory() as d:
        marker = os.path.join(d, "slow")
        parts = [delayed(slow_first_time)(i, marker, 3, slow_s, dask_key_name=f"part-{i}")
                 for i in range(8)]
        x = delayed(sum)(parts, dask_key_name="total")
        graph, key = dict(x.dask), x.key
        dag = to_dag(graph, key)
        assignment = [str(t.key) for t in dag.tasks]
        plan = Plan(assignment, {w: WorkerSpec(w, ResourceConfig(1024))
                                 for w in assignment}, "test", {})
        with dask.config.set({"serverless.speculation.enabled": speculation}):
            t0 = time.perf_counter()
            assert serverless_get(graph, key, plan=plan) == sum(range(8))
            seconds = time.perf_counter() - t0
            predicted = _predict_straggler(dag, plan, slow_s)
        run = runtime_get.last_run
        rec = run.record
        return {"speculation": speculation, "seconds": seconds,
                "backups": run.monitor.backups,
                "invocations": rec.invocations if rec else None,
                "cost_usd": rec.cost_usd if rec else None, "predicted_s": predicted}


def _predict_straggler(dag: Any, plan: Any, slow_s: float) -> float:
    from dask_serverless.costmodel import FixedCostModel
    from dask_serverless.simulator import Faults, Recovery, Simulator

    model = FixedCostModel(exec_s={"*": 0.2}, cold_s=0.5, warm_s=0.01, latency_s=0.001)
    slow = next(t.id for t in dag.tasks if t.key == "part-3")
    result = Simulator(dag, model, recovery=Recovery.from_config(direct=True)).run(
        plan, faults=Faults(slow={slow: slow_s}))
    return result.makespan


# -- report ----------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--slow", type=float, default=60.0)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    lines = ["# Fault handling (benchmarks/faults.py)", ""]

    rows = [detection("local", 5.0)]
    with LocalLambda():
        rows += [detection("lambda", hb) for hb in (5.0, 1.0)]
    lines += ["## Death to error / retry", "",
              "| backend | heartbeat (s) | death -> WorkerCrashedError (s) | "
              "death -> retry starts (s) |", "|---|---|---|---|"]
    lines += [f"| {r['backend']} | {r['heartbeat_s']} | {r['error_s']:.2f} | "
              f"{r['retry_s']:.2f} |" for r in rows]
    print("\n".join(lines), flush=True)

    n, repeats = (2_000, 2) if args.quick else (10_000, 5)
    cost = lease_cost(n, repeats)
    lines += ["", "## Lease cost", "",
              f"tree of {cost['tasks']} tasks, local backend, median of {repeats} "
              "alternating runs each:", "",
              "| leases (heartbeat 5 s) (s) | no leases (s) | ratio |", "|---|---|---|",
              f"| {cost['with_s']:.2f} | {cost['without_s']:.2f} | {cost['ratio']:.3f} |",
              "", f"runs: {cost['runs']}"]
    print("\n".join(lines[-8:]), flush=True)

    slow_s = min(args.slow, 30.0) if args.quick else args.slow
    spec = [straggler(slow_s, True), straggler(slow_s, False)]
    lines += ["", "## A straggler", "",
              f"eight 0.2 s tasks on eight workers, one {slow_s:.0f} s on its first attempt; "
              "the sum on a ninth; local backend, default settings:", "",
              "| speculation | makespan (s) | predicted (s) | invocations | backups | "
              "cost (USD) |", "|---|---|---|---|---|---|"]
    lines += [f"| {'on' if s['speculation'] else 'off'} | {s['seconds']:.2f} | "
              f"{s['predicted_s']:.2f} | {s['invocations']} | {s['backups']} | "
              f"{s['cost_usd']:.3g} |" for s in spec]
    text = "\n".join(lines) + "\n"
    print("\n".join(lines[-7:]))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
