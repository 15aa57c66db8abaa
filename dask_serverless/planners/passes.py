"""Optimisation passes that compose with any planner: each returns a plan with more
``Optimizations`` when the simulator predicts it is better for the objective, else the
plan it was given (``plan.options["passes"]`` records what each pass did).

- ``pre-warm``: warm-ups timed so that invocations predicted to start cold start warm;
- ``task-dup``: a producer that finds its fan-in waiting on a cheap input whose own
  inputs already exist runs that input itself;
- ``delayed-io``: a producer with a large output holds it for its fan-in's other inputs;
- ``pre-load``: the first producer of a fan-in holds and downloads the other inputs as
  they are published, so the fan-in starts as soon as the last one lands;
- ``stream``: outputs predicted larger than ``serverless.stream-chunk-bytes`` that an
  entry task reads are announced before they are uploaded, and written in chunks that
  the consumers read while the upload goes on.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

from .. import config
from ..dag import DAG
from ..plan import Plan, Warmup
from ..protocol.constants import HOLD_POLL_S
from ..simulator import SimResult, Simulator
from .objective import Objective

logger = logging.getLogger(__name__)

Pass = Callable[[DAG, Plan, Simulator, Objective], Plan]


def _with(plan: Plan, **changes: Any) -> Plan:
    opt = dataclasses.replace(plan.optimizations, **changes)
    return dataclasses.replace(plan, options=dict(plan.options), optimizations=opt)


def _keep_better(name: str, plan: Plan, base: SimResult, candidate: Plan | None,
                 sim: Simulator, objective: Objective) -> tuple[Plan, SimResult]:
    """The candidate if the objective prefers it, else ``plan``; with its simulated run
    (planners that simulate the pass's plan anyway take it from here)."""
    if candidate is None:
        plan.options.setdefault("passes", {})[name] = "nothing to do"
        return plan, base
    result = sim.run(candidate)
    if objective.better(result, base):
        candidate.options.setdefault("passes", {})[name] = (
            f"predicted makespan {base.makespan:.3f}s -> {result.makespan:.3f}s, "
            f"cost {base.cost:.3g} -> {result.cost:.3g} USD")
        return candidate, result
    plan.options.setdefault("passes", {})[name] = "no predicted gain"
    return plan, base


def _fanins(dag: DAG, plan: Plan) -> list[int]:
    from ..layout import build_layout

    layout = build_layout(dag, plan)
    return [t.id for t in dag.tasks if layout.is_entry[t.id] and len(t.deps) > 1]


def prewarm(dag: DAG, plan: Plan, sim: Simulator, objective: Objective) -> Plan:
    """Warm up, just in time, one container for each invocation predicted to be cold."""
    base = sim.run(plan)
    warmups: dict[tuple[float, int], int] = {}
    for rec in base.invocations:
        if not rec.cold:
            continue
        config = plan.workers[rec.worker_id].config
        cold = sim.est.invocation_time(config, "cold")
        at = rec.invoke_time - cold * 1.25 - 0.02
        if at >= 0:
            key = (round(at, 3), rec.memory_mb)
            warmups[key] = warmups.get(key, 0) + 1
    if not warmups:
        return _keep_better("pre-warm", plan, base, None, sim, objective)[0]
    listed = [Warmup(at, mb, n) for (at, mb), n in sorted(warmups.items())]
    candidate = _with(plan, prewarm=list(plan.optimizations.prewarm) + listed)
    return _keep_better("pre-warm", plan, base, candidate, sim, objective)[0]


def task_dup(dag: DAG, plan: Plan, sim: Simulator, objective: Objective) -> Plan:
    """Duplicate a fan-in's last input when running it is cheaper than waiting for it."""
    base = sim.run(plan)
    est, end = sim.est, base.task_end
    delayed = plan.optimizations.delay
    dup = dict(plan.optimizations.duplicate)
    rtt = est.upload(0)
    for e in _fanins(dag, plan):
        deps = sorted(dag.tasks[e].deps, key=end.__getitem__)
        last, second = deps[-1], end[deps[-2]]
        if last in delayed or e in dup:
            continue
        inputs = dag.tasks[last].deps
        if any(end[d] > second for d in inputs):
            continue
        config = plan.config_of(deps[-2])
        price = (est.exec_time(last, config) + est.download(est.in_bytes[last])
                 + est.upload(est.out_bytes[last]) + 2 * rtt)
        if price < end[last] - second:
            dup[e] = (last,)
    candidate = _with(plan, duplicate=dup) if len(dup) > len(plan.optimizations.duplicate) \
        else None
    return _keep_better("task-dup", plan, base, candidate, sim, objective)[0]


def _holds(dag: DAG, plan: Plan, sim: Simulator, objective: Objective, name: str,
           preload: bool) -> tuple[Plan, SimResult]:
    base = sim.run(plan)
    est, end = sim.est, base.task_end
    out = est.out_bytes
    delay = dict(plan.optimizations.delay)
    duplicated = {b for ups in plan.optimizations.duplicate.values() for b in ups}
    for e in _fanins(dag, plan):
        spec = plan.worker_of(e)
        deps = dag.tasks[e].deps
        able = [a for a in deps if a not in duplicated and (
            plan.assignment[a] == spec.id or (spec.floating and plan.config_of(a) == spec.config))]
        if not able:
            continue
        if preload:
            a = min(able, key=end.__getitem__)
        else:
            a = max(able, key=out.__getitem__)
            if out[a] <= sum(out[d] for d in deps if d != a):
                continue
        gap = max(end[d] for d in deps if d != a) - end[a]
        if gap <= 0:
            continue
        delay[a] = max(delay.get(a, 0.0), gap * 1.5 + 4 * HOLD_POLL_S)
    if delay == plan.optimizations.delay and (not preload or plan.optimizations.preload):
        return _keep_better(name, plan, base, None, sim, objective)
    candidate = _with(plan, delay=delay, preload=plan.optimizations.preload or preload)
    return _keep_better(name, plan, base, candidate, sim, objective)


def delayed_io(dag: DAG, plan: Plan, sim: Simulator, objective: Objective) -> Plan:
    """WUKONG's delayed I/O: hold a large output for the fan-in's other inputs."""
    return simulated_delayed_io(dag, plan, sim, objective)[0]


def simulated_delayed_io(dag: DAG, plan: Plan, sim: Simulator,
                         objective: Objective) -> tuple[Plan, SimResult]:
    """``delayed_io`` and the simulated run of the plan it returns."""
    return _holds(dag, plan, sim, objective, "delayed-io", preload=False)


def preload(dag: DAG, plan: Plan, sim: Simulator, objective: Objective) -> Plan:
    """The earliest producer of a fan-in holds and downloads inputs as they land."""
    return _holds(dag, plan, sim, objective, "pre-load", preload=True)[0]


def stream(dag: DAG, plan: Plan, sim: Simulator, objective: Objective) -> Plan:
    """Stream large outputs that entry tasks read: consumers start while they upload."""
    from ..layout import build_layout

    base = sim.run(plan)
    chunk = config.get("stream-chunk-bytes")
    layout = build_layout(dag, plan)
    out = sim.est.out_bytes
    streamed = {t: chunk for t in range(len(dag)) if layout.entry_dependents[t] and out[t] > chunk}
    streamed = {**streamed, **plan.optimizations.stream}
    candidate = _with(plan, stream=streamed) if streamed != plan.optimizations.stream else None
    return _keep_better("stream", plan, base, candidate, sim, objective)[0]


PASSES: dict[str, Pass] = {"pre-warm": prewarm, "task-dup": task_dup,
                           "delayed-io": delayed_io, "pre-load": preload, "stream": stream}
_LAST = {"stream": 1, "pre-warm": 2}  # streaming reads the placement, pre-warm the timeline


def apply_passes(dag: DAG, plan: Plan, names: list[str], sim: Simulator,
                 objective: Objective) -> Plan:
    """Apply the named passes in order (then stream, and pre-warm last: it depends on the
    timeline)."""
    unknown = [n for n in names if n not in PASSES]
    if unknown:
        raise ValueError(f"serverless.optimizations: {unknown} are not passes; choose from "
                         f"{sorted(PASSES)}")
    ordered = sorted(dict.fromkeys(names), key=lambda n: _LAST.get(n, 0))
    for name in ordered:
        plan = PASSES[name](dag, plan, sim, objective)
    plan.options["optimizations"] = ordered
    return plan
