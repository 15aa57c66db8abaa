"""``serverless_get``: a Dask scheduler ``get`` that runs graphs on serverless workers."""

from __future__ import annotations

import difflib
import logging
import warnings
from collections.abc import Mapping
from typing import Any

from dask.callbacks import local_callbacks, unpack_callbacks

from .. import config, session
from ..adapter import graph_and_annotations, to_dag
from ..dag import DAG
from ..gcutil import gc_paused
from ..metrics.task_logs import level_number
from ..plan import Plan
from ..planners import Objective, apply_passes, get_planner
from ..planners.base import cost_model_of
from ..simulator import Simulator
from ..storage.store import connect
from . import history, persisted
from .run import Run

logger = logging.getLogger(__name__)

last_run: Run | None = None  # the most recent run in this process (for summaries)


def serverless_get(dsk: Any, keys: Any, *, callbacks=None, planner: Any = None,
                   plan: Plan | None = None, backend: Any = None,
                   redis_url: str | None = None, memory: int | None = None,
                   parallelism: int | None = None, deadline: float | None = None,
                   optimizations: list[str] | None = None,
                   serverless_dashboard: bool | None = None, **kwargs: Any) -> Any:
    """Compute ``keys`` of the Dask graph ``dsk`` on serverless workers.

    Use like any Dask scheduler: ``dask.compute(x, scheduler=serverless_get)``. Keyword
    arguments override the ``serverless.*`` config for this call (``planner``, ``plan``,
    ``backend``, ``redis_url``, ``memory``, ``parallelism``, ``deadline``,
    ``optimizations``; ``serverless_dashboard``: ``serverless.dashboard.enabled``).
    A keyword close to one of these (``memroy``) raises ``TypeError``; those Dask's local
    schedulers take (``num_workers``, ``pool``, ...) mean nothing here and are ignored;
    any other is ignored with a warning.

    ``dask.persist`` (and ``.persist()``) call ``serverless_get.persist``: the results stay
    in Redis and the persisted collections' graphs reference them (``serverless_persist``).
    """
    with gc_paused():  # preparing a large graph makes millions of objects, no garbage
        return _get(dsk, keys, callbacks=callbacks, planner=planner, plan=plan,
                    backend=backend, redis_url=redis_url, memory=memory,
                    parallelism=parallelism, deadline=deadline, optimizations=optimizations,
                    serverless_dashboard=serverless_dashboard, **kwargs)


def _get(dsk: Any, keys: Any, *, callbacks=None, planner: Any = None,
         plan: Plan | None = None, backend: Any = None, redis_url: str | None = None,
         memory: int | None = None, parallelism: int | None = None,
         deadline: float | None = None, optimizations: list[str] | None = None,
         serverless_dashboard: bool | None = None, persist: bool = False,
         **kwargs: Any) -> Any:
    """``serverless_get``; ``persist``: large outputs stay in Redis, returned as
    ``StoredNode``s (``runtime.persisted.keep_outputs``)."""
    global last_run
    _check_keywords(kwargs)
    config.validate_all()
    with local_callbacks(callbacks) as cbs:
        _start_cbs, start_state_cbs, pretask_cbs, posttask_cbs, _finish_cbs = \
            unpack_callbacks(cbs)
        graph, _ = graph_and_annotations(dsk) if cbs else (None, None)
        dag = to_dag(dsk, keys, client_finals=not persist)
        started = []
        state: dict[str, Any] = {}
        succeeded = False
        made: list = []  # embedded values stored for this run
        try:
            url = session.redis_url(redis_url)
            made = persisted.prepare(dag, connect(url), url, config.get("output-ttl"),
                                     config.get("persist.ttl"))
            for cb in cbs:
                if cb[0]:
                    cb[0](graph)
                started.append(cb)
            if not dag.tasks:  # every requested key is a stored value
                results = _finalized(dag, persisted.read_stored_outputs(dag))
                state = _callback_state(dag)
                state["cache"] = results
                succeeded = True
                return _nested_get(keys, results)
            if plan is None:
                chosen = planner or config.get("planner")
                passes = list(config.get("optimizations", optimizations))
                capacity = session.backend(backend).capacity()
                predictor = (history.predictor_for(dag, redis_url, capacity)
                             if history.wants_history(chosen, passes, dag) else None)
                if predictor is None:  # a first run: what its data sizes tell
                    predictor = history.prior_for(dag, capacity)
                plan = make_plan(dag, chosen, backend, memory, parallelism, passes, predictor)
            the_plan = plan
            state = _callback_state(dag) if cbs else {}  # callbacks' view of the run
            for f in start_state_cbs:
                if f:
                    f(graph, state)
            on_progress = None
            if pretask_cbs or posttask_cbs:
                on_progress = _progress_reporter(dag, graph, state, pretask_cbs, posttask_cbs)
            metrics_url = session.metrics_url(redis_url)
            live = _live_dashboard(serverless_dashboard, metrics_url)
            run = Run(dag, the_plan, session.backend(backend), url,
                      ttl=config.ttl_for(config.get("output-ttl"),
                                         config.get("deadline", deadline)),
                      inline_bytes=config.get("payload-inline-bytes"),
                      deadline=config.get("deadline", deadline),
                      poll_interval=config.get("poll-interval"),
                      redis_grace=config.get("redis-grace"),
                      max_output_bytes=config.get("max-output-bytes"), on_progress=on_progress,
                      metrics_url=metrics_url, metrics_wait=config.get("metrics.wait"),
                      task_log_level=level_number(config.get("metrics.task-logs")),
                      live=live, echo_output=config.get("echo-task-output"),
                      keep=(config.get("embed-max-bytes"), config.get("persist.ttl"))
                      if persist else None)
            last_run = run
            values = run.execute()
            results = {dag.tasks[t].key: v for t, v in zip(dag.outputs, values, strict=True)}
            if dag.stored_outputs:
                results.update(persisted.read_stored_outputs(dag))
            results = _finalized(dag, results)
            if on_progress is not None:
                on_progress(None)  # tasks whose progress message was not seen
            state["cache"] = results
            succeeded = True
        finally:
            persisted.release(made)
            persisted.forget(dag)  # ``last_run`` keeps the DAG: not the values it read
            for cb in started:
                if cb[4]:
                    cb[4](graph, state, not succeeded)
    return _nested_get(keys, results)


