"""What a serverless run reports beyond its wall time, read around each timed run.

Sources, best first; a figure none of them gives stays ``None`` (shown as ``n/a``):

- the run's metrics record (``last_run.record``, when ``dask_serverless.metrics`` is
  installed and enabled): cold starts, bytes moved, GB-seconds and cost;
- the local backend's pool counters: cold and warm starts (invocations);
- Redis ``INFO stats``: network bytes in + out of the Redis server during the run;
- the simulator (when the planners package ships one): the plan's predicted makespan.
"""

from __future__ import annotations

import logging
from typing import Any

import redis

from .. import session
from ..runtime import get as get_mod

logger = logging.getLogger(__name__)


class ServerlessProbe:
    """``start()`` before a serverless run, ``finish()`` after it."""

    def __init__(self) -> None:
        self._pool: dict[str, int] = {}
        self._redis: int | None = None

    def start(self) -> None:
        self._pool = _pool_stats()
        self._redis = _redis_net_bytes()

    def finish(self) -> dict[str, Any]:
        run = get_mod.last_run
        pool = _pool_stats()
        net = _redis_net_bytes()
        out: dict[str, Any] = {
            "run_makespan_s": run.makespan if run else None,
            "plan_workers": len(run.plan.workers) if run else None,
            "invocations": _delta(pool, self._pool, "cold_starts", "warm_starts"),
            "cold_starts": _delta(pool, self._pool, "cold_starts"),
            "redis_net_bytes": net - self._redis if net is not None and
            self._redis is not None else None,
            "bytes_moved": None, "gb_seconds": None, "cost_usd": None,
            "predicted_s": predicted_makespan(run) if run else None,
        }
        record = getattr(run, "record", None)
        if record is not None:
            out["cold_starts"] = record.cold_starts
            out["invocations"] = record.invocations
            out["bytes_moved"] = record.upload_bytes + record.download_bytes
            out["gb_seconds"] = record.gb_seconds
            out["cost_usd"] = record.cost_usd
        return out


def predicted_makespan(run: Any) -> float | None:
    """The simulator's makespan for the run's plan, or None without a simulator."""
    try:
        from ..planners.base import cost_model_of  # type: ignore[attr-defined]
        from ..simulator import simulate  # type: ignore[import-not-found]
    except ImportError:
        return None
    try:
        return float(simulate(run.dag, run.plan, cost_model_of(None)).makespan)
    except Exception:  # a prediction must never fail the benchmark
        logger.warning("simulator failed on plan %s", run.plan.planner, exc_info=True)
        return None


def _pool_stats() -> dict[str, int]:
    pool = getattr(session.backend(), "pool", None)
    return pool.stats() if pool is not None else {}


def _delta(now: dict[str, int], before: dict[str, int], *names: str) -> int | None:
    if not all(n in now for n in names):
        return None
    return sum(now[n] - before.get(n, 0) for n in names)


def _redis_net_bytes() -> int | None:
    """Bytes the Redis server received plus sent so far (None: fakeredis has no count)."""
    from ..storage.store import connect

    try:
        stats = connect(session.redis_url()).info("stats")
    except redis.RedisError:
        return None
    try:
        return int(stats["total_net_input_bytes"]) + int(stats["total_net_output_bytes"])
    except (KeyError, TypeError, ValueError):
        return None
