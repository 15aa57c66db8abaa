"""The run record: what the client knows about a run plus totals over the invocation
records its workers wrote.

The client sees the outputs before the last workers have written their records (they
write right after storing outputs), so ``record_run`` reads the run's invocation records
until they are *closed*: every invocation the client or a recorded invocation started
has reported. That is exact without counting anything on the hot path, because each
record lists the ids of the invocations it started.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterable

from ..dag import DAG
from .cost import Prices, invocations_cost
from .records import InvocationRecord, RunRecord
from .store import MetricsStore

logger = logging.getLogger(__name__)


def collect_invocations(store: MetricsStore, run_id: str, roots: Iterable[str],
                        timeout: float) -> tuple[list[InvocationRecord], bool]:
    """Invocation records of a run, waiting up to ``timeout`` s for stragglers; the flag
    says whether every started invocation reported."""
    records: list[InvocationRecord] = []
    seen: set[str] = set()
    expected = set(roots)
    deadline = time.monotonic() + timeout
    delay = 0.001
    while True:
        for rec in store.invocations(run_id, len(records)):
            records.append(rec)
            seen.add(rec.invocation_id)
            expected.update(rec.invoked)
        if expected <= seen:
            return records, True
        if time.monotonic() >= deadline:
            return records, False
        time.sleep(delay)
        delay = min(2 * delay, 0.02)


def add_totals(run: RunRecord, invocations: list[InvocationRecord], prices: Prices) -> None:
    """Fill the run's invocation totals, bytes and cost from its invocation records."""
    run.invocations = len(invocations)
    run.workers = len({i.worker_id for i in invocations})
    run.cold_starts = sum(i.cold for i in invocations)
    run.warm_starts = run.invocations - run.cold_starts
    run.upload_bytes = sum(i.upload_bytes for i in invocations)
    run.download_bytes = sum(i.download_bytes for i in invocations)
    run.inline_bytes = sum(i.inline_bytes for i in invocations)
    run.spec_bytes = sum(i.spec_bytes for i in invocations)
    run.gb_seconds, run.cost_usd = invocations_cost(invocations, prices)


def workflow_functions(dag: DAG, most_used: int = 3) -> str:
    """What a workflow runs, for people: its outputs' functions, then its most used others
    (``"sum <- matmul, random_sample"``)."""
    outs = list(dict.fromkeys(dag.tasks[t].func_name for t in dag.outputs))
    counts = Counter(t.func_name for t in dag.tasks if t.func_name not in outs)
    others = [name for name, _ in counts.most_common(most_used)]
    text = ", ".join(outs[:most_used]) + (", ..." if len(outs) > most_used else "")
    return f"{text} <- {', '.join(others)}" if others else text


def record_run(store: MetricsStore, run: RunRecord, roots: Iterable[str], wait: float,
               prices: Prices, plan: str | None = None) -> RunRecord:
    """Complete ``run`` with its workers' totals (waiting up to ``wait`` s) and store it
    with its ``plan`` record (``plans.plan_record``)."""
    invocations, run.complete = collect_invocations(store, run.run_id, roots, wait)
    if not run.complete:
        logger.info("run %s: recorded before all its invocations reported (%d so far)",
                    run.run_id, len(invocations))
    add_totals(run, invocations, prices)
    store.write_run(run, plan)
    return run
