"""The local pool's start methods with real processes: containers forked by a per-pool
fork server ("zygote") are new processes with their own memory cap, recorded cold on
their first invocation, killed and retried like spawned ones, and leave nothing behind."""

from __future__ import annotations

import importlib
import json
import os
import platform
import signal
import subprocess
import sys
import threading
import time

import dask
import psutil
import pytest
from dask import delayed

from dask_serverless import serverless_get, session
from dask_serverless.backends.local import LocalBackend
from dask_serverless.backends.local.pool import HandlerCall, LocalPool
from dask_serverless.config import ConfigError
from dask_serverless.metrics import MetricsStore
from dask_serverless.runtime import get as get_mod

pytestmark = pytest.mark.timeout(90)
METHODS = ["fork-server", "spawn"]


def whoami(event, context):
    """A Lambda-style handler: where it ran."""
    import numpy

    time.sleep(event.get("sleep", 0))
    return {"pid": os.getpid(), "ppid": os.getppid(), "cwd": os.getcwd(),
            "random": numpy.random.random()}


def pid_after(seconds):
    time.sleep(seconds)
    return os.getpid(), os.getppid()


def allocate(mb):
    return len(bytearray(mb * 2**20))


def churn(rounds):
    """Page faults per round of making and dropping eight 20 MB arrays."""
    import resource

    import numpy as np

    faults = []
    for _ in range(rounds):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        held = [np.ones(20 * 2**20 // 8) for _ in range(8)]
        del held
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return faults


def keep_heap(_):
    """Make and drop 120 MB of arrays (the heap keeps it: it counts against the cap);
    -> (bytes kept, a size that only fits if the heap gives them back)."""
    import ctypes
    import resource

    import numpy as np

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
            "uordblks", "fordblks", "keepcost")]

    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = MallInfo2
    held = [np.ones(10 * 2**20 // 8) for _ in range(12)]
    del held
    kept = libc.mallinfo2().keepcost
    with open("/proc/self/status") as f:
        vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
    return kept, resource.getrlimit(resource.RLIMIT_AS)[0] - vm + kept // 2


def allocate_bytes(kept_and_size):
    import numpy as np

    kept, size = kept_and_size
    return kept, np.empty(size // 8).nbytes


def call(pool: LocalPool, memory_mb: int = 1024, **event) -> tuple[bool, dict, bool]:
    """Run ``whoami`` in a container of ``pool``: (ok, result or error, cold)."""
    done, out = threading.Event(), []

    def on_result(ok, payload, cold):
        out.append((ok, json.loads(payload), cold))
        done.set()

    pool.call(HandlerCall(memory_mb, f"{__name__}.whoami", json.dumps(event).encode(),
                          on_result))
    assert done.wait(60), "no answer from the container"
    return out[0]


def gone(pid: int) -> bool:
    """No such process, not even a zombie waiting to be reaped."""
    return not psutil.pid_exists(pid)


def wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def forked_by_zygote(pool: LocalPool) -> bool:
    """The pool forks its containers from a running fork server."""
    fs = pool.fork_server
    return fs is not None and fs.disabled is None and fs.pid is not None


@pytest.fixture
def pool():
    p = LocalPool(4, 30, start_method="fork-server")
    yield p
    p.close()


def backend_for(method: str) -> LocalBackend:
    with dask.config.set({"serverless.local.start-method": method}):
        return LocalBackend(max_containers=4, keep_alive=30)


# -- forked containers are real, separate, cold ------------------------------------------
def test_cold_starts_are_new_forked_processes_recorded_cold(real_redis):
    b = backend_for("fork-server")
    try:
        parts = [delayed(pid_after)(0.4, dask_key_name=f"p{i}") for i in range(3)]
        (first,) = dask.compute(parts, scheduler=serverless_get, backend=b, parallelism=3)
        run = get_mod.last_run
        zygote = b.pool.fork_server.pid
        pids = {pid for pid, _ in first}
        assert len(pids) == 3 and os.getpid() not in pids and zygote not in pids
        assert {ppid for _, ppid in first} == {zygote}  # forked, not spawned by us
        store = MetricsStore.from_url(real_redis)
        invocations = store.invocations(run.run_id)
        assert len(invocations) == 3 and all(i.cold for i in invocations)
        assert all(i.startup_s > 0 for i in invocations)
        assert store.run(run.run_id).cold_starts == 3
        # the same containers serve the next run warm
        (second,) = dask.compute(parts, scheduler=serverless_get, backend=b, parallelism=3)
        assert {pid for pid, _ in second} == pids
        assert not any(i.cold for i in store.invocations(get_mod.last_run.run_id))
    finally:
        b.close()


needs_glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc",
                                 reason="heap settings are glibc's")


@needs_glibc
@pytest.mark.parametrize("method", METHODS)
def test_containers_reuse_freed_heap_instead_of_faulting_in_new_pages(real_redis, method):
    """Arrays made and dropped in a loop come back from the heap: after the first round,
    no page faults (glibc's defaults fault in every page of every round again; SVD:
    117 000 faults a run, now 20 000)."""
    b = backend_for(method)
    try:
        (faults,) = dask.compute(delayed(churn)(5), scheduler=serverless_get, backend=b,
                                 memory=1024)
        assert faults[0] > 0 and sum(faults[1:]) < faults[0] / 10
    finally:
        b.close()


def keep_heap_pid(_):
    """-> (this container's pid, its resident MB with the freed heap still kept)."""
    keep_heap(_)
    return os.getpid(), resident_mb(os.getpid())


def resident_mb(pid: int) -> float:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@needs_glibc
def test_an_idle_container_gives_its_kept_heap_back(real_redis):
    """Back-to-back invocations keep the freed heap; a container idle for
    ``heap.IDLE_RELEASE_S`` gives it back (warm containers share the machine)."""
    from dask_serverless import heap

    b = backend_for("fork-server")
    try:
        with dask.config.set({"serverless.threads": 1}):
            ((pid, kept),) = dask.compute(delayed(keep_heap_pid)(0),
                                          scheduler=serverless_get, backend=b, memory=1024)
        deadline = time.monotonic() + heap.IDLE_RELEASE_S + 10
        while resident_mb(pid) > kept - 80 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert resident_mb(pid) <= kept - 80
    finally:
        b.close()


@needs_glibc
def test_a_task_gets_the_heap_kept_pages_back_when_it_needs_them(real_redis):
    """The heap's kept pages count against the container's cap: a task that needs them
    runs out of memory once, gets them back and succeeds on its second try."""
    b = backend_for("fork-server")
    try:
        with dask.config.set({"serverless.threads": 1}):  # the main thread's heap
            (out,) = dask.compute(delayed(allocate_bytes)(delayed(keep_heap)(0)),
                                  scheduler=serverless_get, backend=b, memory=512)
        kept, nbytes = out
        assert kept >= 50 * 2**20 and nbytes > kept // 2
    finally:
        b.close()


@pytest.mark.parametrize("method", METHODS)
def test_memory_cap_kills_an_over_allocating_task(real_redis, method):
    b = backend_for(method)
    try:
        with pytest.raises(MemoryError) as info:
            dask.compute(delayed(allocate)(400), scheduler=serverless_get, backend=b,
                         memory=128)
        notes = "\n".join(info.value.__notes__)
        assert "allocate" in notes and "memory_mb=128" in notes
        assert forked_by_zygote(b.pool) == (method == "fork-server")
        (got,) = dask.compute(delayed(allocate)(40), scheduler=serverless_get, backend=b,
                              memory=256)
        assert got == 40 * 2**20
    finally:
        b.close()


@pytest.mark.parametrize("method", METHODS)
def test_container_killed_mid_task_is_retried(real_redis, method):
    b = backend_for(method)
    killed = []

    def killer():
        if wait_for(lambda: b.pool.busy_pids(), timeout=20):
            time.sleep(0.2)
            pid = b.pool.busy_pids()[0]
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    t = threading.Thread(target=killer)
    t.start()
    try:
        parts = [delayed(pid_after)(0.8, dask_key_name=f"k{i}") for i in range(2)]
        (got,) = dask.compute(parts, scheduler=serverless_get, backend=b, parallelism=2)
        t.join()
        assert killed and len(got) == 2 and killed[0] not in {pid for pid, _ in got}
        assert forked_by_zygote(b.pool) == (method == "fork-server")
    finally:
        t.join()
        b.close()


def test_idle_containers_are_reported_per_memory_size(pool):
    """What planners count as warm (``Backend.warm_containers``)."""
    assert pool.idle_by_memory() == {}
    call(pool, 1024)
    call(pool, 512)
    for _ in range(50):  # a container turns idle right after it answers
        if pool.idle_by_memory() == {1024: 1, 512: 1}:
            break
        time.sleep(0.05)
    assert pool.idle_by_memory() == {1024: 1, 512: 1}


def test_killed_container_reports_its_signal(pool):
    ok, first, cold = call(pool)
    assert ok and cold
    answers = []
    busy = threading.Thread(target=lambda: answers.append(call(pool, sleep=30)))
    busy.start()
    assert wait_for(lambda: pool.busy_pids() == [first["pid"]])
    os.kill(first["pid"], signal.SIGKILL)
    busy.join(30)
    ok, error, _ = answers[0]
    assert not ok and "code -9" in error["errorMessage"]  # status reaped by the zygote


# -- lifecycle of the fork server ---------------------------------------------------------
def test_close_leaves_no_fork_server_or_container(pool):
    results = [call(pool, memory_mb=m) for m in (128, 256, 512)]
    zygote = pool.fork_server.pid
    pids = {r[1]["pid"] for r in results}
    assert len(pids) == 3 and {r[1]["ppid"] for r in results} == {zygote}
    assert len({r[1]["random"] for r in results}) == 3  # numpy reseeded in each
    assert psutil.Process(zygote).children() and not gone(zygote)
    pool.close()
    assert gone(zygote) and all(gone(pid) for pid in pids)


def test_forked_container_starts_in_the_current_directory(pool, tmp_path, monkeypatch):
    assert call(pool)[1]["cwd"] == os.getcwd()  # the fork server starts here
    monkeypatch.chdir(tmp_path)
    ok, where, cold = call(pool, memory_mb=512)
    assert ok and cold and where["cwd"] == str(tmp_path)


CLIENT = """
import json, os, signal, sys, threading
sys.path.insert(0, {tests!r})
import test_fork_server as t
from dask_serverless.backends.local.pool import LocalPool
pool = LocalPool(4, 30, start_method="fork-server")
idle = t.call(pool)[1]["pid"]
threading.Thread(target=t.call, args=(pool, 512), kwargs={{"sleep": 60}}, daemon=True).start()
t.wait_for(lambda: pool.busy_pids())
print(json.dumps([pool.fork_server.pid, idle] + pool.busy_pids()), flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def not_running(pid: int) -> bool:
    """Exited (a zombie left to a parent that is not ours counts as exited)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_client_killed_leaves_no_fork_server_or_container():
    client = subprocess.run(
        [sys.executable, "-c", CLIENT.format(tests=os.path.dirname(__file__))],
        capture_output=True, text=True, timeout=60)
    assert client.returncode == -signal.SIGKILL, client.stderr
    pids = json.loads(client.stdout)
    assert len(set(pids)) == 3  # fork server, an idle and a busy container
    assert wait_for(lambda: all(not_running(pid) for pid in pids)), [
        psutil.Process(p).as_dict(["pid", "status", "cmdline"]) for p in pids
        if not not_running(p)]


def test_fork_server_killed_is_restarted_and_its_containers_keep_working(pool):
    ok, first, _ = call(pool)
    old = pool.fork_server.pid
    os.kill(old, signal.SIGKILL)
    assert wait_for(lambda: pool.fork_server.pid is None)
    # a cold start starts a new fork server
    ok, other, cold = call(pool, memory_mb=512)
    assert ok and cold and other["ppid"] == pool.fork_server.pid != old
    # the container forked by the dead one is still warm and reused
    ok, again, cold = call(pool)
    assert ok and not cold and again["pid"] == first["pid"]
    # ... and when it dies, its status is unknown (its parent is gone) but reported
    busy = []
    t = threading.Thread(target=lambda: busy.append(call(pool, sleep=30)))
    t.start()
    assert wait_for(lambda: first["pid"] in pool.busy_pids())
    os.kill(first["pid"], signal.SIGKILL)
    t.join(30)
    ok, error, _ = busy[0]
    assert not ok and "unknown status" in error["errorMessage"]


def test_threaded_fork_server_falls_back_to_spawning():
    pytest.importorskip("numpy")
    p = LocalPool(2, 30, start_method="fork-server",
                  env={"OPENBLAS_NUM_THREADS": "2", "OMP_NUM_THREADS": "2"})
    try:
        ok, where, cold = call(p)
        assert ok and cold
        if p.fork_server.disabled is not None:  # numpy's BLAS started threads at import
            assert "threads" in p.fork_server.disabled
            assert where["ppid"] == os.getpid()  # spawned by this process
        else:  # a BLAS without threads: nothing unsafe, the container was forked
            assert where["ppid"] == p.fork_server.pid
    finally:
        p.close()


def test_preloading_dask_dataframe_keeps_the_fork_server():
    """pyarrow's jemalloc starts a background thread at import unless told not to; the
    pool tells it, so a fork server that preloads dask.dataframe still forks."""
    pytest.importorskip("pyarrow")
    p = LocalPool(2, 30, start_method="fork-server", preload=["dask.dataframe"])
    try:
        ok, where, cold = call(p)
        assert ok and cold
        assert p.fork_server.disabled is None
        assert where["ppid"] == p.fork_server.pid  # forked by the zygote
    finally:
        p.close()


def test_a_threaded_fork_server_is_explained_by_its_threads():
    pytest.importorskip("pyarrow")
    p = LocalPool(2, 30, start_method="fork-server", preload=["pyarrow"],
                  env={"JE_ARROW_MALLOC_CONF": "background_thread:true"})
    try:
        ok, where, _ = call(p)
        assert ok and where["ppid"] == os.getpid()  # spawned instead
        reason = p.fork_server.disabled
        assert "jemalloc_bg_thd" in reason and "JE_ARROW_MALLOC_CONF" in reason
        assert "OPENBLAS" not in reason
    finally:
        p.close()


def test_spawn_method_starts_no_fork_server():
    p = LocalPool(2, 30, start_method="spawn")
    try:
        ok, where, cold = call(p)
        assert ok and cold and p.fork_server is None and where["ppid"] == os.getpid()
    finally:
        p.close()


def test_unknown_start_method_names_key_and_choices():
    with pytest.raises(ConfigError, match=r"serverless.local.start-method = 'fork'.*"
                                          r"'fork-server', 'spawn'"):
        LocalPool(2, 30, start_method="fork")


def preloaded(event, context):
    """Which modules the container had before this call imported anything."""
    return {name: name in sys.modules for name in event["names"]}


@pytest.mark.parametrize("method", METHODS)
def test_preload_imports_modules_before_the_first_invocation(method):
    p = LocalPool(2, 30, start_method=method, preload=["colorsys", "no_such_module_x"])
    try:
        done, out = threading.Event(), []
        p.call(HandlerCall(1024, f"{__name__}.preloaded",
                           json.dumps({"names": ["colorsys", "wave"]}).encode(),
                           lambda ok, payload, cold: (out.append((ok, payload)), done.set())))
        assert done.wait(60)
        ok, payload = out[0]
        assert ok, payload
        # imported before the call; an unimportable name is skipped (its tasks raise then)
        assert json.loads(payload) == {"colorsys": True, "wave": False}
    finally:
        p.close()


def test_bad_preload_config_names_the_key():
    with dask.config.set({"serverless.local.preload": "dask.array"}), \
            pytest.raises(ConfigError, match=r"serverless.local.preload = 'dask.array'"):
        LocalBackend()


# -- conformance under both start methods ------------------------------------------------
@pytest.fixture(params=METHODS)
def start_method(request, real_redis):
    session.reset_backend("local")
    with dask.config.set({"serverless.local.start-method": request.param}):
        yield request.param
    session.reset_backend("local")


@pytest.mark.parametrize("case", ["test_tree_reduction", "test_wide_fan_out_and_fan_in",
                                  "test_array_reductions_matmul_rechunk",
                                  "test_bag_map_foldby_frequencies"])
def test_conformance_subset(start_method, case):
    # imported here: containers import this module, and pandas does not fit in 128 MB
    getattr(importlib.import_module("test_conformance"), case)()
    pool = session.backend("local").pool
    assert pool.start_method == start_method
    assert (pool.fork_server is not None) == (start_method == "fork-server")


def test_a_task_out_of_memory_is_tried_again_only_when_pages_came_back(monkeypatch):
    """No second try when the heap had nothing to give back; one at most otherwise."""
    from dask_serverless import heap
    from dask_serverless.worker.executor import _run_node

    calls = []

    def node(args):
        calls.append(args)
        raise MemoryError("too big")

    monkeypatch.setattr(heap, "release_free", lambda: False)
    with pytest.raises(MemoryError):
        _run_node(node, {})
    assert len(calls) == 1
    monkeypatch.setattr(heap, "release_free", lambda: True)
    with pytest.raises(MemoryError):
        _run_node(node, {})
    assert len(calls) == 3
