"""Fleet-grade execution (issue 12): no re-fired work, leases on every backend, straggler
backups. Real containers, a real redis-server, the lambda backend through the local
Lambda API server; faults are real (os._exit, kill -9, duplicated deliveries)."""

from __future__ import annotations

import operator
import os
import subprocess
import threading
import time
from collections import Counter

import dask
import pytest
import redis
from dask import delayed

from dask_serverless import serverless_get
from dask_serverless.adapter import to_dag
from dask_serverless.backends.local import LocalBackend
from dask_serverless.backends.local.pool import LocalPool
from dask_serverless.bench.faults import slow_first_time
from dask_serverless.config import ConfigError
from dask_serverless.errors import RunDataLostError, StartTimeoutError, WorkerCrashedError
from dask_serverless.plan import Plan, ResourceConfig, WorkerSpec
from dask_serverless.runtime import get as get_mod

pytestmark = pytest.mark.timeout(180)


def logged(path, name, value, *inputs):
    """A task that records each run of it (one line per execution) in ``path``."""
    with open(path, "a") as f:
        f.write(f"{name}\n")
    return value + sum(inputs)


def logged_dies_once(path, marker, name, value, *inputs):
    """Like ``logged``, but its first run kills its worker process after recording."""
    out = logged(path, name, value, *inputs)
    if not os.path.exists(marker):
        with open(marker, "w") as f:
            f.write("died")
        os._exit(3)
    return out


def runs(path) -> Counter:
    with open(path) as f:
        return Counter(line.strip() for line in f if line.strip())


def make_backend(pool_cls=LocalPool, **kw):
    backend = LocalBackend(max_containers=4, keep_alive=30)
    backend.pool.close()
    backend.pool = pool_cls(4, 30, on_crash=backend.pool.on_crash, **kw)
    return backend


def plan_by_key(graph, key, worker_of) -> Plan:
    """A plan placing each task by ``worker_of(task key)``."""
    dag = to_dag(graph, key)
    assignment = [worker_of(str(t.key)) for t in dag.tasks]
    specs = {w: WorkerSpec(w, ResourceConfig(1024)) for w in set(assignment)}
    return Plan(assignment, specs, "test", {})


def chain_with_leaves(path, marker, n=6):
    """step-0 -> ... -> step-(n-1) on one worker, each step's leaf on its own worker;
    the last step kills its worker once."""
    steps, leaves = [], []
    prev = None
    for i in range(n):
        args = (path, f"step-{i}", i) + ((prev,) if prev is not None else ())
        if i == n - 1:
            prev = delayed(logged_dies_once)(path, marker, f"step-{i}", i, prev,
                                             dask_key_name=f"step-{i}")
        else:
            prev = delayed(logged)(*args, dask_key_name=f"step-{i}")
        steps.append(prev)
        leaves.append(delayed(logged)(path, f"leaf-{i}", 100, prev, dask_key_name=f"leaf-{i}"))
    return delayed(logged)(path, "total", 0, prev, *leaves, dask_key_name="total")


def chain_worker(key: str) -> str:
    name = key.split("-")[0]
    return {"step": "chain", "total": "sink"}.get(name, f"w{key}")


def test_late_death_in_a_chain_fires_nothing_twice(real_redis, tmp_path):
    path, marker = str(tmp_path / "runs.log"), str(tmp_path / "died")
    x = chain_with_leaves(path, marker)
    graph, key = dict(x.dask), x.key
    plan = plan_by_key(graph, key, chain_worker)
    backend = make_backend(retries=2, retry_backoff=0.05)
    try:
        got = serverless_get(graph, key, plan=plan, backend=backend)
    finally:
        backend.close()
    (tmp_path / "sync-died").write_text("no death here")
    expected = dask.compute(chain_with_leaves(str(tmp_path / "sync.log"),
                                              str(tmp_path / "sync-died")),
                            scheduler="sync")
    assert got == expected[0]
    counts = runs(path)
    assert os.path.exists(marker)  # the worker did die once
    assert counts["step-5"] == 2  # the retry ran what lived only in the dead worker
    for i in range(6):
        assert counts[f"leaf-{i}"] == 1, counts  # fired once, although re-published
    for i in range(5):
        assert counts[f"step-{i}"] == 1, counts  # stored: a retry does not run them again
    assert counts["total"] == 1


