"""Planners turn a DAG into a Plan; pick one by name with ``get_planner``."""

from __future__ import annotations

from .base import Planner
from .wukong import WukongPlanner

PLANNERS: dict[str, type] = {"wukong": WukongPlanner}


def get_planner(name_or_planner: str | Planner) -> Planner:
    if not isinstance(name_or_planner, str):
        return name_or_planner
    try:
        return PLANNERS[name_or_planner]()
    except KeyError:
        raise ValueError(
            f"serverless.planner = {name_or_planner!r} is not a planner; "
            f"choose one of {sorted(PLANNERS)}"
        ) from None


__all__ = ["PLANNERS", "Planner", "WukongPlanner", "get_planner"]
