"""The embedded default backend: Lambda-like subprocess containers on this machine."""

from __future__ import annotations

import logging
import os
import signal
import threading

from ... import config
from ...capacity import Capacity
from ...errors import WorkerCrashedError
from ...plan import ResourceConfig
from ...protocol.wire import Invocation, error_record
from ...storage.serialize import TamperedPayloadError
from ...storage.store import RunStore, connect
from .pool import LocalPool

logger = logging.getLogger(__name__)


def _crash_reason(returncode: int | None) -> str:
    if returncode is None:  # forked by a fork server that died before reaping it
        return "exited with an unknown status (its fork server had exited)"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = str(-returncode)
        hint = " (killed: out of memory or by a signal)" if name == "SIGKILL" else ""
        return f"was killed by {name}{hint}"
    return f"exited with code {returncode}"


def report_crash(inv: Invocation, info: dict) -> None:
    """Tell the run's client that ``inv``'s container died (stored as the run's error)."""
    task = info.get("task_id")
    if "refused" in info:
        exc: Exception = TamperedPayloadError(
            f"worker {inv.worker_id} (memory_mb={inv.memory_mb}) refused its invocation: "
            f"{info['refused']}")
    else:
        where = f" while running task id {task}" if task is not None else ""
        reason = (f"timed out after {info['timed_out']} s (serverless.local.invocation-timeout)"
                  if info.get("timed_out") else _crash_reason(info["returncode"]))
        exc = WorkerCrashedError(
            f"worker {inv.worker_id} (memory_mb={inv.memory_mb}) {reason}{where} "
            f"(after {info.get('attempts', 1)} attempts); "
            f"container log tail:\n{info.get('log_tail', '')[-800:]}")
    record = error_record(exc, f"<task id {task}>" if task is not None else "<worker>",
                          inv.worker_id, inv.memory_mb)
    try:
        RunStore(connect(inv.redis_url), inv.run_id).fail(record)
    except Exception:  # Redis gone too: the client's deadline still ends the wait
        logger.exception("could not report the crash of worker %s", inv.worker_id)


def usable_cores() -> int:
    """Cores this process (and the containers it spawns) may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class LocalBackend:
    """Subprocess containers; ``serverless.local.*`` configures size and keep-alive."""

    name = "local"

    def __init__(self, max_containers: int | None = None, keep_alive: float | None = None):
        cpus = os.cpu_count() or 2
        self.max_containers = max_containers or config.get("local.max-containers") or 2 * cpus
        self.pool = LocalPool(self.max_containers, keep_alive or config.get("local.keep-alive"),
                              on_crash=report_crash, retries=config.get("retries"),
                              retry_backoff=config.get("retry-backoff"),
                              invocation_timeout=config.get("local.invocation-timeout"),
                              start_method=config.get("local.start-method"),
                              preload=list(config.get("local.preload")))
        # the fork server imports while the client converts and plans the first graph
        threading.Thread(target=self.pool.prepare, name="dask-serverless-prepare",
                         daemon=True).start()

    def invoke_many(self, invocations: list[Invocation]) -> None:
        self.pool.invoke_many(invocations)

    def warm_up(self, config: ResourceConfig, count: int = 1) -> None:
        self.pool.warm_up(config.memory_mb, count)

    def cancel_run(self, run_id: str) -> None:
        """Stop this run's running invocations now (its run failed or was cancelled)."""
        self.pool.cancel_run(run_id)

    def cancel_invocation(self, run_id: str, inv_id: str, attempts: list[int]) -> None:
        """Kill the containers running these attempts of an invocation (a straggler's
        backup, or the straggler, did its work first)."""
        self.pool.cancel_invocation(run_id, inv_id, attempts)

    def wait_idle(self, run_id: str, timeout: float) -> bool:
        """After a run: wait (bounded) until its containers are idle again, so the next
        compute finds them warm."""
        return self.pool.wait_idle(run_id, timeout)

    def default_parallelism(self) -> int:
        return min(self.max_containers, os.cpu_count() or 2)

    def warm_containers(self) -> dict[int, int]:
        return self.pool.idle_by_memory()

    def capacity(self) -> Capacity:
        """This machine's cores, time-shared by every container, and the container cap."""
        return Capacity(cores=usable_cores(), containers=self.max_containers,
                        cpu_follows_memory=False)

    def close(self) -> None:
        self.pool.close()
