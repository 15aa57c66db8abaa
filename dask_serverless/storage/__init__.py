"""Redis access: key names, the run store, serialisation and the embedded server."""

from .keys import MetricsKeys, RunKeys
from .store import RunStore, connect

__all__ = ["MetricsKeys", "RunKeys", "RunStore", "connect"]
