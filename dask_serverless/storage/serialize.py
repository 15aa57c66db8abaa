"""Values to sealed bytes and back: pickle protocol 5 with out-of-band buffers, and an
HMAC seal bound to what the bytes are for.

Every blob that crosses a process boundary (invocations, run specs, task outputs, error
records, and control data such as events or stream heads) is sealed; nothing is unpickled
or parsed before its seal checks out.

The seal
--------
A seal is HMAC-SHA256 under a subkey derived with HKDF (RFC 5869) from
``serverless.secret`` for one ``(purpose, run id)``; the MAC covers the Redis key (or
another name) the blob is stored or sent under, then the blob itself. So a sealed blob is
refused (``TamperedPayloadError``) when it is altered, made with another secret, or
replayed under another purpose, run or key: an error record of run A set under run B's
error key, an output copied to another task's key, an output posing as an invocation.
A secret shorter than 32 bytes is a ``ConfigError``; with no secret configured, the
process makes a random one (in its ``dask.config``, not its environment: processes it
starts do not inherit it; the local pool hands it to its containers over their pipes).

API (``purpose`` is a ``Purpose``; ``run_id`` the run; ``key`` the Redis key, which
contains the run id, or for data not stored in Redis the name it travels under):

- ``encode(value, purpose, run_id, key) -> Encoded``: pickle (cloudpickle when plain pickle
  refuses) with large buffers out of band, and seal. ``Encoded.nbytes`` is the stored
  size, ``Encoded.tobytes()`` one contiguous copy, ``Encoded.chunks(n)`` views of at most
  ``n`` bytes each (no copy but for pieces that straddle a boundary), ``Encoded.pieces(n)``
  the same chunks as lists of views (no copy at all).
- ``decode(blob, purpose, run_id, key, what) -> value``: check the seal, then unpickle;
  large buffers are used in place (numpy arrays view ``blob`` when it is writable, e.g. a
  ``bytearray`` a reader filled) and copied when it is not.
- ``dumps`` / ``loads``: the same as one ``bytes`` blob.
- ``seal(data, purpose, run_id, key) -> bytes`` and ``unseal(blob, purpose, run_id, key,
  what) -> memoryview``: raw bytes (e.g. JSON of a pub/sub event or a stream head) in the
  same frame; ``unseal`` returns the data only once the seal checks out. A sealed raw blob
  never ``decode``s, nor an encoded value ``unseal``s.

For example an event: ``r.publish(channel, seal(json.dumps(msg).encode(), Purpose.EVENT,
run_id, channel))`` and on receipt ``json.loads(unseal(data, Purpose.EVENT, run_id,
channel, "event"))``, catching ``TamperedPayloadError`` to drop a forged one.

Frame
-----
``b"DSv1" | MAC (32) | kind (1) | part count (u32) | per part: length (u64) | parts``.
The MAC is over ``len(key) | key | kind | part count | lengths | parts``, computed
incrementally (no concatenation copies). Kind ``P``: part 0 is the pickle stream, the
others its out-of-band buffers; kind ``R``: one part of raw data.
"""

from __future__ import annotations

import enum
import hmac
import os
import pickle
import secrets
import struct
from collections.abc import Iterator, Sequence
from typing import Any

import cloudpickle
import dask.config

from ..config import check_secret

MAGIC = b"DSv1"
_MAC_BYTES = 32
_COUNT = struct.Struct("<BI")  # kind, part count
_LEN = struct.Struct("<Q")
_PREFIX = len(MAGIC) + _MAC_BYTES
_PICKLED, _RAW = b"P", b"R"
OOB_MIN_BYTES = 64 * 1024  # buffers at least this large travel out of band (no copy)
_ENV = "DASK_SERVERLESS__SECRET"
_SALT = b"dask-serverless seal v1"
_SUBKEY_CACHE = 4096

Buffer = bytes | bytearray | memoryview


class Purpose(enum.StrEnum):
    """What a sealed blob is for; each purpose has its own subkey."""

    INVOCATION = "invocation"
    SPEC = "spec"
    OUTPUT = "output"
    ERROR = "error"
    EVENT = "event"
    STREAM_HEAD = "stream-head"
    SHUFFLE = "shuffle"  # a piece of a disk-style shuffle's partition (shuffle_store)
    DATA = "data"  # a value stored as its own object (``storage.stored``)


