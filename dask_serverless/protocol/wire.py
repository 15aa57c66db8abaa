"""What travels between client and workers: invocations, the run spec, reports and
error records (plain data, sealed when it crosses a process boundary)."""

from __future__ import annotations

import dataclasses
import hashlib
import pickle
import traceback
import uuid
from dataclasses import dataclass, field
from typing import Any

import cloudpickle

from ..dag import DAG, TaskNode
from ..layout import Layout
from ..plan import Plan
from ..portable_errors import portable
from ..storage import serialize
from ..storage.serialize import Purpose

SPEC_NAME = "spec"  # what a run spec is sealed under (inline or stored, the same blob)


@dataclass(slots=True)
class Invocation:
    """One worker invocation (plain data: safe to pickle, small to send)."""

    run_id: str
    worker_id: str
    memory_mb: int
    redis_url: str
    start: list[int]
    spec: bytes | None = None  # the RunSpec inline, or None: fetch it from Redis
    inputs: dict[int, bytes] = field(default_factory=dict)  # upstream outputs inline
    invoker: str = "client"
    invoke_time: float = 0.0
    warmup: bool = False  # pre-warm: start the container, run nothing
    id: str = field(default_factory=lambda: uuid.uuid4().hex)  # kept across retries
    attempt: int = 0
    dispatch_time: float = 0.0  # when a backend handed it to a container (after queueing)
    heartbeat_s: float = 0.0  # lease renewal interval (``storage.leases``); 0: no lease
    backup: bool = False  # a straggler's backup (another attempt running the same work)

    def dumps(self) -> bytes:
        """Sealed for this run and worker (a carrier names both next to the blob)."""
        return serialize.dumps(self, Purpose.INVOCATION, self.run_id, self.worker_id)

    @staticmethod
    def loads(data: bytes, run_id: str, worker_id: str) -> Invocation:
        """The invocation sealed for ``run_id`` / ``worker_id``."""
        inv = serialize.loads(data, Purpose.INVOCATION, run_id, worker_id,
                              "invocation payload")
        if not isinstance(inv, Invocation):
            raise serialize.TamperedPayloadError("the invocation payload is not one")
        return inv

    def child_id(self, start: tuple[int, ...] | list[int]) -> str:
        """The id of the invocation this one sends to start ``start``: the same for every
        attempt and delivery of this one, so a retry never fires work twice."""
        text = f"{self.id}/{','.join(map(str, start))}".encode()
        return hashlib.blake2b(text, digest_size=16).hexdigest()

    def retry(self) -> Invocation:
        """The same invocation (same id, so it may re-claim its fan-ins), next attempt."""
        return dataclasses.replace(self, attempt=self.attempt + 1, backup=False)


@dataclass(slots=True)
class RunSpec:
    """Everything a worker needs about a run; stored once per run."""

    dag: DAG
    plan: Plan
    layout: Layout
    ttl: int
    inline_bytes: int
    report_tasks: bool
    max_output_bytes: int = 500 * 2**20
    metrics_url: str | None = None  # where workers record metrics; None: not recorded
    task_log_level: int | None = None  # lowest level of task log lines recorded; None: none
    deadline_at: float = 0.0  # epoch seconds the run must end by (0: none): bounds waits
    schema: str = ""  # set to SCHEMA when dumped: the client's payload layout

    def check_schema(self, worker_id: str) -> None:
        """Refuse a spec laid out by other code than this worker's (version skew)."""
        theirs = getattr(self, "schema", "") or "unknown"
        if theirs != SCHEMA:
            from .. import __version__

            raise SchemaMismatchError(
                f"worker {worker_id} runs dask-serverless {__version__} with payload schema "
                f"{SCHEMA}, but the client sent schema {theirs}: client and workers run "
                "different code (re-deploy the Lambda functions, or restart the local pool)")

    def dumps(self, run_id: str) -> bytes:
        """Serialise once (each distinct function pickled once) and seal for ``run_id``."""
        self.schema = SCHEMA
        try:
            return serialize.dumps(self, Purpose.SPEC, run_id, SPEC_NAME, by_value=True)
        except Exception as exc:
            raise _unpicklable_task(self.dag, exc) from exc

    @staticmethod
    def loads(data: bytes, run_id: str) -> RunSpec:
        return serialize.loads(data, Purpose.SPEC, run_id, SPEC_NAME, "run spec")


class SchemaMismatchError(RuntimeError):
    """Client and worker were built from different code."""


def _schema() -> str:
    names = [f"{cls.__name__}:{','.join(f.name for f in dataclasses.fields(cls))}"
             for cls in (Invocation, RunSpec, Layout, TaskNode)]
    return hashlib.blake2b(";".join(names).encode(), digest_size=6).hexdigest()


SCHEMA = _schema()  # changes whenever a field of what travels to workers changes


def _unpicklable_task(dag: DAG, exc: Exception) -> TypeError:
    for t in dag.tasks:
        try:
            cloudpickle.dumps(t.node)
        except Exception as inner:
            return TypeError(f"task {t.key!r} cannot be serialised for the workers "
                             f"(function {t.func_name!r}): {inner}")
    return TypeError(f"the run spec cannot be serialised: {exc}")


@dataclass
class InvocationReport:
    """What a worker tells its backend when an invocation ends."""

    run_id: str
    worker_id: str
    tasks: int = 0
    failed: bool = False
    cancelled: bool = False
    invoked: int = 0
    cold: bool = False
    spec_fetch_s: float = 0.0
    start_time: float = 0.0
    end_time: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def error_record(exc: BaseException, key: Any, worker_id: str,
                 memory_mb: int) -> dict[str, Any]:
    """The task's exception pickled (or a stand-in) with the worker-side traceback; the
    store seals the record for the run's error key (``RunStore.fail``)."""
    tb = "".join(traceback.format_exception(exc))
    try:  # portable: a custom ``__init__`` must not stop it unpickling (type kept)
        exc_bytes = serialize.pickled(portable(exc))
        pickle.loads(exc_bytes)
    except Exception:
        exc_bytes = serialize.pickled(RuntimeError(f"{type(exc).__name__}: {exc}"))
    return {"exception": exc_bytes, "traceback": tb, "key": repr(key), "worker": worker_id,
            "memory_mb": memory_mb}
