"""Sliced run specs: each group's slice holds exactly what its invocations read of the
run, the same group's slice does not grow with the DAG, slices of other code are refused,
shared pieces are stored once, and readers wait for slices the client has not stored."""

from __future__ import annotations

import json
import operator
import struct
import threading
import time

import cloudpickle
import dask
import dask.array as da
import dask.bag as db
import numpy as np
import pandas as pd
import pytest
import redis
from dask import delayed

from dask_serverless.adapter import to_dag
from dask_serverless.bench.workloads.graphs import tree_graph
from dask_serverless.errors import DeadlineExceededError, RunDataLostError
from dask_serverless.layout import build_layout
from dask_serverless.plan import Optimizations
from dask_serverless.planners import get_planner
from dask_serverless.protocol import slices
from dask_serverless.protocol.wire import SchemaMismatchError
from dask_serverless.storage import serialize
from dask_serverless.storage import slices as stored
from dask_serverless.storage.store import RunStore

HEADER = slices.RunHeader(ttl=60, inline_bytes=64 * 1024, report_tasks=False)


def captured(*collections):
    """(graph, keys) a scheduler ``get`` receives for ``collections``."""
    got = {}

    def capture(dsk, keys, **_):
        got["dsk"], got["keys"] = dsk, keys
        return dask.get(dsk, keys)

    dask.compute(*collections, scheduler=capture)
    return got["dsk"], got["keys"]


@delayed
def inc(x):
    return x + 1


@delayed
def add(*xs):
    return sum(xs)


def graphs():
    x = da.random.RandomState(0).random((120, 80), chunks=(30, 20))
    b = db.from_sequence(["a b", "b c", "c a b", "d"] * 5, npartitions=4)
    import dask.dataframe as dd

    df = dd.from_pandas(pd.DataFrame({"k": np.arange(60) % 5, "v": np.arange(60.0)}),
                        npartitions=3)
    level = [inc(i) for i in range(16)]
    while len(level) > 1:
        level = [add(level[i], level[i + 1]) for i in range(0, len(level), 2)]
    return {
        "array": captured(x.sum(), (x @ x.T)[:5, :5], x.rechunk((60, 40)).std()),
        "bag": captured(b.map(str.split).flatten().frequencies(sort=True)),
        "dataframe": captured(df.groupby("k").v.sum()),
        "delayed-tree": captured(level[0], add(inc(1), inc(2))),
        "raw": ({("x", 0): 1, ("x", 1): (operator.add, ("x", 0), 10),
                 "y": (sum, [("x", 0), ("x", 1)]), "z": (lambda: None,)},
                [["y", ("x", 1)], "z"]),
    }


GRAPHS = graphs()


def with_every_optimization(dag, plan):
    """The plan with task-dup on every fan-in entry, delayed I/O on its producers and
    streaming of their outputs: every optimisation fact a slice must carry."""
    layout = build_layout(dag, plan)
    fanins = [t.id for t in dag.tasks if layout.is_entry[t.id] and len(t.deps) > 1]
    producers = sorted({d for e in fanins for d in dag.tasks[e].deps})
    plan.optimizations = Optimizations(
        duplicate={e: dag.tasks[e].deps[:1] for e in fanins},
        delay=dict.fromkeys(producers, 0.5), preload=True,
        stream=dict.fromkeys(producers, 1024))
    plan.validate(dag)
    return plan


RUN = "r1"


def sliced(dag, plan, run_id=RUN):
    layout = build_layout(dag, plan)
    slicer = slices.Slicer(dag, plan, layout, run_id)
    blobs = dict(slicer.encode(g) for g in slicer.order())
    for digest, blob in slicer.pieces_to_store().items():
        slices.open_piece(blob, run_id, digest, "piece")
    return layout, blobs


class Loader:
    """A view's loader over encoded slices, counting what it loads."""

    def __init__(self, blobs):
        self.blobs, self.loads = blobs, []

    def __call__(self, names):
        self.loads += names
        return [slices.decode(self.blobs[n], RUN, n, slices.SLICE, n) for n in names]


