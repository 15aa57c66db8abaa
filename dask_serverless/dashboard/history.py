"""Recorded runs and workflows as the dashboard reads them from a ``MetricsStore``."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from ..dag import DAG
from ..metrics.plans import PlanRecord, recorded_dag
from ..metrics.predictor import Predictor
from ..metrics.records import InvocationRecord, RunRecord, TaskRecord
from ..metrics.store import MetricsStore


@dataclass
class RunData:
    """Everything recorded about one run."""

    record: RunRecord
    invocations: list[InvocationRecord]
    tasks: list[TaskRecord]
    plan: PlanRecord | None
    logs: dict[int, list[list[Any]]] = field(default_factory=dict)

    @property
    def run_id(self) -> str:
        return self.record.run_id

    @property
    def t0(self) -> float:
        """Submit time: every chart's time axis starts here."""
        return self.record.submit_time

    @cached_property
    def task_by_id(self) -> dict[int, TaskRecord]:
        """Each task's first execution (a task-dup duplicate may have run it twice)."""
        out: dict[int, TaskRecord] = {}
        for t in sorted(self.tasks, key=lambda t: t.start):
            out.setdefault(t.task_id, t)
        return out

    @cached_property
    def dag(self) -> DAG | None:
        """The workflow's structure, or None when the run's records are incomplete."""
        if self.plan is None:
            return None
        try:
            return recorded_dag(self.tasks, self.plan)
        except ValueError:
            return None

    @cached_property
    def invocation_by_id(self) -> dict[str, InvocationRecord]:
        return {i.invocation_id: i for i in self.invocations}


def load_run(store: MetricsStore, run_id: str) -> RunData:
    """One run's records (``run_id`` may be a unique prefix; a KeyError names a bad one)."""
    run_id = store.resolve(run_id)
    record = store.run(run_id)
    if record is None:
        raise KeyError(f"run {run_id!r} has no run record (still running?)")
    return RunData(record, store.invocations(run_id), store.tasks(run_id), store.plan(run_id),
                   store.task_logs(run_id))


@dataclass
class WorkflowHistory:
    """Runs of one workflow (``signature``; None: of every workflow), oldest first."""

    signature: str | None
    runs: list[RunData]

    def predictor_before(self, index: int, history: int, *,
                         capacity: bool = True) -> Predictor:
        """What a planner could have learned before ``runs[index]``: the ``history``
        runs just before it (no samples: the predictor's defaults). ``capacity``: for
        the recorded capacity of that run's backend (times learned alone, contention
        left to the simulator); else times as they were recorded."""
        return _learn(self.runs[max(0, index - history):index], self.runs[index],
                      capacity)

    def predictor(self) -> Predictor:
        """What the next run of this workflow is planned with: all runs here, for the
        capacity of the newest one's backend."""
        return _learn(self.runs, self.runs[-1] if self.runs else None, True)


def _learn(runs: list[RunData], target: RunData | None, capacity: bool) -> Predictor:
    plan = target.plan if target is not None else None
    return Predictor.from_records([r.record for r in runs], [t for r in runs for t in r.tasks],
                                  [i for r in runs for i in r.invocations],
                                  dag=target.dag if target is not None else None,
                                  capacity=plan.capacity if plan and capacity else None)


def load_history(store: MetricsStore, signature: str | None, limit: int) -> WorkflowHistory:
    """The newest ``limit`` runs of a workflow (or of all), oldest first."""
    ids = store.run_ids(limit, signature)[::-1]
    records = {r.run_id: r for r in store.runs(ids)}
    runs = [RunData(records[i], store.invocations(i), store.tasks(i), store.plan(i))
            for i in ids if i in records]
    return WorkflowHistory(signature, runs)


@dataclass(frozen=True)
class Workflow:
    """A recorded workflow: its signature, a readable name and how often it ran."""

    signature: str
    name: str
    runs: int
    tasks: int
    last_submit: float

    @property
    def label(self) -> str:
        return f"{self.name} · {self.tasks} tasks · {self.runs} runs · {self.signature[:8]}"


def workflows(store: MetricsStore, limit: int = 1000) -> list[Workflow]:
    """Workflows among the newest ``limit`` runs, the most recently run first; each is
    named after its most frequent functions (from its newest run's task records)."""
    newest: dict[str, RunRecord] = {}
    counts: Counter[str] = Counter()
    for rec in store.runs(store.run_ids(limit)):
        counts[rec.signature] += 1
        newest.setdefault(rec.signature, rec)
    out = []
    for sig, rec in newest.items():
        functions = Counter(t.function for t in store.tasks(rec.run_id))
        name = ", ".join(f for f, _ in functions.most_common(3)) or "(no task records)"
        out.append(Workflow(sig, name, counts[sig], rec.tasks, rec.submit_time))
    return out
