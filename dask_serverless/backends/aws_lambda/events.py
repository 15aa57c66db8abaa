"""Lambda event <-> ``Invocation``.

An event is JSON: an unsealed head ``{"ds": 1, "run_id", "worker_id"}`` and one sealed
part. The head carries no credentials; its ids only select what the seal must be bound to
(a wrong one fails the check), and nothing else in an event is used before its seal checks
out:

- ``{..head, "invocation": <base64 of the invocation, sealed for run and worker>}``;
- when that would exceed the async invoke limit (``serverless.lambda.max-event-bytes``),
  the sealed invocation is stored in the run's Redis under ``RunKeys.payload`` (with the
  run's TTL) and the event is ``{..head, "spilled": <base64 of a sealed pointer>}``, the
  pointer being JSON ``{"redis_url", "key"}``: the Redis URL (with its password) is read
  only once the pointer's seal checks out;
- a warm-up event is ``{"ds": 1, "warmup": true}`` (the handler only loads its imports);
- a handshake is ``{"ds": 1, "check": <base64 of a sealed nonce>}``: the function answers
  whether it accepts what this client seals (``LambdaBackend`` sends one per function
  before its first invocation, so a secret mismatch fails the compute at once).

Errors about an event never quote it (it may hold a sealed Redis URL, and it is not ours).
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
import uuid
from typing import Any

from ...protocol.wire import Invocation
from ...storage import serialize
from ...storage.keys import RunKeys
from ...storage.serialize import Purpose
from ...storage.store import connect

VERSION = 1
WARMUP_EVENT = json.dumps({"ds": VERSION, "warmup": True}).encode()
_CHECK_PREFIX = b"dask-serverless handshake "
_HANDSHAKE = "handshake"  # the run id and key a handshake nonce is sealed for
_MAX_ID = 128  # characters of a run or worker id in a head


class EventError(ValueError):
    """An event is not a dask-serverless invocation (or its spilled payload is gone)."""


def encode(inv: Invocation, max_bytes: int, ttl: int) -> tuple[bytes, bool]:
    """The event for ``inv``; True when its payload spilled to Redis."""
    data = inv.dumps()
    head = {"ds": VERSION, "run_id": inv.run_id, "worker_id": inv.worker_id}
    event = json.dumps({**head, "invocation": _b64(data)}).encode()
    if len(event) <= max_bytes:
        return event, False
    key = RunKeys(inv.run_id).payload(uuid.uuid4().hex)
    connect(inv.redis_url).set(key, data, ex=ttl)
    pointer = serialize.seal(json.dumps({"redis_url": inv.redis_url, "key": key}).encode(),
                             Purpose.INVOCATION, inv.run_id, _spill_name(inv.worker_id))
    return json.dumps({**head, "spilled": _b64(pointer)}).encode(), True


def is_warmup(event: Any) -> bool:
    return isinstance(event, dict) and event.get("warmup") is True


def check_event() -> bytes:
    """A handshake event: a fresh nonce sealed with this process's secret."""
    nonce = _CHECK_PREFIX + secrets.token_hex(16).encode()
    sealed = serialize.seal(nonce, Purpose.INVOCATION, _HANDSHAKE, _HANDSHAKE)
    return json.dumps({"ds": VERSION, "check": _b64(sealed)}).encode()


def is_check(event: Any) -> bool:
    return isinstance(event, dict) and event.get("ds") == VERSION and "check" in event


def answer_check(event: dict) -> dict[str, str]:
    """The function's side of a handshake: raises ``TamperedPayloadError`` when the nonce
    was not sealed with this function's secret."""
    nonce = serialize.unseal(_unb64(event["check"], "handshake"), Purpose.INVOCATION,
                             _HANDSHAKE, _HANDSHAKE, "handshake")
    if not bytes(nonce).startswith(_CHECK_PREFIX):
        raise EventError("a handshake event without a handshake nonce")
    return {"check": "ok"}


def decode(event: Any) -> tuple[Invocation, str | None, str]:
    """The invocation in ``event``, its spill key (None when it came inline) and the URL
    of the Redis holding that spill (the invocation's own otherwise)."""
    if not isinstance(event, dict) or event.get("ds") != VERSION:
        raise EventError(f"not a dask-serverless event (version {VERSION}): a "
                         f"{type(event).__name__} without the 'ds': {VERSION} marker")
    run_id, worker_id = _id(event, "run_id"), _id(event, "worker_id")  # seal context only
    if "invocation" in event:
        inv = Invocation.loads(_unb64(event["invocation"], "invocation"), run_id, worker_id)
        return inv, None, inv.redis_url
    if "spilled" not in event:
        raise EventError("a dask-serverless event with neither an inline invocation nor a "
                         "spilled payload")
    pointer = _pointer(serialize.unseal(_unb64(event["spilled"], "spill pointer"),
                                        Purpose.INVOCATION, run_id, _spill_name(worker_id),
                                        "spill pointer"))
    data = connect(pointer["redis_url"]).get(pointer["key"])
    if data is None:
        raise EventError(f"spilled payload {pointer['key']} is gone from Redis (run "
                         "finished, cancelled or expired?)")
    return Invocation.loads(data, run_id, worker_id), pointer["key"], pointer["redis_url"]


def drop_spilled(redis_url: str, key: str | None) -> None:
    """Delete a spilled payload once its invocation has run."""
    if key is not None:
        connect(redis_url).delete(key)


def _spill_name(worker_id: str) -> str:
    return f"spill-pointer:{worker_id}"


def _id(event: dict, name: str) -> str:
    value = event.get(name)
    if not isinstance(value, str) or not 0 < len(value) <= _MAX_ID:
        raise EventError(f"a dask-serverless event without a valid {name}")
    return value


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise EventError(f"the event's {what} is not a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise EventError(f"the event's {what} is not valid base64") from None


def _pointer(data: Any) -> dict[str, str]:
    try:
        pointer = json.loads(bytes(data))
    except ValueError:
        pointer = None
    if not (isinstance(pointer, dict) and isinstance(pointer.get("redis_url"), str)
            and isinstance(pointer.get("key"), str)):
        raise EventError("a sealed spill pointer without a Redis URL and key")
    return pointer
