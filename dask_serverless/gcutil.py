"""Python's cyclic garbage collector around work that makes millions of long-lived objects
(a DAG, a run spec's slices) and no garbage: collections during it find nothing and, with
that many objects tracked, cost seconds each."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def gc_paused() -> Iterator[None]:
    """The collector off inside (as it was after)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()
