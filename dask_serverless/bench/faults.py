"""Tasks that misbehave on purpose, for ``benchmarks/faults.py`` and the fleet tests:
importable by every worker (a package module, pickled by reference)."""

from __future__ import annotations

import os
import time


def die_once(marker_dir: str) -> int:
    """The first run writes the time and kills its worker; a later run writes the time
    it started and returns."""
    died = os.path.join(marker_dir, "died")
    if not os.path.exists(died):
        with open(died, "w") as f:
            f.write(repr(time.time()))
        os._exit(3)
    with open(os.path.join(marker_dir, "restarted"), "w") as f:
        f.write(repr(time.time()))
    return 1


def slow_first_time(i: int, marker: str, slow_i: int, seconds: float) -> int:
    """Part ``i`` of a straggler run: 0.2 s, but ``seconds`` for part ``slow_i`` the
    first time (``marker`` remembers it)."""
    if i == slow_i and not os.path.exists(marker):
        with open(marker, "w") as f:
            f.write("slow")
        time.sleep(seconds)
    else:
        time.sleep(0.2)
    return i
