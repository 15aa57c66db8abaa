"""The client's side of what tasks print and warn (``worker.task_output`` sends it).

``TaskOutputFeed.poll`` reads the entries that arrived since the last poll and, when
``echo`` is on (``serverless.echo-task-output``), writes each line to this process's
stdout or stderr (the stream the task wrote to), prefixed with the task's key. ``finish``
reads the rest and re-emits the tasks' warnings here with ``warnings.warn_explicit``, so
this process's filters decide what is shown or raised (``pytest.warns`` sees them), each
distinct warning once, naming the task that raised it.

Entries are sealed JSON (never unpickled; one whose seal does not match is ignored). A
warning's category is resolved only among modules
already imported here (nothing is imported on a worker's say); control characters in
echoed text are escaped (a worker's text must not drive this terminal).
"""

from __future__ import annotations

import logging
import sys
import unicodedata
import warnings
from typing import Any

import redis

from ..storage.store import RunStore

logger = logging.getLogger(__name__)


class TaskOutputFeed:
    def __init__(self, store: RunStore, echo: bool = True):
        self.store, self.echo = store, echo
        self.read = 0  # entries read so far
        # (category, message, filename, lineno) -> [key, worker, tasks, times]
        self.warned: dict[tuple[str, str, str, int], list[Any]] = {}

    def poll(self) -> None:
        """Read (and echo) the entries that arrived since the last poll."""
        try:
            entries, read = self.store.task_output(self.read)
        except (redis.RedisError, OSError) as exc:
            logger.debug("task output not read: %s", exc)
            return
        self.read += read
        for entry in entries:
            try:
                self._take(entry)
            except (KeyError, TypeError, ValueError):  # not what a worker writes
                logger.warning("an entry of the task output list is malformed: ignored")

    def _take(self, entry: dict[str, Any]) -> None:
        key, worker = str(entry["key"]), str(entry["worker"])
        if self.echo:
            _echo(key, worker, entry["lines"], int(entry.get("dropped", 0)))
        for name, message, filename, lineno, times in entry["warnings"]:
            seen = self.warned.setdefault((str(name), str(message), str(filename),
                                           int(lineno)), [key, worker, 0, 0])
            seen[2] += 1
            seen[3] += int(times)

    def finish(self, raise_errors: bool = True) -> None:
        """Read the rest and re-emit the warnings. ``raise_errors``: let a warning that
        this process's filters turn into an error propagate (off while another error
        is on its way out)."""
        self.poll()
        warned, self.warned = self.warned, {}
        for (name, message, filename, lineno), (key, worker, tasks, _) in warned.items():
            others = (f"; {tasks - 1} other task{'s' if tasks > 2 else ''} too"
                      if tasks > 1 else "")
            text = f"{message} [task {key} on worker {worker}{others}]"
            category = _category(name)
            if category is None:  # its class is not loaded here
                category, text = UserWarning, f"{name}: {text}"
            try:
                warnings.warn_explicit(text, category, filename, lineno)
            except Exception:
                if raise_errors:
                    raise


def _echo(key: str, worker: str, lines: list, dropped: int) -> None:
    prefix = f"({_printable(key)} on {_printable(worker)}) "
    for _, stream, text in lines:
        out = sys.stderr if stream == "stderr" else sys.stdout
        out.write(prefix + _printable(str(text)) + "\n")
    if dropped:
        sys.stdout.write(f"{prefix}... {dropped} more lines not kept\n")
    sys.stdout.flush()


def _printable(text: str) -> str:
    """``text`` with control characters (escape sequences, carriage returns) escaped."""
    if text.isprintable():
        return text
    return "".join(c if c == "\t" or unicodedata.category(c)[0] != "C"
                   else repr(c)[1:-1] for c in text)


def _category(name: str) -> type[Warning] | None:
    """The warning class named ``module.qualname`` if its module is imported here and it
    is a Warning, else None."""
    parts = name.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        found: Any = sys.modules.get(".".join(parts[:cut]))
        if found is None:
            continue
        for part in parts[cut:]:
            found = getattr(found, part, None)
        if isinstance(found, type) and issubclass(found, Warning):
            return found
        return None
    return None
