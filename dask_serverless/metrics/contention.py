"""Undo CPU contention in recorded times, for a backend whose containers share cores.

On the local backend every busy container and every cold start competes for the same
cores, so a task's recorded ``exec_s`` and a cold start's ``startup_s`` grow with how
much else ran at the time. The simulator adds that contention back itself (see
``capacity``), so the predictor must learn the times each would take alone.

Per run, CPU demand over time is the sum of running tasks (each weighted by the part
of its time it wanted a core, see ``solo_times``) and cold starts (1 each: a spawn plus
imports computes). Over a span with mean demand ``D`` on ``cores`` cores, CPU work runs
``stretch = max(1, D / cores)`` times slower; the rest (sleeps, I/O) does not.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections import defaultdict
from collections.abc import Iterable

from .records import InvocationRecord, TaskRecord


class CpuDemand:
    """Piecewise-constant CPU demand from ``(begin, end, rate)`` spans; ``mean(a, b)``
    in O(log n)."""

    def __init__(self, spans: Iterable[tuple[float, float, float]]):
        events: list[tuple[float, float]] = []
        for begin, end, rate in spans:
            if end > begin and rate > 0:
                events += [(begin, rate), (end, -rate)]
        events.sort()
        self.times: list[float] = []
        self.rates: list[float] = []  # demand from times[i] to times[i + 1]
        self.area: list[float] = []  # integral of demand up to times[i]
        rate = area = 0.0
        for t, delta in events:
            if self.times and t == self.times[-1]:
                rate += delta
                self.rates[-1] = rate
                continue
            if self.times:
                area += self.rates[-1] * (t - self.times[-1])
            rate += delta
            self.times.append(t)
            self.rates.append(rate)
            self.area.append(area)

    def _integral(self, t: float) -> float:
        i = bisect_right(self.times, t) - 1
        if i < 0:
            return 0.0
        return self.area[i] + self.rates[i] * (t - self.times[i])

    def mean(self, begin: float, end: float) -> float:
        if end <= begin:
            return 0.0
        return (self._integral(end) - self._integral(begin)) / (end - begin)


def _exec_span(task: TaskRecord) -> tuple[float, float]:
    begin = task.start + task.download_s
    return begin, begin + task.exec_s


def _alone(task: TaskRecord, stretch: float) -> float:
    """The task's time alone: CPU time as measured plus what it did off-core."""
    if task.cpu_s < 0:  # not recorded: assume it computed all along
        return task.exec_s / stretch
    cpu = min(task.cpu_s, task.exec_s)
    return cpu + max(0.0, task.exec_s - cpu * stretch)


def solo_times(tasks: list[TaskRecord], invocations: list[InvocationRecord],
               cores: float, rounds: int = 3) -> tuple[list[float], list[float]]:
    """Per task its ``exec_s`` alone, per invocation its ``startup_s`` alone (cold
    starts only; warm starts as recorded), in the order given.

    A task wants a core for the part of its time it was not off-core, which depends on
    the stretch it met, and CPU time cannot tell waiting for a core from sleeping. Start
    from the most crowded reading (every task wanted a core all along) and refine
    ``rounds`` times: tasks that computed little drop out, the rest stay crowded."""
    stretches = [math.inf] * len(tasks)
    cold = [i for i in invocations if i.cold]
    demand: dict[str, CpuDemand] = {}
    for _ in range(rounds):
        spans: dict[str, list[tuple[float, float, float]]] = defaultdict(list)
        for t, s in zip(tasks, stretches, strict=True):
            wanting = t.exec_s if t.cpu_s < 0 or s == math.inf else min(t.exec_s, t.cpu_s * s)
            rate = wanting / t.exec_s if t.exec_s > 0 else 0.0
            spans[t.run_id].append((*_exec_span(t), rate))
        for i in cold:
            spans[i.run_id].append((i.invoke_time, i.start_time, 1.0))
        demand = {run: CpuDemand(x) for run, x in spans.items()}
        stretches = [_stretch(demand, t.run_id, *_exec_span(t), cores) for t in tasks]
    exec_alone = [_alone(t, s) for t, s in zip(tasks, stretches, strict=True)]
    starts_alone = [i.startup_s / _stretch(demand, i.run_id, i.invoke_time, i.start_time,
                                           cores) if i.cold else i.startup_s
                    for i in invocations]
    return exec_alone, starts_alone


def _stretch(demand: dict[str, CpuDemand], run: str, begin: float, end: float,
             cores: float) -> float:
    d = demand.get(run)
    return max(1.0, d.mean(begin, end) / cores) if d is not None else 1.0
