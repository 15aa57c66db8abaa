"""Fan-out / fan-in stages of sleeping tasks with a tunable output size."""

from __future__ import annotations

import hashlib
import random
import time
from typing import Any

from .base import Workload, from_collections, sized


def _bytes_from(seed: bytes, nbytes: int) -> bytes:
    return random.Random(hashlib.blake2b(seed).digest()).randbytes(nbytes)


def produce(stage: int, index: int, upstream: bytes, sleep_s: float, nbytes: int) -> bytes:
    """Sleep, then return ``nbytes`` derived from the input (so work depends on it)."""
    time.sleep(sleep_s)
    return _bytes_from(b"%d:%d:" % (stage, index) + upstream[:64], nbytes)


def combine(parts: list[bytes], sleep_s: float, nbytes: int) -> bytes:
    time.sleep(sleep_s)
    digest = hashlib.blake2b(b"".join(hashlib.blake2b(p).digest() for p in parts)).digest()
    return _bytes_from(digest, nbytes)


def hexdigest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fanout(quick: bool = False, **params: Any) -> Workload:
    """``stages`` x (fan out to ``width`` sleeping producers, fan back in)."""
    from dask import delayed

    p = sized(quick, params,
              {"width": 16, "stages": 2, "sleep_s": 0.02, "out_bytes": 100_000},
              {"width": 64, "stages": 3, "sleep_s": 0.05, "out_bytes": 1_000_000})
    head = delayed(_bytes_from)(b"root", p["out_bytes"])
    for s in range(p["stages"]):
        parts = [delayed(produce)(s, i, head, p["sleep_s"], p["out_bytes"])
                 for i in range(p["width"])]
        head = delayed(combine)(parts, p["sleep_s"], p["out_bytes"])
    return from_collections(
        "fanout", f"{p['stages']} x fan-out {p['width']} sleep {p['sleep_s']} s, "
        f"{p['out_bytes']} B outputs", [delayed(hexdigest)(head)], p)
