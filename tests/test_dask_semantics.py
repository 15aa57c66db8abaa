"""Dask's semantics kept on serverless workers (real subprocess workers, real Redis and
fakeredis): shuffles are task-based by default (a disk shuffle keeps its store in Redis),
warnings are re-emitted in the caller, prints reach the caller's terminal and the metrics,
and exceptions keep their type and attributes."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
import time
import warnings

import dask
import dask.bag as db
import dask.dataframe as dd
import pandas as pd
import pytest
from dask import delayed
from dask.callbacks import Callback
from dask.diagnostics import ProgressBar

from dask_serverless import serverless_get
from dask_serverless.errors import DiskShuffleError
from dask_serverless.metrics.store import MetricsStore
from dask_serverless.runtime import get as get_mod

pytestmark = pytest.mark.usefixtures("any_redis")


# -- shuffles ---------------------------------------------------------------------------------
def test_importing_makes_task_shuffles_the_default_unless_set():
    assert dask.config.get("dataframe.shuffle.method") == "tasks"
    code = ("import dask, dask_serverless; "
            "print(dask.config.get('dataframe.shuffle.method'))")
    env = dict(os.environ, DASK_DATAFRAME__SHUFFLE__METHOD="disk")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.stdout.strip() == "disk", out.stderr[-1000:]


def test_bag_groupby_by_default_keeps_every_element():
    """The disk shuffle lost elements here (a group came back with 2 of 3 copies)."""
    b = db.from_sequence(list(range(30)) * 3, npartitions=4)
    got = dict(b.groupby(lambda v: v % 5).compute(scheduler=serverless_get))
    assert {k: sorted(v) for k, v in got.items()} == \
        {k: sorted(v for v in list(range(30)) * 3 if v % 5 == k) for k in range(5)}


def test_dataframe_shuffle_by_default_matches_pandas():
    pdf = pd.DataFrame({"a": [i % 7 for i in range(200)], "b": range(200)})
    ddf = dd.from_pandas(pdf, npartitions=5)
    got = ddf.shuffle("a").compute(scheduler=serverless_get)
    pd.testing.assert_frame_equal(got.sort_values("b"), pdf.sort_values("b"))
    per_partition = ddf.shuffle("a").map_partitions(lambda p: p["a"].nunique()).compute(
        scheduler=serverless_get)
    assert per_partition.sum() == 7  # each key in one partition only


DATA = list(range(120)) * 3


def _bag_disk_groupby():
    b = db.from_sequence(DATA, npartitions=6).groupby(lambda v: v % 11, shuffle="disk",
                                                       npartitions=4)
    return b, lambda got: {k: sorted(v) for k, v in dict(got).items()}


def _dataframe_disk_shuffle():
    pdf = pd.DataFrame({"a": [v % 11 for v in DATA], "b": range(len(DATA))})
    ddf = dd.from_pandas(pdf, npartitions=6).shuffle("a", shuffle_method="disk",
                                                     npartitions=4)
    return ddf, lambda got: got.sort_values("b").reset_index(drop=True)


def _dataframe_disk_shuffle_compressed():
    collection, normal = _dataframe_disk_shuffle()
    return collection, normal, {"dataframe.shuffle.compression": "ZLib"}


@pytest.mark.parametrize("make", [_bag_disk_groupby, _dataframe_disk_shuffle,
                                  _dataframe_disk_shuffle_compressed],
                         ids=["bag", "dataframe", "dataframe-zlib"])
def test_disk_shuffle_runs_across_workers_and_keeps_every_element(make, any_redis):
    """Dask's disk shuffle, each task in its own invocation (partitioning tasks on other
    workers than the one that made the store): the store lives in the run's Redis, every
    element arrives once, and nothing of it is left in Redis afterwards."""
    collection, normal, *options = make()
    with dask.config.set({"dataframe.shuffle.method": "tasks"}):
        want = normal(collection.compute(scheduler="sync"))
    with dask.config.set(*options):  # read when the graph is made
        got = dask.compute(collection, scheduler=serverless_get, planner="per-task")[0]
    if isinstance(want, pd.DataFrame):
        pd.testing.assert_frame_equal(normal(got), want)
    else:
        assert normal(got) == want
    run = get_mod.last_run
    assert run.dag.shuffle_stores == 1 and len({w for w in run.plan.assignment}) > 2
    import redis

    r = redis.Redis.from_url(any_redis)
    left = list(r.scan_iter(f"ds:{{{run.run_id}}}:sh:*")) + list(
        r.scan_iter(f"ds:{{{run.run_id}}}:parts"))
    assert not left, "shuffle keys left behind"


def test_a_shuffle_task_run_again_replaces_its_pieces_and_forged_ones_are_refused(any_redis):
    """A partitioning task executed twice (a retry, a duplicated delivery) must not add
    its rows twice; a piece planted in Redis without the run's seal is refused."""
    import partd

    from dask_serverless.storage.serialize import TamperedPayloadError
    from dask_serverless.storage.store import RunStore, connect
    from dask_serverless.worker.shuffle_store import ShuffleStoreError, open_store
    from dask_serverless.worker.task_output import TaskOutput

    store = RunStore(connect(any_redis), f"shuf{os.getpid()}{time.monotonic_ns()}")
    with pytest.raises(ShuffleStoreError):
        open_store((partd.Python,), "s")  # not in a task
    output = TaskOutput(store, "w0").install()
    try:
        with output.task(0, "make"):
            p = open_store((partd.Python,), "s")
        for _attempt in range(2):
            with output.task(1, "part-1"):
                p.append({0: [1, 2]}, fsync=True)
                p.append({0: [3], 1: [9]}, fsync=True)
        with output.task(2, "part-2"):
            p.append({0: [4]})
        with output.task(3, "collect"):
            assert sorted(p.get(0)) == [1, 2, 3, 4] and p.get(1) == [9]
        key = store.keys.shuffle_part("s", "0")
        store.r.hset(key, "2:0", store.r.hget(key, "1:0"))  # another task's piece
        with output.task(3, "collect"), pytest.raises(TamperedPayloadError):
            p.get(0)
    finally:
        output.remove()
        store.cleanup([], [])
    assert not list(store.r.scan_iter(f"{store.keys.prefix}*"))


