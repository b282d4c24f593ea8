"""The position-extrapolation hypothesis: dense attention scored past the trained context, at positions the model
never saw. Regions are those of lm_eval_streaming.records.metrics: below < 0.9x, beyond >= 1.1x the trained context."""

from __future__ import annotations

import math

from lm_eval_streaming.analysis.base import FAIL, PASS, UNDECIDED, finite, fmt, interval, signed
from lm_eval_streaming.analysis.criteria import hardware_spread
from lm_eval_streaming.analysis.data import LOGIT_COUNTS, NONFINITE_FIELDS, Data, Scored, delta_class, nonfinite, regions
from lm_eval_streaming.analysis.rules import KEY, KEY_IF_DECIDED, SIDE, Decision, HypothesisRules, Rule, Words

JUMP = "dense NLL jumps beyond 1.1x the trained context (relative to streaming)"
FLAT = "streaming NLL stays flat beyond 1.1x"
ABLATION = ("same cache at true distances degrades past the trained context like dense (gap beyond 1.1x vs below "
            "0.9x)")


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


def _pooled_regions(d: Data, rows_of) -> tuple[_Pool, int]:
    """Pool the regions of each run's rows (name -> Row, from ``rows_of(run)`` or None to skip the run); a run
    counts towards the long runs when every row has tokens both below 0.9x and beyond 1.1x."""
    pool, n_long = _Pool(), 0
    for run in d.runs:
        rows = rows_of(run)
        if rows is None:
            continue
        found = {k: regions(Scored(run, r)) for k, r in rows.items()}
        if all("below" in f for f in found.values()):
            for k, f in found.items():
                pool.add(f"{k}_below_all", f["below"])
            if all("beyond" in f for f in found.values()):
                n_long += 1
                for k, f in found.items():
                    pool.add(f"{k}_below", f["below"])
                    pool.add(f"{k}_beyond", f["beyond"])
    return pool, n_long


def _gap_growth(m, row: str) -> float:
    """How much the row-minus-streaming NLL gap grows from below 0.9x to beyond 1.1x."""
    return (m(f"{row}_beyond") - m("s_beyond")) - (m(f"{row}_below") - m("s_below"))


def _dense_pool(d: Data) -> tuple[_Pool, int]:
    def dense_and_streaming(run):
        dense, s = d.dense_of(run), d.ref_of(run)
        return None if dense is None or s is None else {"d": dense, "s": s.row}

    return _pooled_regions(d, dense_and_streaming)


def _jump(d: Data) -> Decision:
    pool, n_long = _dense_pool(d)
    m = pool.mean
    if not n_long:
        why = ("no run has NLL by position both below 0.9x and beyond 1.1x the trained context"
               if any(d.trained_contexts.values()) else "no trained context recorded")
        tcs = ", ".join(f"{m_}: {tc}" for m_, tc in d.trained_contexts.items())
        return Decision(UNDECIDED, f"{why} (lengths {', '.join(map(str, d.lengths)) or 'none'}; "
                                   f"trained contexts {tcs or 'unknown'})")
    jump = _gap_growth(m, "d")
    return Decision(PASS if jump > d.tol else FAIL,
                    f"in the {n_long} run(s) with tokens beyond 1.1x the trained context: dense NLL "
                    f"there {fmt(m('d_beyond'))} vs streaming {fmt(m('s_beyond'))}; below 0.9x: "
                    f"{fmt(m('d_below'))} vs {fmt(m('s_below'))}; the dense-minus-streaming gap grows "
                    f"by {signed(jump)} nats beyond 1.1x (threshold {d.tol})",
                    short=f"dense minus streaming {signed(m('d_below') - m('s_below'))} below 0.9x, "
                          f"{signed(m('d_beyond') - m('s_beyond'))} beyond 1.1x: grows by "
                          f"{signed(jump)} nats ({n_long} run(s))")


def _flat(d: Data) -> Decision:
    pool, n_long = _dense_pool(d)
    m = pool.mean
    if not n_long:
        return Decision(UNDECIDED, "no tokens beyond 1.1x the trained context")
    s_change, d_change = m("s_beyond") - m("s_below"), m("d_beyond") - m("d_below")
    limit = max(d.tol, 0.25 * max(d_change, 0.0))
    return Decision(PASS if s_change <= limit else FAIL,
                    f"streaming NLL changes by {signed(s_change)} from below 0.9x to beyond 1.1x "
                    f"(dense {signed(d_change)}); flat means <= {fmt(limit)}")


def _within(d: Data) -> Decision:
    m = _dense_pool(d)[0].mean
    return _not_worse_within(d, m("d_below_all") - m("s_below_all"), m("d_below_all"), m("s_below_all"))


