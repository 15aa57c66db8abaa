"""User hints on functions: ``@dask_serverless.hints(io="linear", memory=2048)``.

Hints reach ``TaskNode.annotations`` of every task running the function, like
``dask.annotate(serverless={...})`` (which wins for the tasks it covers):

- ``io``: how output bytes grow with input bytes, ``output ~ input ** b``: ``"constant"``
  (b=0), ``"linear"`` (1), ``"quadratic"`` (2) or a number b >= 0;
- ``time``: the same for execution time vs input bytes;
- ``memory``: worker memory in MB for the function's tasks;
- ``size``: for tasks without dependencies, the bytes of data the task makes: a number,
  or a callable taking the task's arguments (``size=lambda i, n: 8 * n``). The predictor
  uses it as the input size of such tasks (see ``sizes``), so their time and output
  follow the data size a run asks for.

The predictor uses ``io`` / ``time`` only while it has too few samples of its own.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from .plan import ResourceConfig

ATTRIBUTE = "__dask_serverless_hints__"
_NAMED = {"constant": 0.0, "linear": 1.0, "quadratic": 2.0}


def exponent(spec: Any, what: str = "io") -> float:
    """The exponent b that a hint like ``"linear"`` or ``1.5`` stands for."""
    if isinstance(spec, str):
        if spec in _NAMED:
            return _NAMED[spec]
    elif isinstance(spec, int | float) and not isinstance(spec, bool) and spec >= 0:
        return float(spec)
    raise ValueError(f"hint {what}={spec!r} must be one of {sorted(_NAMED)} or a number >= 0")


def hints(*, io: Any = None, time: Any = None, memory: int | None = None,
          size: Any = None) -> Callable:
    """Decorate a function with hints (see module docstring); validated at once (a
    ``size`` callable when the DAG is built, naming the function and task)."""
    values: dict[str, Any] = {}
    if io is not None:
        exponent(io, "io")
        values["io"] = io
    if time is not None:
        exponent(time, "time")
        values["time"] = time
    if memory is not None:
        ResourceConfig(memory)  # raises a PlanError naming the bad value
        values["memory"] = memory
    if size is not None:
        if not callable(size):
            from .sizes import nbytes

            nbytes(size, "hint size")
        values["size"] = size

    def decorate(func: Callable) -> Callable:
        try:
            setattr(func, ATTRIBUTE, {**getattr(func, ATTRIBUTE, {}), **values})
            return func
        except (AttributeError, TypeError):  # builtins take no attributes: wrap them
            @functools.wraps(func)
            def wrapper(*args, **kwargs):
                return func(*args, **kwargs)

            setattr(wrapper, ATTRIBUTE, dict(values))
            return wrapper

    return decorate


def hints_of(func: Any) -> dict[str, Any]:
    """Hints attached to ``func`` (looking through ``functools.partial``)."""
    while isinstance(func, functools.partial):
        func = func.func
    return dict(getattr(func, ATTRIBUTE, None) or {})