def check_group_facts(dag, plan, layout, name, loader):
    """A view holding only slice ``name`` answers every question an invocation of that
    group asks, as the whole run does; an entry's own facts load the entry's slice."""
    view = slices.SlicedView(HEADER, loader)
    view.ensure([name])
    own = list(view.tasks)
    assert own, name
    opt = plan.optimizations
    for t in own:
        task = dag.tasks[t]
        assert view.deps[t] == task.deps
        assert view.tasks[t].key == task.key and view.tasks[t].func_name == task.func_name
        assert view.local_dependents[t] == layout.local_dependents[t]
        assert view.entry_dependents[t] == layout.entry_dependents[t]
        assert view.upload[t] == layout.upload[t]
        assert (t in view.final) == (t in dag.output_set)
        assert view.assignment[t] == plan.assignment[t]
        assert view.optimizations.delay.get(t) == opt.delay.get(t)
        assert view.optimizations.stream.get(t) == opt.stream.get(t)
        for d in task.deps:
            assert view.key(d) == view.tasks[d].key == dag.tasks[d].key
            assert view.optimizations.stream.get(d) == opt.stream.get(d)
        for e in layout.entry_dependents[t]:
            assert view.deps[e] == dag.tasks[e].deps
            for d in dag.tasks[e].deps:  # pre-load reads the fan-in's other inputs
                assert view.key(d) == dag.tasks[d].key
                assert view.optimizations.stream.get(d) == opt.stream.get(d)
            assert view.worker_of(e) == plan.worker_of(e)
            assert view.optimizations.duplicate.get(e) == opt.duplicate.get(e)
            for b in opt.duplicate.get(e, ()):
                assert view.tasks[b].key == dag.tasks[b].key
                assert all(view.key(d) == dag.tasks[d].key for d in dag.tasks[b].deps)
    assert loader.loads == [name]  # nothing else was needed
    entries = [e for t in own for e in layout.entry_dependents[t]]
    if entries:
        e = entries[0]
        assert view.local_dependents[e] == layout.local_dependents[e]  # loads e's slice
        assert loader.loads == [name, slices.entry_slice(e)]


def run_from_slices(view):
    """Run the DAG the way invocations walk it: from the root slices, loading an entry's
    slice when it becomes ready; returns {task id: value}."""
    values, waiting = {}, {}
    ready = sorted(t for t in view.tasks if not view.deps[t])
    while ready:
        t = ready.pop()
        task = view.task(t, whole=True)
        values[t] = task.node({view.key(d): values[d] for d in task.deps})
        for d in (*view.local_dependents[t], *view.entry_dependents[t]):
            left = waiting.get(d, len(view.deps[d])) - 1
            waiting[d] = left
            if left == 0:
                view.task(d, whole=True)  # an entry: loads its slice
                ready.append(d)
    return values


@pytest.mark.parametrize("graph", sorted(GRAPHS))
@pytest.mark.parametrize("planner", ["wukong", "uniform", "non-uniform", "dask", "per-task"])
@pytest.mark.parametrize("optimized", [False, True], ids=["plain", "optimized"])
def test_each_slice_holds_what_its_group_reads(graph, planner, optimized):
    dsk, keys = GRAPHS[graph]
    dag = to_dag(dsk, keys)
    plan = get_planner(planner).plan(dag, parallelism=4, memory_mb=1024)
    if optimized:
        plan = with_every_optimization(dag, plan)
    layout, blobs = sliced(dag, plan)
    assert len(blobs) == layout.n_groups
    for name in blobs:
        check_group_facts(dag, plan, layout, name, Loader(blobs))
    loader = Loader(blobs)
    view = slices.SlicedView(HEADER, loader)
    view.ensure([slices.root_slice(w) for w in layout.root_groups])
    values = run_from_slices(view)
    assert sorted(loader.loads) == sorted(blobs)  # each slice loaded once
    assert view.final == set(dag.outputs)
    outputs = [dag.tasks[o].key for o in dag.outputs]
    for o, want in zip(dag.outputs, dask.get(dsk, outputs), strict=True):
        same(values[o], want)


def same(a, b):
    if isinstance(a, pd.Series):
        pd.testing.assert_series_equal(a, b)
    elif isinstance(a, pd.DataFrame):
        pd.testing.assert_frame_equal(a, b)
    else:
        np.testing.assert_equal(a, b)


