"""Do two schedulers' results agree? Exact for ints and strings, close for floats."""

from __future__ import annotations

import math
from typing import Any


def same_result(a: Any, b: Any, rtol: float = 1e-7) -> bool:
    """Structural equality of results (numpy, pandas, containers) up to ``rtol``; lists
    and tuples compare alike (schedulers differ in which they return)."""
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(same_result(x, y, rtol) for x, y in zip(a, b,
                                                                               strict=True))
    if type(a) is not type(b) and not (_number(a) and _number(b)):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same_result(a[k], b[k], rtol) for k in a)
    if _number(a):
        return math.isclose(a, b, rel_tol=rtol, abs_tol=1e-12) or (a != a and b != b)
    module = type(a).__module__.split(".")[0]
    if module == "numpy":
        import numpy as np

        if a.shape != b.shape or a.dtype != b.dtype:
            return False
        if a.dtype.kind in "fc":
            return bool(np.allclose(a, b, rtol=rtol, atol=1e-12, equal_nan=True))
        return bool(np.array_equal(a, b))
    if module == "pandas":
        import pandas as pd

        check = pd.testing.assert_series_equal if isinstance(a, pd.Series) else \
            pd.testing.assert_frame_equal
        try:
            check(a, b, check_exact=False, rtol=rtol)
        except AssertionError:
            return False
        return True
    return a == b


def _number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)
