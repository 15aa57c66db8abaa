"""Another user of this machine listening on a loopback port (for the port-squatting tests):
a process running as ``nobody`` that accepts connections and records what it receives.
Needs root (to switch user) and ``setpriv``; ``available()`` says whether it can run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time

NOBODY = 65534
_SERVER = """
import socket, sys, threading
s = socket.socket()
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen(16)
print("ready", flush=True)
def take(c):
    with c:
        while True:
            data = c.recv(65536)
            if not data:
                return
            sys.stdout.write(data.hex() + "\\n")
            sys.stdout.flush()
            c.sendall(bytes.fromhex(sys.argv[2]))  # e.g. what a Redis answers a PING
while True:
    threading.Thread(target=take, args=(s.accept()[0],), daemon=True).start()
"""


def available() -> bool:
    return (os.geteuid() == 0 and shutil.which("setpriv") is not None
            and os.path.exists("/proc/net/tcp"))


class Squatter:
    """Listen on ``port`` as user ``nobody``, answering ``reply`` to whatever comes;
    ``received()`` is everything sent to it."""

    def __init__(self, port: int, reply: bytes = b"+PONG\r\n"):
        self.port = port
        self._out = tempfile.TemporaryFile()  # noqa: SIM115 (closed by close())
        self.proc = subprocess.Popen(
            ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
             sys.executable, "-c", _SERVER, str(port), reply.hex()], stdout=self._out,
            stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while b"ready" not in self._read():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the squatter could not listen on port {port}")
            time.sleep(0.02)

    def _read(self) -> bytes:
        self._out.seek(0)
        return self._out.read()

    def received(self) -> bytes:
        lines = self._read().decode().split()
        return b"".join(bytes.fromhex(x) for x in lines if x != "ready")

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self._out.close()

    def __enter__(self) -> Squatter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
