"""The ``dask-serverless`` command."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from pathlib import Path

from .bench import command as bench_command


def _demo(args: argparse.Namespace) -> int:
    import dask
    import dask.array as da

    from .runtime import get as get_mod

    n, chunk = args.size, args.chunk
    x = da.random.RandomState(42).random((n, n), chunks=chunk)
    expr = (x @ x.T).sum()
    t0 = time.perf_counter()
    (result,) = dask.compute(expr, scheduler=get_mod.serverless_get)
    elapsed = time.perf_counter() - t0
    (expected,) = dask.compute(expr, scheduler="sync")
    run = get_mod.last_run
    out = sys.stdout
    out.write(f"result: sum(x @ x.T) for a {n}x{n} array in {chunk}x{chunk} chunks = "
              f"{result:.6f}\n")
    out.write(f"matches scheduler='sync': {abs(result - expected) <= 1e-9 * abs(expected)}\n")
    rec = run.record if run is not None else None
    if rec is not None:  # the summary comes from the recorded metrics
        merged = rec.workers_planned - rec.workers
        out.write(
            f"run {rec.run_id}: {rec.tasks} tasks ran in {rec.invocations} worker "
            f"invocations ({rec.cold_starts} started a new container, {rec.warm_starts} "
            f"reused a warm one)\n"
            f"plan: {rec.workers_planned} task groups"
            + (f", {merged} of them run by an invocation already under way" if merged else "")
            + "\n"
            f"makespan: {rec.makespan:.3f} s (compute call {elapsed:.3f} s)  "
            f"planner: {rec.planner}  backend: {rec.backend}  est. cost: "
            f"${rec.cost_usd:.6f}\n"
            f"recorded runs so far: {len(_store().run_ids())} (`dask-serverless runs`, "
            f"`dask-serverless show {rec.run_id}`, `dask-serverless logs {rec.run_id}`)\n")
    elif run is not None:
        out.write(f"tasks: {len(run.dag)}  makespan: {run.makespan:.3f} s (metrics off)\n")
    return 0


def _store():
    from . import session
    from .metrics.store import MetricsStore

    url = session.metrics_url()
    if url is None:
        raise SystemExit("serverless.metrics.enabled is off: no metrics to read")
    return MetricsStore.from_url(url)


def _runs(args: argparse.Namespace) -> int:
    from .metrics.report import format_runs

    store = _store()
    runs = store.runs(store.run_ids(args.limit, args.signature))
    sys.stdout.write((format_runs(runs) if runs else "no recorded runs") + "\n")
    return 0


def _recorded_run(args: argparse.Namespace):
    """(metrics store, the run id ``args.run_id`` starts), or None after saying why not."""
    store = _store()
    try:
        return store, store.resolve(args.run_id)
    except KeyError as exc:
        sys.stderr.write(f"dask-serverless {args.command}: {exc.args[0]}\n")
        return None


def _show(args: argparse.Namespace) -> int:
    from .metrics.report import format_show

    found = _recorded_run(args)
    if found is None:
        return 2
    store, run_id = found
    sys.stdout.write(format_show(store.run(run_id), store.invocations(run_id),
                                 store.tasks(run_id)) + "\n")
    return 0


def _logs(args: argparse.Namespace) -> int:
    from .metrics.report import format_logs

    found = _recorded_run(args)
    if found is None:
        return 2
    store, run_id = found
    run = store.run(run_id)
    text = format_logs(run, store.tasks(run_id), store.task_logs(run_id), args.task)
    sys.stdout.write((text or f"run {run_id}: no task printed, warned or logged anything "
                      "(serverless.metrics.task-logs sets the lowest log level kept)") + "\n")
    return 0


def _export(args: argparse.Namespace) -> int:
    from .metrics.reader import MetricsReader

    _output_dir(args.output, "metrics export")
    reader = MetricsReader(_store())
    ids = reader.run_ids(args.limit)
    for path in reader.export(args.output, args.format, ids):
        sys.stdout.write(f"{path}\n")
    return 0


def _dashboard(args: argparse.Namespace) -> int:
    if args.screenshot:
        return _screenshots(args)
    from .dashboard.server import serve

    return serve(args.redis_url, args.port, args.host)


def _screenshots(args: argparse.Namespace) -> int:
    """PNGs of the dashboard's pages over the recorded runs, then exit."""
    import dask

    _output_dir(args.screenshot, "dashboard --screenshot")
    try:
        from .dashboard.screenshot import capture_pages
    except ImportError as exc:
        raise SystemExit("screenshots need the dashboard extra: "
                         "pip install 'dask-serverless[dashboard]'") from exc
    from . import session

    # scoped: cli.main also runs inside other programs (and the tests)
    with dask.config.set({"serverless.metrics.redis-url": args.redis_url}
                         if args.redis_url else {}):
        url = session.metrics_url()
    if url is None:
        raise SystemExit("serverless.metrics.enabled is off: there is nothing to show")
    try:
        capture_pages(url, args.screenshot, say=_say)
    except FileNotFoundError as exc:
        raise SystemExit(f"dask-serverless dashboard --screenshot: {exc}") from None
    return 0