class DuplicatingPool(LocalPool):
    """Delivers every invocation twice, like an at-least-once event queue."""

    def invoke_many(self, invocations):
        super().invoke_many(list(invocations) + list(invocations))


def test_every_event_delivered_twice_runs_each_task_once(real_redis, tmp_path):
    path = str(tmp_path / "runs.log")
    leaves = [delayed(logged)(path, f"leaf-{i}", i, dask_key_name=f"leaf-{i}")
              for i in range(8)]
    pairs = [delayed(logged)(path, f"pair-{i}", 0, leaves[2 * i], leaves[2 * i + 1],
                             dask_key_name=f"pair-{i}") for i in range(4)]
    singles = [delayed(logged)(path, f"single-{i}", 1, p, dask_key_name=f"single-{i}")
               for i, p in enumerate(pairs)]
    x = delayed(logged)(path, "total", 0, *singles, dask_key_name="total")
    backend = make_backend(DuplicatingPool)
    try:
        (got,) = dask.compute(x, scheduler=serverless_get, backend=backend, parallelism=4)
    finally:
        backend.close()
    assert got == sum(range(8)) + 4
    counts = runs(path)
    assert set(counts.values()) == {1}, counts
    assert len(counts) == 8 + 4 + 4 + 1


# -- leases under the lambda backend ---------------------------------------------------
def exit_now(x):
    os._exit(3)


def slow_inc(x, seconds):
    time.sleep(seconds)
    return x + 1


FAST_LEASES = {"serverless.heartbeat-interval": 0.5, "serverless.poll-interval": 0.2,
               "serverless.retry-backoff": 0.05}


def test_lambda_worker_death_is_noticed_by_its_lease(real_redis, lambda_backend):
    with dask.config.set({**FAST_LEASES, "serverless.retries": 0,
                          "serverless.deadline": 120}):
        t0 = time.monotonic()
        with pytest.raises(WorkerCrashedError, match=r"worker .*memory_mb=1024.*stopped "
                                                     r"renewing its lease.*exit_now.*"
                                                     r"after 1 attempts"):
            dask.compute(delayed(exit_now)(1), scheduler=serverless_get)
        took = time.monotonic() - t0
    # lease 3 x 0.5 s, checks every 0.2 s, a cold start or two: far below the deadline
    assert took < 20, took
    assert dask.compute(delayed(slow_inc)(1, 0), scheduler=serverless_get) == (2,)


def test_lambda_worker_death_is_retried_then_reported(real_redis, lambda_backend):
    with dask.config.set({**FAST_LEASES, "serverless.retries": 1,
                          "serverless.deadline": 120}), \
            pytest.raises(WorkerCrashedError, match="after 2 attempts"):
        dask.compute(delayed(exit_now)(1), scheduler=serverless_get)


def slow_inc_telling(x, seconds, pid_dir):
    """``slow_inc`` that first leaves its process id in ``pid_dir`` (for a killer)."""
    with open(os.path.join(pid_dir, f"{os.getpid()}-{x}"), "w") as f:
        f.write("running")
    return slow_inc(x, seconds)


def test_lambda_container_killed_mid_task_is_retried(real_redis, lambda_backend, tmp_path):
    killed = []

    def killer():
        deadline = time.monotonic() + 60
        while not killed and time.monotonic() < deadline:
            running = os.listdir(tmp_path)
            if running:
                time.sleep(0.3)  # mid-task
                pid = int(running[0].split("-")[0])
                subprocess.run(["kill", "-9", str(pid)], check=False)
                killed.append(pid)
            time.sleep(0.05)

    t = threading.Thread(target=killer)
    x = delayed(sum)([delayed(slow_inc_telling)(i, 1.5, str(tmp_path)) for i in range(3)])
    with dask.config.set({**FAST_LEASES, "serverless.deadline": 120}):
        t.start()
        (got,) = dask.compute(x, scheduler=serverless_get)
        t.join()
    assert killed and got == sum(range(1, 4))
    assert get_mod.last_run.monitor.retries == 1