def tree_dag(tasks: int, leaves_per_block: int):
    dsk, root = tree_graph(tasks)
    dag = to_dag(dsk, root)
    leaves = (tasks + 1) // 2
    plan = get_planner("wukong").plan(dag, parallelism=leaves // leaves_per_block,
                                      memory_mb=1024)
    return dag, plan


def test_the_same_group_fetches_the_same_bytes_on_a_larger_dag(real_redis):
    sizes = {}
    for tasks in (10_000, 100_000):
        dag, plan = tree_dag(tasks, 500)
        _, blobs = sliced(dag, plan, f"grow{tasks}")
        first_root = slices.root_slice(plan.assignment[dag.roots()[0]])
        top = slices.entry_slice(dag.outputs[0])
        store = RunStore(redis.Redis.from_url(real_redis), f"grow{tasks}", 60)
        writer = stored.SliceWriter(store)
        writer.header(HEADER)
        for name, blob in blobs.items():
            writer.add(name, blob, {})
        writer.finish()
        fetched = {}
        for name, worker, start, invoker in ((first_root, first_root[2:], [], "client"),
                                             (top, "w0", [dag.outputs[0]], "w1")):
            stored.forget(store.keys.run_id)
            view, use = stored.load_view(store.keys.run_id, worker, invoker, start, store,
                                         1024)
            fetched[name] = use.of(view)[0]
            assert view.loaded == {name}
        sizes[tasks] = (fetched[first_root], fetched[top], len(dag))
        store.r.delete(*writer.cleanup_keys(), store.keys.dag)
    (root_small, top_small, n_small), (root_big, top_big, n_big) = sizes[10_000], sizes[100_000]
    assert n_big > 9 * n_small
    assert abs(root_big - root_small) <= 0.2 * root_small
    assert abs(top_big - top_small) <= 0.2 * top_small


def test_a_slice_written_by_other_code_is_refused(monkeypatch):
    dag, plan = tree_dag(101, 10)
    layout, blobs = sliced(dag, plan)
    g = layout.group[dag.roots()[0]]
    name = slices.Slicer(dag, plan, layout, RUN).name_of[g]
    monkeypatch.setattr(slices, "SCHEMA", "0123456789ab")  # other code's schema
    other = slices.Slicer(dag, plan, layout, RUN).encode(g)[1]
    monkeypatch.undo()
    with pytest.raises(SchemaMismatchError, match="0123456789ab"):
        slices.decode(other, RUN, name, slices.SLICE, name)
    whole = serialize.seal(cloudpickle.dumps((dag, plan, layout)), serialize.Purpose.SPEC,
                           RUN, slices.seal_name(name))  # a whole pickled spec, sealed
    with pytest.raises(SchemaMismatchError, match="not a run spec slice"):
        slices.decode(whole, RUN, name, slices.SLICE, name)  # the former format
    header = slices.encode(HEADER, slices.HEADER, RUN, name)
    with pytest.raises(SchemaMismatchError, match="not a 'slice'"):
        slices.decode(header, RUN, name, slices.SLICE, name)
    blob = blobs[name]
    with pytest.raises(serialize.TamperedPayloadError):
        slices.decode(blob[:-1] + bytes([blob[-1] ^ 1]), RUN, name, slices.SLICE, name)
    with pytest.raises(serialize.TamperedPayloadError):  # another run's, or another slice's
        slices.decode(blob, "r2", name, slices.SLICE, name)
    other_name = next(n for n in blobs if n != name)
    with pytest.raises(serialize.TamperedPayloadError):
        slices.decode(blob, RUN, other_name, slices.SLICE, name)


def test_a_function_pickled_by_value_is_one_shared_piece(real_redis):
    scale = 3
    triple = lambda v: v * scale  # noqa: E731  (pickled by value: a closure)
    dsk = {("m", i): (triple, i) for i in range(40)}
    dsk["total"] = (sum, list(dsk))
    dag = to_dag(dsk, "total")
    plan = get_planner("wukong").plan(dag, parallelism=4, memory_mb=1024)
    layout = build_layout(dag, plan)
    slicer = slices.Slicer(dag, plan, layout, "pieces")
    store = RunStore(redis.Redis.from_url(real_redis), "pieces", 60)
    writer = stored.SliceWriter(store)
    writer.header(HEADER)
    stored.store_slices(slicer, writer, lambda names: None)
    assert len(writer.digests) == 1 and len(writer.names) == layout.n_groups
    digest = writer.digests[0]
    slices.PIECES._items.pop(digest, None)  # a new container
    view, _ = stored.load_view("pieces", "w0", "client", [], store, 1024)
    assert digest in slices.PIECES
    roots = [view.tasks[t] for t in view.tasks if not view.deps[t]]
    assert roots and all(r.node({}) == 3 * r.key[1] for r in roots)
    store.r.delete(*writer.cleanup_keys(), store.keys.dag)