def _report(args: argparse.Namespace) -> int:
    try:
        from .dashboard.report import write_report
    except ImportError as exc:
        raise SystemExit("the report needs plotly and pandas: "
                         "pip install 'dask-serverless[dashboard]'") from exc
    import dask

    _output_file(args.output, "report")
    try:
        with dask.config.set({"serverless.metrics.redis-url": args.redis_url}
                             if args.redis_url else {}):
            path = write_report(_store(), args.run_id, args.output)
    except KeyError as exc:
        sys.stderr.write(f"dask-serverless report: {exc.args[0]}\n")
        return 2
    _say(f"wrote {path}")
    return 0


def _settings(args: argparse.Namespace):
    from .backends.aws_lambda import LambdaSettings

    return LambdaSettings.from_config(endpoint_url=args.endpoint_url, region=args.region,
                                      function_prefix=args.prefix,
                                      timeout=getattr(args, "timeout", None))


def _csv(text: str | None) -> list[str]:
    return [p.strip() for p in (text or "").split(",") if p.strip()]


def _deploy(args: argparse.Namespace) -> int:
    from .backends.aws_lambda.deploy import DeployOptions, deploy

    try:
        memory = [int(m) for m in _csv(args.memory)]
    except ValueError:
        raise SystemExit(f"--memory {args.memory!r} must be comma-separated integers (MB)") \
            from None
    opts = DeployOptions(memory, _settings(args), requirements=args.requirements,
                         redis_url=args.redis_url, role=args.role, build=args.build,
                         image_uri=args.image_uri, iam_endpoint_url=args.iam_endpoint_url,
                         subnets=_csv(args.subnets), security_groups=_csv(args.security_groups))
    if args.runtime:
        opts.runtime = args.runtime
    if args.secret is not None:
        raise SystemExit("--secret would show the secret to every user of this machine (ps); "
                         "use --secret-file FILE (or - for stdin) or DASK_SERVERLESS__SECRET")
    import dask

    with dask.config.set({"serverless.secret": _read_secret(args.secret_file)}
                         if args.secret_file else {}):
        deploy(opts, say=_say)
    return 0


def _read_secret(path: str) -> str:
    """The first line of ``path`` (``-``: standard input), stripped."""
    try:
        if path == "-":
            line = sys.stdin.readline()
        else:
            with open(path) as f:
                line = f.readline()
    except OSError as exc:
        raise SystemExit(f"--secret-file {path}: {exc.strerror}") from None
    if not line.strip():
        raise SystemExit(f"--secret-file {path}: no secret on its first line")
    return line.strip()


def _destroy(args: argparse.Namespace) -> int:
    from .backends.aws_lambda.deploy import destroy

    destroy(_settings(args), keep_role=args.keep_role, iam_endpoint_url=args.iam_endpoint_url,
            say=_say)
    return 0


