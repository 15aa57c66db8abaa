"""Recorded metrics in Redis (key names: ``storage.keys.MetricsKeys``). Records never
expire; they live apart from a run's intermediates, which are deleted after each run."""

from __future__ import annotations

import json
from collections.abc import Sequence

import redis

from ..storage.keys import MetricsKeys
from ..storage.store import connect
from .records import InvocationRecord, RunRecord, TaskRecord, tasks_from_batch

K = MetricsKeys


class MetricsStore:
    """Writes (worker: one pipeline per invocation; client: one per run) and reads."""

    def __init__(self, client: redis.Redis):
        self.r = client

    @classmethod
    def from_url(cls, url: str) -> MetricsStore:
        return cls(connect(url))

    # -- writes ---------------------------------------------------------------------------
    def write_invocation(self, record: InvocationRecord, task_batch: str | None) -> None:
        pipe = self.r.pipeline(transaction=False)
        pipe.rpush(K.invocations(record.run_id), json.dumps(record.to_dict()))
        if task_batch is not None:
            pipe.rpush(K.tasks(record.run_id), task_batch)
        pipe.execute()

    def write_run(self, record: RunRecord) -> None:
        pipe = self.r.pipeline(transaction=False)
        pipe.set(K.run(record.run_id), json.dumps(record.to_dict()))
        pipe.zadd(K.runs, {record.run_id: record.submit_time})
        pipe.zadd(K.signature(record.signature), {record.run_id: record.submit_time})
        pipe.execute()

    # -- reads ----------------------------------------------------------------------------
    def run_ids(self, limit: int | None = None, signature: str | None = None) -> list[str]:
        """Recorded run ids, newest first."""
        key = K.runs if signature is None else K.signature(signature)
        end = -1 if limit is None else limit - 1
        return [x.decode() for x in self.r.zrevrange(key, 0, end)]

    def resolve(self, prefix: str) -> str:
        """The one run id starting with ``prefix`` (a KeyError names the problem)."""
        if self.r.exists(K.run(prefix)):
            return prefix
        matches = [r for r in self.run_ids() if r.startswith(prefix)]
        if len(matches) != 1:
            what = "no recorded run" if not matches else f"{len(matches)} runs"
            raise KeyError(f"{what} with an id starting with {prefix!r}")
        return matches[0]

    def run(self, run_id: str) -> RunRecord | None:
        data = self.r.get(K.run(run_id))
        return None if data is None else RunRecord.from_dict(json.loads(data))

    def runs(self, run_ids: Sequence[str]) -> list[RunRecord]:
        if not run_ids:
            return []
        blobs = self.r.mget([K.run(r) for r in run_ids])
        return [RunRecord.from_dict(json.loads(b)) for b in blobs if b is not None]

    def invocations(self, run_id: str, start: int = 0) -> list[InvocationRecord]:
        """Invocation records of ``run_id`` from list index ``start`` on."""
        return [InvocationRecord.from_dict(json.loads(b))
                for b in self.r.lrange(K.invocations(run_id), start, -1)]

    def tasks(self, run_id: str) -> list[TaskRecord]:
        out: list[TaskRecord] = []
        for blob in self.r.lrange(K.tasks(run_id), 0, -1):
            out.extend(tasks_from_batch(run_id, json.loads(blob)))
        return out
