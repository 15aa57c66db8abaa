"""How far a Predictor's predictions were from what one run recorded.

``prediction_errors`` compares, per recorded sample, the prediction with the measurement:
task execution time and output bytes (per function), Redis downloads and uploads (per
transfer) and worker starts (cold / warm, per invocation). The error is
``|predicted - actual| / actual`` in percent.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ..plan import ResourceConfig
from .predictor import Predictor
from .records import InvocationRecord, TaskRecord

KINDS = ("exec", "output", "download", "upload", "cold start", "warm start")


@dataclass(frozen=True, slots=True)
class PredictionError:
    kind: str  # one of KINDS
    function: str  # the task's function; "" for transfers and starts
    predicted: float
    actual: float

    @property
    def pct(self) -> float:
        return abs(self.predicted - self.actual) / self.actual * 100


def prediction_errors(predictor: Predictor, tasks: Iterable[TaskRecord],
                      invocations: Iterable[InvocationRecord], *,
                      min_exec_s: float = 1e-3,
                      min_transfer_s: float = 1e-5) -> list[PredictionError]:
    """Errors of ``predictor`` on one run's records. Execution times shorter than
    ``min_exec_s`` and transfers shorter than ``min_transfer_s`` are skipped (timer
    noise); so are zero sizes."""
    out: list[PredictionError] = []
    for t in tasks:
        cfg = ResourceConfig(t.memory_mb)
        if t.exec_s >= min_exec_s:
            out.append(PredictionError("exec", t.function,
                                       predictor.exec_time(t.function, t.input_bytes, cfg,
                                                           t.size),
                                       t.exec_s))
        if t.output_bytes > 0:
            out.append(PredictionError("output", t.function,
                                       predictor.output_bytes(t.function, t.input_bytes,
                                                              t.size),
                                       t.output_bytes))
        for i in t.inputs:
            if i.source == "redis" and i.download_s >= min_transfer_s:
                out.append(PredictionError("download", "",
                                           predictor.transfer_time(i.nbytes, "download"),
                                           i.download_s))
        if t.upload_bytes and t.upload_s >= min_transfer_s:
            out.append(PredictionError("upload", "",
                                       predictor.transfer_time(t.upload_bytes, "upload"),
                                       t.upload_s))
    for inv in invocations:
        if inv.warmup or inv.startup_s <= 0:
            continue
        state = "cold" if inv.cold else "warm"
        out.append(PredictionError(f"{state} start", "", predictor.predict_worker_invocation_time(
            ResourceConfig(inv.memory_mb), state), inv.startup_s))
    return out
