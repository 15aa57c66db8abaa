"""History survives the process: the embedded metrics redis-server keeps its data in a
data directory and is shared by processes running at the same time."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import redis

from dask_serverless.metrics.server import MetricsServer

COMPUTE = textwrap.dedent("""
    import sys, time, dask
    from dask import delayed
    from dask_serverless import serverless_get
    from dask_serverless.runtime import get as g
    for _ in range(int(sys.argv[1])):
        x = delayed(sum)([delayed(abs)(-i) for i in range(4)])
        assert dask.compute(x, scheduler=serverless_get)[0] == 6
        print(g.last_run.record.run_id, flush=True)
        time.sleep(float(sys.argv[2]))
""")


def _env(data_dir, **extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("DASK_SERVERLESS__")}
    env["DASK_SERVERLESS__METRICS__DATA_DIR"] = str(data_dir)
    env.update(extra)
    return env


def _compute(data_dir, runs=1, pause=0.0, **extra):
    return subprocess.Popen([sys.executable, "-c", COMPUTE, str(runs), str(pause)],
                            env=_env(data_dir, **extra), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _finish(proc) -> list[str]:
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == 0, err
    return out.split()


def _cli(data_dir, *args) -> str:
    done = subprocess.run([sys.executable, "-m", "dask_serverless.cli", *args],
                          env=_env(data_dir), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _server_stopped(data_dir) -> bool:
    return not (data_dir / "server.url").exists()


def test_history_survives_the_process_and_the_cli_sees_it(tmp_path):
    first = _finish(_compute(tmp_path))
    assert _server_stopped(tmp_path)  # the last user stopped it, data saved on disk
    second = _finish(_compute(tmp_path))
    listing = _cli(tmp_path, "runs")
    assert first[0] in listing and second[0] in listing
    assert f"run {first[0]}" in _cli(tmp_path, "show", first[0])
    assert _server_stopped(tmp_path)


def test_two_processes_at_once_share_the_server(tmp_path):
    slow = _compute(tmp_path, runs=3, pause=0.7)  # still running when `quick` exits
    quick = _compute(tmp_path, runs=1)
    ids = _finish(quick) + _finish(slow)
    assert len(set(ids)) == 4
    assert _server_stopped(tmp_path)
    listing = _cli(tmp_path, "runs")
    assert all(i in listing for i in ids)


def test_shared_server_stops_with_its_last_user_and_keeps_data(tmp_path):
    a, b = MetricsServer(tmp_path), MetricsServer(tmp_path)
    url = a.acquire()
    assert b.acquire() == url
    redis.Redis.from_url(url).set("kept", "yes")
    a.release()
    assert redis.Redis.from_url(url).get("kept") == b"yes"  # b still uses it
    b.release()
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()
    c = MetricsServer(tmp_path)
    try:
        assert redis.Redis.from_url(c.acquire()).get("kept") == b"yes"
    finally:
        c.release()


def test_stale_url_file_starts_a_new_server(tmp_path):
    from dask_serverless.storage.embedded import free_port

    (tmp_path / "server.url").write_text(f"redis://:old@127.0.0.1:{free_port()}/0\n")
    server = MetricsServer(tmp_path)
    try:
        url = server.acquire()
        assert redis.Redis.from_url(url).config_get("dir")["dir"] == str(tmp_path.resolve())
    finally:
        server.release()
    assert _server_stopped(tmp_path)


def test_without_redis_server_metrics_degrade_to_the_process(tmp_path):
    proc = _compute(tmp_path, DASK_SERVERLESS__EMBEDDED__PREFER="fakeredis")
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == 0, err
    assert len(out.split()) == 1  # recorded, in the in-process Redis
    assert "will not outlive this process" in err
    assert not (tmp_path / "server.url").exists() and not (tmp_path / "appendonlydir").exists()
