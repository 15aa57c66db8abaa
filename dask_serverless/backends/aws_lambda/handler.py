"""AWS Lambda entry point: ``dask_serverless.backends.aws_lambda.handler.lambda_handler``.

Runs the same ``executor.execute`` as the local containers; successors are invoked through
boto3 (``serverless.lambda.*`` comes from the function's environment, set by ``deploy``).
An execution environment is one process, so the first event it sees is its cold start.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from ...storage.serialize import TamperedPayloadError
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
    another ``serverless.secret`` is refused (``TamperedPayloadError``) before anything in
    it is used: not even its Redis URL, so the refusal is not reported there (the client's
    handshake, ``events.check_event``, finds a mismatch before it invokes anything).
    """
    global _cold, _invoker
    cold, _cold = _cold, False
    if events.is_warmup(event):
        return {"warmup": True, "cold": cold}
    try:
        if events.is_check(event):
            return {**events.answer_check(event), "cold": cold}
        inv, spilled, spill_url = events.decode(event)
    except TamperedPayloadError:
        logger.warning("refused an event sealed with another serverless.secret")
        raise
    if _invoker is None:
        settings = LambdaSettings.from_config()
        _invoker = LambdaInvoker(dataclasses.replace(
            settings, invoke_concurrency=min(settings.invoke_concurrency,
                                             WORKER_INVOKE_THREADS)))
    report = execute(inv, _invoker, cold=cold)
    report.extra["request_id"] = getattr(context, "aws_request_id", None)
    events.drop_spilled(spill_url, spilled)
    logger.info("run %s worker %s: %d tasks, invoked %d, %s start", inv.run_id,
                inv.worker_id, report.tasks, report.invoked, "cold" if cold else "warm")
    return dataclasses.asdict(report)
