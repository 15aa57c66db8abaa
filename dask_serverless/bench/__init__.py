"""``dask-serverless bench``: workloads run under Dask's schedulers and serverless_get,
with makespan, overhead, cost and prediction columns, CSV, plots and a Markdown table."""
