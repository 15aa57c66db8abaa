"""Planners turn a DAG into a Plan; pick one by name with ``get_planner``.

``wukong`` (default), ``uniform``, ``non-uniform``, ``dask`` (a Dask distributed
baseline) and ``per-task`` (one task per worker); passes in ``passes`` add pre-warm,
task-dup, delayed I/O and pre-load to any plan.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .base import Planner
from .dask_baseline import DaskPlanner
from .non_uniform import NonUniformPlanner
from .objective import Objective
from .passes import PASSES, apply_passes
from .per_task import PerTaskPlanner
from .uniform import UniformPlanner
from .wukong import WukongPlanner

PLANNERS: dict[str, type] = {"wukong": WukongPlanner, "uniform": UniformPlanner,
                             "non-uniform": NonUniformPlanner, "dask": DaskPlanner,
                             "per-task": PerTaskPlanner}


def get_planner(name_or_planner: str | Planner, **options: Any) -> Planner:
    """A planner by name (``options`` from ``serverless.planner-options``) or as given."""
    if not isinstance(name_or_planner, str):
        return name_or_planner
    try:
        cls = PLANNERS[name_or_planner]
    except KeyError:
        raise ValueError(
            f"serverless.planner = {name_or_planner!r} is not a planner; "
            f"choose one of {sorted(PLANNERS)}"
        ) from None
    fields = {f.name for f in dataclasses.fields(cls)} - {"name"}
    bad = sorted(set(options) - fields)
    if bad:
        raise ValueError(f"serverless.planner-options {bad} are not options of planner "
                         f"{name_or_planner!r}; it takes {sorted(fields)}")
    return cls(**options)


__all__ = ["PASSES", "PLANNERS", "DaskPlanner", "NonUniformPlanner", "Objective",
           "PerTaskPlanner", "Planner", "UniformPlanner", "WukongPlanner", "apply_passes",
           "get_planner"]
