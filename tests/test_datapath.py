"""Large outputs in parts (``storage.store``, ``storage.bulk``) on a real redis-server (and
fakeredis's TCP server where it is cheap): values over Redis's 512 MB string limit, reads
into one preallocated writable buffer, write-once between racing attempts, a lost or
swapped part, a manifest replayed under another key, cleanup, and a task's large result
through real workers."""

from __future__ import annotations

import os

import dask
import numpy as np
import pytest
import redis
from dask import delayed

from dask_serverless import serverless_get
from dask_serverless.errors import RunDataLostError
from dask_serverless.storage import bulk, serialize, store
from dask_serverless.storage.store import RunStore, connect

pytestmark = pytest.mark.timeout(300)

MB = 2**20


@pytest.fixture
def small_parts(monkeypatch):
    """Parts of 1 MiB (and parts for anything from 256 KiB on), so a few MB make several."""
    monkeypatch.setattr(store, "PART_BYTES", MB)
    monkeypatch.setattr(store, "LARGE_BYTES", 256 * 1024)


def new_store(url: str) -> RunStore:
    import uuid

    return RunStore(connect(url), uuid.uuid4().hex[:16], ttl=600)


def parts_of(st: RunStore) -> list[bytes]:
    return sorted(st.r.keys(f"{st.keys.prefix}op:*"))


