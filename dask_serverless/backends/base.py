"""The one interface every compute backend implements."""

from __future__ import annotations

from typing import Protocol

from ..capacity import Capacity
from ..plan import ResourceConfig
from ..protocol.wire import Invocation


class Backend(Protocol):
    """Invokes workers. Implementations: ``local`` (subprocess containers), ``lambda``."""

    name: str

    def invoke_many(self, invocations: list[Invocation]) -> None:
        """Start these invocations asynchronously (like Lambda's ``Event`` invoke)."""

    def warm_up(self, config: ResourceConfig, count: int = 1) -> None:
        """Start ``count`` containers of ``config`` so later invocations start warm."""

    def default_parallelism(self) -> int:
        """How many workers planners should aim to run at once."""

    def capacity(self) -> Capacity:
        """Compute the simulator should assume (shared cores, container cap)."""

    def warm_containers(self) -> dict[int, int]:
        """Idle containers per memory size now ({} when unknown, as on Lambda): a plan
        using them starts warm."""

    def close(self) -> None:
        """Release everything the backend started."""
