"""Per-task predictions for one DAG under a cost model: bytes in and out, run times.

Output sizes do not depend on the resource config, so they are computed once; run times
are computed per config on first use and cached by (function, input bytes, size, memory).
Each task's ``size`` (``TaskNode.size``, set for roots) goes to the cost model, so a
root's predictions follow the data size this run asks for before it runs.
``capacity`` and ``cpu_times`` are what a shared-core backend needs (see ``capacity``).
"""

from __future__ import annotations

from .capacity import Capacity, capacity_of
from .costmodel import SPEC_LOAD_BPS, CostModel
from .dag import DAG
from .plan import ResourceConfig


class Estimates:
    """``out_bytes[t]``, ``in_bytes[t]`` and ``exec_times(config)[t]`` for ``dag``;
    ``out_bytes`` also has the size of each stored input (``DAG.stored``) at its id."""

    def __init__(self, dag: DAG, cost: CostModel, capacity: Capacity | None = None):
        self.dag, self.cost = dag, cost
        self.capacity = capacity or capacity_of(cost)
        n = len(dag)
        # stored inputs (ids past the tasks) are read like outputs: their bytes follow
        out = [0] * n + [s.nbytes for s in dag.stored]
        inb = [0] * n
        cache: dict[tuple[str, int, int], int] = {}
        # a cost model that knows nothing of a function may say how its output follows
        # from each input's size (``costmodel.SizePrior``: the largest input's)
        of_inputs = getattr(cost, "output_of_inputs", None)
        for t in dag.tasks:
            b = 0
            for d in t.deps:
                b += out[d]
            for d in t.stored:
                b += out[d]
            inb[t.id] = b
            if of_inputs is not None:
                out[t.id] = int(of_inputs(t.func_name, [out[d] for d in t.deps], t.size))
                continue
            key = (t.func_name, b, t.size)
            o = cache.get(key)
            if o is None:
                o = cache[key] = int(cost.output_bytes(t.func_name, b, size=t.size))
            out[t.id] = o
        self.out_bytes, self.in_bytes = out, inb
        self._exec: dict[int, list[float]] = {}
        self._cpu: dict[int, list[float]] = {}
        self._share: list[float] | None = None
        self._latency: dict[tuple[int, str], float] = {}

    def exec_times(self, config: ResourceConfig) -> list[float]:
        times = self._exec.get(config.memory_mb)
        if times is None:
            cache: dict[tuple[str, int, int], float] = {}
            times = []
            overhead = float(getattr(self.cost, "task_overhead", lambda: 0.0)())
            for t in self.dag.tasks:
                key = (t.func_name, self.in_bytes[t.id], t.size)
                v = cache.get(key)
                if v is None:
                    v = cache[key] = overhead + float(
                        self.cost.exec_time(t.func_name, key[1], config, size=t.size))
                times.append(v)
            self._exec[config.memory_mb] = times
        return times

    def cpu_times(self, config: ResourceConfig) -> list[float]:
        """Per task, the part of its run time that needs a core."""
        cpu = self._cpu.get(config.memory_mb)
        if cpu is None:
            if self._share is None:
                share_of = getattr(self.cost, "cpu_share", None)
                shares: dict[str, float] = {}
                self._share = []
                for t in self.dag.tasks:
                    v = shares.get(t.func_name)
                    if v is None:
                        v = shares[t.func_name] = (
                            1.0 if share_of is None
                            else min(1.0, max(0.0, float(share_of(t.func_name)))))
                    self._share.append(v)
            cpu = [e * s for e, s in zip(self.exec_times(config), self._share, strict=True)]
            self._cpu[config.memory_mb] = cpu
        return cpu

    def cpu_share(self, config: ResourceConfig) -> float:
        """The share of the DAG's predicted run time that needs a core."""
        total = sum(self.exec_times(config))
        return sum(self.cpu_times(config)) / total if total > 0 else 1.0

    def exec_time(self, task_id: int, config: ResourceConfig) -> float:
        return self.exec_times(config)[task_id]

    def invocation_time(self, config: ResourceConfig, start: str) -> float:
        key = (config.memory_mb, start)
        v = self._latency.get(key)
        if v is None:
            v = self._latency[key] = float(
                self.cost.predict_worker_invocation_time(config, start))  # type: ignore[arg-type]
        return v

    def upload(self, nbytes: int) -> float:
        return self.cost.transfer_time(nbytes, "upload")

    def download(self, nbytes: int) -> float:
        return self.cost.transfer_time(nbytes, "download")

    def spec_load(self, nbytes: int) -> float:
        """Seconds an invocation spends loading ``nbytes`` of run spec slices (fetch and
        decode; ``protocol.slices.SliceSizes`` predicts the bytes)."""
        load = getattr(self.cost, "spec_load_time", None)
        if load is not None:
            return float(load(nbytes))
        return self.download(nbytes) + nbytes / SPEC_LOAD_BPS if nbytes else 0.0
