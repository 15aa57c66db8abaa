"""Run workloads under every chosen scheduler, several times each, and collect samples.

Per workload: one timed reference run with the sync scheduler (per-task times -> bounds,
and the result every other scheduler must reproduce), then ``warmup`` untimed runs per
scheduler (containers, pools and caches warm; results checked), then ``repeat`` rounds
in which every scheduler runs once, interleaved so that load from other processes on the
machine spreads over all schedulers alike.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from ..dag import DAG
from .compare import same_result
from .probes import ServerlessProbe
from .schedulers import Scheduler, open_schedulers, serverless_variants
from .timing import Bounds, reference_run
from .workloads import Workload, build

logger = logging.getLogger(__name__)


@dataclass
class BenchOptions:
    """What to run; ``None`` planners/passes mean every registered one."""

    workloads: list[str]
    quick: bool = False
    repeat: int = 3
    warmup: int = 1
    dask_schedulers: list[str] = field(
        default_factory=lambda: ["sync", "threads", "processes", "localcluster"])
    planners: list[str] | None = None
    passes: list[str] | None = None
    params: dict[str, dict[str, str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.repeat < 1:
            raise ValueError(f"repeat = {self.repeat}: need at least one timed run")
        if self.warmup < 0:
            raise ValueError(f"warmup = {self.warmup} must be >= 0")


@dataclass
class Sample:
    """One timed run of one workload under one scheduler."""

    workload: str
    tasks: int
    scheduler: str
    rep: int
    makespan_s: float | None
    overhead_ms_per_task: float | None
    critical_path_s: float
    work_s: float
    workers: int | None
    error: str | None = None
    lower_bound_s: float | None = None  # max(critical path, work / this machine's cores)
    run_makespan_s: float | None = None
    plan_workers: int | None = None
    invocations: int | None = None
    cold_starts: int | None = None
    redis_net_bytes: int | None = None
    bytes_moved: int | None = None
    gb_seconds: float | None = None
    cost_usd: float | None = None
    predicted_s: float | None = None
    prediction_model: str | None = None  # "history" (a Predictor) or "default"

    def as_row(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class BenchResult:
    samples: list[Sample]
    workloads: dict[str, Workload]
    bounds: dict[str, Bounds]
    options: BenchOptions
    machine: dict[str, Any]


def run_bench(options: BenchOptions, progress: Any = None) -> BenchResult:
    """Run the benchmark; ``progress`` (a tqdm-like bar or None) advances per run."""
    workloads = {name: build(name, options.quick, **options.params.get(name, {}))
                 for name in options.workloads}
    unknown = sorted(set(options.params) - set(workloads))
    if unknown:
        raise ValueError(f"--param given for workload(s) {unknown} that are not being run")
    variants = serverless_variants(options.planners, options.passes)
    machine = machine_info()
    samples: list[Sample] = []
    bounds: dict[str, Bounds] = {}
    with open_schedulers(options.dask_schedulers, variants) as schedulers:
        if progress is not None:
            warm = len({s.warm_group for s in schedulers if s.warm_group})
            progress.reset(total=len(workloads) * (
                1 + warm * options.warmup + len(schedulers) * options.repeat))
        for name, workload in workloads.items():
            _step(progress, f"{name}: reference")
            expected, bounds[name], dag = reference_run(workload)
            failed: dict[str, str] = {}
            _warm_up(schedulers, workload, expected, options.warmup, failed, progress)
            for rep in range(options.repeat):
                for sched in schedulers:
                    _step(progress, f"{name}: {sched.name} #{rep + 1}")
                    samples.append(_timed(sched, workload, expected, bounds[name], rep,
                                          failed, dag))
    machine["loadavg_end"] = _loadavg()
    return BenchResult(samples, workloads, bounds, options, machine)


def _warm_up(schedulers: list[Scheduler], workload: Workload, expected: Any, runs: int,
             failed: dict[str, str], progress: Any) -> None:
    """``runs`` untimed runs of the first scheduler of each warm group; one that fails
    is marked failed (its timed runs are skipped)."""
    first: dict[str, Scheduler] = {}
    for sched in schedulers:
        if sched.warm_group:
            first.setdefault(sched.warm_group, sched)
    for sched in first.values():
        for _ in range(runs):
            _step(progress, f"{workload.name}: warm-up {sched.name}")
            if sched.name not in failed:
                error = _run_checked(sched, workload, expected)[1]
                if error:
                    failed[sched.name] = error


def _step(progress: Any, label: str) -> None:
    if progress is not None:
        progress.set_postfix_str(label, refresh=False)
        progress.update(1)


def _run_checked(sched: Scheduler, workload: Workload,
                 expected: Any) -> tuple[float | None, str | None]:
    """Run once: (wall seconds, None) or (None, error text)."""
    t0 = time.perf_counter()
    try:
        result = sched(workload.graph, workload.keys, workload.source)
    except Exception as exc:
        logger.error("%s failed on workload %s: %s: %s", sched.name, workload.name,
                     type(exc).__name__, exc)
        return None, f"{type(exc).__name__}: {exc}"
    seconds = time.perf_counter() - t0
    if not same_result(result, expected):
        logger.error("%s gave a result different from the sync scheduler's on workload %s",
                     sched.name, workload.name)
        return None, "wrong result"
    return seconds, None


def _timed(sched: Scheduler, workload: Workload, expected: Any, bounds: Bounds, rep: int,
           failed: dict[str, str], dag: DAG | None = None) -> Sample:
    cpus = os.cpu_count() or 1
    sample = Sample(workload.name, workload.n_tasks, sched.name, rep, None, None,
                    bounds.critical_path_s, bounds.work_s, sched.workers,
                    failed.get(sched.name), bounds.lower_bound(cpus))
    if sample.error:
        return sample
    probe = None
    if sched.serverless and sched.planner is not None and dag is not None:
        probe = ServerlessProbe(dag, sched.planner, sched.passes)
    if probe is not None:
        probe.start()
    seconds, sample.error = _run_checked(sched, workload, expected)
    if seconds is None:
        failed[sched.name] = sample.error or "failed"
        return sample
    sample.makespan_s = seconds
    parallelism = min(sched.workers or cpus, cpus)
    spare = max(0.0, seconds - bounds.lower_bound(parallelism))
    sample.overhead_ms_per_task = 1000 * spare / workload.n_tasks
    if probe is not None:
        for key, value in probe.finish().items():
            setattr(sample, key, value)
        sample.workers = sample.plan_workers
    return sample


def machine_info() -> dict[str, Any]:
    """Where the numbers come from: CPU, cores, versions, load when the run began."""
    import platform

    import dask

    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        import distributed

        dist_version = distributed.__version__
    except ImportError:
        dist_version = "not installed"
    return {"cpu": cpu, "cores": os.cpu_count(), "system": f"{platform.system()} "
            f"{platform.release()}", "python": platform.python_version(),
            "dask": dask.__version__, "distributed": dist_version,
            "date": time.strftime("%Y-%m-%d %H:%M %Z"), "loadavg_start": _loadavg()}


def _loadavg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"
