"""What tasks print and warn, kept per task and sent to the client.

The executor installs one ``TaskOutput`` per invocation and wraps each task's call in
``task(tid, key)``. While installed, ``sys.stdout`` / ``sys.stderr`` are tees: a line a
task writes is kept for that task (and still reaches the worker's own stream: the
container log, or CloudWatch on Lambda); writes from other threads pass through untouched.
Warnings are recorded instead of shown (every one: the client's filters decide what is
shown, as they would for a local scheduler).

When a task that printed or warned ends, its lines and warnings are appended (sealed JSON,
one entry per task) to the run's ``task_output`` list in Redis before its output is stored, so
a client that has every output also has every line (``runtime.task_output`` echoes and
re-emits them). They also join the task's log lines in the metrics (levels ``STDOUT``,
``STDERR`` and ``WARNING``) when the run records them.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from typing import Any

import redis

from ..metrics.task_logs import TaskLogCapture
from ..storage.store import RunStore

logger = logging.getLogger(__name__)

MAX_LINES = 200  # per task; further lines are counted, not kept
MAX_CHARS = 2000  # per line
MAX_WARNINGS = 20  # distinct warnings per task
# run id -> installed TaskOutputs of that run's invocations in this process
_INSTALLED: dict[str, list[TaskOutput]] = {}
_INSTALLED_LOCK = threading.Lock()


class _Captured:
    """One running task's lines and warnings."""

    __slots__ = ("appends", "dropped", "key", "lines", "partial", "tid", "warned")

    def __init__(self, tid: int, key: Any):
        self.tid, self.key = tid, key
        self.appends = 0  # to a shuffle store (``shuffle_store``) in this execution
        self.lines: list[list[Any]] = []  # [time, "stdout" | "stderr", text]
        self.partial = {"stdout": "", "stderr": ""}
        self.warned: dict[tuple, list[Any]] = {}  # (category, message, file, line) -> entry
        self.dropped = 0

    def write(self, stream: str, text: str) -> None:
        text = self.partial[stream] + text
        *whole, self.partial[stream] = text.split("\n")
        for line in whole:
            self.add(stream, line)

    def add(self, stream: str, line: str) -> None:
        if len(self.lines) < MAX_LINES:
            self.lines.append([round(time.time(), 6), stream, line[:MAX_CHARS]])
        else:
            self.dropped += 1

    def end(self) -> None:
        for stream, rest in self.partial.items():
            if rest:
                self.add(stream, rest)
        self.partial = {"stdout": "", "stderr": ""}


