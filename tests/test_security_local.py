"""Local containers against what their tasks leave behind and what they inherit: a task's
forked processes die with its container (however the container ends), and the payload
secret is not in any process's environment."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import dask
import pytest
from dask import delayed

from dask_serverless import serverless_get
from dask_serverless.backends.local import LocalBackend


def _alive(pid: int) -> bool:
    """Running (a zombie, killed but not yet reaped by whoever adopted it, is not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def _gone(pid: int, within: float = 30.0) -> bool:
    deadline = time.monotonic() + within
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def fork_and_leave() -> int:
    """A task that forks a long-lived child and returns without waiting for it."""
    pid = os.fork()
    if pid == 0:
        try:
            time.sleep(300)
        finally:
            os._exit(0)
    return pid


def spawn_and_leave() -> int:
    return subprocess.Popen(["sleep", "300"]).pid


@pytest.mark.parametrize("method", ["fork-server", "spawn"])
@pytest.mark.parametrize("task", [fork_and_leave, spawn_and_leave])
def test_what_a_task_forks_is_gone_when_its_container_ends(real_redis, method, task):
    with dask.config.set({"serverless.local.start-method": method}):
        backend = LocalBackend(max_containers=2, keep_alive=60)
    try:
        (pid,) = dask.compute(delayed(task)(), scheduler=serverless_get, backend=backend)
        assert _alive(pid)  # the container is warm: its group lives on
    finally:
        backend.close()
    assert _gone(pid), f"process {pid} forked by a task outlived its container"


CLIENT = textwrap.dedent("""
    import sys, time, dask
    from dask import delayed
    from dask_serverless import serverless_get
    sys.path.insert(0, {tests!r})
    from test_security_local import {task}
    with dask.config.set({{"serverless.redis-url": {url!r},
                          "serverless.local.start-method": {method!r},
                          "serverless.metrics.enabled": False}}):
        (pid,) = dask.compute(delayed({task})(), scheduler=serverless_get)
    print(pid, flush=True)
    time.sleep(300)
""")


@pytest.mark.parametrize("method", ["fork-server", "spawn"])
def test_what_a_task_forks_is_gone_when_the_client_is_killed(redis_server, method):
    code = CLIENT.format(tests=os.path.dirname(__file__), task="spawn_and_leave",
                         url=redis_server, method=method)
    client = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        pid = int(client.stdout.readline())
        assert _alive(pid)
    finally:
        client.send_signal(signal.SIGKILL)
        client.wait()
    assert _gone(pid), f"process {pid} forked by a task outlived its killed client"


def secret_seen() -> tuple[str | None, str]:
    child = subprocess.run([sys.executable, "-c", "import os; print(os.environ.get("
                            "'DASK_SERVERLESS__SECRET'))"], capture_output=True, text=True)
    return os.environ.get("DASK_SERVERLESS__SECRET"), child.stdout.strip()


@pytest.mark.parametrize("method", ["fork-server", "spawn"])
def test_the_generated_secret_is_in_no_environment(real_redis, method, monkeypatch):
    monkeypatch.delenv("DASK_SERVERLESS__SECRET", raising=False)
    with dask.config.set({"serverless.local.start-method": method}):
        backend = LocalBackend(max_containers=2, keep_alive=60)
    try:
        (seen,) = dask.compute(delayed(secret_seen)(), scheduler=serverless_get,
                               backend=backend)
    finally:
        backend.close()
    assert seen == (None, "None")
    assert "DASK_SERVERLESS__SECRET" not in os.environ


@pytest.mark.parametrize("task", [fork_and_leave, spawn_and_leave])
def test_what_a_lambda_task_forks_is_gone_when_its_execution_environment_ends(real_redis,
                                                                                task):
    """The same on the lambda backend: the local Lambda API server's containers."""
    from dask_serverless import session
    from dask_serverless.backends.aws_lambda import LambdaSettings
    from dask_serverless.backends.aws_lambda.deploy import DeployOptions, deploy
    from dask_serverless.backends.aws_lambda.local_auth import Credentials
    from dask_serverless.backends.aws_lambda.local_server import LocalLambdaServer

    server = LocalLambdaServer(max_containers=2, keep_alive=60,
                               credentials=Credentials.generate()).start()
    try:
        settings = LambdaSettings(function_prefix="ds-orphans", endpoint_url=server.url,
                                  region="us-east-1")
        deploy(DeployOptions([1024], settings), say=lambda _: None)
        with dask.config.set({"serverless.backend": "lambda",
                              "serverless.lambda.endpoint-url": server.url,
                              "serverless.lambda.function-prefix": "ds-orphans",
                              "serverless.lambda.region": "us-east-1"}):
            try:
                (pid,) = dask.compute(delayed(task)(), scheduler=serverless_get)
            finally:
                session.reset_backend("lambda")
        assert _alive(pid)  # its execution environment is warm: its group lives on
    finally:
        server.stop()
    assert _gone(pid), f"process {pid} forked by a Lambda task outlived its environment"