def test_a_bag_disk_shuffle_with_a_temporary_directory_keeps_nothing_there(tmp_path):
    """``temporary_directory`` set: Dask makes the store with ``apply(partd.File, dir=)``;
    that form moves to Redis too, and no partd directory is made."""
    with dask.config.set(temporary_directory=str(tmp_path)):
        b, normal = _bag_disk_groupby()
        got = dask.compute(b, scheduler=serverless_get)[0]
    assert get_mod.last_run.dag.shuffle_stores == 1
    assert normal(got) == {k: sorted(v for v in DATA if v % 11 == k) for k in range(11)}
    assert list(tmp_path.iterdir()) == []


def test_a_disk_shuffle_with_an_unknown_compression_is_dasks_import_error():
    ddf, _ = _dataframe_disk_shuffle()
    with dask.config.set({"dataframe.shuffle.compression": "NO_SUCH_ALGO"}), \
            pytest.raises(ImportError, match="Not able to import and load NO_SUCH_ALGO"):
        dask.compute(ddf, scheduler=serverless_get)


def test_a_disk_shuffle_of_an_unknown_form_is_refused_naming_the_fix():
    import partd

    graph = {"store": (partd.Python, (partd.Dict,)), "x": (len, "store")}
    with pytest.raises(DiskShuffleError, match="shuffle_method='tasks'") as info:
        serverless_get(graph, "x")
    assert "dataframe.shuffle.method" in str(info.value)


# -- persist ---------------------------------------------------------------------------------
def test_persisted_chunks_are_read_from_the_graph_as_dask_reads_futures():
    """Dask's ``assert_eq`` persists an array and reads each chunk from its graph
    (``.result()`` on a distributed Future): a chunk kept in Redis answers the same
    (Dask's test_vindex_preserve_chunksize failed on serverless only)."""
    import dask.array as da
    import numpy as np
    from dask.array.utils import assert_eq

    values = np.arange(10_000 * 40, dtype="float64").reshape(10_000, 40)
    x = da.from_array(values, chunks=(2500, 20)) + 1  # chunks over embed-max-bytes
    assert_eq(x, values + 1, scheduler=serverless_get)


# -- da.store --------------------------------------------------------------------------------
class Sink:
    def __setitem__(self, index, value):
        pass


def test_store_into_an_in_memory_array_warns_that_it_fills_copies():
    import dask.array as da
    import numpy as np

    x = da.ones((4, 4), chunks=2) + 1
    target = np.zeros((4, 4))
    with pytest.warns(UserWarning, match=r"task \('store-map-.*in-memory ndarray.*"
                                         r"yours stays as it was.*Zarr"):
        da.store(x, target, scheduler=serverless_get)
    assert not target.any()  # as the warning says (distributed: the same, silently)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a target that is not an in-memory array: quiet
        da.store(x, Sink(), scheduler=serverless_get, lock=False)


