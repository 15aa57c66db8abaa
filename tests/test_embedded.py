"""Zero configuration: a fresh process gets a private Redis, computes, and leaves nothing
running behind."""

from __future__ import annotations

import os
import subprocess
import sys
import time

CODE = """
import dask, dask.array as da
from dask_serverless import serverless_get, session
x = da.random.RandomState(0).random((400, 400), chunks=100)
got = dask.compute((x @ x.T).sum(), scheduler=serverless_get)[0]
want = dask.compute((x @ x.T).sum(), scheduler="sync")[0]
emb = session._embedded
print(abs(got - want) <= 1e-9 * abs(want), emb.kind, emb.url, emb._proc.pid)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie is as good as gone
        return f.read().split()[2] != "Z"


def test_zero_config_fresh_process_starts_and_stops_its_own_redis(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("DASK_")}
    env["DASK_SERVERLESS__METRICS__DATA_DIR"] = str(tmp_path / "metrics")
    proc = subprocess.run([sys.executable, "-c", CODE], env=env, capture_output=True,
                          text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    same, kind, url, pid = proc.stdout.split()
    assert same == "True" and kind == "redis-server"
    assert url.startswith("redis://:") and "@127.0.0.1:" in url and not url.endswith(":6379/0")
    for _ in range(50):
        if not _alive(int(pid)):
            break
        time.sleep(0.1)
    assert not _alive(int(pid)), "the embedded redis-server outlived its process"