def serverless_persist(collections: list, optimize_graph: bool = True,
                       **kwargs: Any) -> list:
    """``dask.persist``'s scheduler protocol (``serverless_get.persist``): compute
    ``collections`` and return them rebuilt over their results, as ``dask.persist`` does,
    except that results larger than ``serverless.embed-max-bytes`` stay in Redis: the
    rebuilt graphs hold ``StoredNode`` references, which later computes' workers fetch
    where they are read. They are released when the collections are garbage-collected
    here, or after ``serverless.persist.ttl`` seconds unused."""
    from dask._expr import CompositeExpr, _ExprSequence
    from dask.base import _rebuild_composite_collection, collections_to_expr
    from dask.core import flatten

    expr = collections_to_expr(collections, optimize_graph)
    exprs = list(expr.operands) if isinstance(expr, _ExprSequence) else [expr]
    composite = any(isinstance(e, CompositeExpr) for e in exprs)
    expr = expr.optimize()
    if composite:
        exprs = list(expr.operands) if isinstance(expr, _ExprSequence) else [expr]
        if len(exprs) != len(collections):
            exprs = [None] * len(collections)
    else:
        exprs = [None] * len(collections)
    keys: list = []
    rebuilds = []
    for a, aexpr, akeys in zip(collections, exprs, expr.__dask_keys__(), strict=True):
        a_keys = list(flatten(akeys))
        keys.extend(a_keys)
        if isinstance(aexpr, CompositeExpr):
            rebuilds.append((a, aexpr, None))
        else:
            rebuild, state = a.__dask_postpersist__()
            rebuilds.append((rebuild, a_keys, state))
    results = _get(expr, keys, persist=True, **kwargs)
    by_key = dict(zip(keys, results, strict=True))
    out = []
    for rebuild, a_keys, state in rebuilds:
        if state is None:
            out.append(_rebuild_composite_collection(rebuild, a_keys, by_key,
                                                     cull_to_child_keys=True))
        else:
            out.append(rebuild({k: by_key[k] for k in a_keys}, *state))
    return out


serverless_get.persist = serverless_persist  # type: ignore[attr-defined]


# keywords of Dask's local schedulers (``dask.local.get_async``, threaded, multiprocessing):
# code written for them may pass these through ``compute``; they have no meaning here
LOCAL_SCHEDULER_KEYWORDS = frozenset({
    "num_workers", "pool", "chunksize", "cache", "get_id", "rerun_exceptions_locally",
    "pack_exception", "raise_exception", "dumps", "loads", "initializer"})
ACCEPTED_KEYWORDS = ("planner", "plan", "backend", "redis_url", "memory", "parallelism",
                     "deadline", "optimizations", "serverless_dashboard", "callbacks")


