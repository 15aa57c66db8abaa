"""A local pool's scratch directory (container logs, status files, the fork server's log)
under the system's temporary directory, named after the process that owns it: removed when
the pool closes, and, when a pool starts, left-overs of processes that are gone (killed
before they could clean up) are removed too."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time

logger = logging.getLogger(__name__)

PREFIX = "dask-serverless-pool-"
UNNAMED_MAX_AGE_S = 86400.0  # a directory without its owner's pid (older versions): a day


def make_pool_dir() -> str:
    """A new scratch directory for a pool of this process (stale ones removed first)."""
    remove_stale()
    return tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-")


def remove_pool_dir(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


def remove_stale(base: str | None = None) -> int:
    """Remove this user's pool directories whose owner process is gone; returns how many."""
    removed = 0
    try:
        entries = list(os.scandir(base or tempfile.gettempdir()))
    except OSError:
        return 0
    for entry in entries:
        if not entry.name.startswith(PREFIX) or not _stale(entry):
            continue
        shutil.rmtree(entry.path, ignore_errors=True)
        removed += not os.path.exists(entry.path)
    if removed:
        logger.info("removed %d scratch directories of local pools whose process is gone",
                    removed)
    return removed


def _stale(entry: os.DirEntry) -> bool:
    try:
        info = entry.stat(follow_symlinks=False)
    except OSError:
        return False
    if not entry.is_dir(follow_symlinks=False) or info.st_uid != os.getuid():
        return False
    owner = entry.name[len(PREFIX):].split("-", 1)[0]
    if owner.isdigit():
        return not _alive(int(owner))
    return time.time() - info.st_mtime > UNNAMED_MAX_AGE_S


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process has that pid now
        return True
    return True
