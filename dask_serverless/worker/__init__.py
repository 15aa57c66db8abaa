"""What runs inside a worker, the same on every backend: ``execute`` one invocation."""

from .executor import execute

__all__ = ["execute"]