class TamperedPayloadError(ValueError):
    """A payload's HMAC seal is missing or wrong: not made with our secret, or made for
    another purpose, run or key."""


# -- keys ----------------------------------------------------------------------------------
_prk: bytes | None = None
_generated: str | None = None  # this process's random secret, once made
_subkeys: dict[tuple[str, str], bytes] = {}


def secret() -> str:
    """The shared secret (config ``serverless.secret``; generated once when unset)."""
    global _generated
    value = dask.config.get("serverless.secret", None) or os.environ.get(_ENV)
    if not value:
        if _generated is None:
            _generated = "ds-" + secrets.token_hex(32)
            dask.config.set({"serverless.secret": _generated})
        value = _generated
    check_secret(value)
    return str(value)


def is_generated(value: str) -> bool:
    """Whether ``value`` is this process's own random secret (nobody else knows it)."""
    return _generated is not None and value == _generated


def reset_key() -> None:
    """Forget the derived keys (after ``serverless.secret`` changed)."""
    global _prk
    _prk = None
    _subkeys.clear()


def _hkdf(prk: bytes, info: bytes, length: int = 32) -> bytes:
    """HKDF-Expand (RFC 5869) with SHA-256."""
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac.digest(prk, block + info + bytes([counter]), "sha256")
        out += block
        counter += 1
    return out[:length]


def _subkey(purpose: str, run_id: str) -> bytes:
    global _prk
    key = _subkeys.get((purpose, run_id))
    if key is None:
        if _prk is None:  # HKDF-Extract
            _prk = hmac.digest(_SALT, secret().encode(), "sha256")
        if len(_subkeys) >= _SUBKEY_CACHE:
            _subkeys.clear()
        info = b"%s\x00%s" % (purpose.encode(), run_id.encode())
        key = _subkeys[(purpose, run_id)] = _hkdf(_prk, info)
    return key


def _mac(purpose: str, run_id: str, key: str, parts: Sequence[Buffer]) -> bytes:
    name = key.encode()
    h = hmac.new(_subkey(purpose, run_id), _LEN.pack(len(name)) + name, "sha256")
    for part in parts:
        h.update(part)
    return h.digest()


# -- frames --------------------------------------------------------------------------------
class Encoded:
    """A sealed value as its frame's parts (header, pickle stream, out-of-band buffers),
    not joined: ``nbytes`` is the stored size."""

    __slots__ = ("nbytes", "parts")

    def __init__(self, parts: list[Buffer]):
        self.parts = parts
        self.nbytes = sum(memoryview(p).nbytes for p in parts)

    def tobytes(self) -> bytes:
        return b"".join(self.parts)

    def pieces(self, size: int) -> Iterator[list[memoryview]]:
        """The frame in chunks of ``size`` bytes (the last may be shorter), each as the
        views of the parts it spans: nothing is copied."""
        pending: list[memoryview] = []
        filled = 0
        for part in self.parts:
            view = memoryview(part).cast("B")
            while view.nbytes:
                take = min(size - filled, view.nbytes)
                pending.append(view[:take])
                filled += take
                view = view[take:]
                if filled == size:
                    yield pending
                    pending, filled = [], 0
        if pending:
            yield pending

    def chunks(self, size: int) -> Iterator[Buffer]:
        """The frame in pieces of ``size`` bytes (the last may be shorter); a piece is a
        view of one part when it lies within it, a joined copy when it straddles two."""
        for views in self.pieces(size):
            yield views[0] if len(views) == 1 else b"".join(views)


def _frame(kind: bytes, payload: list[Buffer], purpose: str, run_id: str,
           key: str) -> Encoded:
    lengths = [memoryview(p).nbytes for p in payload]
    header = _COUNT.pack(kind[0], len(payload)) + b"".join(_LEN.pack(n) for n in lengths)
    mac = _mac(purpose, run_id, key, [header, *payload])
    return Encoded([MAGIC + mac + header, *payload])


