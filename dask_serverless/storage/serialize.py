"""Values to bytes and back, and HMAC seals on everything a worker or client unpickles.

Every blob that crosses a process boundary (invocations, run specs, task outputs, error
records) is sealed with HMAC-SHA256 under ``serverless.secret``; ``unseal`` refuses a blob
whose seal does not match, before anything is unpickled. With no secret configured, the
process makes a random one (in its ``dask.config``, not its environment: processes it
starts do not inherit it; the local pool hands it to its containers over their pipes).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import pickle
import secrets
from typing import Any

import cloudpickle
import dask.config

_MAC_BYTES = 32
_ENV = "DASK_SERVERLESS__SECRET"
_key: bytes | None = None
_generated: str | None = None  # this process's random secret, once made


class TamperedPayloadError(ValueError):
    """A payload's HMAC seal is missing or wrong: it was not made with our secret."""


def secret() -> str:
    """The shared secret (config ``serverless.secret``; generated once when unset)."""
    global _generated
    value = dask.config.get("serverless.secret", None) or os.environ.get(_ENV)
    if not value:
        if _generated is None:
            _generated = "ds-" + secrets.token_hex(32)
            dask.config.set({"serverless.secret": _generated})
        value = _generated
    return str(value)


def is_generated(value: str) -> bool:
    """Whether ``value`` is this process's own random secret (nobody else knows it)."""
    return _generated is not None and value == _generated


def _mac_key() -> bytes:
    global _key
    if _key is None:
        _key = hashlib.sha256(secret().encode()).digest()
    return _key


def reset_key() -> None:
    """Forget the cached key (after ``serverless.secret`` changed)."""
    global _key
    _key = None


def seal(data: bytes) -> bytes:
    return hmac.digest(_mac_key(), data, "sha256") + data


def unseal(blob: bytes, what: str = "payload") -> memoryview:
    """The data inside ``blob`` (a view, no copy) once its seal checks out."""
    mac, data = blob[:_MAC_BYTES], memoryview(blob)[_MAC_BYTES:]
    if len(blob) < _MAC_BYTES or not hmac.compare_digest(
            mac, hmac.digest(_mac_key(), data, "sha256")):
        raise TamperedPayloadError(
            f"refusing a {what} whose HMAC seal does not match serverless.secret "
            "(unsigned, altered, or signed with another secret)")
    return data


def dumps(value: Any) -> bytes:
    """Pickle (cloudpickle when plain pickle refuses) and seal."""
    try:
        data = pickle.dumps(value, protocol=5)
    except Exception:
        data = cloudpickle.dumps(value, protocol=5)
    return seal(data)


def loads(blob: bytes, what: str = "payload") -> Any:
    """Check the seal, then unpickle."""
    return pickle.loads(unseal(blob, what))
