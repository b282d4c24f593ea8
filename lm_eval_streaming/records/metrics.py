"""Derived quantities, one definition each, for both pipelines (benchmark/analysis and the lm-eval tasks).

- *Context regions* of a position p relative to the model's trained context L
  (``max_position_embeddings``): ``below`` p < 0.9 L, ``around`` 0.9 L <= p < 1.1 L, ``beyond`` p >= 1.1 L.
  ``exceeds_trained_context`` is the plain fact "a position id >= L was used".
- *Intervals*: a Student-t interval over independent samples (benchmark: equal-length samples, paired
  differences); the ratio of sums with documents as clusters (lm-eval tasks: documents of different length).
- *Bucketing* of per-token NLLs by absolute position, by fraction of L (edges aligned with the regions) and
  in equal-width bins for curves.

No torch at import time (analysis reads records without it).
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

from lm_eval_streaming.records.run import Buckets, Interval

REGIONS = ("below", "around", "beyond")
AROUND_LOW, AROUND_HIGH = 0.9, 1.1  # fractions of the trained context
LEVEL = 0.95
ABS_EDGES = (0, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)  # extended by doubling when needed
REL_EDGES = (0.0, 0.25, 0.5, 0.75, AROUND_LOW, AROUND_HIGH, 1.25, 1.5, 2.0, 3.0)  # extended by +1.0
CURVE_BINS = 50


# ------------------------------------------------------------------ context regions
def context_region(position: float, trained_context: int | None) -> str | None:
    """``below`` / ``around`` / ``beyond`` the trained context; None when it is unknown."""
    if not trained_context:
        return None
    return relative_region(position / trained_context)


def relative_region(fraction: float) -> str:
    if fraction < AROUND_LOW:
        return "below"
    if fraction < AROUND_HIGH:
        return "around"
    return "beyond"


def exceeds_trained_context(max_position: int | None, trained_context: int | None) -> bool | None:
    """Whether a position id past the trained ones (0 .. L-1) was used; None when either is unknown."""
    if max_position is None or not trained_context:
        return None
    return max_position >= trained_context


def region_means(buckets: Buckets | None, trained_context: int | None = None) -> dict[str, tuple[float, int]]:
    """{region: (token-weighted mean NLL, tokens)} from buckets lying wholly inside one region.

    ``buckets`` by fraction of the trained context (``trained_context=None``) or by absolute position
    (pass L). A bucket that straddles a region boundary is left out (it cannot be split); regions
    without tokens are absent. Empty when the buckets have no counts or L is unknown.
    """
    if buckets is None or buckets.count is None:
        return {}
    scale = 1.0 if trained_context is None else float(trained_context)
    if scale <= 0:
        return {}
    sums: dict[str, list[float]] = {}
    for lo, hi, nll, count in zip(buckets.edges, buckets.edges[1:], buckets.nll, buckets.count):
        if not count or nll is None or not math.isfinite(nll):
            continue
        first, last = relative_region(lo / scale), _region_below(hi / scale)
        if first != last:
            continue
        acc = sums.setdefault(first, [0.0, 0])
        acc[0] += nll * count
        acc[1] += count
    return {r: (s / n, int(n)) for r, (s, n) in sums.items()}


def _region_below(upper: float) -> str:
    """Region of the positions just below an exclusive upper edge."""
    if upper <= AROUND_LOW:
        return "below"
    if upper <= AROUND_HIGH:
        return "around"
    return "beyond"


# ------------------------------------------------------------------ intervals
def t_interval(values: Sequence[float], level: float = LEVEL) -> tuple[float, Interval | None]:
    """(mean, Student-t interval) over independent samples; the interval is None for fewer than two
    samples or non-finite values (not computable: never a "significant" from one sample)."""
    n = len(values)
    if n == 0:
        return math.nan, None
    mean = math.fsum(values) / n
    if n < 2 or not all(math.isfinite(v) for v in values):
        return mean, None
    from scipy.stats import t

    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    half = float(t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)
    return mean, Interval(mean - half, mean + half)


def set_deltas(row, reference) -> None:
    """Paired differences over samples (or documents) of ``row`` to ``reference`` (a dense row scored on the
    same samples, in the same order): mean NLL and accuracy differences with their t intervals."""
    row.delta_reference = reference.attn_implementation
    row.delta_nll_vs_dense, row.delta_nll_ci = t_interval(
        [a - b for a, b in zip(row.per_sample_nll, reference.per_sample_nll)])
    row.delta_acc_vs_dense, row.delta_acc_ci = t_interval(
        [a - b for a, b in zip(row.per_sample_acc, reference.per_sample_acc)])


def ratio_of_sums(items: Iterable[tuple[float, float]]) -> float:
    """sum(values) / sum(weights) over ``(value, weight)`` items; NaN when no weight."""
    total = weight = 0.0
    for value, w in items:
        total += value
        weight += w
    return total / weight if weight > 0 else math.nan


def ratio_stderr(items: Iterable[tuple[float, float]]) -> float | None:
    """Standard error of :func:`ratio_of_sums` with items (documents) as clusters, by linearization:
    Var(r) ~ n / (n - 1) * sum((y_i - r w_i)^2) / W^2. None for fewer than two items; NaN when no weight."""
    items = list(items)
    if len(items) < 2:
        return None
    weight = sum(w for _, w in items)
    if weight <= 0:
        return math.nan
    r = ratio_of_sums(items)
    n = len(items)
    return math.sqrt(n / (n - 1) * sum((y - r * w) ** 2 for y, w in items)) / weight


# ------------------------------------------------------------------ bucketing
def position_edges(max_position: float) -> list[float]:
    """ABS_EDGES, doubled until the last edge is above ``max_position``."""
    edges = list(ABS_EDGES)
    while edges[-1] <= max_position:
        edges.append(edges[-1] * 2)
    return [float(e) for e in edges]


def relative_edges(max_fraction: float) -> list[float]:
    """REL_EDGES (aligned with the context regions), extended by 1.0 until above ``max_fraction``."""
    edges = list(REL_EDGES)
    while edges[-1] <= max_fraction:
        edges.append(edges[-1] + 1.0)
    return edges


def curve_edges(max_position: float, bins: int = CURVE_BINS) -> list[float]:
    """``bins`` equal-width buckets covering 0 .. max_position."""
    width = (max_position + 1) / bins
    return [i * width for i in range(bins + 1)]


def bucketize(values, nll, edges: Sequence[float]) -> Buckets:
    """Token-weighted mean of ``nll`` per bucket [edges[i], edges[i+1]) of ``values`` (1-D tensors of the
    same length). Non-finite NLLs are left out of the means and counts (they are counted elsewhere);
    an empty bucket has nll None."""
    import torch

    values, nll = torch.as_tensor(values, dtype=torch.float64), torch.as_tensor(nll, dtype=torch.float64)
    finite = torch.isfinite(nll)
    means, counts = [], []
    for lo, hi in zip(edges, edges[1:]):
        sel = (values >= lo) & (values < hi) & finite
        count = int(sel.sum())
        means.append(float(nll[sel].mean()) if count else None)
        counts.append(count)
    return Buckets([float(e) for e in edges], means, counts)


def position_buckets(positions, nll, trained_context: int | None) -> tuple[Buckets, Buckets | None, Buckets]:
    """(by absolute position, by fraction of the trained context or None, equal-width curve)."""
    import torch

    positions = torch.as_tensor(positions, dtype=torch.float64)
    top = float(positions.max()) if len(positions) else 0.0
    absolute = bucketize(positions, nll, position_edges(top))
    relative = None
    if trained_context:
        fractions = positions / trained_context
        relative = bucketize(fractions, nll, relative_edges(top / trained_context))
    return absolute, relative, bucketize(positions, nll, curve_edges(top))
