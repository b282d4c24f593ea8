"""The position-extrapolation hypothesis: dense attention scored past the trained context, at positions the model
never saw. Regions are those of lm_eval_streaming.records.metrics: below < 0.9x, beyond >= 1.1x the trained context."""

from __future__ import annotations

import math

from lm_eval_streaming.analysis.base import FAIL, PASS, UNDECIDED, Criterion, Hypothesis, finite, fmt, interval, signed
from lm_eval_streaming.analysis.criteria import hardware_spread
from lm_eval_streaming.analysis.data import LOGIT_COUNTS, NONFINITE_FIELDS, Data, Scored, delta_class, nonfinite, regions

JUMP = "dense NLL jumps beyond 1.1x the trained context (relative to streaming)"
FLAT = "streaming NLL stays flat beyond 1.1x"


class _Pool:
    """Token-weighted NLL sums per (dense|streaming, region)."""

    def __init__(self):
        self.sums: dict[str, list[float]] = {}

    def add(self, key: str, region: tuple[float, int]):
        acc = self.sums.setdefault(key, [0.0, 0])
        acc[0] += region[0] * region[1]
        acc[1] += region[1]

    def mean(self, key: str) -> float:
        s, n = self.sums.get(key, (0.0, 0))
        return s / n if n else math.nan


def extrapolation(d: Data) -> Hypothesis:
    h = Hypothesis("extrapolation", "position extrapolation (位置外推): dense attention past the trained context")
    pool, n_long = _Pool(), 0
    for run in d.runs:
        dense, s = d.dense_of(run), d.ref_of(run)
        if dense is None or s is None:
            continue
        rd, rs = regions(Scored(run, dense)), regions(s)
        if "below" in rd and "below" in rs:
            pool.add("d_below_all", rd["below"])
            pool.add("s_below_all", rs["below"])
            if "beyond" in rd and "beyond" in rs:
                n_long += 1
                for key, region in (("d_below", rd["below"]), ("s_below", rs["below"]), ("d_beyond", rd["beyond"]),
                                    ("s_beyond", rs["beyond"])):
                    pool.add(key, region)
    m = pool.mean
    if n_long:
        jump = (m("d_beyond") - m("s_beyond")) - (m("d_below") - m("s_below"))
        h.criteria.append(Criterion(JUMP, PASS if jump > d.tol else FAIL,
                                    f"in the {n_long} run(s) with tokens beyond 1.1x the trained context: dense NLL "
                                    f"there {fmt(m('d_beyond'))} vs streaming {fmt(m('s_beyond'))}; below 0.9x: "
                                    f"{fmt(m('d_below'))} vs {fmt(m('s_below'))}; the dense-minus-streaming gap grows "
                                    f"by {signed(jump)} nats beyond 1.1x (threshold {d.tol})", key=True))
        s_change, d_change = m("s_beyond") - m("s_below"), m("d_beyond") - m("d_below")
        limit = max(d.tol, 0.25 * max(d_change, 0.0))
        h.criteria.append(Criterion(FLAT, PASS if s_change <= limit else FAIL,
                                    f"streaming NLL changes by {signed(s_change)} from below 0.9x to beyond 1.1x "
                                    f"(dense {signed(d_change)}); flat means <= {fmt(limit)}"))
    else:
        why = ("no run has NLL by position both below 0.9x and beyond 1.1x the trained context"
               if any(d.trained_contexts.values()) else "no trained context recorded")
        tcs = ", ".join(f"{m_}: {tc}" for m_, tc in d.trained_contexts.items())
        h.criteria.append(Criterion(JUMP, UNDECIDED, f"{why} (lengths {', '.join(map(str, d.lengths)) or 'none'}; "
                                                     f"trained contexts {tcs or 'unknown'}): run lengths past the "
                                                     "trained context", key=True))
        h.criteria.append(Criterion(FLAT, UNDECIDED, "no tokens beyond 1.1x the trained context"))
    h.criteria += [_not_worse_within(d, m("d_below_all") - m("s_below_all"), m("d_below_all"), m("s_below_all")),
                   _window_degrades(d),
                   hardware_spread(d, "dtype and device change the streaming-vs-dense gap little"),
                   no_nonfinite(d)]
    return h


