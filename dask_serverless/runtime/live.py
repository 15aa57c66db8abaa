"""A run's live feed for dashboards (``serverless.dashboard.enabled``).

The client announces the run on the metrics Redis (its structure and plan, under
``MetricsKeys.live``, listed in ``MetricsKeys.live_runs``) and forwards every progress
event its workers publish on the run's own channel: each event is appended to the run's
event list (so a page opened mid-run catches up) and published on
``MetricsKeys.live_events`` (so it sees the rest as it happens). A dashboard therefore
only needs the metrics Redis, whatever Redis holds the run's intermediates. Events carry
``seq`` (1, 2, ...: their position in the list). The live record expires some time after
the run (``FINISHED_TTL``); dashboards drop expired ones from the list. Without the flag
none of this runs and workers send no per-task events.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import redis

from ..dag import DAG
from ..metrics.plans import plan_record
from ..plan import Plan
from ..storage.keys import MetricsKeys as K
from ..storage.store import connect

logger = logging.getLogger(__name__)

FINISHED_TTL = 600  # seconds a finished run's live record stays


class LiveFeed:
    """Publishes one run's progress to the metrics Redis at ``url``; never fails the run
    (a Redis error is logged once and the feed goes quiet)."""

    def __init__(self, url: str, run_id: str, ttl: float):
        self.r = connect(url)
        self.run_id = run_id
        self.ttl = max(60, int(ttl) + 60)
        self.seq = 0
        self._broken = False

    def announce(self, dag: DAG, plan: Plan, signature: str, submit_time: float) -> None:
        record = json.loads(plan_record(dag, plan, structure=True))
        record.update(run_id=self.run_id, signature=signature, submit_time=submit_time)
        self._send(lambda p: (p.set(K.live(self.run_id), json.dumps(record), ex=self.ttl),
                              p.zadd(K.live_runs, {self.run_id: submit_time})),
                   {"kind": "start", "time": submit_time})

    def event(self, event: dict[str, Any]) -> None:
        """Forward a worker's progress event (``kind == "tasks"``)."""
        self._send(None, {**event, "time": time.time()})

    def finish(self, ok: bool, makespan: float) -> None:
        """The run ended; dashboards still list it for ``FINISHED_TTL`` seconds."""
        self.ttl = FINISHED_TTL
        self._send(lambda p: p.expire(K.live(self.run_id), FINISHED_TTL),
                   {"kind": "finished", "status": "ok" if ok else "failed",
                    "makespan": makespan, "time": time.time()})

    def _send(self, extra, event: dict[str, Any]) -> None:
        if self._broken:
            return
        self.seq += 1
        blob = json.dumps({**event, "seq": self.seq}, separators=(",", ":"))
        events = K.live_log(self.run_id)
        try:
            pipe = self.r.pipeline(transaction=False)
            if extra is not None:
                extra(pipe)
            pipe.rpush(events, blob)
            pipe.expire(events, self.ttl)
            pipe.publish(K.live_events(self.run_id), blob)
            pipe.execute()
        except (redis.RedisError, OSError) as exc:
            self._broken = True
            logger.warning("run %s: live dashboard feed stopped: %s", self.run_id, exc)
