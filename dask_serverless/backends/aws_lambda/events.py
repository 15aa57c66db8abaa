"""Lambda event <-> ``Invocation``.

An event is JSON with an unsealed head of one marker, ``{"ds": 1, ...}``, and one sealed
part; the head carries no credentials and nothing in an event is used before its seal
checks out:

- ``{"ds": 1, "invocation": <base64 of the sealed invocation>}``;
- when that would exceed the async invoke limit (``serverless.lambda.max-event-bytes``),
  the sealed invocation is stored in the run's Redis under ``RunKeys.payload`` (with the
  run's TTL) and the event is ``{"ds": 1, "spilled": <base64 of a sealed pointer>}``, the
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
from ...storage.store import connect

VERSION = 1
WARMUP_EVENT = json.dumps({"ds": VERSION, "warmup": True}).encode()
_CHECK_PREFIX = b"dask-serverless handshake "


class EventError(ValueError):
    """An event is not a dask-serverless invocation (or its spilled payload is gone)."""


def encode(inv: Invocation, max_bytes: int, ttl: int) -> tuple[bytes, bool]:
    """The event for ``inv``; True when its payload spilled to Redis."""
    data = inv.dumps()
    event = json.dumps({"ds": VERSION, "invocation": _b64(data)}).encode()
    if len(event) <= max_bytes:
        return event, False
    key = RunKeys(inv.run_id).payload(uuid.uuid4().hex)
    connect(inv.redis_url).set(key, data, ex=ttl)
    pointer = serialize.seal(json.dumps({"redis_url": inv.redis_url, "key": key}).encode())
    return json.dumps({"ds": VERSION, "spilled": _b64(pointer)}).encode(), True


def is_warmup(event: Any) -> bool:
    return isinstance(event, dict) and event.get("warmup") is True


def check_event() -> bytes:
    """A handshake event: a fresh nonce sealed with this process's secret."""
    nonce = _CHECK_PREFIX + secrets.token_hex(16).encode()
    return json.dumps({"ds": VERSION, "check": _b64(serialize.seal(nonce))}).encode()


def is_check(event: Any) -> bool:
    return isinstance(event, dict) and event.get("ds") == VERSION and "check" in event


def answer_check(event: dict) -> dict[str, str]:
    """The function's side of a handshake: raises ``TamperedPayloadError`` when the nonce
    was not sealed with this function's secret."""
    nonce = serialize.unseal(_unb64(event["check"], "handshake"), "handshake")
    if not bytes(nonce).startswith(_CHECK_PREFIX):
        raise EventError("a handshake event without a handshake nonce")
    return {"check": "ok"}


def decode(event: Any) -> tuple[Invocation, str | None, str]:
    """The invocation in ``event``, its spill key (None when it came inline) and the URL
    of the Redis holding that spill (the invocation's own otherwise)."""
    if not isinstance(event, dict) or event.get("ds") != VERSION:
        raise EventError(f"not a dask-serverless event (version {VERSION}): a "
                         f"{type(event).__name__} without the 'ds': {VERSION} marker")
    if "invocation" in event:
        inv = Invocation.loads(_unb64(event["invocation"], "invocation"))
        return inv, None, inv.redis_url
    if "spilled" not in event:
        raise EventError("a dask-serverless event with neither an inline invocation nor a "
                         "spilled payload")
    pointer = _pointer(serialize.unseal(_unb64(event["spilled"], "spill pointer"),
                                        "spill pointer"))
    data = connect(pointer["redis_url"]).get(pointer["key"])
    if data is None:
        raise EventError(f"spilled payload {pointer['key']} is gone from Redis (run "
                         "finished, cancelled or expired?)")
    return Invocation.loads(data), pointer["key"], pointer["redis_url"]


def drop_spilled(redis_url: str, key: str | None) -> None:
    """Delete a spilled payload once its invocation has run."""
    if key is not None:
        connect(redis_url).delete(key)


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
