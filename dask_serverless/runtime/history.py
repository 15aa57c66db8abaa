"""The history a planner learns from: a Predictor over earlier runs of this workflow."""

from __future__ import annotations

import logging
from typing import Any

from .. import config, session
from ..capacity import Capacity
from ..costmodel import SizePrior
from ..dag import DAG

logger = logging.getLogger(__name__)

_ANY_WORKFLOW_RUNS = 10  # when this workflow is new: learn functions from recent runs
_PLANNING_RUNS = 10  # at most this many of the workflow's newest runs feed a plan
_cache: dict[tuple, Any] = {}  # (metrics url, run ids) -> Predictor
LARGE_DATA_BYTES = 32 * 2**20  # known root data from which where it goes is planned


def known_data(dag: DAG) -> int:
    """Bytes the run's roots are known to make before it runs (``TaskNode.size``)."""
    return sum(t.size for t in dag.tasks if not t.deps)


def wants_history(planner: Any, optimizations: list[str], dag: DAG | None = None) -> bool:
    """``serverless.use-history``: auto uses it for every planner but the structural
    default (``wukong`` without passes), which needs none and stays fastest, unless
    ``dag``'s roots are known to make ``LARGE_DATA_BYTES`` or more: then where data
    goes matters more than planning time."""
    mode = config.get("use-history")
    if mode != "auto":
        return bool(mode)
    name = planner if isinstance(planner, str) else getattr(planner, "name", "")
    return name != "wukong" or bool(optimizations) or (
        dag is not None and known_data(dag) >= LARGE_DATA_BYTES)


def prior_for(dag: DAG, capacity: Capacity | None = None) -> SizePrior | None:
    """A first run's cost model (no history): ``SizePrior`` when ``dag``'s roots are known
    to make ``LARGE_DATA_BYTES`` or more (its planner then keeps large data local where
    moving it costs more than it saves), else None (the planners' own defaults)."""
    if known_data(dag) < LARGE_DATA_BYTES:
        return None
    return SizePrior.from_config(capacity) if capacity is not None else \
        SizePrior.from_config()


def predictor_for(dag: DAG, redis_url: str | None = None,
                  capacity: Capacity | None = None) -> Any:
    """A Predictor over the newest runs with ``dag``'s signature (else over recent runs
    of any workflow), or None when there is no history. Cached per set of runs and
    ``capacity`` (the backend's: shared cores change what the history means)."""
    url = session.metrics_url(redis_url)
    if url is None:
        return None
    from ..metrics.predictor import Predictor
    from ..metrics.store import MetricsStore

    store = MetricsStore.from_url(url)
    ids = store.run_ids(min(config.get("metrics.history"), _PLANNING_RUNS), dag.signature())
    if not ids:
        ids = store.run_ids(_ANY_WORKFLOW_RUNS)
    if not ids:
        return None
    key = (url, tuple(ids), capacity)
    predictor = _cache.get(key)
    if predictor is None:
        predictor = Predictor.from_store(store, run_ids=ids, dag=dag, capacity=capacity)
        _cache.clear()  # keep one: a newer run makes the old one stale
        _cache[key] = predictor
        logger.debug("planning with a predictor over %d earlier runs", len(ids))
    return predictor