def load_while_the_top_slice_arrives_late(store: RunStore):
    """A worker loads the top fan-in's slice of a 1001-task tree while the client stores
    it 0.3 s late (the header is there): (its view, that slice's name and sealed bytes,
    the client's writer, the plan)."""
    dag, plan = tree_dag(1001, 100)
    _, blobs = sliced(dag, plan, store.keys.run_id)
    writer = stored.SliceWriter(store)
    writer.header(slices.RunHeader(60, 1024, False, deadline_at=time.time() + 30))
    top = slices.entry_slice(dag.outputs[0])

    def store_later():
        time.sleep(0.3)
        writer.add(top, blobs[top], {})
        writer.flush()

    later = threading.Thread(target=store_later)
    later.start()
    try:
        view, _ = stored.load_view(store.keys.run_id, "w9", "w0", [dag.outputs[0]], store,
                                   1024)
    finally:
        later.join()
    return view, top, blobs[top], writer, plan


def test_a_reader_waits_for_a_slice_the_client_has_not_stored(any_redis):
    store = RunStore(redis.Redis.from_url(any_redis), f"wait{time.monotonic_ns()}", 60)
    view, top, blob, writer, plan = load_while_the_top_slice_arrives_late(store)
    assert view.loaded == {top} and view.nbytes >= len(blob)
    writer.finish()  # every slice stored: one still missing is lost, not awaited
    stored.forget(store.keys.run_id)
    missing = slices.root_slice(plan.assignment[0])
    t0 = time.monotonic()
    with pytest.raises(RunDataLostError, match="not in Redis"):
        stored.load_view(store.keys.run_id, missing[2:], "client", [], store, 1024)
    assert time.monotonic() - t0 < 5
    other = RunStore(store.r, f"late{time.monotonic_ns()}", 60)
    stored.SliceWriter(other).header(slices.RunHeader(60, 1024, False,
                                                      deadline_at=time.time() + 0.3))
    with pytest.raises(DeadlineExceededError, match="deadline"):
        stored.load_view(other.keys.run_id, "w0", "client", [], other, 1024)
    store.r.delete(*writer.cleanup_keys(), store.keys.dag, other.keys.dag)


def test_a_container_keeps_a_runs_view_and_loads_only_new_slices(real_redis):
    dag, plan = tree_dag(1001, 100)
    _, blobs = sliced(dag, plan, "cached")
    store = RunStore(redis.Redis.from_url(real_redis), "cached", 60)
    writer = stored.SliceWriter(store, batch_slices=3)
    writer.header(HEADER)
    for name, blob in blobs.items():
        writer.add(name, blob, {})
    writer.finish()
    stored.forget("cached")
    root = plan.assignment[dag.roots()[0]]
    view, use = stored.load_view("cached", root, "client", [], store, 1024)
    first = use.of(view)[0]
    assert first == view.nbytes > 0
    top = dag.outputs[0]
    again, use = stored.load_view("cached", "w-top", root, [top], store, 1024)
    assert again is view and use.of(view)[0] == len(blobs[slices.entry_slice(top)])
    view, use = stored.load_view("cached", root, "client", [], store, 1024)
    assert use.of(view) == (0, 0.0)  # nothing fetched: the container had it
    stored.forget("cached")
    store.r.delete(*writer.cleanup_keys(), store.keys.dag)


