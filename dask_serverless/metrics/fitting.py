"""Robust weighted fits on samples (pure Python: planners import this on the hot path).

``fit_power`` learns ``y = a * x^b * s(m)`` in log space: a first least-squares fit
through the weighted medians of bins of similar input size (and memory config) is robust
to outliers; samples whose residual has a robust z-score (median / MAD) above a threshold
are dropped; a weighted least-squares fit on the remaining samples gives ``b`` (and the
memory exponent when several configs were seen), and ``a`` is shifted to the requested
percentile of the residuals. Weights carry recency.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

MAX_BINS = 12
LOCAL_WIDTH = 0.05  # log units (~5%): sizes this close count as "the same size"
_TINY = 1e-9
LARGE_TRANSFER = 256 * 1024  # bytes: transfers this big are timed by bandwidth, not latency


def weighted_quantile(values: Sequence[float], weights: Sequence[float], q: float) -> float:
    """Quantile ``q`` (0..1), each sample centred on its weight's midpoint, interpolated."""
    pairs = sorted(zip(values, weights, strict=True))
    total = sum(w for _, w in pairs)
    if not pairs or total <= 0:
        raise ValueError("weighted_quantile needs samples with positive weight")
    cum, points = 0.0, []
    for v, w in pairs:
        points.append(((cum + w / 2) / total, v))
        cum += w
    if q <= points[0][0]:
        return points[0][1]
    for (p0, v0), (p1, v1) in itertools.pairwise(points):
        if q <= p1:
            return v0 if p1 == p0 else v0 + (v1 - v0) * (q - p0) / (p1 - p0)
    return points[-1][1]


def inliers(values: Sequence[float], weights: Sequence[float], threshold: float) -> list[bool]:
    """True for samples whose robust z-score ``0.6745 |v - median| / MAD`` is within
    ``threshold`` (with MAD 0, samples off the median are outliers)."""
    med = weighted_quantile(values, weights, 0.5)
    dev = [abs(v - med) for v in values]
    mad = weighted_quantile(dev, weights, 0.5)
    if mad == 0:
        return [d <= _TINY for d in dev]
    return [0.6745 * d / mad <= threshold for d in dev]


def robust_center(values: Sequence[float], weights: Sequence[float], q: float,
                  threshold: float) -> tuple[float, float, int]:
    """(quantile ``q`` of the inliers, scaled MAD of the inliers, how many inliers)."""
    keep = inliers(values, weights, threshold)
    vs = [v for v, k in zip(values, keep, strict=True) if k]
    ws = [w for w, k in zip(weights, keep, strict=True) if k]
    center = weighted_quantile(vs, ws, q)
    med = weighted_quantile(vs, ws, 0.5)
    spread = 1.4826 * weighted_quantile([abs(v - med) for v in vs], ws, 0.5)
    return center, spread, len(vs)


def least_squares(rows: Sequence[Sequence[float]], ys: Sequence[float],
                  ws: Sequence[float]) -> list[float] | None:
    """Weighted least squares ``rows @ beta ~ ys``; None when the system is singular."""
    k = len(rows[0])
    ata = [[sum(w * r[i] * r[j] for r, w in zip(rows, ws, strict=True)) for j in range(k)]
           for i in range(k)]
    aty = [sum(w * r[i] * y for r, y, w in zip(rows, ys, ws, strict=True)) for i in range(k)]
    m = [[*row, b] for row, b in zip(ata, aty, strict=True)]  # Gauss-Jordan, partial pivot
    for col in range(k):
        pivot = max(range(col, k), key=lambda i: abs(m[i][col]))
        if abs(m[pivot][col]) < 1e-12 * max(1.0, max(abs(v) for v in m[pivot])):
            return None
        m[col], m[pivot] = m[pivot], m[col]
        for i in range(k):
            if i != col:
                f = m[i][col] / m[col][col]
                m[i] = [a - f * c for a, c in zip(m[i], m[col], strict=True)]
    return [m[i][k] / m[i][i] for i in range(k)]


@dataclass(frozen=True, slots=True)
class Point:
    """One sample: input size ``x``, memory config ``m`` (MB), value ``y``, weight ``w``."""

    x: float
    m: float
    y: float
    w: float