# -- warnings ---------------------------------------------------------------------------------
def careful(i):
    warnings.warn(f"careful with {i % 2}", UserWarning, stacklevel=1)
    warnings.warn("old api", DeprecationWarning, stacklevel=1)  # ignored by default filters
    return i


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_task_warnings_are_reemitted_in_the_caller_naming_the_task():
    parts = [delayed(careful)(i, dask_key_name=f"careful-{i}") for i in range(4)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert dask.compute(delayed(sum)(parts), scheduler=serverless_get) == (6,)
    user = sorted(str(w.message) for w in caught if w.category is UserWarning)
    assert len(user) == 2  # one per distinct warning, naming a task and the others
    where = {(w.filename, w.lineno) for w in caught if w.category is UserWarning}
    assert where == {(__file__, careful.__code__.co_firstlineno + 1)}  # the task's line
    assert user[0].startswith("careful with 0 [task 'careful-")
    assert "1 other task too" in user[0]
    assert [w for w in caught if w.category is DeprecationWarning]
    with pytest.warns(UserWarning, match="careful with 1"):
        dask.compute(delayed(careful)(1), scheduler=serverless_get)


def test_a_task_warning_turned_into_an_error_here_raises_here():
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        with pytest.raises(UserWarning, match="careful with 1"):
            dask.compute(delayed(careful)(1), scheduler=serverless_get)


# -- prints -----------------------------------------------------------------------------------
def chatty(i):
    print(f"hello {i}")
    print(f"oops {i}", file=sys.stderr)
    print("\x1b[31mred\x1b[0m", end="")  # no newline: still one line
    return i


def test_prints_are_echoed_with_their_task_and_recorded_as_log_lines(capsys, any_redis):
    got = dask.compute(delayed(chatty)(3, dask_key_name="chatty-3"), scheduler=serverless_get)
    assert got == (3,)
    out, err = capsys.readouterr()
    assert "('chatty-3' on w" in out and "hello 3" in out
    assert "('chatty-3' on w" in err and "oops 3" in err
    assert "\x1b" not in out and "\\x1b[31mred\\x1b[0m" in out  # escapes escaped
    run = get_mod.last_run
    logs = MetricsStore.from_url(any_redis).task_logs(run.run_id)
    (lines,) = logs.values()
    assert [(level, message) for _, level, _, message in lines] == [
        ("STDOUT", "hello 3"), ("STDERR", "oops 3"), ("STDOUT", "\x1b[31mred\x1b[0m")]


def test_echo_can_be_turned_off(capsys):
    with dask.config.set({"serverless.echo-task-output": False}):
        dask.compute(delayed(chatty)(1), scheduler=serverless_get)
    out, err = capsys.readouterr()
    assert "hello 1" not in out and "oops 1" not in err


def test_prints_of_a_failing_task_reach_the_caller(capsys):
    def loud_failure():
        print("about to fail")
        raise KeyError("nope")

    with pytest.raises(KeyError, match="nope"):
        dask.compute(delayed(loud_failure)(), scheduler=serverless_get)
    assert "about to fail" in capsys.readouterr().out


# -- exceptions -------------------------------------------------------------------------------
class BadRecord(ValueError):
    """Its ``__init__`` takes other arguments than it passes on: plain unpickling fails."""

    def __init__(self, record, why):
        super().__init__(f"bad record {record['id']}: {why}")
        self.record, self.why = record, why


def check_record(record):
    if record["id"] < 0:
        raise BadRecord(record, "negative id")
    return record


def test_exception_with_custom_init_keeps_type_and_attributes():
    with pytest.raises(BadRecord) as info:
        dask.compute(delayed(check_record)({"id": -4}), scheduler=serverless_get)
    exc = info.value
    assert exc.record == {"id": -4} and exc.why == "negative id"
    assert str(exc) == "bad record -4: negative id"
    assert any("[dask-serverless] task" in note for note in exc.__notes__)


# -- progress ---------------------------------------------------------------------------------
def first(marker):
    return marker


def second(marker):
    """Runs after ``first`` in the same invocation; returns once the client has seen
    ``first`` finish (a progress event must arrive while this task still runs)."""
    deadline = time.monotonic() + 60
    while not os.path.exists(marker):
        if time.monotonic() > deadline:
            raise TimeoutError("the client never heard that the first task finished")
        time.sleep(0.02)
    return "seen"


def test_progress_of_a_finished_task_arrives_while_the_next_one_runs(tmp_path):
    marker = str(tmp_path / "first-done")

    class Seen(Callback):
        def _posttask(self, key, result, dsk, state, worker_id):
            if key == "first":
                open(marker, "w").close()

    a = delayed(first)(marker, dask_key_name="first")
    b = delayed(second)(a, dask_key_name="second")
    with Seen(), ProgressBar(out=io.StringIO()):
        assert dask.compute(b, scheduler=serverless_get, planner="wukong") == ("seen",)


HEARD = threading.Event()


def wait_heard(_):
    """Returns once the client side heard that the previous task finished."""
    if not HEARD.wait(60):
        raise TimeoutError("no progress event arrived while this task ran")
    return "heard"


def test_worker_reports_a_finished_task_on_a_clock(any_redis, monkeypatch):
    """In-process executor, task starts never due to report (their window made an hour):
    only the ticker can tell the client that the first task finished while the second
    one runs."""
    from dask_serverless.adapter import to_dag
    from dask_serverless.layout import build_layout
    from dask_serverless.planners import get_planner
    from dask_serverless.protocol.slices import RunHeader
    from dask_serverless.protocol.wire import Invocation
    from dask_serverless.storage import run_events
    from dask_serverless.storage.slices import SliceWriter, write_spec
    from dask_serverless.storage.store import RunStore, connect
    from dask_serverless.worker import executor

    monkeypatch.setattr(executor, "PROGRESS_S", 3600.0)
    HEARD.clear()
    x = delayed(wait_heard)(delayed(first)("x", dask_key_name="first"), dask_key_name="w")
    dag = to_dag(x.__dask_graph__(), x.key)
    plan = get_planner("wukong").plan(dag, parallelism=1, memory_mb=1024)
    run_id = f"tick{os.getpid()}{time.monotonic_ns()}"
    store = RunStore(connect(any_redis), run_id)
    pubsub = store.r.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(store.keys.events)
    first_id = dag.key_to_id["first"]

    def listen():
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            msg = pubsub.get_message(timeout=0.1)
            event = run_events.decode(msg["data"], run_id, len(dag)) if msg else None
            if event is not None and first_id in event.get("ids", ()):
                HEARD.set()
                return

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    writer = SliceWriter(store)
    write_spec(writer, dag, plan, build_layout(dag, plan), RunHeader(60, 10_000, True))
    roots = [t for t in range(len(dag)) if not dag.tasks[t].deps]
    try:
        report = executor.execute(Invocation(run_id, plan.assignment[roots[0]], 1024,
                                             any_redis, roots), invoker=None)
        assert not report.failed, store.get_error()
    finally:
        listener.join()
        pubsub.close()
        writer.cleanup()
        store.cleanup(range(len(dag)), [])


def test_forged_task_output_entries_are_ignored(any_redis):
    from dask_serverless.storage.store import RunStore, connect

    store = RunStore(connect(any_redis), f"forge{os.getpid()}{time.monotonic_ns()}")
    store.r.rpush(store.keys.task_output, b'{"key": "x", "lines": [[0, "stdout", "hi"]]}')
    store.push_task_output({"key": "'t'", "worker": "w0", "lines": [], "dropped": 0,
                            "warnings": []})
    entries, read = store.task_output()
    store.r.delete(store.keys.task_output)
    assert read == 2 and [e["key"] for e in entries] == ["'t'"]


def test_dask_compute_assembles_each_collection_on_the_client(any_redis):
    """dask.compute's ``finalize-`` task (blocks concatenated, partitions joined) runs on
    the client, as Dask's compute did before graphs carried it: the blocks are the run's
    outputs, each downloaded as it is stored. Persisting keeps them as they are."""
    import dask.array as da
    import numpy as np

    x = da.arange(40, chunks=10) * 2
    bag = db.from_sequence(range(6), npartitions=2).map(lambda v: v + 1)
    got_x, got_bag = dask.compute(x, bag, scheduler=serverless_get)
    np.testing.assert_array_equal(got_x, np.arange(40) * 2)
    assert got_bag == [1, 2, 3, 4, 5, 6]
    dag = get_mod.last_run.dag
    assert dag.client_finals and all(k.startswith("finalize-") for k in dag.client_finals)
    assert not any(str(t.key).startswith("finalize-") for t in dag.tasks)
    (kept,) = dask.persist(x, scheduler=serverless_get)
    np.testing.assert_array_equal(kept.compute(scheduler=serverless_get), np.arange(40) * 2)
