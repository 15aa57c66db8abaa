"""The conformance suite again, on the ``lambda`` backend through the local Lambda API
server (functions deployed by ``deploy``; workers invoke successors through boto3)."""

import pytest
from test_conformance import *  # noqa: F403  (re-collects every conformance test here)

pytestmark = pytest.mark.usefixtures("any_redis", "lambda_backend")


def test_threads_on_lambda_workers():
    """A Lambda worker runs its ready tasks in threads too (same executor)."""
    import dask
    import dask.array as da

    from dask_serverless import serverless_get
    from dask_serverless.runtime import get as get_mod

    x = da.random.RandomState(5).random((400, 400), chunks=100)
    expected = dask.compute((x @ x.T).sum(), scheduler="sync")
    with dask.config.set({"serverless.threads": 4}):
        got = dask.compute((x @ x.T).sum(), scheduler=serverless_get)
    assert got[0] == pytest.approx(expected[0], rel=1e-9)
    assert {w.threads for w in get_mod.last_run.plan.workers.values()} == {4}
