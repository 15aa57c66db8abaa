"""Predictions learned from recorded history: task execution time and output size, Redis
transfer time and worker start time.

Every method returns a ``Prediction``: a float that also says how many samples it used,
its spread (in the prediction's unit: the value times ``exp(scaled MAD of the log
residuals) - 1``) and where it came from (``source``: ``"fit"``, ``"fit+hint"``,
``"fit+default"`` when the input-size exponent came from a hint or the default,
``"observed"`` at an input size seen often enough, ``"hint"`` / ``"default"`` with no
samples at all).

A task without inputs (a root) has 0 input bytes; when it has a size (``TaskNode.size``:
the bytes of data it makes, from a hint or the array chunks, see ``sizes``), the size is
the fit's x instead. Such samples are fitted apart from the function's other samples
(x = input bytes), and a prediction for a root with a size uses them; without any, it
falls back to the other samples (a constant at 0 input bytes, as before sizes existed).

Samples weigh ``0.5 ** (age / half_life)``, ``age`` counting runs back from the newest,
so after a change the new regime wins within about ``half_life`` runs. For a backend
whose containers share cores (``capacity``), recorded task and cold-start times are first
brought back to what each would take alone (``contention``): the simulator adds the
contention of the plan it replays. Task times scale with memory by Lambda's rule
(``lambda_scaling``) until samples at two configs teach the exponent, except on a backend
where memory buys no CPU (``Capacity.cpu_follows_memory``): there samples of every config
pool into one memory-free fit. Outliers are
dropped by robust z-score (median / MAD) and predictions are a configurable percentile
(the median by default), never a plain mean.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from .. import config
from ..capacity import UNLIMITED, Capacity
from ..hints import exponent
from ..plan import LAMBDA_MB_PER_VCPU, ResourceConfig
from .contention import solo_times
from .cost import Prices
from .fitting import Point, PowerFit, fit_latency_bandwidth, fit_power, robust_center
from .records import InvocationRecord, RunRecord, TaskRecord
from .store import MetricsStore


class Prediction(float):
    """A predicted value (use it as a float) with ``samples``, ``spread`` and ``source``."""

    samples: int
    spread: float
    source: str

    def __new__(cls, value: float, samples: int = 0, spread: float = 0.0,
                source: str = "default") -> Prediction:
        self = super().__new__(cls, value)
        self.samples, self.spread, self.source = samples, spread, source
        return self

    def __reduce__(self):
        return Prediction, (float(self), self.samples, self.spread, self.source)

    def __repr__(self) -> str:
        return (f"Prediction({float(self):.6g}, samples={self.samples}, "
                f"spread={self.spread:.3g}, source={self.source!r})")


@dataclass(frozen=True, slots=True)
class TaskSample:
    function: str
    input_bytes: int
    output_bytes: int
    exec_s: float
    memory_mb: int
    age: float = 0.0  # runs back from the newest
    cpu_s: float = -1.0  # CPU time within exec_s (-1: not recorded)
    size: int = 0  # a root's size feature (0: has inputs, or no size known)


@dataclass(frozen=True, slots=True)
class TransferSample:
    direction: str  # "upload" | "download"
    nbytes: int
    seconds: float
    age: float = 0.0


@dataclass(frozen=True, slots=True)
class StartSample:
    memory_mb: int
    cold: bool
    seconds: float  # invoke to start
    age: float = 0.0


@dataclass(frozen=True, slots=True)
class Settings:
    """Knobs of the predictor; ``from_config`` reads ``serverless.metrics.*``."""

    half_life: float = 3.0
    percentile: float = 50.0
    mad_threshold: float = 3.5
    min_samples: int = 3
    defaults: dict[str, float] = field(default_factory=dict)  # overrides of _DEFAULTS

    @classmethod
    def from_config(cls, **overrides: Any) -> Settings:
        values = {name: config.get(f"metrics.{name.replace('_', '-')}")
                  for name in ("half_life", "percentile", "mad_threshold", "min_samples")}
        values["defaults"] = {k: config.get(f"metrics.defaults.{k}") for k in _DEFAULTS}
        values.update(overrides)
        return cls(**values)

    def default(self, name: str) -> float:
        """``serverless.metrics.defaults.<name>``: used before anything was measured."""
        return float(self.defaults.get(name, _DEFAULTS[name]))


_RUN_CACHE: OrderedDict[tuple, tuple] = OrderedDict()  # (store, run, cores) -> records
_RUN_CACHE_RUNS = 64


def _run_alone(store: MetricsStore, run: RunRecord, cores: float) -> tuple:
    """One run's (tasks, their times alone, invocations but warm-ups, their starts
    alone) on ``cores`` shared cores (``inf``: as recorded). A complete run's records do
    not change once its run record is written, so those are kept for the next plan."""
    pool = getattr(getattr(store.r, "connection_pool", None), "connection_kwargs", None)
    where = (pool.get("host"), pool.get("port"), pool.get("path"), pool.get("db")) \
        if pool else id(store.r)  # e.g. a cluster client: cached for this client only
    key = (where, run.run_id, cores)
    hit = _RUN_CACHE.get(key)
    if hit is None:
        tasks = store.tasks(run.run_id)
        invocations = [i for i in store.invocations(run.run_id) if not i.warmup]
        if math.isfinite(cores):
            exec_s, startup_s = solo_times(tasks, invocations, cores)
        else:
            exec_s, startup_s = [t.exec_s for t in tasks], [i.startup_s for i in invocations]
        hit = (tasks, exec_s, invocations, startup_s)
        if run.complete:
            _RUN_CACHE[key] = hit
            while len(_RUN_CACHE) > _RUN_CACHE_RUNS:
                _RUN_CACHE.popitem(last=False)
    return hit


_DEFAULTS: dict[str, float] = config.DEFAULTS["serverless"]["metrics"]["defaults"]


def _task_overhead(tasks: Sequence[TaskRecord]) -> float:
    """Median of each task's time on its worker beyond its execution and transfers, over
    invocations that ran one task at a time (with threads, time in the queue would count)."""
    by_invocation: dict[str, list[TaskRecord]] = {}
    for t in tasks:
        by_invocation.setdefault(t.invocation_id, []).append(t)
    gaps = []
    for group in by_invocation.values():
        group.sort(key=lambda t: t.start)
        if any(b.start < a.end for a, b in itertools.pairwise(group)):
            continue
        gaps += [max(0.0, t.end - t.start - t.exec_s - t.download_s - t.upload_s - t.fanin_s)
                 for t in group]
    return statistics.median(gaps) if gaps else 0.0


def lambda_scaling(memory_mb: float) -> float:
    """Lambda's rule: CPU share grows with memory up to one vCPU (1769 MB); a task's time
    scales with 1 / share, relative to one full vCPU."""
    return max(1.0, LAMBDA_MB_PER_VCPU / memory_mb)


MAX_SAMPLES = 2000  # per function (and for transfers): fits stay fast on big histories


def _thin(samples: list) -> list:
    """At most ``MAX_SAMPLES``, taken evenly across ages so every run keeps its share."""
    if len(samples) <= MAX_SAMPLES:
        return samples
    samples = sorted(samples, key=lambda s: s.age)
    step = len(samples) / MAX_SAMPLES
    return [samples[int(i * step)] for i in range(MAX_SAMPLES)]


class Predictor:
    """Predictions from samples (see module docstring). Build with ``from_store`` (the
    recorded history), ``from_records`` or directly from samples. Implements the
    planners' and simulator's ``costmodel.CostModel``."""

    def __init__(self, tasks: Iterable[TaskSample] = (),
                 transfers: Iterable[TransferSample] = (),
                 starts: Iterable[StartSample] = (), *, settings: Settings | None = None,
                 hints: dict[str, dict[str, Any]] | None = None,
                 prices: Prices | None = None, capacity: Capacity | None = None,
                 task_overhead: float = 0.0,
                 spec_loads: Iterable[tuple[int, float]] = ()):
        self.settings = settings or Settings.from_config()
        self._overhead = task_overhead
        self._spec_loads = list(spec_loads)  # (bytes, seconds) of run spec slices loaded
        self.capacity = capacity or UNLIMITED
        prices = prices or Prices.from_config()
        self.price_gb_s, self.price_request = prices.gb_second, prices.request
        self._tasks: dict[str, list[TaskSample]] = {}
        for t in tasks:
            self._tasks.setdefault(t.function, []).append(t)
        for function, samples in self._tasks.items():
            self._tasks[function] = _thin(samples)
        self._sized = {f for f, samples in self._tasks.items() if any(t.size > 0 for t in samples)}
        self._transfers = _thin(list(transfers))
        self._starts = list(starts)
        self._hints: dict[str, dict[str, float]] = {}
        self._exec_fit = cache(self._fit_exec)
        self._output_fit = cache(self._fit_output)
        self._transfer_fit = cache(self._fit_transfer)
        self._cpu_share = cache(self._fit_cpu_share)
        self._spec_fit = cache(self._fit_spec_load)
        for function, h in (hints or {}).items():
            self.hint(function, **h)

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def from_store(cls, store: MetricsStore | None = None, *, signature: str | None = None,
                   limit: int | None = None, dag: Any = None,
                   settings: Settings | None = None,
                   run_ids: Sequence[str] | None = None,
                   capacity: Capacity | None = None) -> Predictor:
        """Learn from the newest ``limit`` (default ``serverless.metrics.history``) runs,
        of one workflow ``signature`` or of all (or from exactly ``run_ids``); ``dag``:
        take hints from its tasks; ``capacity``: of the backend to predict for."""
        if store is None:
            from .. import session

            url = session.metrics_url()
            if url is None:
                raise RuntimeError("serverless.metrics.enabled is off: no history to learn")
            store = MetricsStore.from_url(url)
        ids = list(run_ids) if run_ids is not None else store.run_ids(
            limit or config.get("metrics.history"), signature)
        runs = store.runs(ids)
        cores = capacity.cores if capacity is not None else math.inf
        per_run = [_run_alone(store, r, cores) for r in runs]
        return cls.from_records(runs, [t for x in per_run for t in x[0]],
                                [i for x in per_run for i in x[2]], dag=dag,
                                settings=settings, capacity=capacity,
                                alone=([e for x in per_run for e in x[1]],
                                       [s for x in per_run for s in x[3]]))

    @classmethod
    def from_records(cls, runs: Sequence[RunRecord], tasks: Iterable[TaskRecord],
                     invocations: Iterable[InvocationRecord], *, dag: Any = None,
                     settings: Settings | None = None,
                     capacity: Capacity | None = None,
                     alone: tuple[list[float], list[float]] | None = None) -> Predictor:
        """``alone``: the tasks' and invocations' times alone, when already worked out
        (``solo_times`` of these same records)."""
        newest_first = sorted(runs, key=lambda r: r.submit_time, reverse=True)
        age = {r.run_id: float(i) for i, r in enumerate(newest_first)}
        tasks, invocations = list(tasks), [i for i in invocations if not i.warmup]
        if alone is not None:
            exec_s, startup_s = alone
        elif capacity is not None and capacity.shared:
            exec_s, startup_s = solo_times(tasks, invocations, capacity.cores)
        else:
            exec_s, startup_s = [t.exec_s for t in tasks], [i.startup_s for i in invocations]
        task_samples, transfers = [], []
        for t, alone in zip(tasks, exec_s, strict=True):
            a = age.get(t.run_id, float(len(age)))
            task_samples.append(TaskSample(t.function, t.input_bytes, t.output_bytes,
                                           alone, t.memory_mb, a,
                                           min(t.cpu_s, alone) if t.cpu_s >= 0 else -1.0,
                                           0 if t.inputs else t.size))
            if t.download_bytes:
                transfers.append(TransferSample("download", t.download_bytes, t.download_s, a))
            if t.upload_bytes:
                transfers.append(TransferSample("upload", t.upload_bytes, t.upload_s, a))
        starts = [StartSample(i.memory_mb, i.cold, s, age.get(i.run_id, float(len(age))))
                  for i, s in zip(invocations, startup_s, strict=True)]
        hints: dict[str, dict[str, Any]] = {}
        for task in getattr(dag, "tasks", ()):
            h = {k: task.annotations[k] for k in ("io", "time") if k in task.annotations}
            if h:
                hints.setdefault(task.func_name, h)
        return cls(task_samples, transfers, starts, settings=settings, hints=hints,
                   capacity=capacity, task_overhead=_task_overhead(tasks),
                   spec_loads=[(i.spec_bytes, i.spec_fetch_s) for i in invocations
                               if i.spec_bytes > 0])

    def task_overhead(self) -> float:
        """Seconds a worker spends per task besides running it and moving its data
        (bookkeeping, dispatching, recording): the median recorded residual."""
        return self._overhead

    def spec_load_time(self, nbytes: int) -> float:
        """Seconds an invocation spends fetching and decoding ``nbytes`` of run spec
        slices: latency and rate fitted to the recorded loads (the download latency and
        the default rate before enough were recorded)."""
        if not nbytes:
            return 0.0
        fit = self._spec_fit()
        if fit is None:
            return self.transfer_model("download")[0] + nbytes / self.settings.default(
                "spec-load")
        return fit[0] + nbytes / fit[1]

    def hint(self, function: str, io: Any = None, time: Any = None) -> None:
        """Shapes to assume for ``function`` while its own samples are too few."""
        h = self._hints.setdefault(function, {})
        if io is not None:
            h["io"] = exponent(io, "io")
        if time is not None:
            h["time"] = exponent(time, "time")
        self._exec_fit.cache_clear()
        self._output_fit.cache_clear()

    # -- predictions ---------------------------------------------------------------------------
    def exec_time(self, function: str, input_bytes: float,
                  resource_config: ResourceConfig, size: float = 0) -> Prediction:
        """Seconds ``function`` computes on ``input_bytes`` with ``resource_config``;
        ``size``: a task without inputs, the bytes of data it makes (module docstring)."""
        sized = self._sized_query(function, input_bytes, size)
        fit = self._exec_fit(function, sized)
        if fit is None:
            return Prediction(self.settings.default("exec-time"), 0, 0.0, "default")
        return self._from_fit(fit, size if sized else input_bytes,
                              self._memory_point(resource_config.memory_mb), function, "time")

    def output_bytes(self, function: str, input_bytes: float, size: float = 0) -> Prediction:
        """Bytes ``function`` outputs for ``input_bytes`` of input (``size``: as in
        ``exec_time``; with no samples at all, a root's output grows with it)."""
        sized = self._sized_query(function, input_bytes, size)
        fit = self._output_fit(function, sized)
        if fit is None:
            source = "hint" if "io" in self._hints.get(function, {}) else "default"
            x = input_bytes if input_bytes > 0 else size
            if x <= 0:
                return Prediction(self.settings.default("output-bytes"), 0, 0.0, "default")
            return Prediction(x ** self._fallback_b(function, "io"), 0, 0.0, source)
        return self._from_fit(fit, size if sized else input_bytes, 1.0, function, "io")

    def cpu_share(self, function: str) -> float:
        """Part of ``function``'s time spent computing (median over samples that
        recorded CPU time; 1.0 without any)."""
        return self._cpu_share(function)

    def transfer_time(self, nbytes: float, direction: str) -> Prediction:
        """Seconds to move ``nbytes`` to (``"upload"``) or from (``"download"``) Redis
        (learned from both directions while one has too few samples)."""
        if direction not in ("upload", "download"):
            raise ValueError(f"transfer direction {direction!r}: use 'upload' or 'download'")
        fit = self._transfer_fit(direction)
        if fit is None:
            s = self.settings
            return Prediction(s.default("latency") + nbytes / s.default("bandwidth"), 0, 0.0,
                              "default")
        latency, bandwidth, samples, spread = fit
        value = latency + nbytes / bandwidth
        return Prediction(value, samples, value * math.expm1(spread), "fit")

    def transfer_model(self, direction: str) -> tuple[float, float]:
        """(latency seconds, bandwidth bytes/s) behind ``transfer_time``."""
        fit = self._transfer_fit(direction)
        if fit is None:
            return self.settings.default("latency"), self.settings.default("bandwidth")
        return fit[0], fit[1]

    def predict_worker_invocation_time(self, resource_config: ResourceConfig,
                                       state: str) -> Prediction:
        """Seconds from invoking a worker to its start, ``"cold"`` or ``"warm"``. Uses the
        samples of this config when there are enough, else those of every config."""
        if state not in ("cold", "warm"):
            raise ValueError(f"worker start state {state!r}: use 'cold' or 'warm'")
        s = self.settings
        cold = state == "cold"
        same = [x for x in self._starts
                if x.cold == cold and x.memory_mb == resource_config.memory_mb]
        chosen = same if len(same) >= s.min_samples else [x for x in self._starts
                                                         if x.cold == cold]
        if not chosen:
            return Prediction(s.default(f"{state}-start"), 0, 0.0, "default")
        logs = [math.log(max(x.seconds, 1e-9)) for x in chosen]
        center, spread, kept = robust_center(logs, [self._weight(x.age) for x in chosen],
                                             s.percentile / 100, s.mad_threshold)
        value = math.exp(center)
        return Prediction(value, kept, value * math.expm1(spread), "fit")

    # -- fits (cached per function / direction) -----------------------------------------------
    def exec_fit(self, function: str, sized: bool = False) -> PowerFit | None:
        """The learned ``exec_s = a * input_bytes^b * scale(memory)`` (None: no samples);
        ``sized``: the fit of roots with a size, over their size."""
        return self._exec_fit(function, sized)

    def output_fit(self, function: str, sized: bool = False) -> PowerFit | None:
        """The learned ``output_bytes = a * input_bytes^b`` (None: no samples)."""
        return self._output_fit(function, sized)

    def functions(self) -> list[str]:
        return sorted(self._tasks)

    def _sized_query(self, function: str, input_bytes: float, size: float) -> bool:
        """Whether a prediction uses the function's sized samples (module docstring)."""
        return size > 0 and input_bytes <= 0 and function in self._sized

    def _samples(self, function: str, sized: bool) -> list[tuple[float, TaskSample]]:
        """(x, sample): roots with a size over their size, else the other samples over
        their input bytes (all samples when there are no others)."""
        samples = self._tasks.get(function, [])
        if sized:
            return [(t.size, t) for t in samples if t.size > 0]
        plain = [t for t in samples if t.size <= 0] or samples
        return [(t.input_bytes, t) for t in plain]

    def _fit_exec(self, function: str, sized: bool) -> PowerFit | None:
        samples = self._samples(function, sized)
        if not samples:
            return None
        points = [Point(x, self._memory_point(t.memory_mb), t.exec_s, self._weight(t.age))
                  for x, t in samples]
        follows = self.capacity.cpu_follows_memory
        return self._fit(points, function, "time", lambda_scaling if follows else None,
                         learn_memory=follows)

    def _memory_point(self, memory_mb: int) -> float:
        """A task time's memory coordinate: its config's memory, or one for every config
        where memory buys no CPU (``Capacity.cpu_follows_memory``: one pooled fit)."""
        return memory_mb if self.capacity.cpu_follows_memory else 1.0

    def _fit_output(self, function: str, sized: bool) -> PowerFit | None:
        samples = self._samples(function, sized)
        if not samples:
            return None
        points = [Point(x, 1.0, t.output_bytes, self._weight(t.age)) for x, t in samples]
        return self._fit(points, function, "io", None, learn_memory=False)

    def _fit(self, points, function, kind, rule, learn_memory) -> PowerFit:
        s = self.settings
        return fit_power(points, q=s.percentile / 100, threshold=s.mad_threshold,
                         min_samples=s.min_samples,
                         fallback_b=self._fallback_b(function, kind), rule=rule,
                         learn_memory=learn_memory)

    def _fit_cpu_share(self, function: str) -> float:
        shares = [t.cpu_s / t.exec_s for t in self._tasks.get(function, ())
                  if t.cpu_s >= 0 and t.exec_s > 0]
        return min(1.0, statistics.median(shares)) if shares else 1.0

    def _fit_transfer(self, direction: str) -> tuple[float, float, int, float] | None:
        samples = [x for x in self._transfers if x.direction == direction]
        if len(samples) < self.settings.min_samples:
            samples = self._transfers  # too few this way: the same Redis, both ways
        if len(samples) < self.settings.min_samples:
            return None
        s = self.settings
        return fit_latency_bandwidth(
            [Point(x.nbytes, 1.0, x.seconds, self._weight(x.age)) for x in samples],
            q=s.percentile / 100, threshold=s.mad_threshold,
            default_bandwidth=s.default("bandwidth"))

    def _fit_spec_load(self) -> tuple[float, float, int, float] | None:
        s = self.settings
        if len(self._spec_loads) < s.min_samples:
            return None
        return fit_latency_bandwidth([Point(n, 1.0, sec, 1.0) for n, sec in self._spec_loads],
                                     q=s.percentile / 100, threshold=s.mad_threshold,
                                     default_bandwidth=s.default("spec-load"))

    def _fallback_b(self, function: str, kind: str) -> float:
        return self._hints.get(function, {}).get(kind, self.settings.default("io"))

    def _from_fit(self, fit: PowerFit, x: float, m: float, function: str,
                  kind: str) -> Prediction:
        value = fit(x, m)
        if fit.observed(x, m):
            source = "observed"
        elif fit.b_learned:
            source = "fit"
        else:
            source = "fit+hint" if kind in self._hints.get(function, {}) else "fit+default"
        return Prediction(value, fit.samples, value * math.expm1(fit.spread), source)

    def _weight(self, age: float) -> float:
        return 0.5 ** (age / self.settings.half_life)