@dataclass(frozen=True, slots=True)
class PowerFit:
    """``y = a * x^b * scale(m)``; ``scale`` is ``m^c`` when ``c`` was learned. At an input
    size and config already observed ``min_samples`` times, the observed percentile is
    used instead (``local``): it holds where the curve is no exact power law."""

    a: float
    b: float
    c: float | None  # learned memory exponent, None: ``rule`` scales instead
    rule: Callable[[float], float] | None
    samples: int
    spread: float  # scaled MAD of the inliers' log residuals
    b_learned: bool
    local: dict[tuple[float, int], float] = field(default_factory=dict)  # -> log y

    def __call__(self, x: float, m: float = 1.0) -> float:
        scale = self.rule(m) if self.rule else 1.0
        seen = self.local.get((m, _cell(x)))
        if seen is not None:
            return math.exp(seen) * scale
        y = self.a * max(x, 1.0) ** self.b
        return y * m ** self.c if self.c is not None else y * scale

    def observed(self, x: float, m: float = 1.0) -> bool:
        """Whether ``__call__(x, m)`` comes from samples at this very size."""
        return (m, _cell(x)) in self.local


def _cell(x: float) -> int:
    return round(math.log(max(x, 1.0)) / LOCAL_WIDTH)


def fit_power(points: Sequence[Point], *, q: float, threshold: float, min_samples: int,
              fallback_b: float, rule: Callable[[float], float] | None = None,
              learn_memory: bool = False) -> PowerFit:
    """Robust fit of ``y = a x^b s(m)`` (module docstring). ``b`` is learned from at least
    ``min_samples`` samples over two or more size bins, else ``fallback_b``; the memory
    exponent is learned when ``learn_memory`` and two configs have ``min_samples`` each,
    else ``rule(m)`` scales (None: no scaling)."""
    if not points:
        raise ValueError("fit_power needs at least one sample")
    per_config: dict[float, int] = {}
    for p in points:
        per_config[p.m] = per_config.get(p.m, 0) + 1
    learn_c = learn_memory and sum(n >= min_samples for n in per_config.values()) >= 2
    use_rule = rule is not None and not learn_c
    lx = [math.log(max(p.x, 1.0)) for p in points]
    lm = [math.log(p.m) for p in points]
    ly = [math.log(max(p.y, _TINY)) - (math.log(rule(p.m)) if use_rule else 0.0)
          for p in points]
    ws = [p.w for p in points]
    edges = _bin_edges(lx)
    bins: dict[tuple[float, int], list[int]] = {}
    for i, p in enumerate(points):
        bins.setdefault((p.m, _bin_of(lx[i], edges)), []).append(i)
    learn_b = len(points) >= min_samples and len({k[1] for k in bins}) >= 2

    def design(i: int) -> list[float]:
        return [1.0] + ([lx[i]] if learn_b else []) + ([lm[i]] if learn_c else [])

    def target(i: int) -> float:
        return ly[i] - (0.0 if learn_b else fallback_b * lx[i])

    def solve() -> tuple[list[float], list[int]]:
        # 1. a robust first fit through each bin's weighted medians
        rows, ys, bw = [], [], []
        for idx in bins.values():
            wi = [ws[i] for i in idx]
            rows.append([weighted_quantile([design(i)[j] for i in idx], wi, 0.5)
                         for j in range(len(design(idx[0])))])
            ys.append(weighted_quantile([target(i) for i in idx], wi, 0.5))
            bw.append(sum(wi))
        beta = least_squares(rows, ys, bw) or _mean_only(rows, ys, bw)
        # 2. drop outliers by residual, 3. refit on the inliers
        keep = inliers(_residuals(beta, design, target, len(points)), ws, threshold)
        idx = [i for i in range(len(points)) if keep[i]]
        beta = least_squares([design(i) for i in idx], [target(i) for i in idx],
                             [ws[i] for i in idx]) or beta
        return beta, idx

    beta, idx = solve()
    if not _plausible(beta, learn_b):  # sizes too close together to tell a slope
        learn_b = learn_c = False
        use_rule = rule is not None
        ly = [math.log(max(p.y, _TINY)) - (math.log(rule(p.m)) if use_rule else 0.0)
              for p in points]
        beta, idx = solve()
    # 4. shift to the requested percentile of the inliers' residuals
    resid = _residuals(beta, design, target, len(points))
    r_in, w_in = [resid[i] for i in idx], [ws[i] for i in idx]
    beta[0] += weighted_quantile(r_in, w_in, q)
    med = weighted_quantile(r_in, w_in, 0.5)
    spread = 1.4826 * weighted_quantile([abs(r - med) for r in r_in], w_in, 0.5)
    b = beta[1] if learn_b else fallback_b
    c = beta[-1] if learn_c else None
    cells: dict[tuple[float, int], list[int]] = {}
    for i, p in enumerate(points):  # each cell drops its own outliers
        cells.setdefault((p.m, _cell(p.x)), []).append(i)
    local = {key: robust_center([ly[i] for i in members], [ws[i] for i in members], q,
                                threshold)[0]
             for key, members in cells.items() if len(members) >= min_samples}
    return PowerFit(math.exp(beta[0]), b, c, rule if use_rule else None, len(idx), spread,
                    learn_b, local)


MAX_EXPONENT = 4.0  # |b| beyond this is noise between near-equal sizes, not a law