def _ablation(d: Data) -> Decision:
    """The intervention: streaming_llm's tokens at their true distances (position_shift=false). Key when it reaches
    beyond 1.1x the trained context; otherwise a side criterion that says what to run."""
    def with_ablation(run):
        s = d.ref_of(run)
        a = d.ablation_of(run, s.row) if s is not None else None
        dense = d.dense_of(run)
        return None if a is None or dense is None else {"a": a, "s": s.row, "d": dense}

    pool, n_long = _pooled_regions(d, with_ablation)
    m = pool.mean
    if not d.ablation:
        return Decision(UNDECIDED, "the ablation was not run (no streaming_llm row with position_shift=false)")
    if not n_long:
        return Decision(UNDECIDED, f"position_shift=false rows in {len(d.ablation)} row(s), none with NLL "
                                   "both below 0.9x and beyond 1.1x the trained context")
    grow, dense_grow = _gap_growth(m, "a"), _gap_growth(m, "d")
    share = f"{grow / dense_grow:.0%} of dense's" if finite(dense_grow) and dense_grow > d.tol else "dense: no jump"
    return Decision(PASS if grow > d.tol else FAIL,
                     f"in {n_long} run(s): position_shift=false NLL beyond 1.1x {fmt(m('a_beyond'))} vs streaming "
                     f"{fmt(m('s_beyond'))} (dense {fmt(m('d_beyond'))}); below 0.9x {fmt(m('a_below'))} vs "
                     f"{fmt(m('s_below'))} (dense {fmt(m('d_below'))}); its gap to streaming grows by {signed(grow)} "
                     f"beyond 1.1x ({share} {signed(dense_grow)}; threshold {d.tol})",
                     short=f"position_shift=false minus streaming grows by {signed(grow)} beyond 1.1x (dense "
                           f"{signed(dense_grow)}; {n_long} run(s))")


def _not_worse_within(d: Data, gap: float, dense: float, streaming: float) -> Decision:
    short = [e for e in d.ref if d.is_long(e.run) is False]
    short_better = [e for e in short if delta_class(e.row, d.tol) == "better" and e.delta < -d.tol]
    if math.isnan(gap) and not short:
        return Decision(UNDECIDED, "no NLL below 0.9x the trained context and no run within it")
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
    return Decision(PASS if ok else FAIL, "; ".join(parts))


def _window_degrades(d: Data) -> Decision:
    diffs = []
    for run in d.runs:
        for w in d.of_method(run, "window"):
            match = [s for s in d.of_method(run, "streaming_llm")
                     if (s.row.start_size, s.row.recent_size) == (w.row.start_size, w.row.recent_size)]
            if match and run.max_tokens > w.row.start_size + w.row.recent_size:
                diffs.append((w.row.nll_mean - match[0].row.nll_mean, w))
    diffs = [t for t in diffs if finite(t[0])]
    if not diffs:
        return Decision(UNDECIDED, "no window rows paired with streaming_llm at the same cache size")
    diffs.sort(key=lambda t: t[0])
    median, (largest, worst) = diffs[len(diffs) // 2][0], diffs[-1]
    return Decision(PASS if median > d.tol else FAIL,
                     f"window minus streaming_llm NLL at equal cache size: median {signed(median)} over {len(diffs)} "
                     f"runs (largest {signed(largest)} at {worst.setting()}; window vs dense {signed(worst.delta)})")


def no_nonfinite(d: Data) -> Decision:
    """NaN/Inf anywhere, from the rows that counted them; a row that did not is unknown, never clean."""
    counted = [e for e in d.entries if nonfinite(e.row) is not None]
    if not counted:
        return Decision(UNDECIDED, f"NaN/Inf counts were not measured in any of the {len(d.entries)} rows")
    bad = [e for e in counted if nonfinite(e.row) > 0]
    unknown = len(d.entries) - len(counted)
    rest = f" ({unknown} row(s) did not count them: unknown)" if unknown else ""
    if not bad:
        logits = sum(all(getattr(e.row, k) is not None for k in LOGIT_COUNTS) for e in counted)
        scores = sum(e.row.nonfinite_attn_scores is not None for e in counted)
        return Decision(PASS, f"0 non-finite values where counted: logits and token NLLs in {logits} row(s), "
                                     f"attention scores in {scores} (observable only in the project's kernel){rest}")
    ex = max(bad, key=lambda e: nonfinite(e.row))
    return Decision(FAIL, f"{len(bad)} of {len(counted)} rows that counted them have non-finite values (most: "
                                 f"{ex.setting()}: " + ", ".join(f"{k}={getattr(ex.row, k)}" for k in NONFINITE_FIELDS
                                                                 if getattr(ex.row, k) is not None) + f"){rest}")


EXTRAPOLATION = HypothesisRules(
    "extrapolation", "position extrapolation (位置外推): dense attention past the trained context", (
    Rule("dense_jump", JUMP, KEY, _jump,
         Words("dense degrades past the trained context", "dense does not degrade past the trained context",
               "cannot decide: nothing scored past 1.1x the trained context"), "length"),
    Rule("ablation", ABLATION, KEY_IF_DECIDED, _ablation,
         Words("the same cache at true distances degrades like dense",
               "the same cache at true distances does not degrade",
               "cannot decide: the ablation was not run that long"),
         "ablation"),
    Rule("streaming_flat", FLAT, SIDE, _flat,
         Words("streaming stays flat past the context", "streaming NLL changes past the context too")),
    Rule("dense_not_worse_within", "dense is not worse within the trained context", SIDE, _within,
         Words("dense not worse within the context: ok", "dense is worse within the trained context")),
    Rule("window_degrades", "window-only (no sinks) degrades (the paper's failing baseline)", SIDE, _window_degrades,
         Words("window-only degrades, as in the paper", "window-only does not degrade")),
    Rule("hardware_spread", "dtype and device change the streaming-vs-dense gap little", SIDE, hardware_spread,
         Words("device/dtype change the gap little", "device/dtype change the gap")),
    Rule("no_nonfinite", "no NaN / Inf", SIDE, no_nonfinite, Words("no NaN/Inf: ok", "NaN/Inf found")),
))


def extrapolation(d: Data):
    return EXTRAPOLATION.judge(d)