def _not_worse_within(d: Data, gap: float, dense: float, streaming: float) -> Criterion:
    name = "dense is not worse within the trained context"
    short = [e for e in d.ref if d.is_long(e.run) is False]
    short_better = [e for e in short if delta_class(e.row, d.tol) == "better" and e.delta < -d.tol]
    if math.isnan(gap) and not short:
        return Criterion(name, UNDECIDED, "no NLL below 0.9x the trained context and no run within it")
    parts = []
    if not math.isnan(gap):
        parts.append(f"below 0.9x the trained context dense NLL {fmt(dense)} vs streaming {fmt(streaming)} (gap "
                     f"{signed(gap)}, tolerance {d.tol})")
    if short:
        ex = short_better[0] if short_better else None
        parts.append(f"runs within the trained context: streaming significantly better by more than {d.tol} in "
                     f"{len(short_better)} of {len(short)}"
                     + (f" (e.g. {ex.setting()}: ΔNLL {signed(ex.delta)}{interval(ex.row.delta_nll_ci)})"
                        if ex else ""))
    ok = (math.isnan(gap) or gap <= d.tol) and not short_better
    return Criterion(name, PASS if ok else FAIL, "; ".join(parts))


def _window_degrades(d: Data) -> Criterion:
    name = "window-only (no sinks) degrades (the paper's failing baseline)"
    diffs = []
    for run in d.runs:
        for w in d.of_method(run, "window"):
            match = [s for s in d.of_method(run, "streaming_llm")
                     if (s.row.start_size, s.row.recent_size) == (w.row.start_size, w.row.recent_size)]
            if match and run.max_tokens > w.row.start_size + w.row.recent_size:
                diffs.append((w.row.nll_mean - match[0].row.nll_mean, w))
    diffs = [t for t in diffs if finite(t[0])]
    if not diffs:
        return Criterion(name, UNDECIDED, "no window rows paired with streaming_llm at the same cache size")
    diffs.sort(key=lambda t: t[0])
    median, (largest, worst) = diffs[len(diffs) // 2][0], diffs[-1]
    return Criterion(name, PASS if median > d.tol else FAIL,
                     f"window minus streaming_llm NLL at equal cache size: median {signed(median)} over {len(diffs)} "
                     f"runs (largest {signed(largest)} at {worst.setting()}; window vs dense {signed(worst.delta)})")


def no_nonfinite(d: Data) -> Criterion:
    """NaN/Inf anywhere, from the rows that counted them; a row that did not is unknown, never clean."""
    name = "no NaN / Inf"
    counted = [e for e in d.entries if nonfinite(e.row) is not None]
    if not counted:
        return Criterion(name, UNDECIDED, f"NaN/Inf counts were not measured in any of the {len(d.entries)} rows")
    bad = [e for e in counted if nonfinite(e.row) > 0]
    unknown = len(d.entries) - len(counted)
    rest = f" ({unknown} row(s) did not count them: unknown)" if unknown else ""
    if not bad:
        logits = sum(all(getattr(e.row, k) is not None for k in LOGIT_COUNTS) for e in counted)
        scores = sum(e.row.nonfinite_attn_scores is not None for e in counted)
        return Criterion(name, PASS, f"0 non-finite values where counted: logits and token NLLs in {logits} row(s), "
                                     f"attention scores in {scores} (observable only in the project's kernel){rest}")
    ex = max(bad, key=lambda e: nonfinite(e.row))
    return Criterion(name, FAIL, f"{len(bad)} of {len(counted)} rows that counted them have non-finite values (most: "
                                 f"{ex.setting()}: " + ", ".join(f"{k}={getattr(ex.row, k)}" for k in NONFINITE_FIELDS
                                                                 if getattr(ex.row, k) is not None) + f"){rest}")
