"""The schedulers under test, each a ``get(graph, keys)``: Dask's sync, threads and
processes schedulers, ``distributed.LocalCluster`` and ``serverless_get`` with each
planner (and optimisation pass) the package registers."""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import dask

from ..planners import PLANNERS

DASK_SCHEDULERS = ("sync", "threads", "processes", "localcluster")
LOCALCLUSTER_WORKERS = 2
SERVERLESS_PREFIX = "serverless"


def available_passes() -> list[str]:
    """Optimisation passes the planners package registers (none before it has any)."""
    from .. import planners

    return list(getattr(planners, "PASSES", {}) or {})


@dataclass
class Scheduler:
    """A named ``get``; ``workers`` is its fixed parallelism (None: the plan decides).
    Schedulers sharing a ``warm_group`` share long-lived workers (a process pool, a
    cluster, the serverless containers) that a warm-up run prepares; None: nothing to
    warm."""

    name: str
    get: Callable[[dict, list], Any]
    workers: int | None
    warm_group: str | None = None
    planner: str | None = None
    passes: tuple[str, ...] = ()
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def serverless(self) -> bool:
        return self.planner is not None

    def __call__(self, graph: dict, keys: list, source: Any = None) -> Any:
        """Compute ``keys`` of ``graph``; serverless schedulers get ``source`` instead when
        given (the workload's expression: the same graph, with its array chunk sizes)."""
        if not self.serverless:
            return self.get(graph, keys)
        with dask.config.set({"serverless.optimizations": list(self.passes)}):
            return self.get(graph if source is None else source, keys,
                            planner=self.planner)


def serverless_variants(planners: Sequence[str] | None,
                        passes: Sequence[str] | None) -> list[tuple[str, tuple[str, ...]]]:
    """(planner, passes) pairs: every chosen planner alone, then the first planner with
    each chosen pass. Unknown names are an error naming the known ones."""
    chosen = list(planners) if planners is not None else list(PLANNERS)
    unknown = [p for p in chosen if p not in PLANNERS]
    if unknown:
        raise ValueError(f"unknown planner(s) {unknown}; registered: {sorted(PLANNERS)}")
    known_passes = available_passes()
    extra = list(passes) if passes is not None else known_passes
    bad = [p for p in extra if p not in known_passes]
    if bad:
        raise ValueError(f"unknown optimisation pass(es) {bad}; registered: {known_passes}")
    variants = [(p, ()) for p in chosen]
    if chosen:
        variants += [(chosen[0], (x,)) for x in extra]
    return variants


def serverless_name(planner: str, passes: tuple[str, ...]) -> str:
    return f"{SERVERLESS_PREFIX}:{planner}" + "".join(f"+{p}" for p in passes)


@contextlib.contextmanager
def open_schedulers(dask_names: Sequence[str],
                    variants: Sequence[tuple[str, tuple[str, ...]]]) -> Iterator[list[Scheduler]]:
    """Start what the chosen schedulers need (a process pool, a LocalCluster) and stop
    it afterwards; serverless containers stay with the session as usual."""
    import dask.threaded

    from ..runtime.get import serverless_get

    unknown = [n for n in dask_names if n not in DASK_SCHEDULERS]
    if unknown:
        raise ValueError(f"unknown Dask scheduler(s) {unknown}; choose from "
                         f"{list(DASK_SCHEDULERS)}")
    cpus = os.cpu_count() or 1
    with contextlib.ExitStack() as stack:
        out: list[Scheduler] = []
        for name in dask_names:
            if name == "sync":
                out.append(Scheduler("dask sync", dask.get, 1))
            elif name == "threads":
                out.append(Scheduler("dask threads", dask.threaded.get, cpus))
            elif name == "processes":
                out.append(Scheduler("dask processes", _process_get(stack, cpus), cpus,
                                     "processes"))
            elif name == "localcluster":
                out.append(Scheduler(f"LocalCluster({LOCALCLUSTER_WORKERS})",
                                     _cluster_get(stack), LOCALCLUSTER_WORKERS, "localcluster"))
        for planner, passes in variants:
            out.append(Scheduler(serverless_name(planner, passes), serverless_get, None,
                                 SERVERLESS_PREFIX, planner, passes))
        yield out


def _process_get(stack: contextlib.ExitStack, cpus: int) -> Callable[[dict, list], Any]:
    """``dask.multiprocessing.get`` on one pool kept for the whole benchmark (the other
    schedulers keep their workers too)."""
    import dask.multiprocessing

    pool = stack.enter_context(ProcessPoolExecutor(
        cpus, mp_context=multiprocessing.get_context("spawn")))

    def get(graph: dict, keys: list) -> Any:
        return dask.multiprocessing.get(graph, keys, pool=pool)

    return get


def _cluster_get(stack: contextlib.ExitStack) -> Callable[[dict, list], Any]:
    from distributed import Client, LocalCluster

    cluster = stack.enter_context(LocalCluster(
        n_workers=LOCALCLUSTER_WORKERS, threads_per_worker=1, processes=True,
        dashboard_address=":0", silence_logs=logging.ERROR))  # None still binds :8787
    client = stack.enter_context(Client(cluster))
    return client.get