def _check_keywords(kwargs: dict[str, Any]) -> None:
    """A misspelt option (close to one serverless_get accepts) is a ``TypeError``, naming
    it: a typo must not pass silently. Other keywords, meant for another scheduler (Dask
    forwards ``compute``'s keywords to whichever runs), are ignored with a warning."""
    unknown = sorted(set(kwargs) - LOCAL_SCHEDULER_KEYWORDS)
    close = {name: difflib.get_close_matches(name, ACCEPTED_KEYWORDS, n=1) for name in unknown}
    misspelt = [f"{name!r} (did you mean {match[0]!r}?)" for name, match in close.items()
                if match]
    if misspelt:
        raise TypeError(f"serverless_get got unexpected keyword argument"
                        f"{'s' * (len(misspelt) > 1)} {', '.join(misspelt)}; it accepts "
                        f"{', '.join(ACCEPTED_KEYWORDS)} (other settings: "
                        "dask.config.set({'serverless.<name>': value}))")
    if unknown:
        warnings.warn(f"serverless_get ignores keyword argument{'s' * (len(unknown) > 1)} "
                      f"{', '.join(map(repr, unknown))}: it accepts "
                      f"{', '.join(ACCEPTED_KEYWORDS)}", UserWarning, stacklevel=3)


def make_plan(dag: DAG, planner: Any = None, backend: Any = None,
              memory: int | None = None, parallelism: int | None = None,
              optimizations: list[str] | None = None, predictor: Any = None) -> Plan:
    """Plan ``dag`` with the configured (or given) planner, then apply the configured
    optimisation passes (``serverless.optimizations``)."""
    chosen = get_planner(planner or config.get("planner"), **config.get("planner-options"))
    chosen_backend = session.backend(backend)
    width = config.get("parallelism", parallelism) or chosen_backend.default_parallelism()
    warm_of = getattr(chosen_backend, "warm_containers", None)
    warm = warm_of() if warm_of is not None else {}
    plan = chosen.plan(dag, parallelism=width, memory_mb=config.get("memory", memory),
                       predictor=predictor, threads=config.get("threads"), warm=warm)
    passes = list(config.get("optimizations", optimizations))
    if passes:
        options = config.get("planner-options")
        objective = Objective.parse(options.get("objective"), options.get("budget_s"))
        sim = Simulator(dag, cost_model_of(predictor),
                        inline_bytes=config.get("payload-inline-bytes"),
                        capacity=chosen_backend.capacity(), warm=warm)
        plan = apply_passes(dag, plan, passes, sim, objective)
    return plan


def _live_dashboard(flag: bool | None, metrics_url: str | None) -> bool:
    """``serverless.dashboard.enabled`` (or the call's flag): stream this run's progress
    and make sure a dashboard over the metrics Redis is up (started and opened once)."""
    if not config.get("dashboard.enabled", flag):
        return False
    if metrics_url is None:
        logger.warning("serverless.dashboard.enabled needs serverless.metrics.enabled: "
                       "no live dashboard")
        return False
    from ..dashboard.launcher import ensure_dashboard

    ensure_dashboard(metrics_url, config.get("dashboard.port"),
                     config.get("dashboard.open-browser"))
    return True


def _callback_state(dag: DAG) -> dict[str, Any]:
    keys = [t.key for t in dag.tasks]
    return {"cache": {}, "ready": [], "running": set(), "finished": set(),
            "released": set(), "waiting": {k: set() for k in keys},
            "waiting_data": {}, "dependencies": {t.key: {dag.tasks[d].key for d in t.deps}
                                                 for t in dag.tasks},
            "dependents": {t.key: {dag.tasks[d].key for d in t.dependents}
                           for t in dag.tasks}}


def _progress_reporter(dag: DAG, graph: Mapping | None, state: dict, pretask, posttask):
    done: set[int] = set()

    def report(ids: list[int] | None) -> None:
        if ids is None:  # end of run: everything finished
            ids = [t for t in range(len(dag)) if t not in done]
        for tid in ids:
            if tid in done:
                continue
            done.add(tid)
            key = dag.tasks[tid].key
            state["waiting"].pop(key, None)
            for f in pretask:
                f(key, graph, state)
            state["finished"].add(key)
            for f in posttask:
                f(key, None, graph, state, "serverless")

    return report


def _finalized(dag: DAG, results: dict) -> dict:
    """``results`` with the collections the client assembles (``DAG.client_finals``:
    dask.compute's ``finalize-`` tasks) computed from their inputs."""
    for key, node in dag.client_finals.items():
        results[key] = node({d: results[d] for d in node.dependencies})
    return results


def _nested_get(keys: Any, results: dict) -> Any:
    if isinstance(keys, list):
        return tuple(_nested_get(k, results) for k in keys)
    return results[keys]
