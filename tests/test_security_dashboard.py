"""The dashboard's surfaces against another local user: headless Chromium (screenshots)
offers no DevTools port (whoever reaches one drives a browser running as this user)."""

from __future__ import annotations

import os

import pytest

from dask_serverless.dashboard.screenshot import Chromium, find_chromium


def _descendants(pid: int) -> set[int]:
    """``pid`` and every process below it."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = set(), [pid]
    while todo:
        p = todo.pop()
        found.add(p)
        todo.extend(children.get(p, ()))
    return found


def _socket_inodes(pids: set[int]) -> set[str]:
    inodes = set()
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    return inodes


def _tcp_listeners() -> dict[str, int]:
    """inode -> port of every listening TCP socket (IPv4 and IPv6)."""
    out = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.read().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A":  # LISTEN
                    out[fields[9]] = int(fields[1].rsplit(":", 1)[1], 16)
    return out


@pytest.mark.skipif(find_chromium() is None or not os.path.exists("/proc/net/tcp"),
                    reason="needs Chromium and Linux /proc")
def test_headless_chromium_listens_on_no_port():
    with Chromium() as browser:
        assert browser.call("Browser.getVersion")["product"]  # driven over its pipes
        pids = _descendants(browser.proc.pid)
        listening = {inode: port for inode, port in _tcp_listeners().items()
                     if inode in _socket_inodes(pids)}
        assert listening == {}, f"Chromium listens on TCP ports {sorted(listening.values())}"
