"""AWS Lambda entry point: ``dask_serverless.backends.aws_lambda.handler.lambda_handler``.

Runs the same ``executor.execute`` as the local containers; successors are invoked through
boto3 (``serverless.lambda.*`` comes from the function's environment, set by ``deploy``).
An execution environment is one process, so the first event it sees is its cold start.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from ...protocol.wire import error_record
from ...storage.serialize import TamperedPayloadError
from ...storage.store import RunStore, connect
from ...worker.executor import execute
from . import events
from .invoker import LambdaInvoker
from .settings import LambdaSettings

logger = logging.getLogger(__name__)

# Invoke threads per worker: each reserves a stack, and memory is the worker's budget.
WORKER_INVOKE_THREADS = 8

_cold = True
_invoker: LambdaInvoker | None = None


def lambda_handler(event: Any, context: Any) -> dict[str, Any]:
    """Execute the invocation in ``event``; returns the invocation report (JSON-able).

    Task errors are stored in the run's Redis for the client, never raised; an event that
    is not ours raises ``EventError`` (a function error for Lambda). A payload sealed with
    another ``serverless.secret`` is refused, and the refusal is reported to its run.
    """
    global _cold, _invoker
    cold, _cold = _cold, False
    if events.is_warmup(event):
        return {"warmup": True, "cold": cold}
    try:
        inv, spilled = events.decode(event)
    except TamperedPayloadError as exc:
        _report_refusal(event, exc)
        raise
    if _invoker is None:
        settings = LambdaSettings.from_config()
        _invoker = LambdaInvoker(dataclasses.replace(
            settings, invoke_concurrency=min(settings.invoke_concurrency,
                                             WORKER_INVOKE_THREADS)))
    report = execute(inv, _invoker, cold=cold)
    report.extra["request_id"] = getattr(context, "aws_request_id", None)
    events.drop_spilled(inv.redis_url, spilled)
    logger.info("run %s worker %s: %d tasks, invoked %d, %s start", inv.run_id,
                inv.worker_id, report.tasks, report.invoked, "cold" if cold else "warm")
    return dataclasses.asdict(report)


def _report_refusal(event: dict, exc: Exception) -> None:
    """Wake the run's client (it fails on the record's seal too: secrets differ)."""
    worker = str(event.get("worker_id"))
    try:
        store = RunStore(connect(event["redis_url"]), str(event["run_id"]))
        store.fail(error_record(exc, "<invocation payload>", worker, 0))
    except Exception:
        logger.exception("could not report the refused invocation of worker %s", worker)
