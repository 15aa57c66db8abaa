"""Run a Lambda-style handler (``"module.function"``) inside a local container.

The context object offers what Lambda's does and our handler uses: ``function_name``,
``memory_limit_in_mb``, ``aws_request_id``, ``invoked_function_arn`` and
``get_remaining_time_in_millis()``.
"""

from __future__ import annotations

import importlib
import json
import time
import traceback
from collections.abc import Callable
from typing import Any

_HANDLERS: dict[str, Callable[[Any, Any], Any]] = {}


class LambdaContext:
    """What ``context`` holds in a Lambda handler (the subset we fill in)."""

    def __init__(self, info: dict[str, Any]):
        self.function_name = info.get("function_name", "")
        self.function_version = "$LATEST"
        self.memory_limit_in_mb = str(info.get("memory_mb", ""))
        self.aws_request_id = info.get("request_id", "")
        self.invoked_function_arn = info.get("arn", "")
        self.log_group_name = f"/aws/lambda/{self.function_name}"
        self._deadline = time.time() + float(info.get("timeout_s", 900))

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.time()) * 1000))


def _resolve(handler: str) -> Callable[[Any, Any], Any]:
    fn = _HANDLERS.get(handler)
    if fn is None:
        module, _, name = handler.rpartition(".")
        if not module:
            raise ValueError(f"handler {handler!r} must look like 'module.function'")
        fn = _HANDLERS[handler] = getattr(importlib.import_module(module), name)
    return fn


def call(handler: str, event: bytes, context: dict[str, Any]) -> tuple[bool, bytes]:
    """``(True, result JSON)`` or ``(False, Lambda error JSON)`` when the handler raised."""
    try:
        result = _resolve(handler)(json.loads(event), LambdaContext(context))
        return True, json.dumps(result).encode()
    except Exception as exc:
        tb = traceback.format_exception(exc)
        return False, json.dumps({"errorMessage": str(exc), "errorType": type(exc).__name__,
                                  "stackTrace": tb}).encode()
