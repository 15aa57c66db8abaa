"""Values to bytes and back (pickle 5, cloudpickle for what plain pickle refuses)."""

from __future__ import annotations

import pickle
from typing import Any

import cloudpickle


def dumps(value: Any) -> bytes:
    try:
        return pickle.dumps(value, protocol=5)
    except Exception:
        return cloudpickle.dumps(value, protocol=5)


loads = pickle.loads
