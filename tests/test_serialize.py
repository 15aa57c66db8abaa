"""Seals bound to purpose, run and key; pickle protocol 5 with out-of-band buffers."""

from __future__ import annotations

import uuid

import dask
import numpy as np
import pytest

from dask_serverless import config
from dask_serverless.config import ConfigError
from dask_serverless.protocol.wire import error_record
from dask_serverless.storage import serialize
from dask_serverless.storage.serialize import Purpose, TamperedPayloadError
from dask_serverless.storage.store import RunStore, connect


@pytest.fixture
def fresh_keys():
    """Derived keys forgotten before and after (the test changes the secret)."""
    serialize.reset_key()
    yield
    serialize.reset_key()


def test_values_round_trip_and_large_buffers_travel_out_of_band():
    big = np.arange(100_000, dtype=np.float64)  # 800 KB: out of band
    value = {"big": big, "small": np.arange(10), "text": "x", "n": 3}
    enc = serialize.encode(value, Purpose.OUTPUT, "r1", "ds:{r1}:o:1")
    assert len(enc.parts) == 3  # frame header, pickle stream, one out-of-band buffer
    assert enc.parts[2].obj is big.data.obj or np.shares_memory(
        np.frombuffer(enc.parts[2], dtype=np.float64), big)  # not copied
    blob = enc.tobytes()
    assert enc.nbytes == len(blob) < big.nbytes + 1000
    back = serialize.decode(blob, Purpose.OUTPUT, "r1", "ds:{r1}:o:1")
    assert back["big"].tolist() == big.tolist() and back["text"] == "x"
    back["big"][0] = 7.0  # writable even though it came from read-only bytes
    in_place = serialize.decode(bytearray(blob), Purpose.OUTPUT, "r1", "ds:{r1}:o:1")
    in_place["big"][1] = 8.0  # a writable blob is used in place


@pytest.mark.parametrize("size", [1, 7, 4096, 100_003])
def test_chunks_join_to_the_whole_frame(size):
    enc = serialize.encode([np.arange(70_000), b"y" * 5000], Purpose.OUTPUT, "r", "k")
    pieces = list(enc.chunks(size))
    assert b"".join(bytes(p) for p in pieces) == enc.tobytes()
    assert all(len(p) == size for p in pieces[:-1]) and 0 < len(pieces[-1]) <= size


@pytest.mark.parametrize("other", [
    (Purpose.OUTPUT, "run-b", "ds:{run-a}:o:1"),  # another run
    (Purpose.OUTPUT, "run-a", "ds:{run-a}:o:2"),  # another key
    (Purpose.ERROR, "run-a", "ds:{run-a}:o:1"),  # another purpose
])
def test_a_blob_replayed_under_another_run_key_or_purpose_is_refused(other):
    blob = serialize.dumps([1, 2, 3], Purpose.OUTPUT, "run-a", "ds:{run-a}:o:1")
    assert serialize.loads(blob, Purpose.OUTPUT, "run-a", "ds:{run-a}:o:1") == [1, 2, 3]
    with pytest.raises(TamperedPayloadError, match="HMAC seal"):
        serialize.loads(blob, *other)


def test_raw_seals_bind_the_same_way_and_never_unpickle():
    blob = serialize.seal(b'{"kind": "outputs"}', Purpose.EVENT, "r", "ds:{r}:events")
    assert bytes(serialize.unseal(blob, Purpose.EVENT, "r", "ds:{r}:events")) == \
        b'{"kind": "outputs"}'
    with pytest.raises(TamperedPayloadError):
        serialize.unseal(blob, Purpose.EVENT, "other", "ds:{r}:events")
    with pytest.raises(TamperedPayloadError):  # a raw frame is not a pickle
        serialize.loads(blob, Purpose.EVENT, "r", "ds:{r}:events")
    pickled = serialize.dumps(1, Purpose.EVENT, "r", "ds:{r}:events")
    with pytest.raises(TamperedPayloadError):  # nor a pickle a raw frame
        serialize.unseal(pickled, Purpose.EVENT, "r", "ds:{r}:events")


@pytest.mark.parametrize("mangle", [
    lambda b: b[:-1],  # truncated
    lambda b: b + b"x",  # extended
    lambda b: b[:40] + b"\xff" * 8 + b[48:],  # a part length lied about
    lambda b: b"DSv0" + b[4:],  # another format
    lambda b: b"",
    lambda b: b"\x80\x05N.",  # a bare pickle
    lambda b: bytes(b[:60]) + bytes([b[60] ^ 1]) + b[61:],  # one bit of the pickle
])
def test_mangled_blobs_are_refused_before_unpickling(mangle):
    blob = serialize.dumps({"a": np.arange(20_000)}, Purpose.OUTPUT, "r", "k")
    with pytest.raises(TamperedPayloadError):
        serialize.loads(mangle(blob), Purpose.OUTPUT, "r", "k")


def test_another_secret_is_refused(fresh_keys):
    blob = serialize.dumps("v", Purpose.SPEC, "r", "spec")
    with dask.config.set({"serverless.secret": "s" * 32}):
        serialize.reset_key()
        with pytest.raises(TamperedPayloadError):
            serialize.loads(blob, Purpose.SPEC, "r", "spec")
        assert serialize.loads(serialize.dumps("v", Purpose.SPEC, "r", "spec"),
                               Purpose.SPEC, "r", "spec") == "v"


def test_a_secret_shorter_than_32_bytes_is_a_config_error(fresh_keys):
    with dask.config.set({"serverless.secret": "s" * 31}):
        serialize.reset_key()
        with pytest.raises(ConfigError, match="at least 32") as info:
            serialize.dumps(1, Purpose.OUTPUT, "r", "k")
        assert "s" * 31 not in str(info.value)  # never shown
        with pytest.raises(ConfigError):
            config.validate_all()
    assert len(serialize.secret()) >= 32  # the generated one is long enough


def test_an_error_record_replayed_under_another_run_is_refused(any_redis):
    """A sealed error record of run A set under run B's error key makes B fail with
    TamperedPayloadError, never with A's stale exception."""
    client = connect(any_redis)
    a = RunStore(client, f"a{uuid.uuid4().hex[:8]}", ttl=60)
    b = RunStore(client, f"b{uuid.uuid4().hex[:8]}", ttl=60)
    a.fail(error_record(KeyError("stale"), "k", "w0", 1024))
    assert a.get_error()["key"] == "'k'"
    client.set(b.keys.error, client.get(a.keys.error))  # replayed
    with pytest.raises(TamperedPayloadError):
        b.get_error()
    client.delete(a.keys.error, b.keys.error)


def test_an_output_copied_to_another_task_key_is_refused(any_redis):
    store = RunStore(connect(any_redis), f"o{uuid.uuid4().hex[:8]}", ttl=60)
    store.publish_outputs([(1, store.encode_output(1, "one"))], [], [])
    (blob,) = store.get_outputs([1])
    assert store.decode_output(1, blob) == "one"
    with pytest.raises(TamperedPayloadError):
        store.decode_output(2, blob)
    store.cleanup([1], [])
