"""A run's pub/sub events (workers -> client): sealed JSON, bounded, schema-checked.

Workers publish on the run's channel (``RunKeys.events``) what the client waits for:
``{"kind": "error"}``, ``{"kind": "outputs", "ids": [...]}`` (``ids``, optional: the
final outputs just stored, which the client downloads while the run goes on) and, when
it asked for progress,
``{"kind": "tasks", "ids": [...], "started": [...], "worker", "invocation", "cold",
"end"}``. Anyone who can reach Redis can publish on that channel, so an event is sealed
for the run and the channel, and the client's ``decode`` accepts it only once the seal
checks out, it is at most ``MAX_EVENT_BYTES`` and it fits ``SCHEMA`` (task ids within
the run's DAG). Anything else is logged and ignored: a forged or malformed message never
crashes or steers the client (the client also polls the run's keys, so a lost event only
delays it).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from . import serialize
from .keys import RunKeys
from .serialize import Purpose

logger = logging.getLogger(__name__)

MAX_EVENT_BYTES = 4 * 2**20
_MAX_TEXT = 256


def _ids(value: Any, n_tasks: int) -> bool:
    return isinstance(value, list) and len(value) <= n_tasks and all(
        type(i) is int and 0 <= i < n_tasks for i in value)


def _text(value: Any, n_tasks: int) -> bool:
    return isinstance(value, str) and len(value) <= _MAX_TEXT


def _flag(value: Any, n_tasks: int) -> bool:
    return isinstance(value, bool)


Check = Callable[[Any, int], bool]
# kind -> {field: check}; every field is required, others are dropped (add them here)
SCHEMA: dict[str, dict[str, Check]] = {
    "error": {},
    "outputs": {},
    "tasks": {"ids": _ids, "started": _ids, "worker": _text, "invocation": _text,
              "cold": _flag, "end": _flag},
}
# kind -> {field: check} of fields an event may leave out (older workers do)
OPTIONAL: dict[str, dict[str, Check]] = {"outputs": {"ids": _ids}}


def encode(message: Any, run_id: str) -> bytes:
    """``message`` sealed for ``run_id``'s channel (checked against ``SCHEMA`` by the
    receiver)."""
    data = json.dumps(message, separators=(",", ":")).encode()
    return serialize.seal(data, Purpose.EVENT, run_id, RunKeys(run_id).events)


def decode(raw: Any, run_id: str, n_tasks: int) -> dict[str, Any] | None:
    """The event in ``raw`` if it is sealed for ``run_id``'s channel, bounded and
    well-formed; else None (logged)."""
    if not isinstance(raw, bytes | bytearray) or len(raw) > MAX_EVENT_BYTES:
        return _refuse(run_id, f"not bytes or over {MAX_EVENT_BYTES} bytes")
    try:
        data = serialize.unseal(raw, Purpose.EVENT, run_id, RunKeys(run_id).events, "event")
        event = json.loads(bytes(data))
    except serialize.TamperedPayloadError:
        return _refuse(run_id, "its seal does not match")
    except ValueError:
        return _refuse(run_id, "not JSON")
    fields = SCHEMA.get(event.get("kind")) if isinstance(event, dict) else None
    if fields is None:
        return _refuse(run_id, "not an event of a known kind")
    given = {name: check for name, check in OPTIONAL.get(event["kind"], {}).items()
             if name in event}
    checks = {**fields, **given}
    if not all(name in event and check(event[name], n_tasks)
               for name, check in checks.items()):
        return _refuse(run_id, f"a malformed {event['kind']!r} event")
    return {"kind": event["kind"], **{name: event[name] for name in checks}}


def _refuse(run_id: str, why: str) -> None:
    logger.warning("run %s: ignored a message on its event channel: %s", run_id, why)
    return None
