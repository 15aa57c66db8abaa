"""Errors, crashes, memory caps, cold/warm reuse, cleanup, callbacks and annotations."""

from __future__ import annotations

import os
import signal
import time

import dask
import numpy as np
import pytest
import redis
from dask import delayed
from dask.callbacks import Callback
from dask.diagnostics import ProgressBar

from dask_serverless import serverless_get
from dask_serverless.backends.local import LocalBackend
from dask_serverless.errors import WorkerCrashedError
from dask_serverless.runtime import get as get_mod


class Boom(ValueError):
    pass


def explode(x):
    if x == 3:
        raise Boom(f"bad value {x}")
    return x


def slow_then_kill(x):
    if x == 1:
        time.sleep(0.3)
        os.kill(os.getpid(), signal.SIGKILL)
    return x


def allocate(mb):
    return np.ones(mb * 2**20 // 8).sum()


@pytest.fixture
def backend():
    b = LocalBackend(max_containers=2, keep_alive=30)
    yield b
    b.close()


def test_task_exception_reraised_with_type_and_worker_traceback(any_redis):
    parts = [delayed(explode)(i) for i in range(6)]
    with pytest.raises(Boom, match="bad value 3") as info:
        dask.compute(delayed(sum)(parts), scheduler=serverless_get)
    notes = "\n".join(getattr(info.value, "__notes__", []))
    assert "explode" in notes and "Traceback" in notes and "failed on worker" in notes


def test_killed_worker_gives_clear_error_not_hang(any_redis, backend):
    parts = [delayed(slow_then_kill)(i) for i in range(4)]
    t0 = time.monotonic()
    with pytest.raises(WorkerCrashedError, match="SIGKILL") as info:
        dask.compute(delayed(sum)(parts), scheduler=serverless_get, backend=backend,
                     parallelism=4)
    assert time.monotonic() - t0 < 30
    assert "memory_mb=1024" in str(info.value)


def test_oom_under_small_memory_cap(any_redis, backend):
    with pytest.raises(MemoryError) as info:
        dask.compute(delayed(allocate)(400), scheduler=serverless_get, backend=backend,
                     memory=128)
    notes = "\n".join(info.value.__notes__)
    assert "allocate" in notes and "memory_mb=128" in notes
    # the same task fits a larger config
    (total,) = dask.compute(delayed(allocate)(40), scheduler=serverless_get, backend=backend,
                            memory=256)
    assert total == 40 * 2**20 // 8


def test_cold_then_warm_reuse(any_redis, backend):
    x = delayed(sum)([delayed(explode)(i) for i in (1, 2)])
    assert backend.pool.stats()["cold_starts"] == 0
    dask.compute(x, scheduler=serverless_get, backend=backend, parallelism=1)
    first = backend.pool.stats()
    assert first["cold_starts"] >= 1
    dask.compute(x, scheduler=serverless_get, backend=backend, parallelism=1)
    second = backend.pool.stats()
    assert second["cold_starts"] == first["cold_starts"]
    assert second["warm_starts"] > first["warm_starts"]


def test_keep_alive_expiry_makes_next_start_cold(any_redis):
    b = LocalBackend(max_containers=2, keep_alive=0.2)
    try:
        x = delayed(explode)(1)
        dask.compute(x, scheduler=serverless_get, backend=b)
        time.sleep(1.0)
        assert b.pool.stats()["containers"] == 0
        dask.compute(x, scheduler=serverless_get, backend=b)
        assert b.pool.stats()["cold_starts"] == 2
    finally:
        b.close()


def test_intermediates_gone_after_run(any_redis):
    client = redis.Redis.from_url(any_redis)
    before = set(client.keys("ds:*"))
    a = [delayed(explode)(i) for i in (0, 1, 2)]
    x = delayed(sum)([delayed(sum)(a[:2]), delayed(sum)(a[1:])])
    dask.compute(x, scheduler=serverless_get, parallelism=3)
    run_id = get_mod.last_run.run_id
    leftover = {k for k in set(client.keys("ds:*")) - before if run_id.encode() in k}
    assert leftover == set()


def test_progress_bar_and_callbacks(any_redis, capsys):
    seen = {"start": 0, "pretask": [], "posttask": [], "finish": None}

    class Recorder(Callback):
        def _start(self, dsk):
            seen["start"] += 1

        def _pretask(self, key, dsk, state):
            seen["pretask"].append(key)

        def _posttask(self, key, result, dsk, state, worker_id):
            seen["posttask"].append(key)

        def _finish(self, dsk, state, errored):
            seen["finish"] = errored

    parts = [delayed(explode)(i, dask_key_name=f"p{i}") for i in (0, 1, 2)]
    with ProgressBar(dt=0.01), Recorder():
        assert dask.compute(delayed(sum)(parts), scheduler=serverless_get) == (3,)
    assert seen["start"] == 1 and seen["finish"] is False
    assert {"p0", "p1", "p2"} <= set(seen["posttask"]) and set(seen["pretask"]) == set(
        seen["posttask"])
    assert "100%" in capsys.readouterr().out


def test_callback_finish_reports_error(any_redis):
    errored = []

    class Fin(Callback):
        def _finish(self, dsk, state, failed):
            errored.append(failed)

    with Fin(), pytest.raises(Boom):
        dask.compute(delayed(explode)(3), scheduler=serverless_get)
    assert errored == [True]


def test_annotation_memory_reaches_plan(any_redis):
    with dask.annotate(serverless={"memory": 512}):
        a = delayed(explode)(1, dask_key_name="big")
    b = delayed(explode)(a, dask_key_name="small")
    assert dask.compute(b, scheduler=serverless_get) == (1,)
    run = get_mod.last_run
    mem = {run.dag.tasks[t].key: run.plan.worker_of(t).config.memory_mb
           for t in range(len(run.dag))}
    assert mem["big"] == 512 and mem["small"] == 1024


def test_invalid_plan_and_config_errors(any_redis):
    from dask_serverless.config import ConfigError
    from dask_serverless.plan import Plan, PlanError, ResourceConfig

    with pytest.raises(PlanError, match="memory_mb=64"):
        ResourceConfig(64)
    x = delayed(explode)(1, dask_key_name="only")
    bad = Plan(["nowhere"], {})
    with pytest.raises(PlanError, match=r"'only'.*unknown worker 'nowhere'"):
        dask.compute(x, scheduler=serverless_get, plan=bad)
    with dask.config.set({"serverless.backend": "nope"}), pytest.raises(ConfigError,
                                                                        match="backend"):
        dask.compute(x, scheduler=serverless_get)


def test_enable_and_disable_like_dask_on_ray(any_redis):
    from dask_serverless import disable_dask_serverless, enable_dask_serverless

    x = delayed(explode)(2)
    with enable_dask_serverless(memory=256):
        assert dask.config.get("scheduler") is serverless_get
        assert x.compute() == 2
        assert get_mod.last_run.plan.worker_of(0).config.memory_mb == 256
    assert dask.config.get("scheduler", None) is not serverless_get
    enable_dask_serverless()
    try:
        assert dask.config.get("scheduler") is serverless_get
    finally:
        disable_dask_serverless()
    assert dask.config.get("scheduler", None) is None


def slow_leaf(i, seconds):
    time.sleep(seconds)
    return np.full(20_000, float(i))  # 160 KB: uploaded, not inlined


def join_leaves(*xs):
    return float(sum(x.sum() for x in xs))


def test_floating_fan_in_reuses_outputs_its_worker_made(any_redis):
    """The worker finishing last runs the fan-in; the inputs it made itself are still in
    memory, so only the other worker's outputs are downloaded."""
    from dask_serverless.metrics import MetricsStore

    leaves = [delayed(slow_leaf)(i, 0.05 if i < 2 else 0.4) for i in range(4)]
    with dask.config.set({"serverless.parallelism": 2}):
        (got,) = dask.compute(delayed(join_leaves)(*leaves), scheduler=serverless_get)
    assert got == 20_000 * 6
    run = get_mod.last_run
    tasks = {t.task_id: t for t in MetricsStore.from_url(any_redis).tasks(run.record.run_id)}
    (join,) = [t for t in tasks.values() if t.function == "join_leaves"]
    mine = [tasks[i.dep].worker_id == join.worker_id for i in join.inputs]
    assert sorted(mine) == [False, False, True, True]
    assert [i.source for i in join.inputs] == ["local" if m else "redis" for m in mine]


def big_bytes(n):
    return b"x" * n


def wait_for_file(path, timeout):
    """True once ``path`` exists (the client made it), False after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_the_client_downloads_an_output_while_the_others_compute(any_redis, tmp_path,
                                                                 monkeypatch):
    """A large final output reaches the client as soon as it is stored: the other task
    only finishes once the client holds it (else it waits out its timeout, False)."""
    from dask_serverless.protocol.constants import FINAL_FLUSH_BYTES
    from dask_serverless.runtime.run import Run

    flag = tmp_path / "landed"
    download = Run._download

    def spy(self, ids):
        download(self, ids)
        if any(self.dag.tasks[t].key == "early" for t in self.landed):
            flag.touch()

    monkeypatch.setattr(Run, "_download", spy)
    early = delayed(big_bytes)(FINAL_FLUSH_BYTES, dask_key_name="early")
    late = delayed(wait_for_file)(str(flag), 30)
    got = dask.compute(early, late, scheduler=serverless_get, parallelism=2)
    assert got == (b"x" * FINAL_FLUSH_BYTES, True)
    assert not get_mod.last_run.landed  # handed over, not kept by ``last_run``
