"""Progress events on a clock: a finished task is reported within about ``PROGRESS_S``
even while the invocation's next task runs long (the executor otherwise reports only when
a task starts), so a client's ``ProgressBar`` advances task by task."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from ..protocol.constants import PROGRESS_S

logger = logging.getLogger(__name__)


class ProgressTicker:
    """A daemon thread calling ``flush`` every ``interval`` seconds until ``stop``."""

    def __init__(self, flush: Callable[[], None], interval: float = PROGRESS_S):
        self._flush, self._interval = flush, interval
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True,
                                        name="dask-serverless-progress")

    def start(self) -> ProgressTicker:
        self._thread.start()
        return self

    def stop(self) -> None:
        """No flush runs once this returns."""
        self._stopped.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stopped.wait(self._interval):
            try:
                self._flush()
            except Exception:  # progress is best effort; the run's outcome is not
                logger.debug("progress event not sent", exc_info=True)
