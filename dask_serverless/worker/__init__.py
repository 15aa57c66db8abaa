"""What runs inside a worker, the same on every backend."""

from .executor import InvocationReport, execute
from .payload import Invocation, RunSpec

__all__ = ["Invocation", "InvocationReport", "RunSpec", "execute"]
