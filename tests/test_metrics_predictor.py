"""Predictor on synthetic samples with known curves (no Redis needed)."""

from __future__ import annotations

import math
import random

import pytest

from dask_serverless.capacity import Capacity
from dask_serverless.metrics.fitting import inliers, weighted_quantile
from dask_serverless.metrics.predictor import (
    Prediction,
    Predictor,
    Settings,
    StartSample,
    TaskSample,
    TransferSample,
)
from dask_serverless.plan import ResourceConfig

MB1 = ResourceConfig(1024)


def synthetic(function, exec_curve, out_curve, *, n=200, outliers=0.1, noise=0.05,
              memory=1024, age=0.0, seed=0):
    """Samples over 1 KB..10 MB inputs; ``outliers`` of them 5-10x off (either way)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        x = 10 ** rng.uniform(3, 7)
        y = exec_curve(x) * (1 + rng.gauss(0, noise))
        if rng.random() < outliers:
            y *= rng.choice([5.0, 10.0, 0.1, 0.2])
        out.append(TaskSample(function, int(x), int(out_curve(x)), y, memory, age))
    return out


CURVES = {
    "linear": (lambda x: 2e-8 * x, lambda x: 2 * x, 1.0),
    "power": (lambda x: 1e-10 * x ** 1.5, lambda x: x ** 1.5 / 100, 1.5),
    "constant": (lambda x: 0.05, lambda x: 4096, 0.0),
}


@pytest.mark.parametrize("name", sorted(CURVES))
def test_fit_recovers_known_curve_despite_outliers(name):
    exec_curve, out_curve, b = CURVES[name]
    p = Predictor(synthetic(name, exec_curve, out_curve), settings=Settings())
    fit = p.exec_fit(name)
    assert fit.b == pytest.approx(b, abs=0.05)
    assert fit.b_learned
    assert p.output_fit(name).b == pytest.approx(b, abs=0.01)
    for x in (5e3, 1e5, 3e6):
        assert p.exec_time(name, x, MB1) == pytest.approx(exec_curve(x), rel=0.06)
        assert p.output_bytes(name, x) == pytest.approx(out_curve(x), rel=0.02)
    pred = p.exec_time(name, 1e5, MB1)
    assert pred.source == "fit"
    assert 160 <= pred.samples < 200  # most outliers were dropped, inliers kept
    assert 0 < pred.spread < 0.15 * pred  # ~5% noise


def test_plain_mean_would_be_fooled_by_the_outliers():
    """The same data through a mean is far off: the robustness is doing the work."""
    samples = synthetic("f", lambda x: 0.05, lambda x: 1, outliers=0.1)
    mean = sum(s.exec_s for s in samples) / len(samples)
    assert abs(mean - 0.05) / 0.05 > 0.2
    assert Predictor(samples, settings=Settings()).exec_time("f", 1e5, MB1) == pytest.approx(
        0.05, rel=0.03)


def test_percentile_is_configurable():
    samples = synthetic("f", lambda x: 0.05, lambda x: 1, outliers=0.0, noise=0.2)
    median = Predictor(samples, settings=Settings(percentile=50)).exec_time("f", 1e4, MB1)
    p90 = Predictor(samples, settings=Settings(percentile=90)).exec_time("f", 1e4, MB1)
    assert median == pytest.approx(0.05, rel=0.05)
    assert p90 == pytest.approx(0.05 * (1 + 1.2816 * 0.2), rel=0.06)


def test_recency_weighting_prefers_the_newer_regime():
    old = [s for age in range(3, 13)
           for s in synthetic("f", lambda x: 0.10, lambda x: 1, n=20, age=age, seed=age)]
    new = [s for age in range(3)
           for s in synthetic("f", lambda x: 0.02, lambda x: 1, n=20, age=age, seed=99 + age)]
    recent = Predictor(old + new, settings=Settings(half_life=1.0)).exec_time("f", 1e4, MB1)
    flat = Predictor(old + new, settings=Settings(half_life=1e9)).exec_time("f", 1e4, MB1)
    assert recent == pytest.approx(0.02, rel=0.05)
    assert flat == pytest.approx(0.10, rel=0.05)


def test_memory_scaling_learned_from_several_configs():
    samples = []
    for i, (mem, factor) in enumerate(((512, 4.0), (1024, 2.0), (2048, 1.0))):
        samples += synthetic("f", lambda x, k=factor: k * 1e-8 * x, lambda x: x, memory=mem,
                             seed=i)
    p = Predictor(samples, settings=Settings())
    assert p.exec_fit("f").c == pytest.approx(-1.0, abs=0.05)
    assert p.exec_time("f", 1e6, ResourceConfig(4096)) == pytest.approx(0.005, rel=0.06)


def test_memory_scaling_learns_flat_when_memory_does_not_matter():
    samples = []
    for i, mem in enumerate((512, 2048)):
        samples += synthetic("f", lambda x: 1e-8 * x, lambda x: x, memory=mem, seed=i)
    p = Predictor(samples, settings=Settings())
    assert p.exec_fit("f").c == pytest.approx(0.0, abs=0.05)
    assert p.exec_time("f", 1e6, ResourceConfig(256)) == pytest.approx(0.01, rel=0.06)


def test_one_config_falls_back_to_the_lambda_rule():
    p = Predictor(synthetic("f", lambda x: 1e-8 * x, lambda x: x, memory=1769),
                  settings=Settings())
    assert p.exec_fit("f").c is None
    at_half = p.exec_time("f", 1e6, ResourceConfig(884))  # half a vCPU: twice the time
    assert at_half == pytest.approx(0.02, rel=0.06)
    assert p.exec_time("f", 1e6, ResourceConfig(3538)) == pytest.approx(0.01, rel=0.06)


def test_where_memory_buys_no_cpu_one_config_predicts_every_config():
    """On the local backend a container's memory cap does not change its speed: samples
    at 1769 MB say the same for 884 and 3538 MB (Lambda's rule would double one)."""
    local = Capacity(cores=2, containers=4, cpu_follows_memory=False)
    p = Predictor(synthetic("f", lambda x: 1e-8 * x, lambda x: x, memory=1769),
                  settings=Settings(), capacity=local)
    for mb in (884, 1769, 3538):
        assert p.exec_time("f", 1e6, ResourceConfig(mb)) == pytest.approx(0.01, rel=0.06)


def test_where_memory_buys_no_cpu_configs_pool_into_one_fit():
    """Noise that differs between two configs is not learned as a memory exponent: every
    config gets the pooled prediction, and at a size seen often, the observed one."""
    samples = []
    for i, (mem, factor) in enumerate(((1024, 0.9), (3008, 1.1))):
        samples += synthetic("f", lambda x, k=factor: k * 1e-8 * x, lambda x: x, memory=mem,
                             seed=i, outliers=0.0)
    local = Capacity(cores=2, containers=4, cpu_follows_memory=False)
    p = Predictor(samples, settings=Settings(), capacity=local)
    assert p.exec_fit("f").c is None
    at = {mb: p.exec_time("f", 1e6, ResourceConfig(mb)) for mb in (512, 1024, 3008)}
    assert at[512] == at[1024] == at[3008] == pytest.approx(0.01, rel=0.06)


def test_too_few_samples_use_the_hint_then_the_default():
    two = synthetic("f", lambda x: 1e-8 * x, lambda x: x, n=2, outliers=0.0, noise=0.0)
    settings = Settings(min_samples=3, defaults={"io": 1.0, "exec-time": 0.123})
    p = Predictor(two, settings=settings)
    assert not p.exec_fit("f").b_learned
    assert p.exec_time("f", 1e6, MB1).source == "fit+default"
    p.hint("f", time="constant")
    hinted = p.exec_time("f", 1e6, MB1)
    assert hinted.source == "fit+hint"
    assert p.exec_fit("f").b == 0.0
    assert p.exec_time("g", 1e6, MB1) == Prediction(0.123)
    assert p.exec_time("g", 1e6, MB1).source == "default"
    assert p.exec_time("g", 1e6, MB1).samples == 0
    p.hint("g", io="quadratic")
    assert p.output_bytes("g", 1000) == pytest.approx(1e6)
    assert p.output_bytes("g", 1000).source == "hint"


def test_cold_and_warm_start_predictions_follow_what_was_observed():
    rng = random.Random(3)
    starts = [StartSample(1024, True, 0.8 * (1 + rng.gauss(0, 0.05)), 0) for _ in range(20)]
    starts += [StartSample(1024, False, 0.004 * (1 + rng.gauss(0, 0.05)), 0)
               for _ in range(40)]
    starts += [StartSample(1024, False, 2.0, 0)]  # an outlier warm start (queued)
    p = Predictor(starts=starts, settings=Settings())
    cold = p.predict_worker_invocation_time(MB1, "cold")
    warm = p.predict_worker_invocation_time(MB1, "warm")
    assert cold == pytest.approx(0.8, rel=0.05) and cold.samples == 20
    assert warm == pytest.approx(0.004, rel=0.05) and warm.samples == 40
    other = p.predict_worker_invocation_time(ResourceConfig(2048), "cold")
    assert other == pytest.approx(0.8, rel=0.05)  # unseen config: every config's samples
    assert Predictor(settings=Settings()).predict_worker_invocation_time(
        MB1, "cold").source == "default"
    with pytest.raises(ValueError, match="'lukewarm'"):
        p.predict_worker_invocation_time(MB1, "lukewarm")


def test_transfer_bandwidth_from_one_large_size():
    """Every upload the same 3.4 MB (a fan-out of equal chunks): the bandwidth comes from
    those samples, not from the default, and small transfers give the latency."""
    rng = random.Random(3)
    samples = [TransferSample("upload", 3_400_000, (0.0003 + 3.4e6 / 1.5e9)
                              * (1 + rng.gauss(0, 0.03)), 0) for _ in range(12)]
    samples += [TransferSample("upload", 120, 0.0003 * (1 + rng.gauss(0, 0.03)), 0)
                for _ in range(5)]
    p = Predictor(transfers=samples, settings=Settings())
    latency, bandwidth = p.transfer_model("upload")
    assert latency == pytest.approx(0.0003, rel=0.1)
    assert bandwidth == pytest.approx(1.5e9, rel=0.1)
    # only large ones: latency is unknown (taken as 0) and folds into the bandwidth
    big = Predictor(transfers=samples[:12], settings=Settings())
    assert big.transfer_model("upload") == pytest.approx(
        (0.0, 3.4e6 / (0.0003 + 3.4e6 / 1.5e9)), rel=0.05)
    assert big.transfer_time(20e6, "upload") == pytest.approx(0.0003 + 20e6 / 1.5e9,
                                                                     rel=0.15)


def test_transfer_time_learns_latency_and_bandwidth():
    rng = random.Random(5)
    samples = []
    for _ in range(300):
        n = int(10 ** rng.uniform(2, 8))
        t = (0.0005 + n / 200e6) * (1 + rng.gauss(0, 0.05))
        if rng.random() < 0.1:
            t *= 8
        samples.append(TransferSample("download", n, t, 0))
    p = Predictor(transfers=samples, settings=Settings())
    latency, bandwidth = p.transfer_model("download")
    assert latency == pytest.approx(0.0005, rel=0.1)
    assert bandwidth == pytest.approx(200e6, rel=0.1)
    assert p.transfer_time(50e6, "download") == pytest.approx(0.2505, rel=0.08)
    # no upload samples: the same Redis measured the other way
    assert p.transfer_model("upload") == (latency, bandwidth)
    assert Predictor(settings=Settings()).transfer_time(1e6, "upload").source == "default"
    with pytest.raises(ValueError, match="'sideways'"):
        p.transfer_time(1, "sideways")


def test_prediction_is_a_float_that_pickles():
    import pickle

    pred = Prediction(1.5, samples=7, spread=0.1, source="fit")
    back = pickle.loads(pickle.dumps(pred))
    assert back == 1.5 and back.samples == 7 and back.source == "fit"
    assert pred * 2 == 3.0


def test_weighted_quantile_and_inliers():
    assert weighted_quantile([1, 2, 3], [1, 1, 1], 0.5) == 2
    assert weighted_quantile([1, 2, 3], [1, 10, 1], 0.5) == 2
    assert weighted_quantile([1, 2, 3], [1, 1, 10], 0.9) == 3
    # each sample sits at the middle of its weight: 2 at 1.5/12, 3 at 7/12
    assert weighted_quantile([1, 2, 3], [1, 1, 10], 0.5) == pytest.approx(2 + 4.5 / 5.5)
    assert weighted_quantile([0, 10], [1, 1], 0.5) == pytest.approx(5)
    assert inliers([1.0, 1.1, 0.9, 1.05, 50.0], [1] * 5, 3.5) == [True] * 4 + [False]
    with pytest.raises(ValueError):
        weighted_quantile([], [], 0.5)


def test_bad_hint_names_the_problem():
    with pytest.raises(ValueError, match="io='cubic'"):
        Predictor(settings=Settings()).hint("f", io="cubic")
    assert math.isfinite(Predictor(settings=Settings()).output_bytes("f", 0))


def test_observed_sizes_use_their_own_samples_between_them_the_fit():
    """A cost curve that is no power law (cache effects): seen sizes predict themselves."""
    rng = random.Random(11)
    truth = {1e5: 0.010, 1e6: 0.200, 1e7: 0.400}
    samples = [TaskSample("f", int(x), int(x), y * (1 + rng.gauss(0, 0.03)), 1024, 0)
               for x, y in truth.items() for _ in range(10)]
    p = Predictor(samples, settings=Settings())
    for x, y in truth.items():
        pred = p.exec_time("f", x, MB1)
        assert pred == pytest.approx(y, rel=0.05) and pred.source == "observed"
    between = p.exec_time("f", 3e6, MB1)
    assert between.source == "fit" and between == pytest.approx(p.exec_fit("f")(3e6, 1024))
    assert between != p.exec_time("f", 1e6, MB1)
    assert p.exec_time("f", 1e6, ResourceConfig(2048)).source == "fit"  # other config


def test_near_equal_sizes_never_give_an_absurd_law():
    """Two size bins a hair apart with very different times once made the slope explode
    (math range error); the fit must fall back to the default exponent instead."""
    from dask_serverless.metrics.fitting import MAX_EXPONENT, Point, fit_power

    pts = [Point(1000.0, 1.0, 100.0, 1.0)] * 3 + [Point(1000.6, 1.0, 0.1, 1.0)] * 3
    fit = fit_power(pts, q=0.5, threshold=3.5, min_samples=3, fallback_b=1.0)
    assert abs(fit.b) <= MAX_EXPONENT and math.isfinite(fit.a)
    assert 0.01 < fit(1000.3) < 1000


def _root_records(run_id, sizes, exec_per_byte, overhead=150, seed=0):
    """Records of a root function ``gen`` run at ``sizes`` (``size`` 0: not declared)."""
    from dask_serverless.metrics.records import TaskRecord

    rng = random.Random(seed)
    out = []
    for i, (declared, actual) in enumerate(sizes):
        exec_s = exec_per_byte * actual * (1 + rng.gauss(0, 0.03))
        out.append(TaskRecord(run_id, "inv", "w", 1024, i, f"('gen', {i})", "gen", 0.0,
                              exec_s, exec_s, [], actual + overhead, size=declared))
    return out


def _runs(*ids):
    from dask_serverless.metrics.records import RunRecord

    return [RunRecord(r, "sig", "wukong", {}, "local", 3, 3, float(t), 1.0, "ok")
            for t, r in enumerate(ids)]


def test_root_size_extrapolates_time_and_output_to_an_unseen_size():
    """Two sizes seen (older unsized runs too): a third size is extrapolated, and the
    unsized samples neither pollute the sized fit nor vanish for unsized roots."""
    old = _root_records("old", [(0, 1_000_000)] * 3 + [(0, 4_000_000)] * 3, 2e-8, seed=1)
    small = _root_records("small", [(1_000_000, 1_000_000)] * 3, 2e-8, seed=2)
    big = _root_records("big", [(2_000_000, 2_000_000)] * 3, 2e-8, seed=3)
    p = Predictor.from_records(_runs("old", "small", "big"), old + small + big, [],
                               settings=Settings(half_life=1e9))
    assert p.exec_fit("gen", sized=True).b == pytest.approx(1.0, abs=0.1)
    exec_time = p.exec_time("gen", 0, MB1, size=8_000_000)
    assert exec_time == pytest.approx(2e-8 * 8e6, rel=0.1)
    assert exec_time.source == "fit" and exec_time.samples == 6
    out = p.output_bytes("gen", 0, size=8_000_000)
    assert out == pytest.approx(8_000_150, rel=0.01) and out.source == "fit"
    # a root without a size: the unsized samples, one constant for every size (as before)
    unsized = p.exec_time("gen", 0, MB1)
    assert unsized.samples == 6
    assert 2e-8 * 1e6 <= unsized <= 2e-8 * 4e6
    # with inputs, the size is not used at all
    assert p.exec_time("gen", 1000, MB1, size=8_000_000) == p.exec_time("gen", 1000, MB1)


def test_root_size_without_sized_history_falls_back():
    old = _root_records("old", [(0, 1_000_000)] * 3, 2e-8)
    p = Predictor.from_records(_runs("old"), old, [], settings=Settings())
    # only unsized samples: today's constant, whatever the size
    assert p.exec_time("gen", 0, MB1, size=9e6) == p.exec_time("gen", 0, MB1)
    assert p.exec_fit("gen", sized=True) is None
    # nothing seen at all: output grows with the size like with input bytes (io hint)
    p.hint("new", io="linear")
    assert p.output_bytes("new", 0, size=5000) == pytest.approx(5000)
    assert p.output_bytes("new", 0, size=5000).source == "hint"


def test_estimates_pass_root_sizes_to_the_cost_model_before_running():
    """Planner side: a DAG's root sizes reach the predictor, before any execution."""
    from dask_serverless.dag import DAG, TaskNode
    from dask_serverless.estimates import Estimates

    recs = (_root_records("a", [(1_000_000, 1_000_000)] * 3, 2e-8, seed=4)
            + _root_records("b", [(2_000_000, 2_000_000)] * 3, 2e-8, seed=5))
    p = Predictor.from_records(_runs("a", "b"), recs, [], settings=Settings())

    def dag(n):
        return DAG([TaskNode(0, "g0", None, "gen", size=n), TaskNode(1, "g1", None, "gen", size=n),
                    TaskNode(2, "tail", None, "tail", (0, 1))], [2])

    est = Estimates(dag(6_000_000), p)
    assert est.out_bytes[:2] == [pytest.approx(6_000_150, rel=0.01)] * 2
    assert est.in_bytes[2] == sum(est.out_bytes[:2])
    assert est.exec_times(MB1)[0] == pytest.approx(0.12, rel=0.1)
    small = Estimates(dag(1_000_000), p)
    assert est.exec_times(MB1)[0] > 4 * small.exec_times(MB1)[0]


def test_task_rows_written_before_sizes_still_read():
    from dask_serverless.metrics.records import TASK_FIELDS, tasks_from_batch

    row = [3, "'k'", "f", 10, 20, 10, [], 100, 0, 0, 0, []]  # no cpu_s, no size
    new = [*row, 7, 4096]
    assert TASK_FIELDS[-1] == "size" and len(new) == len(TASK_FIELDS)
    batch = {"invocation_id": "i", "worker_id": "w", "memory_mb": 1024, "t0": 1.0}
    old_rec, = tasks_from_batch("r", {**batch, "rows": [row]})
    new_rec, = tasks_from_batch("r", {**batch, "rows": [new]})
    assert (old_rec.size, old_rec.cpu_s) == (0, -1.0)
    assert (new_rec.size, new_rec.cpu_s) == (4096, 7e-6)


def test_task_overhead_is_the_median_residual_of_one_at_a_time_invocations():
    """Time on the worker beyond execution and transfers (bookkeeping) is learned from
    invocations that ran one task at a time; the planners' estimates add it per task."""
    from dask_serverless.estimates import Estimates
    from dask_serverless.metrics.predictor import _task_overhead
    from dask_serverless.metrics.records import TaskRecord

    def rec(inv, start, exec_s, gap, upload_s=0.0):
        return TaskRecord("r", inv, "w", 1024, 0, "k", "f", start,
                          start + exec_s + upload_s + gap, exec_s, [], 0, upload_s=upload_s)

    one_at_a_time = [rec("a", 0.0, 0.01, 0.001), rec("a", 0.02, 0.01, 0.002, upload_s=0.005),
                     rec("a", 0.05, 0.02, 0.003)]
    threaded = [rec("b", 0.0, 0.5, 0.4), rec("b", 0.1, 0.5, 0.4)]  # overlapping: skipped
    assert _task_overhead(one_at_a_time + threaded) == pytest.approx(0.002)
    assert _task_overhead(threaded) == 0.0

    from plan_dags import dag_of

    p = Predictor(settings=Settings(), task_overhead=0.002)
    plain = Predictor(settings=Settings())
    dag = dag_of([[], [0]])
    with_overhead = Estimates(dag, p).exec_times(MB1)
    assert with_overhead == pytest.approx([t + 0.002 for t in Estimates(dag, plain).exec_times(
        MB1)])
