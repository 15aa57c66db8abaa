"""How much compute a backend has: shared CPU cores and a cap on live containers.

Lambda gives every container its own CPU share, in proportion to its memory, and starts
any number of them at once (``UNLIMITED``). The local backend runs all containers as
processes on this machine's cores: busy containers time-share them, and a cold start
(process spawn plus imports) needs CPU too, so starting many containers at once is slower
than starting one; a container's memory cap does not change its speed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Capacity:
    """``cores``: CPU cores shared by every container (``inf``: each has its own);
    ``containers``: most containers alive at once (``0``: no limit; more invocations
    queue until one finishes); ``cpu_follows_memory``: a container's CPU share grows with
    its memory (Lambda's rule), else every container computes as fast whatever its memory
    (local processes under a memory cap only)."""

    cores: float = math.inf
    containers: int = 0
    cpu_follows_memory: bool = True

    def __post_init__(self) -> None:
        if not self.cores > 0:
            raise ValueError(f"capacity cores must be positive, got {self.cores!r}")
        if self.containers < 0:
            raise ValueError(f"capacity containers must be >= 0, got {self.containers!r}")

    @property
    def shared(self) -> bool:
        """True when containers compete for a fixed number of cores."""
        return math.isfinite(self.cores)


UNLIMITED = Capacity()


def capacity_of(cost: object) -> Capacity:
    """The capacity a cost model carries (``UNLIMITED`` when it has none)."""
    cap = getattr(cost, "capacity", None)
    return cap if isinstance(cap, Capacity) else UNLIMITED
