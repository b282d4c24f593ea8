"""The position-extrapolation hypothesis: dense attention past the trained context."""

from __future__ import annotations

import math
from collections import defaultdict

from .verdict_base import (Criterion, FAIL, HW_TOLERANCE, Hypothesis, NONFINITE_FIELDS, PASS, UNDECIDED,
                           _Data, _ci, _delta_class, _f, _fin, _has_diagnostics,
                           _nonfinite, _num, _region_means, _setting, _signed)


# ---- position extrapolation
def _extrapolation(d: _Data) -> Hypothesis:
    h = Hypothesis("extrapolation", "position extrapolation (位置外推): dense attention past the trained context")
    tol = d.tol
    pooled = {k: [0.0, 0] for k in ("d_below", "s_below", "d_past", "s_past", "d_below_all", "s_below_all")}
    n_exceeding = 0
    for call in d.calls.values():
        dense, s = call["dense"], d.ref_of_call(call)
        if not dense or not s:
            continue
        rd, rs = _region_means(dense), _region_means(s)
        for region in ("below",):
            if rd[region][1] and rs[region][1]:
                pooled["d_below_all"][0] += rd[region][0]
                pooled["d_below_all"][1] += rd[region][1]
                pooled["s_below_all"][0] += rs[region][0]
                pooled["s_below_all"][1] += rs[region][1]
        if rd["past"][1] and rs["past"][1] and rd["below"][1] and rs["below"][1]:
            n_exceeding += 1
            for key, reg in (("d_below", rd["below"]), ("s_below", rs["below"]), ("d_past", rd["past"]),
                             ("s_past", rs["past"])):
                pooled[key][0] += reg[0]
                pooled[key][1] += reg[1]
    mean = {k: (v[0] / v[1] if v[1] else math.nan) for k, v in pooled.items()}

    # E1 (key): dense jumps past 1.0x relative to streaming.
    if n_exceeding:
        jump = (mean["d_past"] - mean["s_past"]) - (mean["d_below"] - mean["s_below"])
        ev = (f"in the {n_exceeding} run(s) longer than the trained context: dense NLL past 1.0x trained context "
              f"{_f(mean['d_past'])} vs streaming {_f(mean['s_past'])}; below: {_f(mean['d_below'])} vs "
              f"{_f(mean['s_below'])}; dense-minus-streaming gap grows by {_signed(jump)} nats past 1.0x "
              f"(threshold {tol})")
        h.criteria.append(Criterion("dense NLL jumps past 1.0x trained context (relative to streaming)",
                                    PASS if jump > tol else FAIL, ev, key=True))
        s_change = mean["s_past"] - mean["s_below"]
        d_change = mean["d_past"] - mean["d_below"]
        limit = max(tol, 0.25 * max(d_change, 0.0))
        h.criteria.append(Criterion(
            "streaming NLL stays flat past 1.0x",
            PASS if s_change <= limit else FAIL,
            f"streaming NLL changes by {_signed(s_change)} past 1.0x (dense {_signed(d_change)}); flat means "
            f"<= {_f(limit)}"))
    else:
        why = ("no row has nll_by_relative_position with tokens past 1.0x trained context"
               if d.any_trained_context else "no trained_context in the rows")
        lens = ", ".join(map(str, d.lengths)) or "none"
        tcs = ", ".join(f"{m}: {tc}" for m, tc in d.trained_contexts.items())
        h.criteria.append(Criterion("dense NLL jumps past 1.0x trained context (relative to streaming)", UNDECIDED,
                                    f"{why} (lengths {lens}; trained contexts {tcs or 'unknown'}): run lengths past "
                                    "the trained context", key=True))
        h.criteria.append(Criterion("streaming NLL stays flat past 1.0x", UNDECIDED, "no tokens past 1.0x"))

    # E3: no advantage within the trained context.
    gap_below = mean["d_below_all"] - mean["s_below_all"]
    short = [r for r in d.ref if d.is_long(r) is False]
    short_better = [r for r in short if _delta_class(r, tol) == "better" and _num(r.get("delta_nll_vs_dense")) < -tol]
    if math.isnan(gap_below) and not short:
        h.criteria.append(Criterion("dense is not worse within the trained context", UNDECIDED,
                                    "no NLL below 1.0x trained context and no run within it"))
    else:
        ok = (math.isnan(gap_below) or gap_below <= tol) and not short_better
        parts = []
        if not math.isnan(gap_below):
            parts.append(f"below 1.0x trained context dense NLL {_f(mean['d_below_all'])} vs streaming "
                         f"{_f(mean['s_below_all'])} (gap {_signed(gap_below)}, tolerance {tol})")
        if short:
            parts.append(f"runs within the trained context: streaming significantly better by more than {tol} in "
                         f"{len(short_better)} of {len(short)}"
                         + (f" (e.g. {_setting(short_better[0], 'method')}: ΔNLL "
                            f"{_signed(short_better[0].get('delta_nll_vs_dense'))}"
                            f"{_ci(short_better[0].get('delta_nll_ci'))})" if short_better else ""))
        h.criteria.append(Criterion("dense is not worse within the trained context", PASS if ok else FAIL,
                                    "; ".join(parts)))

    # E4: window-only (no sinks) degrades.
    diffs = []
    for call in d.calls.values():
        for w in call["window"]:
            match = [s for s in call["streaming_llm"] if s.get("recent_size") == w.get("recent_size")
                     and s.get("start_size") == w.get("start_size")]
            budget = (w.get("start_size") or 0) + (w.get("recent_size") or 0)
            if match and (w.get("max_tokens") or 0) > budget:
                dw, ds = _num(w.get("nll_mean")), _num(match[0].get("nll_mean"))
                if _fin(dw) and _fin(ds):
                    diffs.append((dw - ds, w, _num(w.get("delta_nll_vs_dense"))))
    if diffs:
        diffs.sort(key=lambda t: t[0])
        median = diffs[len(diffs) // 2][0]
        worst = diffs[-1]
        h.criteria.append(Criterion(
            "window-only (no sinks) degrades (the paper's failing baseline)",
            PASS if median > tol else FAIL,
            f"window minus streaming_llm NLL at equal cache size: median {_signed(median)} over {len(diffs)} runs "
            f"(largest {_signed(worst[0])} at {_setting(worst[1], 'method')}; window vs dense "
            f"{_signed(worst[2])})"))
    else:
        h.criteria.append(Criterion("window-only (no sinks) degrades (the paper's failing baseline)", UNDECIDED,
                                    "no window rows paired with streaming_llm at the same cache size"))

    # E5: dtype and device change little.
    h.criteria.append(_hardware_spread(d, "dtype and device change the streaming-vs-dense gap little"))

    # E6: no NaN.
    h.criteria.append(_no_nonfinite(d))
    return h


def _hardware_spread(d: _Data, name: str) -> Criterion:
    groups = defaultdict(list)
    for r in d.streaming:
        groups[(r.get("model_id"), r.get("max_tokens"), r.get("start_size"), r.get("recent_size"),
                r.get("num_samples"))].append(r)
    spreads = []
    for key, rows in groups.items():
        hw = {(r.get("device"), r.get("dtype")) for r in rows}
        vals = [(_num(r.get("delta_nll_vs_dense")), r) for r in rows]
        vals = [(v, r) for v, r in vals if _fin(v)]
        if len(hw) >= 2 and len(vals) >= 2:
            lo, hi = min(vals, key=lambda t: t[0]), max(vals, key=lambda t: t[0])
            spreads.append((hi[0] - lo[0], key, lo, hi))
    if not spreads:
        hw = ", ".join(f"{dv}/{dt}" for dv, dt in d.hardware)
        return Criterion(name, UNDECIDED, f"only one device/dtype per setting in the data ({hw}): cannot compare")
    worst = max(spreads, key=lambda t: t[0])
    _, key, lo, hi = worst
    ev = (f"largest spread of ΔNLL across device/dtype: {_f(worst[0])} nats ({lo[1].get('device')}/"
          f"{lo[1].get('dtype')} {_signed(lo[0])} vs {hi[1].get('device')}/{hi[1].get('dtype')} {_signed(hi[0])}, "
          f"{key[0]} len={key[1]}) over {len(spreads)} setting(s); little means <= {HW_TOLERANCE}")
    return Criterion(name, PASS if worst[0] <= HW_TOLERANCE else FAIL, ev)


def _no_nonfinite(d: _Data) -> Criterion:
    rows = [r for r in d.rows if _has_diagnostics(r)]
    if not rows:
        return Criterion("no NaN / Inf", UNDECIDED, "no diagnostics fields in the rows")
    bad = [r for r in rows if _nonfinite(r) > 0]
    if not bad:
        return Criterion("no NaN / Inf", PASS, f"0 non-finite logits, attention scores or token NLLs in "
                                               f"{len(rows)} rows")
    ex = max(bad, key=_nonfinite)
    return Criterion("no NaN / Inf", FAIL,
                     f"{len(bad)} of {len(rows)} rows have non-finite values (most: {_setting(ex)}: "
                     + ", ".join(f"{k}={int(_num(ex.get(k)))}" for k in NONFINITE_FIELDS if _fin(_num(ex.get(k))))
                     + ")")