def _local_lambda(args: argparse.Namespace) -> int:
    from .backends.aws_lambda.local_auth import environment_credentials
    from .backends.aws_lambda.local_server import LocalLambdaServer

    creds = environment_credentials(args.profile) if args.profile else None
    server = LocalLambdaServer(args.host, args.port, max_containers=args.max_containers,
                               keep_alive=args.keep_alive, credentials=creds,
                               invoke_latency=args.latency_ms / 1000, publish_file=True)
    if server.credentials_source == "generated":
        where = (f"generated credentials, published for this user's clients in "
                 f"{server.credentials_file}")
    else:
        where = f"the {'profile' if args.profile else 'environment'}'s AWS credentials"
    _say(f"local Lambda API server on {server.url} (Ctrl-C stops it); it accepts requests "
         f"signed with {where}. Use it with\n"
         f"  dask-serverless deploy --endpoint-url {server.url} --memory 1024\n"
         f"  DASK_SERVERLESS__BACKEND=lambda "
         f"DASK_SERVERLESS__LAMBDA__ENDPOINT_URL={server.url} python your_script.py")
    signal.signal(signal.SIGTERM, _exit_on_sigterm)  # stop() removes temp files, credentials
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _dockerfile(args: argparse.Namespace) -> int:
    from .backends.aws_lambda.packaging import write_image_context

    path = write_image_context(args.directory, args.requirements)
    _say(f"wrote {path} and its build context; next: docker build -t IMAGE {args.directory} "
         "&& docker push IMAGE && dask-serverless deploy --image-uri IMAGE --memory ...")
    return 0


def _warn_password_on_argv(url: str | None) -> None:
    """A password on the command line is visible to every user of the machine (ps)."""
    from urllib.parse import urlsplit

    try:
        password = urlsplit(url).password if url else None
    except ValueError:
        return
    if password:
        sys.stderr.write("warning: --redis-url carries a password, which every user of this "
                         "machine can read (ps); set it in the environment instead "
                         "(DASK_SERVERLESS__REDIS_URL, DASK_SERVERLESS__METRICS__REDIS_URL)\n")


def _output_dir(path: str, command: str) -> None:
    """Refuse, before any work, an output directory that cannot be made or written."""
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise SystemExit(f"dask-serverless {command}: {path} exists and is not a directory "
                         "(-o names a directory to write the tables into)")
    existing = next((p for p in (target, *target.parents) if p.exists()), Path("."))
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise SystemExit(f"dask-serverless {command}: cannot write to {existing}")


