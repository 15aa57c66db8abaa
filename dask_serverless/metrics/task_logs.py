"""Log lines a task emits through ``logging`` while it runs, kept per task id.

The executor installs one ``TaskLogCapture`` per invocation when the run records metrics
(``serverless.metrics.task-logs``: the lowest level kept, or None for none) and sets
``task`` around each task's call. Lines are buffered and written with the invocation's
other records, bounded per task. When the worker process configured no logging itself (a
local container), the root logger is lowered to that level for the invocation, and
records at WARNING or above still reach ``logging.lastResort`` (stderr, the container
log) as they did before; a worker with its own handlers (Lambda) keeps its level.
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Any

MAX_LINES = 50  # per task
MAX_CHARS = 1000  # per line


class TaskLogCapture(logging.Handler):
    """``lines[task id]`` = ``[[time, level name, logger name, message], ...]``."""

    def __init__(self, level: int):
        super().__init__(level)
        self._running = threading.local()  # a worker may run tasks in several threads
        self.lines: dict[int, list[list[Any]]] = {}
        self._root_level: int | None = None
        self._forward = False

    @property
    def task(self) -> int:
        """Id of the task this thread runs, -1 between tasks."""
        return getattr(self._running, "task", -1)

    @task.setter
    def task(self, tid: int) -> None:
        self._running.task = tid

    @property
    def forwarding(self) -> bool:
        """This thread is passing a record on to ``logging.lastResort`` (stderr)."""
        return getattr(self._running, "forwarding", False)

    def add_lines(self, tid: int, lines: list[list[Any]]) -> None:
        """Lines of task ``tid`` captured elsewhere (``worker.task_output``: what it
        printed and warned), same shape as log lines."""
        self.lines.setdefault(tid, []).extend(lines)

    def emit(self, record: logging.LogRecord) -> None:
        last = logging.lastResort
        if self._forward and last is not None and record.levelno >= last.level \
                and not _handled_elsewhere(record.name, self):
            self._running.forwarding = True
            try:
                last.handle(record)
            finally:
                self._running.forwarding = False
        if self.task < 0:
            return
        lines = self.lines.setdefault(self.task, [])
        if len(lines) >= MAX_LINES:
            return
        try:
            message = record.getMessage()
        except Exception:  # a bad format string in the task's own call
            message = str(record.msg)
        if record.exc_info and record.exc_info[0] is not None:
            message += "\n" + logging.Formatter().formatException(record.exc_info)
        lines.append([round(record.created, 6), record.levelname, record.name,
                      message[:MAX_CHARS]])

    def install(self) -> TaskLogCapture:
        root = logging.getLogger()
        self._forward = not root.handlers
        if self._forward and root.level > self.level:
            self._root_level = root.level
            root.setLevel(self.level)
        root.addHandler(self)
        return self

    def remove(self) -> None:
        root = logging.getLogger()
        root.removeHandler(self)
        if self._root_level is not None:
            root.setLevel(self._root_level)
            self._root_level = None

    def dumps(self) -> str | None:
        """JSON of the captured lines, None when there are none."""
        if not self.lines:
            return None
        return json.dumps({str(k): v for k, v in self.lines.items()}, separators=(",", ":"))


def _handled_elsewhere(name: str, me: logging.Handler) -> bool:
    """Whether a handler other than ``me`` sees records of logger ``name`` (then logging
    would not have used ``lastResort`` without us either)."""
    logger: logging.Logger | None = logging.getLogger(name)
    while logger is not None:
        if any(h is not me for h in logger.handlers):
            return True
        if not logger.propagate:
            return False
        logger = logger.parent
    return False


def level_number(name: str | None) -> int | None:
    """``serverless.metrics.task-logs`` as a logging level (None: capture nothing)."""
    if name is None:
        return None
    return logging.getLevelName(str(name).upper())
