"""Buffer one invocation's records inside the worker; ``flush`` writes them all with one
pipeline when the invocation ends (never a round trip per task).

The executor tells the recorder what happens, cheaply, as it happens: inputs that
``arrived`` (from Redis or inline), a task's ``output`` size, its ``uploaded`` bytes and
time, fan-in ``claimed`` time and ``invoked`` invocation ids; ``task`` closes the row.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

import redis

from ..dag import TaskNode
from ..protocol.wire import Invocation
from .records import TASK_FIELDS, InvocationRecord, micros
from .store import MetricsStore
from .task_logs import TaskLogCapture

logger = logging.getLogger(__name__)

ENCODE_ROWS = 4096  # closed task rows are encoded to JSON this many at a time
_UPLOAD_BYTES = TASK_FIELDS.index("upload_bytes")
_UPLOAD_S = TASK_FIELDS.index("upload_s")


class InvocationRecorder:
    """Records of one invocation (see module docstring)."""

    def __init__(self, inv: Invocation, cold: bool, t0: float):
        self.inv = inv
        self.cold = cold
        self.t0 = t0  # the invocation's start: task rows hold times relative to it
        self.rows: list[list[Any]] = []  # rows not encoded yet
        self.encoded: list[str] = []  # JSON of closed rows, ENCODE_ROWS at a time
        self.tasks = 0  # rows recorded
        self.arrived: dict[int, tuple[int, str, int]] = {}  # fetched, no consumer yet (µs)
        self.sizes: dict[int, int] = {}  # bytes of each value this invocation held
        self.invoked: list[str] = []
        self.upload_bytes = self.download_bytes = self.inline_bytes = 0
        self._awaiting_upload: dict[int, list[Any]] = {}  # final outputs flushed in batches
        self.logs: TaskLogCapture | None = None  # see ``capture_logs``
        self._reset_task()

    def capture_logs(self, level: int) -> TaskLogCapture:
        """Keep the log lines of this invocation's tasks (``task_logs``); the caller
        installs and removes the returned handler."""
        self.logs = TaskLogCapture(level)
        return self.logs

    def _reset_task(self) -> None:
        self._tid = -1
        self._out = self._up_bytes = 0
        self._up_s = self._fanin_s = 0.0
        self._invoked: list[str] = []

    # -- events from the executor --------------------------------------------------------
    def arrived_inputs(self, ids: Sequence[int], sizes: Sequence[int], source: str,
                       seconds: float = 0.0) -> None:
        """Inputs reached this worker; one round trip's time is shared by size."""
        total = sum(sizes)
        for d, n in zip(ids, sizes, strict=True):
            self.arrived[d] = (n, source, micros(seconds * n / total) if total else 0)
            self.sizes[d] = n
        if source == "redis":
            self.download_bytes += total
        else:
            self.inline_bytes += total

    def output(self, tid: int, nbytes: int) -> None:
        self._tid = tid
        self.sizes[tid] = self._out = nbytes

    def uploaded(self, nbytes: int, seconds: float) -> None:
        self._up_bytes += nbytes
        self._up_s += seconds
        self.upload_bytes += nbytes

    def claimed(self, seconds: float) -> None:
        self._fanin_s += seconds

    def invoked_ids(self, ids: list[str]) -> None:
        self._invoked.extend(ids)
        self.invoked.extend(ids)

    def task(self, task: TaskNode, start: float, exec_s: float, end: float,
             upload_later: bool, cpu_s: float = 0.0) -> None:
        """Close the row of ``task``; ``upload_later``: its output waits in a batch."""
        inputs = []
        for d in task.deps + task.stored:  # stored inputs: downloads like any input
            got = self.arrived.pop(d, None)
            if got is None:
                inputs.append([d, self.sizes.get(d, 0), "local", 0])
            else:
                inputs.append([d, got[0], got[1], got[2]])
        t0 = self.t0
        row = [task.id, repr(task.key), task.func_name, micros(start - t0), micros(end - t0),
               micros(exec_s), inputs, self._out, self._up_bytes, micros(self._up_s),
               micros(self._fanin_s), self._invoked, micros(cpu_s), task.size]
        self.rows.append(row)
        self.tasks += 1
        if upload_later:
            self._awaiting_upload[task.id] = row
        self._reset_task()
        if len(self.rows) >= ENCODE_ROWS + len(self._awaiting_upload):
            self._encode_closed()

    def _encode_closed(self) -> None:
        """Encode the rows no later upload will change: a row as JSON text takes a fifth
        of its memory as lists (a million-task invocation keeps its rows)."""
        waiting = self._awaiting_upload
        closed = [r for r in self.rows if r[0] not in waiting]
        if closed:
            self.encoded.append(json.dumps(closed, separators=(",", ":"))[1:-1])
            self.rows = [r for r in self.rows if r[0] in waiting]

    def batch_uploaded(self, items: Sequence[tuple[int, int]], seconds: float) -> None:
        """A batch of final outputs ``(task id, bytes)`` was stored in one round trip."""
        total = sum(n for _, n in items)
        for tid, n in items:
            share = seconds * n / total if total else 0.0
            row = self._awaiting_upload.pop(tid, None)
            if row is not None:
                row[_UPLOAD_BYTES] += n
                row[_UPLOAD_S] += micros(share)
            elif tid == self._tid:  # the batch filled up with the open task's output
                self._up_bytes += n
                self._up_s += share
        self.upload_bytes += total

    # -- end of invocation -----------------------------------------------------------------
    def record(self, start_time: float, end_time: float, spec_fetch_s: float,
               failed: bool, spec_bytes: int = 0) -> InvocationRecord:
        """``spec_fetch_s`` / ``spec_bytes``: the run spec this invocation fetched and
        decoded (its slices; 0 when its container had them)."""
        inv = self.inv
        return InvocationRecord(
            inv.run_id, inv.id, inv.worker_id, inv.invoker, inv.memory_mb, inv.invoke_time,
            start_time, end_time, self.cold, spec_fetch_s, self.tasks, self.invoked,
            self.upload_bytes, self.download_bytes, self.inline_bytes, failed, inv.warmup,
            inv.attempt, dispatch_time=inv.dispatch_time, spec_bytes=spec_bytes)

    def flush(self, client: redis.Redis, record: InvocationRecord) -> None:
        """Write the invocation record and its task rows in one pipeline; a failure is
        logged, never raised (metrics must not fail a run)."""
        batch = None
        if self.tasks:
            rows = [*self.encoded]
            if self.rows:
                rows.append(json.dumps(self.rows, separators=(",", ":"))[1:-1])
            head = json.dumps({"invocation_id": record.invocation_id,
                               "worker_id": record.worker_id, "memory_mb": record.memory_mb,
                               "t0": self.t0}, separators=(",", ":"))
            batch = f'{head[:-1]},"rows":[{",".join(rows)}]}}'
        logs = self.logs.dumps() if self.logs is not None else None
        try:
            MetricsStore(client).write_invocation(record, batch, logs)
        except (redis.RedisError, OSError) as exc:
            logger.warning("run %s: could not record metrics of invocation %s: %s",
                           record.run_id, record.invocation_id, exc)
