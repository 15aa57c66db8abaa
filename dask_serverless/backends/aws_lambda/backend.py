"""The ``lambda`` backend: workers are AWS Lambda functions, one per memory config."""

from __future__ import annotations

from ...capacity import UNLIMITED, Capacity
from ...plan import ResourceConfig
from ...protocol.wire import Invocation
from . import events
from .invoker import EventCall, LambdaInvoker
from .settings import LambdaSettings


class LambdaBackend:
    """Invokes ``<prefix>-<memory_mb>`` functions asynchronously (``serverless.lambda.*``).

    The functions must exist (``dask-serverless deploy``); workers then invoke their
    successors themselves, exactly as in the local backend.
    """

    name = "lambda"

    def __init__(self, settings: LambdaSettings | None = None):
        self.settings = settings or LambdaSettings.from_config()
        self.invoker = LambdaInvoker(self.settings)

    def invoke_many(self, invocations: list[Invocation]) -> None:
        self.invoker.invoke_many(invocations)

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
