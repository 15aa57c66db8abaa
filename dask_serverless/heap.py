"""glibc heap settings for worker processes: reuse freed blocks instead of faulting in
fresh pages for every array.

By default glibc hands blocks above a (dynamic) threshold to ``mmap`` and gives freed
heap back to the kernel as soon as the free top passes twice that threshold; with the
arenas of a few task threads it keeps creating and dropping heaps. A worker that makes
20 MB blocks in a loop then faults in every page of every block again: SVD's 81 tasks
took 117 000 page faults per run in a local container against 20 000 with these
settings, and ran ~10 % slower. So a worker serves blocks up to
``MMAP_THRESHOLD`` from its heap, grows the heap in steps of ``TOP_PAD`` and keeps up to
``TRIM_THRESHOLD`` of free heap at the top, each at most a share of its memory
(``HEAP_SHARE``) so that a small container keeps room under its cap. A local container
gives its free heap back (``release_free``) once idle for ``IDLE_RELEASE_S``: warm
containers share the machine's memory, and back-to-back invocations keep their pages.
Kept pages count against a container's address-space cap, so a task that runs out of
memory gets them back and one more try (``worker.executor``). Elsewhere than glibc these
are no-ops. Lambda keeps glibc's defaults: its cap is on resident memory, where kept
pages would end in the function being killed rather than in a ``MemoryError``.
"""

from __future__ import annotations

import ctypes
import functools
import logging

logger = logging.getLogger(__name__)

# mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -2, -3, -8
MMAP_THRESHOLD = 32 * 2**20  # glibc's largest dynamic threshold
TOP_PAD = 64 * 2**20
TRIM_THRESHOLD = 256 * 2**20
HEAP_SHARE = 4  # each setting at most a quarter of the worker's memory
IDLE_RELEASE_S = 2.0
ARENAS = 2  # glibc reserves 64 MB of address space per arena, up to 8 per core


@functools.cache
def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt  # noqa: B018 - raises AttributeError off glibc
        libc.malloc_trim  # noqa: B018
    except (OSError, AttributeError):
        return None
    return libc


def tune(memory_mb: int) -> None:
    """Set this process's heap for a worker of ``memory_mb`` (module docstring); arenas
    are limited first, as container runtimes advise, so that task threads do not
    reserve address space a memory cap would count."""
    libc = _libc()
    if libc is None:
        return
    cap = memory_mb * 2**20 // HEAP_SHARE
    for param, value in ((_M_ARENA_MAX, ARENAS),
                         (_M_MMAP_THRESHOLD, min(MMAP_THRESHOLD, cap)),
                         (_M_TOP_PAD, min(TOP_PAD, cap)),
                         (_M_TRIM_THRESHOLD, min(TRIM_THRESHOLD, cap))):
        if not libc.mallopt(param, value):
            logger.debug("mallopt(%d, %d) refused", param, value)


def release_free() -> bool:
    """Give the heap's free pages back to the kernel (what is live stays); whether any
    were."""
    libc = _libc()
    return libc is not None and bool(libc.malloc_trim(0))
