"""What a planner optimises: makespan, cost, or cost within a makespan budget."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..simulator import SimResult

_KINDS = ("makespan", "cost", "budget")


@dataclass(frozen=True)
class Objective:
    """``kind``: "makespan" | "cost" | "budget" (cheapest plan whose predicted makespan
    is at most ``budget_s``; the fastest one when none is)."""

    kind: str = "makespan"
    budget_s: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"planner objective {self.kind!r} is not one of {_KINDS}")
        if self.kind == "budget" and (self.budget_s is None or self.budget_s <= 0):
            raise ValueError("planner objective 'budget' needs a positive budget_s (seconds)")

    def key(self, r: SimResult) -> tuple[float, ...]:
        """Smaller is better."""
        if self.kind == "makespan":
            return (round(r.makespan, 9), r.cost)
        if self.kind == "cost":
            return (r.cost, round(r.makespan, 9))
        over = max(0.0, r.makespan - self.budget_s)  # type: ignore[operator]
        return (round(over, 9), r.cost, r.makespan)

    def better(self, a: SimResult, b: SimResult | None, margin: float = 0.0) -> bool:
        """Whether ``a`` beats ``b`` (by ``margin``, a fraction of each key part)."""
        return b is None or tuple(x * (1 + margin) for x in self.key(a)) < self.key(b)

    @classmethod
    def parse(cls, value: Any, budget_s: float | None = None) -> Objective:
        if isinstance(value, Objective):
            return value
        if value is None:
            return cls()
        return cls(str(value), budget_s)
