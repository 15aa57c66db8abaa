"""Make ``serverless_get`` Dask's default scheduler (like Ray's ``enable_dask_on_ray``)."""

from __future__ import annotations

from typing import Any

import dask

from .get import serverless_get


def enable_dask_serverless(**serverless_options: Any) -> dask.config.set:
    """Use serverless workers for every ``compute()``; options set ``serverless.*`` keys.

    Works as a plain call or as a context manager that restores the previous config::

        with enable_dask_serverless(memory=2048, planner="wukong"):
            x.compute()
    """
    options: dict[str, Any] = {"scheduler": serverless_get}
    for name, value in serverless_options.items():
        options[f"serverless.{name.replace('_', '-')}"] = value
    return dask.config.set(options)


def disable_dask_serverless() -> None:
    """Go back to Dask's default scheduler choice."""
    dask.config.set({"scheduler": None})
