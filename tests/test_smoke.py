import operator

import dask
from dask import delayed

from dask_serverless import serverless_get


def test_delayed_sum_matches_sync(any_redis):
    parts = [delayed(operator.add)(i, 1) for i in range(20)]
    total = delayed(sum)(parts)
    assert dask.compute(total, scheduler=serverless_get) == dask.compute(total, scheduler="sync")
