"""The benchmark workloads. Their one home is ``dask_serverless.bench.workloads`` (so
``dask-serverless bench`` runs from an installed package); this re-exports them for the
scripts in ``benchmarks/``."""

from dask_serverless.bench.workloads import *  # noqa: F403
from dask_serverless.bench.workloads import __all__  # noqa: F401