def _output_file(path: str, command: str) -> None:
    """Refuse, before any work, an output file that is a directory or not writable."""
    target = Path(path)
    if target.is_dir():
        raise SystemExit(f"dask-serverless {command}: {path} is a directory (-o names the "
                         "HTML file to write)")
    parent = target.parent
    if not parent.is_dir():
        raise SystemExit(f"dask-serverless {command}: directory {parent} does not exist")
    if not os.access(target if target.exists() else parent, os.W_OK):
        raise SystemExit(f"dask-serverless {command}: cannot write {path}")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be 1 or more")
    return value


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _add_lambda_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--endpoint-url", help="Lambda API endpoint (e.g. the local-lambda server)")
    p.add_argument("--iam-endpoint-url", help="IAM endpoint (e.g. a moto server)")
    p.add_argument("--region", help="AWS region (default: the boto3 chain)")
    p.add_argument("--prefix", help="function name prefix (serverless.lambda.function-prefix)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dask-serverless",
                                     description="Run Dask graphs on serverless workers.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run an example workflow on the embedded default")
    demo.add_argument("--size", type=int, default=4000)
    demo.add_argument("--chunk", type=int, default=1000)
    demo.set_defaults(func=_demo)
    runs = sub.add_parser("runs", help="list recent recorded runs")
    runs.add_argument("--limit", type=_positive_int, default=20, help="newest runs only")
    runs.add_argument("--signature", help="only runs of this workflow signature")
    runs.set_defaults(func=_runs)
    show = sub.add_parser("show", help="where one run's time went, per worker")
    show.add_argument("run_id", help="a run id (or a unique prefix of one)")
    show.set_defaults(func=_show)
    logs = sub.add_parser("logs", help="what one run's tasks printed, warned and logged")
    logs.add_argument("run_id", help="a run id (or a unique prefix of one)")
    logs.add_argument("--task", help="only tasks whose key contains this text")
    logs.set_defaults(func=_logs)
    dash = sub.add_parser("dashboard", help="serve the dashboards (Streamlit) over the "
                          "recorded metrics")
    dash.add_argument("--redis-url", help="metrics Redis (default: serverless.metrics."
                                          "redis-url, serverless.redis-url, else the "
                                          "persistent embedded one)")
    dash.add_argument("--port", type=int, default=8501)
    dash.add_argument("--host", default="127.0.0.1")
    dash.add_argument("--screenshot", metavar="DIR",
                      help="write a PNG of each page to DIR (headless Chromium), then exit")
    dash.set_defaults(func=_dashboard)
    rep = sub.add_parser("report", help="write one run's charts as a self-contained HTML file")
    rep.add_argument("run_id", help="a run id (or a unique prefix of one)")
    rep.add_argument("-o", "--output", default="report.html")
    rep.add_argument("--redis-url", help="metrics Redis (default: as for dashboard)")
    rep.set_defaults(func=_report)
    metrics = sub.add_parser("metrics", help="recorded metrics")
    metrics_sub = metrics.add_subparsers(dest="metrics_command", required=True)
    export = metrics_sub.add_parser("export", help="write runs, invocations, tasks, inputs")
    export.add_argument("--format", choices=("parquet", "csv"), default="parquet")
    export.add_argument("-o", "--output", default="dask-serverless-metrics",
                        help="directory to write <table>.<format> files into")
    export.add_argument("--limit", type=_positive_int, default=None, help="newest runs only")
    export.set_defaults(func=_export)
    dep = sub.add_parser("deploy", help="create or update the AWS Lambda worker functions")
    dep.add_argument("--memory", required=True, help="memory sizes in MB, e.g. 512,1024,2048")
    dep.add_argument("--requirements", help="requirements.txt installed into the package")
    dep.add_argument("--redis-url", help="Redis URL set in the functions' environment")
    dep.add_argument("--role", help="execution role ARN (default: create <prefix>-worker)")
    dep.add_argument("--secret-file", help="file whose first line is the serverless.secret "
                                           "shared with clients (- : stdin; default: "
                                           "serverless.secret, else a generated one, stored "
                                           "for this user's clients)")
    dep.add_argument("--secret", help=argparse.SUPPRESS)  # refused: argv is public
    dep.add_argument("--timeout", type=int, help="function timeout in seconds (default 900)")
    dep.add_argument("--runtime", help="Lambda runtime (default: this Python, e.g. python3.11)")
    dep.add_argument("--build", choices=("auto", "lambda", "local"), default="auto",
                     help="wheels for Lambda (manylinux) or this machine; auto: local when "
                          "--endpoint-url is given")
    dep.add_argument("--image-uri", help="deploy a container image instead of a zip")
    dep.add_argument("--subnets", help="VPC subnet ids (comma-separated), e.g. for ElastiCache")
    dep.add_argument("--security-groups", help="VPC security group ids (comma-separated)")
    _add_lambda_args(dep)
    dep.set_defaults(func=_deploy)
    des = sub.add_parser("destroy", help="delete the worker functions (and the role deploy made)")
    des.add_argument("--keep-role", action="store_true", help="do not delete <prefix>-worker")
    _add_lambda_args(des)
    des.set_defaults(func=_destroy)
    loc = sub.add_parser("local-lambda", help="serve the Lambda API on loopback, running "
                         "functions in local containers")
    loc.add_argument("--port", type=int, default=9001)
    loc.add_argument("--host", default="127.0.0.1")
    loc.add_argument("--max-containers", type=int, help="containers per function")
    loc.add_argument("--keep-alive", type=float,
                     help="seconds an idle container stays warm (default: "
                          "serverless.local.keep-alive)")
    loc.add_argument("--latency-ms", type=float, default=0.0,
                     help="add this much latency to each Invoke (emulates AWS round trips)")
    loc.add_argument("--profile", help="accept requests signed with this AWS profile's "
                                       "credentials (default: the environment's, else "
                                       "generated ones published for this user's clients)")
    loc.set_defaults(func=_local_lambda)
    dck = sub.add_parser("dockerfile", help="write a container-image build context")
    dck.add_argument("directory")
    dck.add_argument("--requirements")
    dck.set_defaults(func=_dockerfile)
    bench_command.add_parser(sub)
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    _warn_password_on_argv(getattr(args, "redis_url", None))
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    try:
        return args.func(args)
    except OSError as exc:  # a file or directory the command reads or writes: no traceback
        where = f": {exc.filename}" if exc.filename else ""
        sys.stderr.write(f"dask-serverless {args.command}: {exc.strerror or exc}{where}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