# -- straggler backups -----------------------------------------------------------------
def straggler_run(marker: str, parts: int, seconds: float, slow: int = 3):
    """``parts`` tasks of 0.2 s, ``part-<slow>`` taking ``seconds`` on its first attempt,
    and their sum, every task on its own worker: (graph, key, plan)."""
    tasks = [delayed(slow_first_time)(i, marker, slow, seconds, dask_key_name=f"part-{i}")
             for i in range(parts)]
    x = delayed(sum)(tasks, dask_key_name="total")
    graph, key = dict(x.dask), x.key
    return graph, key, plan_by_key(graph, key, lambda k: k)


def test_a_straggler_gets_a_backup(real_redis, tmp_path):
    marker = str(tmp_path / "slow")
    graph, key, plan = straggler_run(marker, 8, 60)
    backend = make_backend(retries=2, retry_backoff=0.05)
    try:
        t0 = time.monotonic()
        got = serverless_get(graph, key, plan=plan, backend=backend)
        took = time.monotonic() - t0
        assert got == sum(range(8))
        assert took <= 20, took  # default speculation: a backup after 10 s
        assert os.path.exists(marker)
        run = get_mod.last_run
        assert run.monitor.backups == 1 and run.record.backups == 1
        # the straggler's container was killed: its billed seconds are recorded for it
        from dask_serverless.metrics.store import MetricsStore

        records = MetricsStore.from_url(run.metrics_url).invocations(run.run_id)
        part3 = [r for r in records if r.worker_id == "part-3"]
        assert sorted(r.attempt for r in part3) == [0, 1]
        loser = next(r for r in part3 if r.attempt == 0)
        assert loser.duration_s >= 9  # from its start to the cancel, after the backup won
        from dask_serverless.dashboard.report import build_report

        page = build_report(MetricsStore.from_url(run.metrics_url), run.run_id)
        assert "1 straggler backups" in page
        deadline = time.monotonic() + 10  # the loser's container is killed
        while backend.pool.busy_pids() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not backend.pool.busy_pids()
    finally:
        backend.close()


def test_speculation_off_waits_for_the_straggler(real_redis, tmp_path):
    graph, key, plan = straggler_run(str(tmp_path / "slow"), 4, 4)
    with dask.config.set({"serverless.speculation.enabled": False,
                          "serverless.speculation.min-seconds": 1.0,
                          "serverless.heartbeat-interval": 0.5}):
        t0 = time.monotonic()
        assert serverless_get(graph, key, plan=plan) == sum(range(4))
        assert time.monotonic() - t0 >= 4
        assert get_mod.last_run.monitor.backups == 0


# -- output TTL and deadline -------------------------------------------------------------
@pytest.mark.parametrize("settings", [{"serverless.output-ttl": 60, "serverless.deadline": 120},
                                      {"serverless.output-ttl": 1.5},
                                      {"serverless.output-ttl": True}])
def test_output_ttl_below_the_deadline_or_not_whole_seconds_is_refused(settings):
    with dask.config.set(settings), pytest.raises(ConfigError, match=r"serverless\.output-ttl"):
        dask.compute(delayed(slow_inc)(1, 0), scheduler=serverless_get)


def test_a_longer_deadline_per_call_raises_the_ttl(real_redis):
    assert dask.compute(delayed(slow_inc)(1, 0), scheduler=serverless_get,
                        deadline=7200) == (2,)
    assert get_mod.last_run.ttl == 7200


def test_keys_expiring_mid_run_are_run_data_lost(real_redis):
    client = redis.Redis.from_url(real_redis)

    def run_of(key: bytes) -> str:
        return key.decode().split("}")[0] + "}"

    earlier = {run_of(k) for k in client.keys("ds:{*}")}  # other tests' leftovers

    def expire_the_run():
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            # the quick input is stored, the spec written, the slow task running
            keys = [k for k in client.keys("ds:{*}:o:*") if run_of(k) not in earlier]
            if keys and client.exists(f"{run_of(keys[0])}:dag"):
                run = run_of(keys[0])
                time.sleep(0.5)
                for k in client.keys(f"{run}*"):
                    client.pexpire(k, 10)  # as if output-ttl had passed
                return
            time.sleep(0.05)

    t = threading.Thread(target=expire_the_run)
    t.start()
    t0 = time.monotonic()
    with dask.config.set({"serverless.deadline": 120}), pytest.raises(RunDataLostError):
        # the quick input registers in the fan-in's set, which then expires: the slow
        # one's registration can never complete it
        x = delayed(operator.add)(delayed(slow_inc)(1, 0), delayed(slow_inc)(1, 5))
        dask.compute(x, scheduler=serverless_get)
    t.join()
    assert time.monotonic() - t0 < 30  # not the deadline


