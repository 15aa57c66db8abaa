"""dask-serverless: run ordinary Dask graphs on serverless workers.

>>> import dask
>>> from dask_serverless import serverless_get
>>> dask.compute(x, scheduler=serverless_get)  # doctest: +SKIP
"""

from . import config  # noqa: F401  (registers the ``serverless`` config defaults)
from .dag import DAG, TaskNode
from .hints import hints
from .plan import Plan, ResourceConfig, WorkerSpec
from .runtime import serverless_get
from .runtime.enable import disable_dask_serverless, enable_dask_serverless

__version__ = "0.1.0"

__all__ = ["DAG", "Plan", "ResourceConfig", "TaskNode", "WorkerSpec",
           "disable_dask_serverless", "enable_dask_serverless", "hints", "serverless_get"]