def test_chunked_value_round_trips_into_one_writable_buffer(any_redis, small_parts):
    st = new_store(any_redis)
    x = np.random.default_rng(1).random(int(3.5 * MB) // 8)
    data = st.encode_output(3, x)
    written, _, _ = st.publish(3, data, True, [], [], "inv-a")
    assert written
    assert len(parts_of(st)) == -(-data.nbytes // MB) == 4
    stored = st.r.get(st.keys.output(3))
    assert len(stored) < 200 and serialize.is_raw(stored)  # a manifest, not the value
    (blob,) = st.get_outputs([3])
    assert len(blob) == data.nbytes and not isinstance(blob, bytes)
    y = st.decode_output(3, blob)
    np.testing.assert_array_equal(x, y)
    assert y.flags.writeable and not y.flags.owndata  # a view of the buffer read into
    y[0] = -1.0  # values are writable, as in Dask
    assert st.cleanup([3], []) >= 5
    assert parts_of(st) == [] and not st.r.exists(st.keys.parts)


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="reads /proc/self/maps")
def test_values_are_read_into_private_memory():
    """Not shmem (``mmap``'s default shared mapping): no huge pages there, and reading
    and copying what was received into it ran several times slower."""
    import ctypes

    buf = bulk.buffer(4 * 2**20)
    at = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    with open("/proc/self/maps") as f:
        perms = next(line.split()[1] for line in f
                     if int(line.split("-")[0], 16) <= at < int(line.split()[0].split("-")[1], 16))
    assert perms == "rw-p"


def test_small_values_are_stored_whole(any_redis, small_parts):
    st = new_store(any_redis)
    st.publish(1, st.encode_output(1, list(range(100))), True, [], [], "inv")
    assert parts_of(st) == []
    (blob,) = st.get_outputs([1])
    assert isinstance(blob, bytes) and st.decode_output(1, blob) == list(range(100))
    st.cleanup([1], [])


def test_value_over_redis_string_limit(redis_server):
    """600 MB (Redis refuses one string over 512 MB): stored in parts, read back whole.
    Zeros but for three marks, so the client's copy stays in untouched pages."""
    st = new_store(redis_server)
    n = 600 * 10**6 // 8
    x = np.zeros(n)
    x[0], x[n // 2], x[-1] = 1.0, 2.0, 3.0
    data = st.encode_output(0, x)
    assert data.nbytes > 512 * MB
    with pytest.raises((redis.ResponseError, redis.ConnectionError)):  # one SET's fate
        st.r.set("too-big", memoryview(x).cast("B")[:512 * MB + 1])
    written, _, _ = st.publish(0, data, True, [], [], "inv")
    del data
    assert written and len(parts_of(st)) == -(-(x.nbytes + 200) // store.PART_BYTES)
    (blob,) = st.get_outputs([0])
    y = st.decode_output(0, blob)
    assert y.shape == x.shape and (y[0], y[n // 2], y[-1]) == (1.0, 2.0, 3.0)
    assert float(y.sum()) == 6.0
    del y, blob
    st.cleanup([0], [])
    assert parts_of(st) == []


def test_a_losing_attempt_deletes_its_parts_and_the_first_value_stays(any_redis,
                                                                      small_parts):
    st = new_store(any_redis)
    first = st.encode_output(5, np.full(400_000, 1.0))
    second = st.encode_output(5, np.full(400_000, 2.0))
    assert st.publish(5, first, False, [], [], "inv-a")[0]
    n = len(parts_of(st))
    assert not st.publish(5, second, False, [], [], "inv-b")[0]  # write-once
    assert len(parts_of(st)) == n  # the loser's parts are gone
    st.publish_outputs([(5, second)], [5], [])  # the client's batch path: same rule
    assert len(parts_of(st)) == n
    (blob,) = st.get_outputs([5])
    assert st.decode_output(5, blob)[0] == 1.0
    st.cleanup([5], [])


def test_a_missing_or_swapped_part_is_run_data_lost(any_redis, small_parts):
    st = new_store(any_redis)
    st.publish(2, st.encode_output(2, np.arange(500_000.0)), True, [], [], "inv")
    names = parts_of(st)
    st.r.set(names[1], b"short")  # another length: drained, not read into the buffer
    with pytest.raises(RunDataLostError, match="part of output 2"):
        st.get_outputs([2])
    assert st.r.ping()  # the connection it used was left clean
    st.r.delete(names[0])
    with pytest.raises(RunDataLostError):
        st.get_outputs([2])
    st.cleanup([2], [])


def test_a_part_replaced_with_other_bytes_fails_the_seal(any_redis, small_parts):
    st = new_store(any_redis)
    st.publish(2, st.encode_output(2, np.arange(500_000.0)), True, [], [], "inv")
    name = parts_of(st)[1]
    st.r.set(name, bytes(len(st.r.get(name))))  # same length, other bytes
    (blob,) = st.get_outputs([2])
    with pytest.raises(serialize.TamperedPayloadError):
        st.decode_output(2, blob)
    st.cleanup([2], [])


def test_a_manifest_replayed_under_another_task_is_refused(any_redis, small_parts):
    st = new_store(any_redis)
    st.publish(2, st.encode_output(2, np.arange(500_000.0)), True, [], [], "inv")
    st.r.set(st.keys.output(9), st.r.get(st.keys.output(2)))
    with pytest.raises(serialize.TamperedPayloadError):
        st.get_outputs([9])
    st.cleanup([2, 9], [])


def test_bulk_transfer_through_a_password_protected_server():
    """The private server (``session``) has a password: the borrowed sockets are
    authenticated like the client's own."""
    from dask_serverless.storage.embedded import EmbeddedRedis

    server = EmbeddedRedis()
    try:
        r = connect(server.start())
        items = [("a", [memoryview(b"x" * 10), b"yz"]), ("b", [b"\1" * 3 * MB])]
        bulk.write(r, items, 60)
        out = bulk.buffer(12 + 3 * MB)
        assert bulk.read(r, ["a", "b"], [12, 3 * MB], memoryview(out))
        assert out[:12] == b"x" * 10 + b"yz" and out[12:] == b"\1" * 3 * MB
        assert not bulk.read(r, ["a", "missing"], [12, 3], memoryview(bulk.buffer(15)))
        assert r.get("a") == b"x" * 10 + b"yz"  # the pool's connections still work
    finally:
        server.stop()


def make(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.float64)


def halve(x: np.ndarray) -> np.ndarray:
    x /= 2  # inputs are writable, as with Dask's schedulers
    return x


def test_large_results_through_workers_and_the_client(any_redis):
    """Outputs of 8 MB (in parts) move between workers and reach the client."""
    n = MB
    parts = [delayed(halve)(delayed(make)(n + i)) for i in range(3)]
    total = delayed(sum)([delayed(np.sum)(p) for p in parts])
    got = dask.compute(total, parts[0], scheduler=serverless_get,
                       parallelism=3)
    want = dask.compute(total, parts[0], scheduler="sync")
    assert got[0] == want[0]
    np.testing.assert_array_equal(got[1], want[1])
    assert got[1].flags.writeable
