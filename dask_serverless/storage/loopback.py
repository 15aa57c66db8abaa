"""Who listens on a loopback port: before we hand a server on this machine a password,
credentials or run data, we make sure it is ours.

A loopback port is anybody's: when a server of ours dies (or before the one we start has
bound its port), another local user can listen there and collect what our clients send: a
Redis ``AUTH`` with its password, run data, signed Lambda API requests with the functions'
environment. ``owner(url)`` tells who listens at a loopback ``redis://`` or ``http://``
URL, from the kernel's socket tables (``/proc/net/tcp``, ``/proc/net/tcp6``: Linux):

- ``OURS``: every socket a loopback client could reach there belongs to this user (or
  root, who can read everything of ours anyway);
- ``FOREIGN``: one belongs to another user: do not connect;
- ``NOBODY``: nothing listens there (yet);
- ``UNKNOWN``: not a loopback TCP URL, or no socket tables (not Linux): cannot tell.
"""

from __future__ import annotations

import enum
import os
import socket
import struct
from urllib.parse import urlsplit

_TABLES = ("/proc/net/tcp", "/proc/net/tcp6")
_LISTEN = "0A"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


class Owner(enum.Enum):
    OURS = "ours"
    FOREIGN = "foreign"
    NOBODY = "nobody"
    UNKNOWN = "unknown"


def _hex(address: bytes) -> str:
    """An address as the kernel's tables print it (32-bit words in host byte order)."""
    return "".join(f"{struct.unpack('=I', address[i:i + 4])[0]:08X}"
                   for i in range(0, len(address), 4))


# the local addresses whose listeners a client of 127.0.0.1 or ::1 can reach
_REACHABLE = {_hex(socket.inet_pton(socket.AF_INET, a)) for a in ("127.0.0.1", "0.0.0.0")} | {
    _hex(socket.inet_pton(socket.AF_INET6, a))
    for a in ("::1", "::", "::ffff:127.0.0.1", "::ffff:0.0.0.0")}


def listener_uids(port: int) -> set[int] | None:
    """The users owning the TCP sockets that listen on ``port`` where a loopback client
    connects (None: no socket tables here)."""
    uids: set[int] = set()
    seen = False
    for table in _TABLES:
        try:
            with open(table) as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        seen = True
        for line in lines:
            fields = line.split()
            if len(fields) < 8 or fields[3] != _LISTEN:
                continue
            address, _, hex_port = fields[1].rpartition(":")
            if int(hex_port, 16) == port and address in _REACHABLE:
                uids.add(int(fields[7]))
    return uids if seen else None


def owner(url: str) -> Owner:
    """Who listens at ``url`` (see the module docstring)."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError:
        return Owner.UNKNOWN
    if host not in LOOPBACK_HOSTS or parts.scheme in ("unix", "") or port is None:
        return Owner.UNKNOWN
    uids = listener_uids(port)
    if uids is None:
        return Owner.UNKNOWN
    if not uids:
        return Owner.NOBODY
    return Owner.OURS if uids <= {os.geteuid(), 0} else Owner.FOREIGN


def describe(url: str) -> str:
    """``host:port`` of ``url`` and who listens there, for messages (no password)."""
    parts = urlsplit(url)
    uids = listener_uids(parts.port or 0) or set()
    return (f"{parts.hostname}:{parts.port} (listened on by user id "
            f"{', '.join(str(u) for u in sorted(uids))}, not this user's "
            f"{os.geteuid()})")
