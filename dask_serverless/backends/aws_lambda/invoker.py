"""Concurrent ``Event`` invocations through boto3, with retries on throttling and 5xx.

Used by the client (root invocations) and by workers inside Lambda (successors). A single
invoke costs a round trip of tens of ms, so batches go out on a thread pool.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from ... import config
from ...errors import LambdaInvokeError
from ...protocol.wire import Invocation
from . import events
from .settings import LambdaSettings, make_client

logger = logging.getLogger(__name__)

_BACKOFF_BASE_S = 0.05
_BACKOFF_CAP_S = 5.0


@dataclass(slots=True)
class EventCall:
    """One asynchronous invoke: the function, its event and what it is for (errors)."""

    function: str
    payload: bytes
    what: str


def _is_retryable(exc: Exception) -> tuple[bool, str]:
    from botocore.exceptions import ClientError, ConnectionError, HTTPClientError

    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        err = exc.response.get("Error", {})
        text = f"{err.get('Code', '?')} (HTTP {status}): {err.get('Message', '')}"
        return status == 429 or status >= 500, text
    if isinstance(exc, ConnectionError | HTTPClientError):
        return True, f"{type(exc).__name__}: {exc}"
    return False, f"{type(exc).__name__}: {exc}"


class LambdaInvoker:
    """Sends ``Event`` invocations to ``<prefix>-<memory_mb>`` functions."""

    def __init__(self, settings: LambdaSettings | None = None, client: Any = None,
                 ttl: int | None = None):
        self.settings = settings or LambdaSettings.from_config()
        self.client = client or make_client("lambda", self.settings,
                                            pool_size=self.settings.invoke_concurrency)
        self.ttl = ttl or config.get("output-ttl")
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self.retries = 0  # throttled / failed attempts that were retried
        self.spilled = 0  # payloads that went through Redis

    # -- invocations -------------------------------------------------------------------
    def invoke_many(self, invocations: Sequence[Invocation]) -> None:
        """Start all ``invocations``; raise ``LambdaInvokeError`` if any was refused."""
        calls = [self.event_call(inv) for inv in invocations]
        self.send(calls)

    def event_call(self, inv: Invocation) -> EventCall:
        payload, spilled = events.encode(inv, self.settings.max_event_bytes, self.ttl)
        if spilled:
            self.spilled += 1
        what = (f"worker {inv.worker_id} (run {inv.run_id}, task ids "
                f"{inv.start[:8]}{'...' if len(inv.start) > 8 else ''})")
        return EventCall(self.settings.function_name(inv.memory_mb), payload, what)

    def send(self, calls: Sequence[EventCall]) -> None:
        """Issue ``calls`` concurrently (one by one when there is a single call)."""
        if len(calls) <= 1:
            for call in calls:
                self.send_one(call)
            return
        futures = [self.executor().submit(self.send_one, call) for call in calls]
        errors = [f.exception() for f in futures]
        failed = [e for e in errors if e is not None]
        if failed:
            if len(failed) > 1:
                failed[0].add_note(f"{len(failed) - 1} more of {len(calls)} invocations "
                                   "failed too")
            raise failed[0]

    def send_one(self, call: EventCall) -> None:
        """One ``Event`` invoke with exponential backoff on throttling / 5xx."""
        self._with_retries(call, "Event")

    def request(self, call: EventCall) -> tuple[str | None, bytes]:
        """One ``RequestResponse`` invoke (retried like ``send_one``): the function error
        (None: it answered) and the answer's payload."""
        answer = self._with_retries(call, "RequestResponse")
        return answer.get("FunctionError"), answer["Payload"].read()

    def _with_retries(self, call: EventCall, kind: str) -> dict[str, Any]:
        attempt = 0
        while True:
            try:
                return self.client.invoke(FunctionName=call.function, InvocationType=kind,
                                          Payload=call.payload)
            except Exception as exc:
                retryable, text = _is_retryable(exc)
                if not retryable or attempt >= self.settings.max_retries:
                    raise self._error(call, text, attempt, retryable) from exc
                delay = min(_BACKOFF_CAP_S, _BACKOFF_BASE_S * 2**attempt)
                delay *= 0.5 + random.random() / 2
                logger.info("invoke of %s for %s: %s; retry %d in %.2fs", call.function,
                            call.what, text, attempt + 1, delay)
                with self._lock:
                    self.retries += 1
                attempt += 1
                time.sleep(delay)

    def _error(self, call: EventCall, text: str, attempts: int,
               retryable: bool) -> LambdaInvokeError:
        msg = f"Lambda function {call.function!r} refused the invocation of {call.what}: {text}"
        if retryable:
            msg += f" (gave up after {attempts} retries; serverless.lambda.max-retries)"
        if "ResourceNotFound" in text:
            msg += (f"; deploy it with `dask-serverless deploy --memory "
                    f"{call.function.rpartition('-')[2]}` and the same function prefix")
        return LambdaInvokeError(msg)

    def executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.settings.invoke_concurrency,
                                                thread_name_prefix="dask-serverless-invoke")
            return self._pool

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)
