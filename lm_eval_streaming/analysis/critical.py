"""The critical point (the seed's experiment 1: "找到 baseline 开始退化的临界点"): the first position after which
dense attention's NLL exceeds streaming's by more than the tolerance and stays above, to the end of the sample.

Rule, on the NLL-by-position curves (``Row.nll_curve``: equal-width buckets over the sample, token-weighted mean
NLL per bucket; each sample's own curve in ``Row.nll_curve_per_sample``):

1. gap[i] = dense NLL - streaming NLL in bucket i (the same tokens: the rows of one run score the same samples);
2. smoothed with a centred moving average over ``SMOOTH_BINS`` buckets (fewer at the ends; empty buckets skipped);
3. the critical point is the lower edge of the first bucket from which every smoothed gap to the end is above the
   tolerance and whose own (unsmoothed) gap is above it too (the average spreads a step half a window to the left),
   provided that run of buckets is at least ``MIN_TAIL_BINS`` long (else: not reached, a last-bucket blip is not
   "stays above").

It is computed on the run's pooled curve and on every sample's curve (the spread over samples), in tokens and
as a multiple of the trained context.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from lm_eval_streaming.records import Row, Run
from lm_eval_streaming.analysis.base import finite

SMOOTH_BINS = 5
MIN_TAIL_BINS = 3


def smooth(values: list[float | None], width: int = SMOOTH_BINS) -> list[float | None]:
    """Centred moving average over ``width`` entries (truncated at the ends); None entries are skipped, and an
    entry whose window holds no value stays None."""
    half = width // 2
    out = []
    for i in range(len(values)):
        window = [v for v in values[max(0, i - half): i + half + 1] if finite(v)]
        out.append(sum(window) / len(window) if window else None)
    return out


def first_lasting_excess(edges: list[float], dense: list[float | None], streaming: list[float | None],
                         tol: float) -> float | None:
    """Lower edge of the first bucket from which the smoothed gap (dense - streaming) stays above ``tol`` to the
    last non-empty bucket, over at least MIN_TAIL_BINS buckets; None when there is no such bucket."""
    gap = [d - s if finite(d) and finite(s) else None for d, s in zip(dense, streaming)]
    while gap and gap[-1] is None:  # empty trailing buckets are not "below"
        gap.pop()
    smoothed = smooth(gap)
    start = len(smoothed)
    while start > 0 and finite(smoothed[start - 1]) and smoothed[start - 1] > tol:
        start -= 1
    # the moving average spreads a step over half its window to the left: begin where the bucket's own gap is
    # above the tolerance too
    while start < len(gap) and not (finite(gap[start]) and gap[start] > tol):
        start += 1
    if len(smoothed) - start < MIN_TAIL_BINS:
        return None
    return edges[start]


@dataclass
class CriticalPoint:
    run: Run
    dense: Row  # the row that degrades: dense, or the position_shift=false ablation
    streaming: Row
    pooled: float | None  # tokens, from the run's pooled curve; None: not reached
    per_sample: list[float | None] | None  # one per sample; None: the run recorded no per-sample curves
    bin_width: float  # tokens per curve bucket

    def multiple(self, tokens: float | None) -> float | None:
        return tokens / self.run.trained_context if tokens is not None and self.run.trained_context else None

    @property
    def reached(self) -> list[float]:
        return [p for p in self.per_sample or [] if p is not None]

    def spread(self) -> str:
        """Median [min, max] over the samples that reached it, and how many did not."""
        if self.per_sample is None:
            return "per-sample curves not recorded (pooled curve only)"
        n, hit = len(self.per_sample), self.reached
        if not hit:
            return f"reached in 0 of {n} samples"
        text = f"median {statistics.median(hit):.0f} [{min(hit):.0f}, {max(hit):.0f}] over {len(hit)} of {n} samples"
        return text + (f" ({n - len(hit)} not reached)" if len(hit) < n else "")

    def text(self) -> str:
        if self.pooled is None:
            return "not reached"
        m = self.multiple(self.pooled)
        return f"{self.pooled:.0f} tokens" + (f" ({m:.2f}x the trained context {self.run.trained_context})" if m else "")


def _same_edges(a: Row, b: Row) -> bool:
    return a.nll_curve is not None and b.nll_curve is not None and a.nll_curve.edges == b.nll_curve.edges


def critical_point(run: Run, dense: Row, streaming: Row, tol: float) -> CriticalPoint | None:
    """The critical point of one run (its reference dense row against a streaming row); None when the two rows
    have no curves on the same buckets."""
    if not _same_edges(dense, streaming):
        return None
    edges = dense.nll_curve.edges
    pooled = first_lasting_excess(edges, dense.nll_curve.nll, streaming.nll_curve.nll, tol)
    per_sample = None
    ds, ss = dense.nll_curve_per_sample, streaming.nll_curve_per_sample
    if ds is not None and ss is not None and len(ds) == len(ss):
        per_sample = [first_lasting_excess(edges, a, b, tol) for a, b in zip(ds, ss)]
    return CriticalPoint(run, dense, streaming, pooled, per_sample, edges[1] - edges[0])


def critical_points(d) -> list[CriticalPoint]:
    """The critical point of every run of ``d`` (an analysis.data.Data) with a reference dense row and a streaming
    row (the one closest to the seed's recent size) on the same curve buckets."""
    out = []
    for run in d.runs:
        s = d.ref_of(run)
        if s is None:
            continue
        # dense against streaming (the critical point), then the ablation (position_shift=false) against streaming:
        # where the same cache at true distances starts to lose to the shifted one
        for degrading in (d.dense_of(run), d.ablation_of(run, s.row)):
            cp = critical_point(run, degrading, s.row, d.tol) if degrading is not None else None
            if cp is not None:
                out.append(cp)
    return out


def smoothing_text(points: list[CriticalPoint]) -> str:
    if not points:
        return ""
    widths = sorted({round(p.bin_width) for p in points})
    width = f"{widths[0]}" if len(widths) == 1 else f"{widths[0]}-{widths[-1]}"
    return (f"curve buckets of {width} tokens (1/{len(points[0].dense.nll_curve.nll)} of the sample), centred "
            f"moving average over {SMOOTH_BINS} buckets; the smoothed gap must stay above the tolerance to the end "
            f"of the sample, over at least {MIN_TAIL_BINS} buckets, starting at a bucket whose own gap is above it")
