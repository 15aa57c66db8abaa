"""Exceptions that travel from a worker to the client with their type and attributes.

Pickle rebuilds an exception by calling its class with ``exc.args``; a class whose
``__init__`` takes other arguments than it passes to ``super().__init__`` (``class
BadRecord(ValueError): def __init__(self, record, why)``) then fails to unpickle.
``portable(exc)`` wraps such an exception so that it unpickles to an instance of the same
class built without calling ``__init__``: ``args``, the instance ``__dict__`` (its
attributes and notes) set back as they were.
"""

from __future__ import annotations

import pickle
from typing import Any


def rebuild(cls: type[BaseException], args: tuple, state: dict[str, Any] | None) -> BaseException:
    """An instance of ``cls`` with ``args`` and ``state``, ``__init__`` not called."""
    exc = cls.__new__(cls, *args)
    exc.args = args
    if state:
        exc.__dict__.update(state)
    return exc


class _Portable:
    """Pickles as a call of ``rebuild``: unpickling gives the exception itself."""

    __slots__ = ("exc",)

    def __init__(self, exc: BaseException):
        self.exc = exc

    def __reduce__(self) -> tuple:
        exc = self.exc
        return rebuild, (type(exc), exc.args, getattr(exc, "__dict__", None) or None)


def portable(exc: BaseException) -> Any:
    """``exc`` when pickle round-trips it as it is, else a wrapper that unpickles to an
    equivalent exception (see module docstring)."""
    try:
        pickle.loads(pickle.dumps(exc, protocol=5))
    except Exception:
        return _Portable(exc)
    return exc
