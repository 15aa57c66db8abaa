"""Cost model: GB-seconds x price + a price per request (AWS Lambda's x86 prices by
default, configurable as ``serverless.metrics.prices.*``)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .. import config
from .records import InvocationRecord


@dataclass(frozen=True, slots=True)
class Prices:
    gb_second: float  # USD per GB-second of configured memory
    request: float  # USD per invocation

    @classmethod
    def from_config(cls) -> Prices:
        return cls(config.get("metrics.prices.gb-second"), config.get("metrics.prices.request"))


def gb_seconds(memory_mb: int, seconds: float) -> float:
    """Billed GB-seconds: Lambda bills configured memory (1 GB = 1024 MB) x duration."""
    return memory_mb / 1024 * seconds


def invocations_cost(invocations: Iterable[InvocationRecord],
                     prices: Prices) -> tuple[float, float]:
    """(GB-seconds, USD) of these invocations; a duration runs from start to end."""
    total_gbs, requests = 0.0, 0
    for inv in invocations:
        total_gbs += gb_seconds(inv.memory_mb, inv.duration_s)
        requests += 1
    return total_gbs, total_gbs * prices.gb_second + requests * prices.request
