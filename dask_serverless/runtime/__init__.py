"""The client side of a run."""

from .get import serverless_get
from .run import Run

__all__ = ["Run", "serverless_get"]
