"""Metrics: what every run, worker invocation and task cost, and predictions from them.

Data flow: workers buffer records (``recorder``) and write them in one pipeline per
invocation; the client writes the run record (``runs``); ``store`` holds the key
usage; ``reader`` turns records into pandas DataFrames; ``predictor`` learns from them.
"""

from .records import InputRecord, InvocationRecord, RunRecord, TaskRecord
from .store import MetricsStore

__all__ = ["InputRecord", "InvocationRecord", "MetricsStore", "RunRecord", "TaskRecord"]