def test_root_groups_are_stored_first_in_batches(real_redis):
    dag, plan = tree_dag(4001, 100)  # 20 root groups, fan-in entries above them
    layout = build_layout(dag, plan)
    store = RunStore(redis.Redis.from_url(real_redis), "batches", 60)
    writer = stored.SliceWriter(store, batch_bytes=20_000)
    writer.header(HEADER)
    batches = []

    def on_stored(names):
        assert store.r.exists(*(store.keys.slice(n) for n in names)) == len(names)
        assert not store.r.exists(store.keys.slices_done)
        batches.append(names)

    stored.store_slices(slices.Slicer(dag, plan, layout, "batches"), writer, on_stored)
    names = [n for b in batches for n in b]
    roots = {slices.root_slice(w) for w in layout.root_groups}
    assert len(batches) > 2 and len(names) == len(set(names)) == layout.n_groups
    assert set(names[:len(roots)]) == roots  # every root group before any entry's
    assert store.r.exists(store.keys.slices_done)
    store.r.delete(*writer.cleanup_keys(), store.keys.dag)


def test_the_cost_model_charges_an_invocation_for_its_slice():
    from dask_serverless.costmodel import FixedCostModel
    from dask_serverless.estimates import Estimates
    from dask_serverless.metrics.predictor import Predictor

    dag, plan = tree_dag(4001, 100)
    layout = build_layout(dag, plan)
    sizes = slices.SliceSizes(dag, plan, layout)
    slicer = slices.Slicer(dag, plan, layout, RUN)
    for g in (layout.group[dag.roots()[0]], layout.group[dag.outputs[0]]):
        actual = len(slicer.encode(g)[1])
        assert 0.6 * actual <= sizes.of_group(g) <= 1.5 * actual
    root = sizes.of_task(dag.roots()[0])
    top = sizes.of_task(dag.outputs[0])
    assert root > 10 * top  # a root group holds 100 leaves and their subtree
    fixed = Estimates(dag, FixedCostModel(latency_s=0.001, spec_load_bps=1e6))
    assert fixed.spec_load(root) == pytest.approx(0.001 + root / 1e6)
    assert fixed.spec_load(0) == 0.0
    learned = Predictor(spec_loads=[(n, 0.002 + n / 5e6) for n in (1e3, 1e4, 1e5, 1e6)])
    assert Estimates(dag, learned).spec_load(root) == pytest.approx(0.002 + root / 5e6,
                                                                    rel=0.05)


# -- the container's spec cache ----------------------------------------------------------------
def store_run(url, run_id, deadline_at=None, tasks=1001):
    """A run's spec stored as a client stores it: (dag, plan, store, writer)."""
    dag, plan = tree_dag(tasks, 100)
    store = RunStore(redis.Redis.from_url(url), run_id, 60)
    writer = stored.SliceWriter(store)
    header = slices.RunHeader(60, 1024, False, deadline_at=deadline_at or time.time() + 60)
    stored.write_spec(writer, dag, plan, build_layout(dag, plan), header)
    return dag, plan, store, writer


def load_root(run):
    dag, plan, store, _ = run
    return stored.load_view(store.keys.run_id, plan.assignment[dag.roots()[0]], "client", [],
                            store, 1024)


def end_run(run):
    """The client's cleanup (``Run._cleanup``): slices, pieces and header deleted."""
    _, _, store, writer = run
    writer.cleanup()
    store.cleanup([], [])


@pytest.fixture
def empty_spec_cache():
    for run_id in stored.SPECS.runs():
        stored.forget(run_id)
    yield stored.SPECS
    for run_id in stored.SPECS.runs():
        stored.forget(run_id)


def test_a_container_drops_a_runs_spec_once_the_run_ended(real_redis, empty_spec_cache):
    tag = time.monotonic_ns()
    a = store_run(real_redis, f"endA{tag}")
    c_deadline = time.time() + 1.0
    c = store_run(real_redis, f"endC{tag}", c_deadline)  # its deadline passes soon
    b = store_run(real_redis, f"endB{tag}")
    for run in (a, c, b):
        load_root(run)
    ids = [run[2].keys.run_id for run in (a, c, b)]
    assert empty_spec_cache.runs() == ids  # all running: all kept
    end_run(a)
    load_root(b)  # a run the container has: nothing is checked
    assert empty_spec_cache.runs() == ids
    time.sleep(max(0.0, c_deadline - time.time() + 0.05))
    d = store_run(real_redis, f"endD{tag}")
    load_root(d)  # a new run: the ended ones (a cleaned up, c past its deadline) go
    assert empty_spec_cache.runs() == [ids[2], d[2].keys.run_id]
    for run in (b, c, d):
        end_run(run)


