"""The ``lambda`` backend: workers are AWS Lambda functions, one per memory config."""

from __future__ import annotations

import json
import threading

from ...capacity import UNLIMITED, Capacity
from ...errors import LambdaInvokeError
from ...plan import ResourceConfig
from ...protocol.wire import Invocation
from ...storage.serialize import TamperedPayloadError
from . import events
from .invoker import EventCall, LambdaInvoker
from .settings import LambdaSettings


class LambdaBackend:
    """Invokes ``<prefix>-<memory_mb>`` functions asynchronously (``serverless.lambda.*``).

    The functions must exist (``dask-serverless deploy``); workers then invoke their
    successors themselves, exactly as in the local backend. Before the first invocation of
    a function, a synchronous handshake (``events.check_event``) makes sure it accepts
    what this client seals: a function deployed with another ``serverless.secret`` refuses
    invocations without using anything in them, so this is where the mismatch is caught.
    """

    name = "lambda"

    def __init__(self, settings: LambdaSettings | None = None):
        self.settings = settings or LambdaSettings.from_config()
        self.invoker = LambdaInvoker(self.settings)
        self._checked: set[str] = set()
        self._lock = threading.Lock()

    def invoke_many(self, invocations: list[Invocation]) -> None:
        self.handshake({self.settings.function_name(i.memory_mb) for i in invocations})
        self.invoker.invoke_many(invocations)

    def handshake(self, functions: set[str]) -> None:
        """Check (once per function) that ``functions`` accept this client's seals."""
        with self._lock:
            todo = sorted(functions - self._checked)
        if not todo:
            return
        calls = [EventCall(name, events.check_event(), f"the handshake with {name}")
                 for name in todo]
        if len(calls) == 1:
            answers = [self.invoker.request(calls[0])]
        else:
            answers = list(self.invoker.executor().map(self.invoker.request, calls))
        for name, (error, payload) in zip(todo, answers, strict=True):
            if error is not None:
                raise _refusal(name, payload)
        with self._lock:
            self._checked.update(todo)

    def warm_up(self, config: ResourceConfig, count: int = 1) -> None:
        """Send ``count`` warm-up events (the handler only loads its imports)."""
        name = self.settings.function_name(config.memory_mb)
        self.invoker.send([EventCall(name, events.WARMUP_EVENT, f"warm-up of {name}")] * count)

    def default_parallelism(self) -> int:
        return self.settings.parallelism

    def capacity(self) -> Capacity:
        """Every Lambda container has its own CPU share; cold starts run side by side."""
        return UNLIMITED

    def warm_containers(self) -> dict[int, int]:
        """Lambda does not say which execution environments are warm."""
        return {}

    def close(self) -> None:
        self.invoker.close()


def _refusal(function: str, payload: bytes) -> Exception:
    """The error for a function that failed the handshake."""
    from .deploy import secret_file

    try:
        info = json.loads(payload)
    except ValueError:
        info = {}
    kind = str(info.get("errorType", "?")) if isinstance(info, dict) else "?"
    if kind == "TamperedPayloadError":
        return TamperedPayloadError(
            f"Lambda function {function!r} refuses payloads sealed with this client's "
            "serverless.secret (its HMAC seal does not match): client and workers use "
            "different secrets. Use one secret on both sides: run `dask-serverless deploy` "
            "again where the client runs (it deploys the configured serverless.secret, or "
            f"generates one and stores it in {secret_file()} for this user's later "
            "processes), or set DASK_SERVERLESS__SECRET to the value the functions were "
            "deployed with; then start the client again.")
    message = str(info.get("errorMessage", ""))[:300] if isinstance(info, dict) else ""
    return LambdaInvokeError(
        f"Lambda function {function!r} failed the handshake ({kind}: {message}); was it "
        "deployed from another version of dask-serverless? Run `dask-serverless deploy` "
        "again.")
