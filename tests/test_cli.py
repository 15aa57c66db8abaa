"""The command line and housekeeping as a newcomer meets them: clean errors for bad
arguments and output paths, runs named by their functions, a failed run's task and
reason, task output through ``logs``, per-call keywords checked, and no temporary
directories left behind (real subprocess workers and Redis)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import warnings

import dask
import pytest
from dask import delayed

from dask_serverless import cli, serverless_get
from dask_serverless.backends.aws_lambda.local_server import start_process
from dask_serverless.backends.local import scratch
from dask_serverless.backends.local.pool import LocalPool
from dask_serverless.runtime import get as get_mod


def double(x):
    print(f"doubling {x}")
    return 2 * x


def total(*xs):
    return sum(xs)


def refuse(x):
    raise ValueError(f"cannot take {x}")


def test_limit_must_be_positive(capsys):
    for bad in ("0", "-1", "many"):
        with pytest.raises(SystemExit) as info:
            cli.main(["runs", "--limit", bad])
        assert info.value.code == 2
        assert "--limit" in capsys.readouterr().err


def test_demo_says_what_ran_in_words(any_redis, capsys):
    """The demo's summary: tasks, invocations, cold and warm starts, and the plan's task
    groups (was "workers: 2 (47 planned)"), with the commands that show more."""
    assert cli.main(["demo", "--size", "400", "--chunk", "100"]) == 0
    out = capsys.readouterr().out
    assert "matches scheduler='sync': True" in out
    run = get_mod.last_run.record
    assert (f"{run.tasks} tasks ran in {run.invocations} worker invocations "
            f"({run.cold_starts} started a new container, {run.warm_starts} reused a warm "
            "one)") in out
    assert f"plan: {run.workers_planned} task groups" in out
    assert f"`dask-serverless show {run.run_id}`" in out and "workers:" not in out


def test_output_paths_are_checked_before_any_work(tmp_path, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(SystemExit, match="exists and is not a directory"):
        cli.main(["metrics", "export", "-o", str(a_file)])
    with pytest.raises(SystemExit, match="is a directory"):
        cli.main(["report", "abc", "-o", str(tmp_path)])
    with pytest.raises(SystemExit, match="does not exist"):
        cli.main(["report", "abc", "-o", str(tmp_path / "no" / "such" / "r.html")])


def test_runs_show_and_logs_name_functions_tasks_and_output(any_redis, capsys):
    parts = [delayed(double)(i, dask_key_name=f"double-{i}") for i in range(3)]
    assert dask.compute(delayed(total)(*parts), scheduler=serverless_get) == (6,)
    ok = get_mod.last_run.run_id
    with pytest.raises(ValueError, match="cannot take 7"):
        dask.compute(delayed(refuse)(7, dask_key_name="refuse-7"), scheduler=serverless_get)
    failed = get_mod.last_run.run_id
    capsys.readouterr()

    assert cli.main(["runs", "--limit", "2"]) == 0
    listing = capsys.readouterr().out
    assert "total <- double" in listing and "refuse" in listing

    assert cli.main(["show", failed]) == 0
    shown = capsys.readouterr().out
    assert "status failed" in shown
    assert "failed: task 'refuse-7' on worker" in shown and "ValueError: cannot take 7" in shown

    assert cli.main(["logs", ok]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert sorted(line.split(") ", 1)[1] for line in lines) == [
        f"doubling {i}" for i in range(3)]
    assert all("STDOUT" in line and "('double-" in line for line in lines)
    assert cli.main(["logs", ok, "--task", "double-1"]) == 0
    assert capsys.readouterr().out.count("doubling") == 1
    assert cli.main(["logs", "no-such-run"]) == 2


def test_misspelt_keyword_is_a_type_error_naming_the_accepted_ones(any_redis):
    with pytest.raises(TypeError, match=r"'memroy' \(did you mean 'memory'\?\).*parallelism"):
        dask.compute(delayed(total)(1, 2), scheduler=serverless_get, memroy=2048)
    with pytest.raises(TypeError, match=r"'planer' \(did you mean 'planner'\?\)"):
        dask.compute(delayed(total)(1, 2), scheduler=serverless_get, planer="wukong",
                     retries=2)


def test_keywords_for_other_schedulers_are_ignored_with_a_warning(any_redis):
    # Dask forwards compute's keywords to the scheduler (its own tests pass a bogus one);
    # keywords of Dask's local schedulers mean nothing here: accepted, no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert dask.compute(delayed(total)(1, 2), scheduler=serverless_get,
                            num_workers=4) == (3,)
    with pytest.warns(UserWarning, match=r"ignores keyword arguments 'bogus_keyword', "
                                         r"'retries': it accepts planner"):
        assert dask.compute(delayed(total)(1, 2), scheduler=serverless_get,
                            bogus_keyword=True, retries=3) == (3,)


def test_pool_removes_its_directory_and_stale_ones_of_dead_processes(tmp_path, monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_path / f"{scratch.PREFIX}{dead.pid}-abc"
    stale.mkdir()
    (stale / "c0.log").write_text("old")
    alive = tmp_path / f"{scratch.PREFIX}{os.getppid()}-def"  # its owner still runs
    alive.mkdir()
    pool = LocalPool(max_containers=1, keep_alive=5, start_method="spawn")
    try:
        mine = [p for p in tmp_path.iterdir() if p.name.startswith(f"{scratch.PREFIX}"
                                                                   f"{os.getpid()}-")]
        assert len(mine) == 1
        assert not stale.exists() and alive.exists()
    finally:
        pool.close()
    assert not mine[0].exists()


def test_local_lambda_removes_its_temporary_directory_on_sigterm(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    proc, _url = start_process()
    made = [p.name for p in tmp_path.iterdir()]
    assert any(name.startswith("dask-serverless-local-lambda-") for name in made), made
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    deadline = time.monotonic() + 10
    while any(tmp_path.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert list(tmp_path.iterdir()) == []
