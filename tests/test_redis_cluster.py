"""Intermediates in a real 3-master Redis Cluster (``redis+cluster://`` URLs)."""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import tempfile
import time

import dask
import numpy as np
import pytest
from dask import delayed

from dask_serverless import serverless_get
from dask_serverless.storage.keys import RunKeys
from dask_serverless.storage.store import connect


def _cluster_port() -> int:
    """A free port whose cluster-bus port (port + 10000) is free too."""
    for _ in range(100):
        port = random.randint(20000, 40000)
        ok = True
        for p in (port, port + 10000):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", p))
                except OSError:
                    ok = False
        if ok:
            return port
    raise RuntimeError("no free port pair for a Redis Cluster node")


@pytest.fixture(scope="module")
def redis_cluster():
    """Three redis-server masters in cluster mode on loopback: yields a cluster URL."""
    if shutil.which("redis-cli") is None or shutil.which("redis-server") is None:
        pytest.fail("redis-server / redis-cli are not installed (apt-get install redis-server)")
    tmp = tempfile.mkdtemp(prefix="ds-test-cluster-")
    ports = [_cluster_port() for _ in range(3)]
    procs = [subprocess.Popen(
        ["redis-server", "--port", str(p), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
         "--cluster-config-file", f"{tmp}/nodes-{p}.conf", "--save", "", "--appendonly", "no",
         "--dir", tmp], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for p in ports]
    try:
        for p in ports:
            for _ in range(100):
                if subprocess.run(["redis-cli", "-p", str(p), "ping"], capture_output=True,
                                  text=True).stdout.strip() == "PONG":
                    break
                time.sleep(0.05)
        subprocess.run(["redis-cli", "--cluster", "create",
                        *[f"127.0.0.1:{p}" for p in ports], "--cluster-replicas", "0",
                        "--cluster-yes"], check=True, capture_output=True, timeout=60)
        deadline = time.monotonic() + 30
        while "cluster_state:ok" not in subprocess.run(
                ["redis-cli", "-p", str(ports[0]), "cluster", "info"], capture_output=True,
                text=True).stdout:
            assert time.monotonic() < deadline, "the Redis Cluster did not become ready"
            time.sleep(0.1)
        yield f"redis+cluster://127.0.0.1:{ports[0]}"
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)


def _graph():
    x = [delayed(np.arange)(i, i + 100) for i in range(12)]
    pairs = [delayed(np.add)(x[i], x[i + 1]) for i in range(0, 12, 2)]
    return delayed(sum)([delayed(np.sum)(p) for p in pairs])


def test_run_keys_share_one_slot(redis_cluster):
    client = connect(redis_cluster)
    keys = RunKeys("abc")
    slots = {client.keyslot(k) for k in (keys.output(1), keys.fanin(7), keys.fired(7),
                                         keys.error, keys.payload("t"), keys.dag)}
    assert len(slots) == 1


def test_compute_on_redis_cluster(redis_cluster):
    with dask.config.set({"serverless.redis-url": redis_cluster}):
        got = dask.compute(_graph(), scheduler=serverless_get)
    assert got == dask.compute(_graph(), scheduler="sync")
    client = connect(redis_cluster)  # the run deleted its keys (metrics, dsm:*, stay)
    assert client.keys("ds:*", target_nodes=client.ALL_NODES) == []
    assert client.keys("dsm:*", target_nodes=client.ALL_NODES)


def test_lambda_backend_on_redis_cluster(redis_cluster, lambda_backend):
    with dask.config.set({"serverless.redis-url": redis_cluster}):
        got = dask.compute(_graph(), scheduler=serverless_get)
    assert got == dask.compute(_graph(), scheduler="sync")