def _open(blob: Buffer, kind: bytes, purpose: str, run_id: str, key: str,
          what: str) -> list[memoryview]:
    """The payload parts of ``blob`` (views, no copy) once its seal checks out."""
    view = memoryview(blob).cast("B")
    parts: list[memoryview] = []
    try:
        if view[:len(MAGIC)] != MAGIC:
            raise ValueError("not a sealed frame")
        kind_byte, count = _COUNT.unpack_from(view, _PREFIX)
        at = _PREFIX + _COUNT.size + count * _LEN.size
        if at > view.nbytes:
            raise ValueError("truncated header")
        for i in range(count):
            (n,) = _LEN.unpack_from(view, _PREFIX + _COUNT.size + i * _LEN.size)
            parts.append(view[at:at + n])
            at += n
        if at != view.nbytes:
            raise ValueError("length mismatch")
        good = kind_byte == kind[0] and hmac.compare_digest(
            view[len(MAGIC):_PREFIX], _mac(purpose, run_id, key, [view[_PREFIX:]]))
    except (ValueError, struct.error):
        good = False
    if not good:
        raise TamperedPayloadError(
            f"refusing a {what} whose HMAC seal does not match (unsigned, altered, signed "
            f"with another serverless.secret, or made for another run or key than "
            f"{purpose} {key!r})")
    return parts


# -- values --------------------------------------------------------------------------------
def pickled(value: Any, buffers: list[pickle.PickleBuffer] | None = None, *,
            by_value: bool = False) -> bytes:
    """Pickle ``value`` with protocol 5: cloudpickle when plain pickle refuses (or at once
    with ``by_value``: functions of ``__main__`` travel by value). Buffers of at least
    ``OOB_MIN_BYTES`` are appended to ``buffers`` (out of band) when it is given."""
    def out_of_band(buf: pickle.PickleBuffer) -> bool:
        if buffers is None or buf.raw().nbytes < OOB_MIN_BYTES:
            return True  # small: in the pickle stream
        buffers.append(buf)
        return False

    if not by_value:
        try:
            return pickle.dumps(value, protocol=5, buffer_callback=out_of_band)
        except Exception:
            if buffers is not None:
                buffers.clear()
    return cloudpickle.dumps(value, protocol=5, buffer_callback=out_of_band)


def encode(value: Any, purpose: Purpose, run_id: str, key: str, *,
           by_value: bool = False) -> Encoded:
    """Pickle ``value`` (large buffers out of band, not copied) and seal it."""
    buffers: list[pickle.PickleBuffer] = []
    stream = pickled(value, buffers, by_value=by_value)
    return _frame(_PICKLED, [stream, *(b.raw() for b in buffers)], purpose, run_id, key)


def decode(blob: Buffer, purpose: Purpose, run_id: str, key: str,
           what: str = "payload") -> Any:
    """Check the seal, then unpickle. Out-of-band buffers view ``blob`` when it is
    writable; a read-only blob's are copied (values are mutable, as in Dask)."""
    stream, *buffers = _open(blob, _PICKLED, purpose, run_id, key, what)
    if buffers and buffers[0].readonly:
        buffers = [memoryview(bytearray(b)) for b in buffers]
    return pickle.loads(stream, buffers=buffers)


def dumps(value: Any, purpose: Purpose, run_id: str, key: str, *,
          by_value: bool = False) -> bytes:
    return encode(value, purpose, run_id, key, by_value=by_value).tobytes()


def loads(blob: Buffer, purpose: Purpose, run_id: str, key: str,
          what: str = "payload") -> Any:
    return decode(blob, purpose, run_id, key, what)


def seal(data: Buffer, purpose: Purpose, run_id: str, key: str) -> bytes:
    """``data`` (raw bytes) in a sealed frame."""
    return _frame(_RAW, [data], purpose, run_id, key).tobytes()


def is_raw(blob: Buffer) -> bool:
    """Whether ``blob`` looks like a sealed raw frame (``seal``), not a value (``encode``):
    nothing is checked but the magic and the kind byte."""
    view = memoryview(blob)
    return view.nbytes > _PREFIX and view[:len(MAGIC)] == MAGIC and \
        view[_PREFIX] == _RAW[0]


def unseal(blob: Buffer, purpose: Purpose, run_id: str, key: str,
           what: str = "payload") -> memoryview:
    """The raw data inside ``blob`` (a view, no copy) once its seal checks out."""
    (data,) = _open(blob, _RAW, purpose, run_id, key, what)
    return data