def test_the_spec_cache_is_bounded_by_bytes(real_redis, empty_spec_cache):
    tag = time.monotonic_ns()
    runs = [store_run(real_redis, f"bound{i}-{tag}") for i in range(3)]
    ids = [run[2].keys.run_id for run in runs]
    view, use = load_root(runs[0])
    one = use.of(view)[0]
    assert one == view.nbytes > 0
    with dask.config.set({"serverless.spec-cache-bytes": int(2.5 * one)}):
        for run in runs[1:]:
            load_root(run)
        assert empty_spec_cache.runs() == ids[1:]  # the least recently used went
        assert empty_spec_cache.nbytes <= 2.5 * one
        view, use = load_root(runs[0])  # fetched again
        assert use.of(view)[0] == one and empty_spec_cache.runs() == [ids[2], ids[0]]
    with dask.config.set({"serverless.spec-cache-bytes": one // 2}):  # not even one run
        view, use = load_root(runs[1])
        assert use.of(view)[0] == one and view.tasks  # the invocation has it all the same
        assert empty_spec_cache.runs() == [] and slices.PIECES.max_bytes == one // 2
    for run in runs:
        end_run(run)


# -- sliced specs in real runs -------------------------------------------------------------------
def test_an_invocations_spec_bytes_do_not_grow_with_the_dag(real_redis):
    """The same group (a root worker's 256 leaves) on a tree of 2k and one of 20k tasks:
    its invocation fetches the same spec bytes (metrics records), while the run's spec
    grows with the DAG."""
    from dask_serverless import serverless_get
    from dask_serverless.metrics import MetricsStore
    from dask_serverless.runtime import get as get_mod

    fetched = {}
    for tasks in (2_047, 20_479):
        dsk, root = tree_graph(tasks)
        leaves = (tasks + 1) // 2
        with dask.config.set({"serverless.planner": "wukong",
                              "serverless.parallelism": leaves // 256}):
            assert serverless_get(dsk, root) == leaves * (leaves + 1) // 2
        run = get_mod.last_run
        records = MetricsStore.from_url(run.metrics_url).invocations(run.run_id)
        roots = [r.spec_bytes for r in records if r.invoker == "client"]
        assert len(roots) == leaves // 256 and all(b > 0 for b in roots)
        fetched[tasks] = (sorted(roots)[len(roots) // 2], max(r.spec_bytes for r in records),
                          run.spec_bytes)
    (small, small_max, small_run), (big, big_max, big_run) = fetched.values()
    assert big_run > 8 * small_run  # the run's spec grows with the DAG...
    assert abs(big - small) <= 0.2 * small  # ... what one group's invocation fetches, not
    assert big_max < 2 * small_max < small_run


def test_a_run_whose_slice_was_written_by_other_code_fails_with_the_schema_error(
        real_redis, monkeypatch):
    """Version skew mid-run: a slice one worker fetches was written by other code (here
    replaced in Redis while the run waits on its first task); the run fails with
    SchemaMismatchError naming both schemas, quickly, not a pickle error or a hang."""
    from dask_serverless import serverless_get
    from dask_serverless.runtime import run as run_mod

    submit = run_mod.Run._submit

    def submit_then_replace(self):
        submit(self)
        entry = slices.entry_slice(self.dag.outputs[0])
        blob = self.store.r.get(self.store.keys.slice(entry))
        head, body = slices.read_head(blob, self.run_id, entry, "test")
        forged = json.dumps({**head, "schema": "0ld5chema"}).encode()
        frame = b"".join([slices.MAGIC, struct.pack("<I", len(forged)), forged, body])
        self.store.r.set(self.store.keys.slice(entry), serialize.seal(
            frame, serialize.Purpose.SPEC, self.run_id, slices.seal_name(entry)))

    monkeypatch.setattr(run_mod.Run, "_submit", submit_then_replace)
    x = add(*[delayed(sleep_then)(0.5, i) for i in range(4)])
    t0 = time.monotonic()
    with dask.config.set({"serverless.planner": "wukong", "serverless.parallelism": 4}), \
            pytest.raises(SchemaMismatchError, match=r"0ld5chema.*different code"):
        dask.compute(x, scheduler=serverless_get)
    assert time.monotonic() - t0 < 60


def sleep_then(seconds, value):
    time.sleep(seconds)
    return value


def test_an_invocation_may_carry_its_header_and_slices(real_redis, empty_spec_cache):
    """A small root invocation carries the header and its slice (``pack_inline``): it
    loads them from the payload, Redis only for the rest; a frame packed under another
    name, or a garbled pack, is refused."""
    run = store_run(real_redis, f"inline{time.monotonic_ns()}")
    dag, plan, store, _ = run
    run_id = store.keys.run_id
    worker = plan.assignment[dag.roots()[0]]
    name = slices.root_slice(worker)
    header = store.r.get(store.keys.dag)
    blob = store.r.get(store.keys.slice(name))
    store.r.delete(store.keys.slice(name))  # only the payload has it now
    view, use = stored.load_view(run_id, worker, "client", [], store, 1024,
                                 slices.pack_inline({slices.HEADER: header, name: blob}))
    assert view.loaded == {name} and use.of(view)[0] == len(header) + len(blob)
    other = next(w for w in plan.workers if w != worker)
    for bad in (slices.pack_inline({slices.HEADER: header, slices.root_slice(other): blob}),
                slices.pack_inline({slices.HEADER: header, name: blob})[:-7]):
        stored.forget(run_id)
        with pytest.raises(serialize.TamperedPayloadError):
            stored.load_view(run_id, other, "client", [], store, 1024, bad)
    stored.forget(run_id)
    with pytest.raises(SchemaMismatchError, match="not an inline run spec"):
        stored.load_view(run_id, other, "client", [], store, 1024, header)
    end_run(run)


def test_the_simulator_charges_each_invocation_its_slice():
    """Slower spec loads delay each invocation's first task by its slices' load time: a
    root invocation its root group's, a fired one its entry's (not the whole DAG's)."""
    from dask_serverless.costmodel import FixedCostModel
    from dask_serverless.simulator import Simulator

    dag, _ = tree_dag(4001, 100)
    plan = get_planner("dask").plan(dag, parallelism=20, memory_mb=1024)  # fires entries
    layout = build_layout(dag, plan)
    sizes = slices.SliceSizes(dag, plan, layout)
    fast, slow = (FixedCostModel(exec_s=1e-4, latency_s=0.0, spec_load_bps=bps)
                  for bps in (1e12, 1e5))
    before, after = (Simulator(dag, m).run(plan) for m in (fast, slow))
    delay = {}  # invocation -> its first task's start after its own start, per run
    for result in (before, after):
        for inv in result.invocations:
            first = min(result.task_start[t] for t in inv.tasks)
            delay.setdefault((inv.worker_id, tuple(inv.start_tasks)), []).append(
                first - inv.start_time)
    both = {k: v for k, v in delay.items() if len(v) == 2}  # the same in both runs
    fired = [starts for _, starts in both if starts != tuple(layout.root_groups.get(
        next(iter(plan.assignment[t] for t in starts)), ()))]
    assert len(both) - len(fired) == len(layout.root_groups) and len(fired) > 100
    for (_, starts), (fast_s, slow_s) in both.items():
        loaded = sum(sizes.of_group(g) for g in {layout.group[t] for t in starts})
        assert slow_s - fast_s == pytest.approx(loaded / 1e5, rel=0.05)
    assert after.makespan > before.makespan


def test_a_loaded_spec_is_left_out_of_garbage_collections_until_its_run_is_dropped(
        real_redis, empty_spec_cache):
    import gc

    run = store_run(real_redis, f"frozen{time.monotonic_ns()}")
    gc.unfreeze()
    view, _ = load_root(run)
    some_task = next(iter(view.own.values()))
    assert gc.get_freeze_count() > 0 and gc.is_tracked(some_task)
    frozen = gc.get_freeze_count()
    assert not any(o is some_task for o in gc.get_objects())  # frozen: not scanned
    end_run(run)
    stored.forget(run[2].keys.run_id)
    assert gc.get_freeze_count() == 0 < frozen
