"""The compression hypothesis: a bounded cache improves prediction."""

from __future__ import annotations

from collections import defaultdict

from .verdict_base import (Criterion, FAIL, Hypothesis, PASS, UNDECIDED, _Data, _effect, _f, _fin,
                           _mean_delta, _num, _signed)
from .verdict_criteria import _by_model_size, _cache_curves, _matched_groups


# ---- compression
def _compression(d: _Data) -> Hypothesis:
    h = Hypothesis("compression", "压缩改善预测 compression improves prediction")
    tol = d.tol
    c1 = _by_model_size(d, only_large=False)
    c1.key = True
    h.criteria.append(c1)

    groups, note = _matched_groups(
        d.ref, lambda r: (r.get("device"), r.get("dtype")),
        lambda r: (r.get("model_id"), r.get("max_tokens"), r.get("start_size"), r.get("recent_size")))
    per_hw = {}
    for hw in d.hardware:
        rows = groups.get(hw)
        if rows:
            per_hw[hw] = (_effect(rows, tol), _mean_delta(rows))
    listing = "; ".join(f"{dv}/{dt}: {e} (mean ΔNLL {_signed(md)})" for (dv, dt), (e, md) in per_hw.items()) + note
    if len(per_hw) < 2:
        h.criteria.append(Criterion("the effect on every device and dtype", UNDECIDED,
                                    f"only one device/dtype in the data ({listing or 'none'}): cannot be decided",
                                    key=True))
    else:
        effects = [e for e, _ in per_hw.values()]
        st = PASS if all(e == "effect" for e in effects) else FAIL if any(e == "none" for e in effects) else UNDECIDED
        h.criteria.append(Criterion("the effect on every device and dtype", st, listing, key=True))

    by_len = defaultdict(list)
    for r in d.ref:
        by_len[r.get("max_tokens")].append(r)
    per_len = {L: (_effect(rs, tol), _mean_delta(rs), d.is_long(rs[0])) for L, rs in sorted(by_len.items(), key=lambda t: t[0] or 0)}
    classes = {cls for _, _, cls in per_len.values()}
    ev = "; ".join(f"{L} tokens ({'long: past the trained context' if cls else 'short' if cls is False else 'unclassified'}): "
                   f"{e} (mean ΔNLL {_signed(md)})" for L, (e, md, cls) in per_len.items())
    if any(e == "none" for e, _, _ in per_len.values()):
        st = FAIL
    elif per_len and all(e == "effect" for e, _, _ in per_len.values()) and {True, False} <= classes:
        st = PASS
    else:
        st = UNDECIDED
        if not ({True, False} <= classes):
            ev += "; needs lengths both within and past the trained context"
    h.criteria.append(Criterion("the effect at short and at long lengths", st, ev or "no streaming rows", key=True))

    curves = [(k, pts) for k, pts in _cache_curves(d) if len(pts) >= 3]
    if not curves:
        h.criteria.append(Criterion("an interior optimum over cache sizes", UNDECIDED,
                                    "fewer than 3 recent sizes per setting", key=True))
    else:
        oks, parts = [], []
        for key, pts in curves:
            nll = [_num(r.get("nll_mean")) for _, r in pts]
            if not all(_fin(x) for x in nll):
                nll = [_num(r.get("delta_nll_vs_dense")) for _, r in pts]
            i = min(range(len(nll)), key=lambda j: nll[j])
            oks.append(0 < i < len(nll) - 1)
            parts.append(f"{key[0]} len={key[1]}: streaming NLL by recent size "
                         + ", ".join(f"{rc}: {_f(x)}" for (rc, _), x in zip(pts, nll))
                         + f" -> best {pts[i][0]} ({'interior' if oks[-1] else 'at the end of the range: monotone'})")
        h.criteria.append(Criterion("an interior optimum over cache sizes", PASS if all(oks) else FAIL,
                                    "; ".join(parts), key=True))
    return h
