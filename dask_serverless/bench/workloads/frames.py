"""``dask.dataframe`` groupby aggregation over generated partitions."""

from __future__ import annotations

from typing import Any

from .base import Workload, from_collections, sized


def make_partition(index: int, rows: int, groups: int):
    """A partition of ``rows`` rows: integer key, float and integer values."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(index)
    return pd.DataFrame({"key": rng.integers(0, groups, rows),
                         "x": rng.normal(size=rows), "y": rng.integers(0, 100, rows)})


def groupby(quick: bool = False, **params: Any) -> Workload:
    """Mean and std of ``x``, sum of ``y`` per key."""
    import dask.dataframe as dd

    p = sized(quick, params, {"partitions": 8, "rows": 100_000, "groups": 1000},
              {"partitions": 32, "rows": 500_000, "groups": 1000})
    df = dd.from_map(make_partition, range(p["partitions"]), rows=p["rows"],
                     groups=p["groups"], enforce_metadata=False)
    result = df.groupby("key").agg({"x": ["mean", "std"], "y": "sum"})
    return from_collections("groupby", f"{p['partitions']} x {p['rows']} rows, "
                            f"{p['groups']} groups (dask.dataframe)", [result], p)
