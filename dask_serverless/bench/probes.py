"""What a serverless run reports beyond its wall time, read around each timed run.

- the run's metrics record (``last_run.record``, when ``serverless.metrics.enabled``):
  invocations, cold starts, bytes moved (up, down and inline), GB-seconds and cost;
- else the local backend's pool counters: invocations and cold starts;
- Redis ``INFO stats``: network bytes in + out of the run's Redis during the run;
- the plan simulator: the plan's predicted makespan under the cost model the planner
  itself gets (a Predictor over the runs recorded so far when the planner plans with
  history, else the fixed default), with the containers idle when the run started.

A figure no source gives stays ``None`` (shown as ``n/a``).
"""

from __future__ import annotations

import logging
from typing import Any

import redis

from .. import config, session
from ..costmodel import SizePrior
from ..dag import DAG
from ..runtime import get as get_mod
from ..runtime import history

logger = logging.getLogger(__name__)


class ServerlessProbe:
    """``start()`` before a serverless run of ``dag``, ``finish()`` after it."""

    def __init__(self, dag: DAG, planner: str, passes: tuple[str, ...] = ()) -> None:
        self.dag = dag
        self.with_history = history.wants_history(planner, list(passes), dag)
        self._pool: dict[str, int] = {}
        self._redis: int | None = None
        self._predictor: Any = None
        self._warm: dict[int, int] = {}

    def start(self) -> None:
        """Read the counters; take the predictor now, before this run joins the history
        (``serverless_get`` then finds it in the history cache)."""
        self._predictor = _predictor(self.dag) if self.with_history else None
        if self._predictor is None:  # a first run plans with what its sizes tell
            self._predictor = history.prior_for(self.dag, session.backend().capacity())
        self._pool = _pool_stats()
        self._warm = {config.get("memory"): self._pool.get("idle", 0)}
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
            "predicted_s": self._predicted(run) if run else None,
            "prediction_model": None if self._predictor is None else
            "size prior" if isinstance(self._predictor, SizePrior) else "history",
        }
        if run is not None and out["predicted_s"] is not None and self._predictor is None:
            out["prediction_model"] = "default"
        record = getattr(run, "record", None)
        if record is not None:
            out["invocations"] = record.invocations
            out["cold_starts"] = record.cold_starts
            out["bytes_moved"] = record.bytes_moved
            out["gb_seconds"] = record.gb_seconds
            out["cost_usd"] = record.cost_usd
        return out

    def _predicted(self, run: Any) -> float | None:
        from ..planners.base import cost_model_of
        from ..simulator import simulate

        try:
            return float(simulate(run.dag, run.plan, cost_model_of(self._predictor),
                                  warm=self._warm).makespan)
        except Exception as exc:  # a prediction must never fail the benchmark
            logger.warning("simulator failed on the %s plan: %s: %s", run.plan.planner,
                           type(exc).__name__, exc)
            return None


def _predictor(dag: DAG) -> Any:
    try:
        return history.predictor_for(dag)
    except (redis.RedisError, OSError) as exc:
        logger.warning("no predictor from the metrics history: %s", exc)
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
