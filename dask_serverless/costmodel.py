"""What the simulator and the planners need to know about time, bytes and price.

``size`` is given for a task without inputs that has one (``TaskNode.size``: the bytes
of data it makes); a cost model may use it in place of the 0 input bytes.

``CostModel`` is the protocol (the metrics ``Predictor`` implements it from measured
history); ``FixedCostModel`` answers with constant numbers (tests, and the fallback when
there is no history yet); ``SizePrior`` is what is known of a run before anything was
measured, from the data sizes its roots declare (``sizes``). Prices default to AWS Lambda x86.

A cost model may also carry ``capacity`` (a ``capacity.Capacity``: the backend's shared
cores and container cap; unlimited when absent) and answer ``cpu_share(function)`` (the
part of a task's time that needs a core; 1.0 when absent) and ``spec_load_time(nbytes)``
(an invocation fetching and decoding that many bytes of its run spec slices;
``serverless.metrics.defaults.spec-load`` when absent).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

from .capacity import UNLIMITED, Capacity
from .config import DEFAULTS
from .plan import LAMBDA_MB_PER_VCPU, ResourceConfig

_PRICES = DEFAULTS["serverless"]["metrics"]["prices"]  # one source: AWS Lambda x86
SPEC_LOAD_BPS: float = DEFAULTS["serverless"]["metrics"]["defaults"]["spec-load"]
LAMBDA_PRICE_GB_S: float = _PRICES["gb-second"]  # USD per GB-second
LAMBDA_PRICE_REQUEST: float = _PRICES["request"]  # USD per request

StartKind = Literal["cold", "warm"]
Direction = Literal["upload", "download"]


@runtime_checkable
class CostModel(Protocol):
    """Predictions in seconds and bytes; prices in USD."""

    price_gb_s: float
    price_request: float

    def exec_time(self, function: str, input_bytes: int,
                  resource_config: ResourceConfig, size: int = 0) -> float: ...

    def output_bytes(self, function: str, input_bytes: int, size: int = 0) -> int: ...

    def transfer_time(self, nbytes: int, direction: Direction) -> float: ...

    def predict_worker_invocation_time(self, resource_config: ResourceConfig,
                                       start: StartKind) -> float: ...


def _by_function(value: float | Mapping[str, float], function: str,
                 missing: float = 0.0) -> float:
    if isinstance(value, Mapping):
        try:
            return value[function]
        except KeyError:
            return value.get("*", missing)
    return value


@dataclass
class FixedCostModel:
    """Constant predictions: per function name (a mapping, ``"*"`` for the rest) or one
    number for all.

    ``exec_s`` is a task's time at ``reference_mb``; ``cpu_bound`` (0..1) is the share of it
    that scales with the config's vCPU share (capped at one vCPU: tasks are single-threaded).
    A transfer costs ``latency_s`` (one Redis round trip) plus ``nbytes / bandwidth``.
    ``cpu_fraction`` (per function or one number) is the part of a task's time spent on
    a core; ``capacity`` the backend's compute (see module docstring).
    """

    exec_s: float | Mapping[str, float] = 0.01
    out_bytes: int | Mapping[str, int] = 1000
    cold_s: float = 0.5
    warm_s: float = 0.005
    latency_s: float = 0.0005
    bandwidth: float = 100e6
    reference_mb: int = 1024
    cpu_bound: float = 0.0
    cpu_fraction: float | Mapping[str, float] = 1.0
    capacity: Capacity = UNLIMITED
    # run spec bytes fetched and decoded per second; inf: spec loads are not modelled
    # (a hand-made model's default; ``default_cost_model`` charges them)
    spec_load_bps: float = math.inf
    price_gb_s: float = LAMBDA_PRICE_GB_S
    price_request: float = LAMBDA_PRICE_REQUEST
    _scale: dict[int, float] = field(default_factory=dict, repr=False)

    def exec_time(self, function: str, input_bytes: int,
                  resource_config: ResourceConfig, size: int = 0) -> float:
        base = _by_function(self.exec_s, function)
        if not self.cpu_bound:
            return base
        mb = resource_config.memory_mb
        scale = self._scale.get(mb)
        if scale is None:
            ref = min(self.reference_mb, LAMBDA_MB_PER_VCPU)
            scale = self._scale[mb] = (1 - self.cpu_bound) + self.cpu_bound * ref / min(
                mb, LAMBDA_MB_PER_VCPU)
        return base * scale

    def output_bytes(self, function: str, input_bytes: int, size: int = 0) -> int:
        return int(_by_function(self.out_bytes, function))

    def cpu_share(self, function: str) -> float:
        return _by_function(self.cpu_fraction, function, 1.0)

    def transfer_time(self, nbytes: int, direction: Direction) -> float:
        return self.latency_s + nbytes / self.bandwidth

    def predict_worker_invocation_time(self, resource_config: ResourceConfig,
                                       start: StartKind) -> float:
        return self.cold_s if start == "cold" else self.warm_s

    def spec_load_time(self, nbytes: int) -> float:
        """Seconds an invocation spends fetching and decoding ``nbytes`` of run spec
        (its slices): one round trip, then decoding dominates."""
        if not nbytes or self.spec_load_bps == math.inf:
            return 0.0
        return self.latency_s + nbytes / self.spec_load_bps


def default_cost_model() -> FixedCostModel:
    """Used when no predictor is given: round numbers in the range the local backend
    measures (a cold container start is a process spawn plus imports)."""
    return FixedCostModel(spec_load_bps=SPEC_LOAD_BPS)


_DEFAULTS = DEFAULTS["serverless"]["metrics"]["defaults"]
PRIOR_COMPUTE_BPS = 500e6  # bytes of input a task of unknown cost is assumed to work through


@dataclass
class SizePrior(FixedCostModel):
    """A first run's cost model when its roots' data sizes are known (``TaskNode.size``:
    dask.array chunks, ``size`` hints): a root makes its size, any other task as much as
    its largest input (elementwise steps, block products, sums of partial results; an
    overestimate for reductions, which keeps data local: the safe side), and takes
    ``serverless.metrics.defaults.exec-time`` plus its input bytes (a root: its size) at
    ``PRIOR_COMPUTE_BPS``. Starts and transfers are the configured defaults."""

    exec_s: float | Mapping[str, float] = _DEFAULTS["exec-time"]
    out_bytes: int | Mapping[str, int] = _DEFAULTS["output-bytes"]
    cold_s: float = _DEFAULTS["cold-start"]
    warm_s: float = _DEFAULTS["warm-start"]
    latency_s: float = _DEFAULTS["latency"]
    bandwidth: float = _DEFAULTS["bandwidth"]
    spec_load_bps: float = SPEC_LOAD_BPS
    compute_bps: float = PRIOR_COMPUTE_BPS

    @classmethod
    def from_config(cls, capacity: Capacity = UNLIMITED) -> SizePrior:
        """With ``serverless.metrics.defaults`` as configured now."""
        from .config import get

        def d(name: str) -> float:
            return float(get(f"metrics.defaults.{name}"))

        return cls(exec_s=d("exec-time"), out_bytes=int(d("output-bytes")),
                   cold_s=d("cold-start"), warm_s=d("warm-start"), latency_s=d("latency"),
                   bandwidth=d("bandwidth"), spec_load_bps=d("spec-load"), capacity=capacity)

    def exec_time(self, function: str, input_bytes: int,
                  resource_config: ResourceConfig, size: int = 0) -> float:
        base = super().exec_time(function, input_bytes, resource_config, size)
        return base + (input_bytes or size) / self.compute_bps

    def output_bytes(self, function: str, input_bytes: int, size: int = 0) -> int:
        return int(size or input_bytes or _by_function(self.out_bytes, function))

    def output_of_inputs(self, function: str, inputs: list[int], size: int = 0) -> int:
        """Output bytes from each input's bytes (``Estimates`` asks this, not
        ``output_bytes``, when a cost model has it)."""
        if inputs:
            return max(inputs)
        return int(size or _by_function(self.out_bytes, function))
