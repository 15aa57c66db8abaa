"""Files and directories only this user may read: secrets, credentials, run data."""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path


def state_dir() -> Path:
    """This user's private directory for logs and other state ($XDG_STATE_HOME/
    dask-serverless, else ~/.local/state/dask-serverless), created 0700."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"),
                                                            ".local", "state")
    path = Path(base) / "dask-serverless"
    make_private(path)
    return path


def make_private(directory: Path) -> None:
    """Create ``directory`` (and parents) for this user only: the directory 0700, the files
    already in it 0600 (an older version may have left them readable by others)."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    if directory.stat().st_mode & 0o077:
        directory.chmod(0o700)
    for entry in directory.iterdir():
        with contextlib.suppress(OSError):
            if entry.is_file() and not entry.is_symlink() and entry.stat().st_mode & 0o077:
                entry.chmod(0o600)


def write_private(path: Path, text: str) -> None:
    """Replace ``path`` with ``text``, mode 0600 from creation (never readable by others,
    even for a moment; readers see the old or the new file whole). A missing directory is
    created 0700."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
