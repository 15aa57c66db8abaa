"""An execution's lease, renewed from a background thread while it runs (see
``storage.leases``): the client tells a dead execution from a slow one by it."""

from __future__ import annotations

import collections
import logging
import threading
import time

import redis

from ..protocol.constants import LEASE_BEATS
from ..protocol.wire import Invocation
from ..storage import leases
from ..storage.store import RunStore

logger = logging.getLogger(__name__)


class Heartbeat:
    """Take, renew and release ``inv``'s lease. ``running`` (task -> start, epoch) and
    ``finished`` (task, seconds) are filled by the executor and go out with each beat.
    ``lost``: the lease expired before a renewal (the client has declared this execution
    dead and sent another attempt); ``ended``: another execution of the invocation did
    its work. Either way this one should stop."""

    def __init__(self, store: RunStore, inv: Invocation, beats: int = LEASE_BEATS):
        self.store, self.inv = store, inv
        self.interval = inv.heartbeat_s
        self.ms = leases.lease_ms(inv, beats)
        self.running: dict[int, float] = {}
        self.finished: collections.deque[tuple[int, float]] = collections.deque()
        self.lost = False
        self.ended = False
        self.beats = 0
        self.started = time.time()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> str:
        """"ok", "ended" or "taken" (``leases.acquire``); "ok" starts the heartbeat."""
        got = leases.acquire(self.store, self.inv, self._value(), self.ms)
        if got == "ok":
            self._thread = threading.Thread(target=self._loop, daemon=True,
                                            name="dask-serverless-heartbeat")
            self._thread.start()
        return got

    @property
    def stopped(self) -> bool:
        """This execution should stop (its lease is lost or its work was done elsewhere)."""
        return self.lost or self.ended

    def _value(self) -> str:
        return leases.lease_value(self.inv, self.started, self.running.copy(), time.time())

    def _drain(self) -> list[tuple[int, float]]:
        out = []
        while True:
            try:
                out.append(self.finished.popleft())
            except IndexError:
                return out

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.beat()

    def beat(self) -> None:
        done = self._drain()
        try:
            held, ended = leases.renew(self.store, self.inv, self._value(), self.ms, done)
        except (redis.RedisError, OSError):
            logger.warning("worker %s: could not renew its lease", self.inv.worker_id,
                           exc_info=True)
            self.finished.extendleft(reversed(done))
            return
        self.beats += 1
        if not held and not self.lost:  # (or the run is over: its keys were cleaned up)
            logger.info("worker %s: its lease is gone (attempt %d): stopping; another "
                        "attempt takes over, or the run is over", self.inv.worker_id,
                        self.inv.attempt)
        self.lost = self.lost or not held
        self.ended = self.ended or ended

    def stop(self, ended: bool) -> None:
        """Stop renewing and release the lease; ``ended``: the invocation's work is done
        (False when the lease was lost: the attempt that took over ends it)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            leases.release(self.store, self.inv, ended and not self.lost, self._drain())
        except (redis.RedisError, OSError):
            logger.warning("worker %s: could not release its lease", self.inv.worker_id,
                           exc_info=True)
