"""Recorded metrics as pandas DataFrames (pandas is imported on first use), and export to
Parquet or CSV: one file per table (runs, invocations, tasks, inputs)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from .store import MetricsStore

if TYPE_CHECKING:
    import pandas as pd

TABLES = ("runs", "invocations", "tasks", "inputs")


def _pandas():
    try:
        import pandas
    except ImportError as exc:
        raise ImportError("reading metrics as DataFrames needs pandas: "
                          "pip install 'dask-serverless[metrics]'") from exc
    return pandas


class MetricsReader:
    """DataFrames over a ``MetricsStore`` (default: the configured metrics Redis)."""

    def __init__(self, store: MetricsStore | None = None):
        if store is None:
            from .. import session

            url = session.metrics_url()
            if url is None:
                raise RuntimeError("serverless.metrics.enabled is off: nothing to read")
            store = MetricsStore.from_url(url)
        self.store = store

    def run_ids(self, limit: int | None = None, signature: str | None = None) -> list[str]:
        return self.store.run_ids(limit, signature)

    def runs(self, limit: int | None = None, signature: str | None = None) -> pd.DataFrame:
        """One row per run, newest first (``bytes_moved`` included)."""
        records = self.store.runs(self.run_ids(limit, signature))
        return _pandas().DataFrame([r.to_dict() for r in records])

    def invocations(self, run_ids: Sequence[str] | None = None) -> pd.DataFrame:
        """One row per worker invocation, with ``startup_s`` and ``duration_s``."""
        rows = []
        for run_id in self._ids(run_ids):
            for inv in self.store.invocations(run_id):
                row = inv.to_dict()
                row["invoked"] = len(inv.invoked)
                row["startup_s"], row["duration_s"] = inv.startup_s, inv.duration_s
                rows.append(row)
        return _pandas().DataFrame(rows)

    def tasks(self, run_ids: Sequence[str] | None = None) -> pd.DataFrame:
        """One row per task; per-input detail is in ``inputs``."""
        rows = []
        for run_id in self._ids(run_ids):
            for t in self.store.tasks(run_id):
                row = asdict(t)
                del row["inputs"]
                row["invoked"] = len(t.invoked)
                row.update(input_bytes=t.input_bytes, download_bytes=t.download_bytes,
                           download_s=t.download_s, n_inputs=len(t.inputs))
                rows.append(row)
        return _pandas().DataFrame(rows)

    def inputs(self, run_ids: Sequence[str] | None = None) -> pd.DataFrame:
        """One row per (task, dependency): bytes, source (redis / inline / local), time."""
        rows = [{"run_id": t.run_id, "task_id": t.task_id, "function": t.function, **asdict(i)}
                for run_id in self._ids(run_ids) for t in self.store.tasks(run_id)
                for i in t.inputs]
        return _pandas().DataFrame(rows)

    def export(self, directory: str | Path, fmt: str = "parquet",
               run_ids: Sequence[str] | None = None) -> list[Path]:
        """Write every table to ``directory/<table>.<fmt>``; returns the paths."""
        if fmt not in ("parquet", "csv"):
            raise ValueError(f"export format {fmt!r}: use 'parquet' or 'csv'")
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        ids = self._ids(run_ids)
        frames = {"runs": _pandas().DataFrame([r.to_dict() for r in self.store.runs(ids)]),
                  "invocations": self.invocations(ids), "tasks": self.tasks(ids),
                  "inputs": self.inputs(ids)}
        paths = []
        for name in TABLES:
            frame, path = frames[name], out / f"{name}.{fmt}"
            if "planner_options" in frame:  # nested dicts: keep them as JSON text
                frame = frame.assign(planner_options=frame["planner_options"].map(
                    lambda v: json.dumps(v, sort_keys=True)))
            if fmt == "parquet":
                frame.to_parquet(path, index=False)
            else:
                frame.to_csv(path, index=False)
            paths.append(path)
        return paths

    def _ids(self, run_ids: Sequence[str] | None) -> list[str]:
        return list(run_ids) if run_ids is not None else self.run_ids()

