"""Derived quantities against brute-force references written here."""

from __future__ import annotations

import math
import random
import statistics

import pytest
import torch

from lm_eval_streaming.records import metrics as mm
from lm_eval_streaming.records import Buckets


@pytest.mark.parametrize("position, region", [(0, "below"), (899, "below"), (900, "around"), (1099, "around"),
                                              (1100, "beyond"), (5000, "beyond")])
def test_context_region_boundaries(position, region):
    assert mm.context_region(position, 1000) == region


def test_unknown_trained_context_is_unknown():
    assert mm.context_region(10, None) is None and mm.context_region(10, 0) is None
    assert mm.exceeds_trained_context(10, None) is None and mm.exceeds_trained_context(None, 100) is None
    assert mm.exceeds_trained_context(99, 100) is False and mm.exceeds_trained_context(100, 100) is True


def test_t_interval_matches_scipy_interval():
    from scipy import stats

    values = [3.1, 3.4, 2.9, 3.8, 3.3]
    mean, interval = mm.t_interval(values)
    low, high = stats.t.interval(0.95, len(values) - 1, loc=statistics.mean(values), scale=stats.sem(values))
    assert mean == pytest.approx(statistics.mean(values))
    assert (interval.low, interval.high) == pytest.approx((low, high))


@pytest.mark.parametrize("values", [[3.0], [3.0, math.nan], []])
def test_t_interval_not_computable(values):
    assert mm.t_interval(values)[1] is None


def test_ratio_stderr_equal_weights_is_the_standard_error_of_the_mean():
    ys = [3.0, 5.0, 4.5, 2.0]
    w = 10.0
    se = mm.ratio_stderr([(y, w) for y in ys])
    assert se == pytest.approx(statistics.stdev([y / w for y in ys]) / math.sqrt(len(ys)))
    assert mm.ratio_stderr([(1.0, 2.0)]) is None
    assert mm.ratio_of_sums([(1.0, 2.0), (3.0, 2.0)]) == 1.0


def test_bucketize_matches_a_python_loop():
    rng = random.Random(0)
    positions = list(range(1, 3001))
    nll = [rng.random() * 5 for _ in positions]
    nll[7] = math.inf  # non-finite tokens are not averaged in
    edges = mm.position_edges(max(positions))
    got = mm.bucketize(torch.tensor(positions), torch.tensor(nll), edges)
    assert got.edges[-1] > max(positions) and len(got.nll) == len(edges) - 1
    for i, (lo, hi) in enumerate(zip(edges, edges[1:])):
        inside = [v for p, v in zip(positions, nll) if lo <= p < hi and math.isfinite(v)]
        assert got.count[i] == len(inside)
        if inside:
            assert got.nll[i] == pytest.approx(sum(inside) / len(inside))
        else:
            assert got.nll[i] is None


def test_relative_edges_align_with_regions_and_region_means_are_exact():
    trained = 1000
    rng = random.Random(1)
    positions = list(range(1, 2600))
    nll = [rng.random() for _ in positions]
    _, relative, curve = mm.position_buckets(torch.tensor(positions), torch.tensor(nll), trained)
    assert 0.9 in relative.edges and 1.1 in relative.edges and relative.edges[-1] > 2.6
    assert len(curve.nll) == mm.CURVE_BINS and sum(curve.count) == len(positions)
    means = mm.region_means(relative)
    for region, keep in {"below": lambda p: p < 900, "around": lambda p: 900 <= p < 1100,
                         "beyond": lambda p: p >= 1100}.items():
        inside = [v for p, v in zip(positions, nll) if keep(p)]
        assert means[region][1] == len(inside)
        assert means[region][0] == pytest.approx(sum(inside) / len(inside))


def test_region_means_skip_straddling_buckets_and_unknown_counts():
    # [0.75, 1.0) straddles 0.9; [1.0, 1.25) straddles 1.1 (the old layout's edges)
    old = Buckets([0.0, 0.5, 0.75, 1.0, 1.25, 2.0], [1.0, 2.0, 3.0, 4.0, 5.0], [10, 10, 10, 10, 10])
    assert mm.region_means(old) == {"below": (1.5, 20), "beyond": (5.0, 10)}
    assert mm.region_means(Buckets([0.0, 1.0], [1.0], None)) == {}
    # absolute edges with the trained context given
    absolute = Buckets([0.0, 500.0, 900.0, 1100.0, 4000.0, 8000.0], [1.0, 2.0, 3.0, 4.0, 5.0], [5, 5, 5, 5, 0])
    assert mm.region_means(absolute, trained_context=1000) == {"below": (1.5, 10), "around": (3.0, 5),
                                                               "beyond": (4.0, 5)}
    assert mm.region_means(absolute, trained_context=1024) == {"below": (1.5, 10)}  # the others straddle
