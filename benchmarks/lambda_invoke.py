"""Fan-out through the local Lambda API server: concurrent invoker vs a sequential loop.

Starts ``dask-serverless local-lambda`` in a subprocess (so server and client do not share
a GIL), deploys one worker function, then issues N ``Event`` invocations (warm-up events:
the handler returns at once) two ways, with the same ``LambdaInvoker``:

- baseline: a sequential loop of ``send_one`` (one round trip after another);
- concurrent: ``send`` (``serverless.lambda.invoke-concurrency`` threads).

Each is measured at 0 ms added latency (loopback) and with an emulated AWS round trip
(``--latency-ms``, default 20), and reported as invocations/s and the ratio.

    python benchmarks/lambda_invoke.py [--invocations 1000] [--latency-ms 20] [--threads 64]
"""

from __future__ import annotations

import argparse
import time

from dask_serverless.backends.aws_lambda import LambdaSettings, events
from dask_serverless.backends.aws_lambda.deploy import DeployOptions, deploy
from dask_serverless.backends.aws_lambda.invoker import EventCall, LambdaInvoker
from dask_serverless.backends.aws_lambda.local_server import start_process


def rate(fn, n: int) -> float:
    t0 = time.perf_counter()
    fn()
    return n / (time.perf_counter() - t0)


def measure(latency_ms: float, n: int, threads: int) -> tuple[float, float]:
    proc, url = start_process("--max-containers", "2", "--latency-ms", str(latency_ms))
    try:
        settings = LambdaSettings(function_prefix="ds-bench", endpoint_url=url,
                                  region="us-east-1", invoke_concurrency=threads)
        deploy(DeployOptions([128], settings), say=lambda _: None)
        invoker = LambdaInvoker(settings)
        calls = [EventCall("ds-bench-128", events.WARMUP_EVENT, "benchmark")] * n
        invoker.send(calls[:threads])  # open connections, start the containers
        time.sleep(2)

        def sequential() -> None:
            for call in calls:
                invoker.send_one(call)

        seq = rate(sequential, n)
        time.sleep(2)  # let the containers drain the queued events
        conc = rate(lambda: invoker.send(calls), n)
        invoker.close()
        return seq, conc
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--invocations", type=int, default=1000)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--threads", type=int, default=64)
    args = parser.parse_args()
    print(f"{args.invocations} Event invocations through the local Lambda API server, "
          f"invoker threads: {args.threads}")
    print(f"{'added latency':>14} {'sequential inv/s':>17} {'concurrent inv/s':>17} "
          f"{'ratio':>7}")
    for latency in (0.0, args.latency_ms):
        seq, conc = measure(latency, args.invocations, args.threads)
        print(f"{latency:>11.0f} ms {seq:>17.0f} {conc:>17.0f} {conc / seq:>6.1f}x")


if __name__ == "__main__":
    main()
