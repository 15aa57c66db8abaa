"""Lambda event <-> ``Invocation``.

An event is JSON: ``{"ds": 1, "run_id", "worker_id", "redis_url", "invocation": <base64
of the sealed pickle>}``. When that would exceed the async invoke limit
(``serverless.lambda.max-event-bytes``), the sealed invocation is stored in the run's Redis
under ``RunKeys.payload`` (with the run's TTL) and the event carries ``"spilled": <key>``
instead.
A warm-up event is ``{"ds": 1, "warmup": true}``.
"""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

from ...protocol.wire import Invocation
from ...storage.keys import RunKeys
from ...storage.store import connect

VERSION = 1
WARMUP_EVENT = json.dumps({"ds": VERSION, "warmup": True}).encode()


class EventError(ValueError):
    """An event is not a dask-serverless invocation (or its spilled payload is gone)."""


def encode(inv: Invocation, max_bytes: int, ttl: int) -> tuple[bytes, bool]:
    """The event for ``inv``; True when its payload spilled to Redis."""
    data = inv.dumps()
    head = {"ds": VERSION, "run_id": inv.run_id, "worker_id": inv.worker_id,
            "redis_url": inv.redis_url}
    event = json.dumps({**head, "invocation": base64.b64encode(data).decode()}).encode()
    if len(event) <= max_bytes:
        return event, False
    key = RunKeys(inv.run_id).payload(uuid.uuid4().hex)
    connect(inv.redis_url).set(key, data, ex=ttl)
    return json.dumps({**head, "spilled": key}).encode(), True


def is_warmup(event: Any) -> bool:
    return isinstance(event, dict) and event.get("warmup") is True


def decode(event: Any) -> tuple[Invocation, str | None]:
    """The invocation in ``event`` and its spill key (None when it came inline)."""
    if not isinstance(event, dict) or event.get("ds") != VERSION:
        raise EventError(f"not a dask-serverless event (version {VERSION}): {str(event)[:200]}")
    run_id, worker_id = str(event.get("run_id")), str(event.get("worker_id"))  # seal-checked
    if "invocation" in event:
        return Invocation.loads(base64.b64decode(event["invocation"]), run_id, worker_id), None
    key = event.get("spilled")
    if not key or not event.get("redis_url"):
        raise EventError(f"event of worker {event.get('worker_id')!r} has neither an "
                         "inline invocation nor a spilled payload")
    data = connect(event["redis_url"]).get(key)
    if data is None:
        raise EventError(f"spilled payload {key} of worker {event.get('worker_id')!r} is gone "
                         "from Redis (run finished, cancelled or expired?)")
    return Invocation.loads(data, run_id, worker_id), key


def drop_spilled(redis_url: str, key: str | None) -> None:
    """Delete a spilled payload once its invocation has run."""
    if key is not None:
        connect(redis_url).delete(key)