class _Tee:
    """A stand-in for ``sys.stdout`` / ``sys.stderr``: text a task writes is kept for
    it and passed on to the stream it replaced."""

    def __init__(self, original: Any, name: str, owner: TaskOutput):
        self._original, self._name, self._owner = original, name, owner

    def write(self, text: str) -> int:
        self._owner.wrote(self._name, text)
        return self._original.write(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        self._original.flush()

    def isatty(self) -> bool:
        return False

    def __getattr__(self, name: str) -> Any:  # encoding, fileno, buffer, ...
        return getattr(self._original, name)


def running_run_id() -> str | None:
    """The run of the task running on this thread (its invocation's ``TaskOutput``)."""
    with _INSTALLED_LOCK:
        outputs = [o for installed in _INSTALLED.values() for o in installed]
    for output in outputs:
        if output.running() is not None:
            return output.store.keys.run_id
    return None


class TaskOutput:
    """See module docstring. ``logs``: the invocation's log capture (metrics), if any."""

    def __init__(self, store: RunStore, worker_id: str, logs: TaskLogCapture | None = None):
        self.store, self.worker_id, self.logs = store, worker_id, logs
        self._running = threading.local()
        self._streams: tuple[Any, Any] | None = None
        self._warnings: warnings.catch_warnings | None = None
        self._showwarning = warnings.showwarning

    # -- installation (one invocation) ---------------------------------------------------
    @classmethod
    def of_run(cls, run_id: str) -> TaskOutput | None:
        """The installed one of an invocation of run ``run_id`` in this process."""
        with _INSTALLED_LOCK:
            found = _INSTALLED.get(run_id)
        return found[-1] if found else None

    def running(self) -> _Captured | None:
        """The task running on this thread, if any."""
        return getattr(self._running, "task", None)

    def install(self) -> TaskOutput:
        with _INSTALLED_LOCK:
            _INSTALLED.setdefault(self.store.keys.run_id, []).append(self)
        self._streams = (sys.stdout, sys.stderr)
        sys.stdout = _Tee(sys.stdout, "stdout", self)
        sys.stderr = _Tee(sys.stderr, "stderr", self)
        self._warnings = warnings.catch_warnings()  # restores filters and showwarning
        self._warnings.__enter__()
        self._showwarning = warnings.showwarning
        warnings.simplefilter("always")  # every warning reaches showwarning: recorded
        warnings.showwarning = self._record_warning
        return self

    def remove(self) -> None:
        with _INSTALLED_LOCK:
            mine = _INSTALLED.get(self.store.keys.run_id, [])
            if self in mine:
                mine.remove(self)
            if not mine:
                _INSTALLED.pop(self.store.keys.run_id, None)
        if self._streams is not None:
            sys.stdout, sys.stderr = self._streams
            self._streams = None
        if self._warnings is not None:
            self._warnings.__exit__(None, None, None)
            self._warnings = None

    # -- per task ------------------------------------------------------------------------
    @contextlib.contextmanager
    def task(self, tid: int, key: Any) -> Iterator[None]:
        """Keep what task ``tid`` prints and warns while it runs on this thread."""
        captured = _Captured(tid, key)
        self._running.task = captured
        try:
            yield
        finally:
            self._running.task = None
            captured.end()
            if captured.lines or captured.warned:
                self._send(captured)

    def wrote(self, stream: str, text: str) -> None:
        captured = getattr(self._running, "task", None)
        if captured is None or not text:
            return
        if self.logs is not None and self.logs.forwarding:
            return  # a log record on its way to stderr: kept as a log line already
        captured.write(stream, text)

    def _record_warning(self, message: Any, category: type[Warning], filename: str,
                        lineno: int, file: Any = None, line: str | None = None) -> None:
        captured = getattr(self._running, "task", None)
        if captured is None:  # not a task's: shown as it would have been
            self._showwarning(message, category, filename, lineno, file, line)
            return
        text = str(message)
        name = f"{category.__module__}.{category.__qualname__}"
        seen = captured.warned.get((name, text, filename, lineno))
        if seen is not None:
            seen[4] += 1
        elif len(captured.warned) < MAX_WARNINGS:
            captured.warned[(name, text, filename, lineno)] = [
                name, text[:MAX_CHARS], filename, lineno, 1]

    # -- delivery ------------------------------------------------------------------------
    def _send(self, captured: _Captured) -> None:
        entry = {"task": captured.tid, "key": repr(captured.key), "worker": self.worker_id,
                 "lines": captured.lines, "dropped": captured.dropped,
                 "warnings": list(captured.warned.values())}
        try:
            self.store.push_task_output(entry)
        except (redis.RedisError, OSError) as exc:  # never fail a task over its prints
            logger.warning("worker %s: output of task %r not sent: %s", self.worker_id,
                           captured.key, exc)
        if self.logs is not None:
            self.logs.add_lines(captured.tid, _log_lines(captured))


def _log_lines(captured: _Captured) -> list[list[Any]]:
    """The captured output as task log lines: [time, level, logger, message]."""
    lines = [[t, stream.upper(), stream, text] for t, stream, text in captured.lines]
    now = round(time.time(), 6)
    for name, text, filename, lineno, count in captured.warned.values():
        times = f" ({count} times)" if count > 1 else ""
        lines.append([now, "WARNING", "py.warnings",
                      f"{name}: {text} ({filename}:{lineno}){times}"])
    if captured.dropped:
        lines.append([now, "STDOUT", "stdout", f"... {captured.dropped} more lines"])
    return lines