def _plausible(beta: list[float], learn_b: bool) -> bool:
    return (all(math.isfinite(v) for v in beta) and abs(beta[0]) < 500
            and (not learn_b or abs(beta[1]) <= MAX_EXPONENT))


def _residuals(beta: list[float], design: Callable[[int], list[float]],
               target: Callable[[int], float], n: int) -> list[float]:
    return [target(i) - sum(b * d for b, d in zip(beta, design(i), strict=True))
            for i in range(n)]


def _mean_only(rows: list[list[float]], ys: list[float], ws: list[float]) -> list[float]:
    """Singular design (e.g. one size bin): the weighted mean as intercept, slopes 0."""
    return [sum(y * w for y, w in zip(ys, ws, strict=True)) / sum(ws)] + [0.0] * (
        len(rows[0]) - 1)


def fit_latency_bandwidth(points: Sequence[Point], *, q: float, threshold: float,
                          default_bandwidth: float) -> tuple[float, float, int, float]:
    """Fit ``t = latency + bytes / bandwidth`` (``x`` bytes, ``y`` seconds) minimising
    relative error over robust size-bin summaries. Returns (latency, bandwidth, inliers,
    spread of log residuals). A bandwidth that cannot be learned is ``default_bandwidth``."""
    lx = [math.log(max(p.x, 1.0)) for p in points]
    edges = _bin_edges(lx)
    bins: dict[int, list[int]] = {}
    for i, v in enumerate(lx):
        bins.setdefault(_bin_of(v, edges), []).append(i)
    xs, ts, ws, kept_total = [], [], [], 0
    for idx in bins.values():
        t_log, _s, kept = robust_center([math.log(max(points[i].y, _TINY)) for i in idx],
                                        [points[i].w for i in idx], q, threshold)
        wsum = sum(points[i].w for i in idx)
        xs.append(sum(points[i].x * points[i].w for i in idx) / wsum)
        ts.append(math.exp(t_log))
        ws.append(wsum * kept / len(idx) / math.exp(t_log) ** 2)
        kept_total += kept
    latency, inv_bw = None, None
    if len(xs) >= 2 and max(xs) >= 2 * max(min(xs), 1.0):
        beta = least_squares([[1.0, x] for x in xs], ts, ws)
        if beta is not None and beta[1] > 0:
            latency, inv_bw = beta
            if latency < 0:
                latency = 0.0
                inv_bw = sum(w * x * t for x, t, w in zip(xs, ts, ws, strict=True)) / sum(
                    w * x * x for x, w in zip(xs, ws, strict=True))
    if inv_bw is None:
        latency, inv_bw = _one_size_model(xs, ts, ws, default_bandwidth)
    resid = [math.log(max(p.y, _TINY)) - math.log(max(latency + p.x * inv_bw, _TINY))
             for p in points]
    _, spread, _ = robust_center(resid, [p.w for p in points], 0.5, threshold)
    return latency, 1.0 / inv_bw, kept_total, spread


def _one_size_model(xs: Sequence[float], ts: Sequence[float], ws: Sequence[float],
                    default_bandwidth: float) -> tuple[float, float]:
    """(latency, 1 / bandwidth) when sizes vary too little to fit both. Large transfers
    tell the bandwidth (latency is then small: that of the small ones, if any); only
    when all are small does the default bandwidth stand in."""
    small = [(t, w) for x, t, w in zip(xs, ts, ws, strict=True) if x < LARGE_TRANSFER]
    big = [(x, t, w) for x, t, w in zip(xs, ts, ws, strict=True) if x >= LARGE_TRANSFER]
    latency = weighted_quantile([t for t, _ in small], [w for _, w in small], 0.5) \
        if small else 0.0
    rates = [((t - latency) / x, w) for x, t, w in big if t > latency]
    if rates:
        return latency, weighted_quantile([r for r, _ in rates], [w for _, w in rates], 0.5)
    inv_bw = 1.0 / default_bandwidth
    return max(0.0, weighted_quantile([t - x * inv_bw for x, t in zip(xs, ts, strict=True)],
                                      ws, 0.5)), inv_bw


def _bin_edges(lx: Sequence[float]) -> list[float]:
    """Upper edges of at most MAX_BINS bins of similar counts over distinct log sizes."""
    distinct = sorted({round(v, 6) for v in lx})
    if len(distinct) <= MAX_BINS:
        return distinct
    step = len(distinct) / MAX_BINS
    return [distinct[min(len(distinct) - 1, int((i + 1) * step) - 1)] for i in range(MAX_BINS)]


def _bin_of(v: float, edges: list[float]) -> int:
    v = round(v, 6)
    for i, edge in enumerate(edges):
        if v <= edge:
            return i
    return len(edges) - 1
