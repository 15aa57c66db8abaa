"""Redis access: key names, the run store, serialisation and the embedded server."""

from .keys import RunKeys
from .store import RunStore, connect

__all__ = ["RunKeys", "RunStore", "connect"]
