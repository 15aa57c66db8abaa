"""pytest plugin for ``benchmarks/dask_suite.py``: run Dask's own tests with every
compute on one scheduler.

``DASK_SUITE_SCHEDULER`` picks it: ``serverless`` (``serverless_get``), ``localcluster``
(a ``distributed.LocalCluster`` client) or ``sync`` (Dask's own, a baseline). The default
scheduler is set to it, and Dask's local schedulers named in a test (``scheduler="sync"``,
``"threads"``, ``"processes"``: ``assert_eq`` computes with ``"sync"``) are redirected to
it, so the same computes reach each scheduler. A test that passes its own scheduler
function keeps it.

Each test's outcome is appended to ``DASK_SUITE_OUTCOMES`` as one JSON line; tests
already there are deselected (a run that crashed resumes after the test that crashed it),
and the test now running is named in ``<DASK_SUITE_OUTCOMES>.running``.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any

import pytest

_OUTCOMES: dict[str, dict[str, Any]] = {}


def _target() -> Any:
    kind = os.environ.get("DASK_SUITE_SCHEDULER", "serverless")
    if kind == "serverless":
        from dask_serverless import serverless_get

        return serverless_get
    if kind == "localcluster":
        _localcluster()
        return _localcluster_get
    if kind == "sync":
        import dask.local

        return dask.local.get_sync
    raise ValueError(f"DASK_SUITE_SCHEDULER={kind!r}: serverless, localcluster or sync")


def _localcluster() -> Any:
    """The session's LocalCluster client, made again when a test closed it, and made the
    default client again when a test took that away (distributed's ``gen_cluster`` in
    Dask's tests does: every later compute failed with "no Client active")."""
    from distributed import Client, LocalCluster
    from distributed.client import _set_global_client, default_client

    client = _STATE.get("client")
    if client is None or client.status not in ("running", "connecting", "newly-created"):
        if client is not None:
            with contextlib.suppress(Exception):
                _STATE["cluster"].close()
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                               dashboard_address=None)
        client = Client(cluster, set_as_default=True)
        _STATE["client"], _STATE["cluster"] = client, cluster
    try:
        current = default_client()
    except ValueError:
        current = None
    if current is not client:
        _set_global_client(client)
    return client


def _localcluster_get(dsk: Any, keys: Any, **kwargs: Any) -> Any:
    return _localcluster().get(dsk, keys, **kwargs)


def _redirect(target: Any) -> None:
    import dask.base
    import dask.local
    import dask.multiprocessing
    import dask.threaded

    local = {dask.local.get_sync, dask.threaded.get, dask.multiprocessing.get}
    original = dask.base.get_scheduler

    def get_scheduler(*args: Any, **kwargs: Any) -> Any:
        chosen = original(*args, **kwargs)
        return target if chosen in local else chosen

    dask.base.get_scheduler = get_scheduler


_STATE: dict[str, Any] = {}


def pytest_configure(config: pytest.Config) -> None:
    import dask

    target = _target()
    _redirect(target)
    dask.config.set({"scheduler": target})


def pytest_runtest_setup(item: pytest.Item) -> None:
    if "client" in _STATE:
        _localcluster()


def pytest_unconfigure(config: pytest.Config) -> None:
    client, cluster = _STATE.pop("client", None), _STATE.pop("cluster", None)
    if client is not None:
        client.close()
        cluster.close()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    path = os.environ.get("DASK_SUITE_OUTCOMES")
    if not path or not os.path.exists(path):
        return
    with open(path) as f:
        done = {json.loads(line)["test"] for line in f if line.strip()}
    kept = [item for item in items if item.nodeid not in done]
    if len(kept) < len(items):
        config.hook.pytest_deselected(items=[i for i in items if i.nodeid in done])
        items[:] = kept


def pytest_runtest_logstart(nodeid: str, location: Any) -> None:
    path = os.environ.get("DASK_SUITE_OUTCOMES")
    if path:
        with open(path + ".running", "w") as f:
            f.write(nodeid)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    entry = _OUTCOMES.setdefault(report.nodeid, {"outcome": "passed", "message": ""})
    if report.when == "call" and hasattr(report, "wasxfail"):
        entry["outcome"] = "xpassed" if report.passed else "xfailed"
    elif report.skipped and entry["outcome"] == "passed":
        entry["outcome"] = "xfailed" if hasattr(report, "wasxfail") else "skipped"
    elif report.failed:
        entry["outcome"] = "failed" if report.when == "call" else "error"
        crash = getattr(report.longrepr, "reprcrash", None)
        entry["message"] = (crash.message if crash is not None else str(report.longrepr))[:500]
    if report.when == "teardown":
        path = os.environ.get("DASK_SUITE_OUTCOMES")
        if path:
            with open(path, "a") as f:
                f.write(json.dumps({"test": report.nodeid, **entry}) + "\n")
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path + ".running")