def test_a_straggler_gets_a_backup_on_lambda(real_redis, lambda_backend, tmp_path):
    """The backup goes through Lambda like any invocation; the loser (which Lambda cannot
    kill) sees its invocation ended and its result is discarded."""
    graph, key, plan = straggler_run(str(tmp_path / "slow"), 4, 15, slow=2)
    with dask.config.set({**FAST_LEASES, "serverless.speculation.min-seconds": 1.0,
                          "serverless.deadline": 120}):
        t0 = time.monotonic()
        assert serverless_get(graph, key, plan=plan) == sum(range(4))
        took = time.monotonic() - t0
    assert get_mod.last_run.monitor.backups == 1
    assert took < 12, took  # not the straggler's 15 s


def test_queued_is_not_dead_until_the_start_timeout(real_redis):
    """One container for two 3 s roots: the second waits in the pool's queue longer than
    a lease lasts (1.5 s), and is left alone; with a start timeout of 1 s it is an
    error naming the worker."""
    parts = [delayed(slow_inc)(i, 3, dask_key_name=f"part-{i}") for i in range(2)]
    x = delayed(sum)(parts, dask_key_name="total")
    graph, key = dict(x.dask), x.key
    plan = plan_by_key(graph, key, lambda k: k)
    backend = LocalBackend(max_containers=1, keep_alive=30)
    try:
        with dask.config.set(FAST_LEASES):
            assert serverless_get(graph, key, plan=plan, backend=backend) == 3
            assert get_mod.last_run.monitor.retries == 0
        with dask.config.set({**FAST_LEASES, "serverless.start-timeout": 1.0}), \
                pytest.raises(StartTimeoutError, match=r"worker part-\d .*has not started"):
            serverless_get(graph, key, plan=plan, backend=backend)
    finally:
        backend.close()


def test_forged_lease_entries_are_ignored(real_redis):
    """Entries planted in a run's invocation registry (a worker the plan does not have,
    tasks of another worker, garbage) and a dead execution of one: the client re-sends
    nothing and the run completes."""
    client = redis.Redis.from_url(real_redis)
    earlier = {k.decode().split("}")[0] for k in client.keys("ds:{*}")}
    planted = []

    def plant():
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not planted:
            runs = {k.decode().split("}")[0] for k in client.keys("ds:{*}:inv")} - earlier
            for run in runs:
                entry = '{"w":"%s","m":1024,"s":[%d],"a":0,"t":0,"hb":0.5,"by":"x"}'
                client.hset(f"{run}}}:inv", mapping={
                    "evil": entry % ("nowhere", 0), "other": entry % ("w1", 0),
                    "junk": "not json"})
                client.hset(f"{run}}}:run", mapping={"evil:0": "x", "other:0": "x",
                                                     "junk:0": "x", "bad": "x"})
                planted.append(run)
            time.sleep(0.02)

    t = threading.Thread(target=plant)
    t.start()
    x = delayed(operator.add)(delayed(slow_inc)(1, 1.5), delayed(slow_inc)(2, 1.5))
    with dask.config.set(FAST_LEASES):
        assert dask.compute(x, scheduler=serverless_get) == (5,)
    t.join()
    assert planted and get_mod.last_run.monitor.retries == 0


def test_a_finished_run_leaves_no_lease_keys(real_redis):
    """Workers release their leases after the client may have cleaned up: nothing of the
    run's leases is left behind (the cancel flag aside, none of its keys are)."""
    client = redis.Redis.from_url(real_redis)
    x = delayed(sum)([delayed(slow_inc)(i, 0.05) for i in range(6)])
    with dask.config.set(FAST_LEASES):
        assert dask.compute(x, scheduler=serverless_get) == (sum(range(1, 7)),)
    run = get_mod.last_run
    time.sleep(1.0)  # the last invocations end after the outputs are in
    assert client.keys(f"ds:{{{run.run_id}}}:*") == []
