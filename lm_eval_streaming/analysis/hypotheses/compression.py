"""The compression hypothesis: a bounded cache improves prediction (on every model size, device/dtype and
length, with an interior optimum over cache sizes)."""

from __future__ import annotations

from collections import defaultdict

from lm_eval_streaming.analysis.base import FAIL, PASS, UNDECIDED, finite, fmt, signed, spread
from lm_eval_streaming.analysis.criteria import by_model_size, cache_curves, matched_groups
from lm_eval_streaming.analysis.data import Data, effect, mean_delta
from lm_eval_streaming.analysis.rules import KEY, Decision, HypothesisRules, Rule, Words


def _every_hardware(d: Data) -> Decision:
    groups, note = matched_groups(d.ref, lambda e: (e.run.device, e.run.dtype),
                                  lambda e: (e.run.model_id, e.run.max_tokens, e.row.start_size, e.row.recent_size))
    per_hw = {hw: (effect(groups[hw], d.tol), mean_delta(groups[hw])) for hw in d.hardware if groups.get(hw)}
    found = "; ".join(f"{dv}/{dt}: {e} (mean ΔNLL {signed(md)})" for (dv, dt), (e, md) in per_hw.items()) + note
    if len(per_hw) < 2:
        return Decision(UNDECIDED, f"only one device/dtype in the data ({found or 'none'}): cannot be decided")
    effects = [e for e, _ in per_hw.values()]
    status = PASS if all(e == "effect" for e in effects) else FAIL if "none" in effects else UNDECIDED
    return Decision(status, found)


def _short_and_long(d: Data) -> Decision:
    by_len = defaultdict(list)
    for e in d.ref:
        by_len[e.run.max_tokens].append(e)
    per_len = {n: (effect(es, d.tol), mean_delta(es), d.is_long(es[0].run)) for n, es in sorted(by_len.items())}
    classes = {cls for *_, cls in per_len.values()}
    kind = {True: "long: past the trained context", False: "short", None: "unclassified"}
    found = "; ".join(f"{n} tokens ({kind[cls]}): {e} (mean ΔNLL {signed(md)})" for n, (e, md, cls) in per_len.items())
    if any(e == "none" for e, *_ in per_len.values()):
        return Decision(FAIL, found)
    if per_len and all(e == "effect" for e, *_ in per_len.values()) and {True, False} <= classes:
        return Decision(PASS, found)
    if not {True, False} <= classes:
        found += "; needs lengths both within and past the trained context"
    return Decision(UNDECIDED, found or "no streaming rows")


def _interior_optimum(d: Data) -> Decision:
    curves = [(k, pts) for k, pts in cache_curves(d) if len(pts) >= 3]
    if not curves:
        return Decision(UNDECIDED, "fewer than 3 recent sizes per setting")
    oks, parts = [], []
    for key, pts in curves:
        nll = [e.row.nll_mean for _, e in pts]
        if not all(finite(x) for x in nll):
            nll = [e.delta for _, e in pts]
        i = min(range(len(nll)), key=lambda j: nll[j])
        oks.append(0 < i < len(nll) - 1)
        parts.append(f"{key[0]} {key[1]} tokens: streaming NLL by recent size "
                     + ", ".join(f"{rc}: {fmt(x)}" for (rc, _), x in zip(pts, nll))
                     + f" -> best {pts[i][0]} ({'interior' if oks[-1] else 'at the end of the range: monotone'})")
    return Decision(PASS if all(oks) else FAIL, "; ".join(parts))


def _any_method_within_context(d: Data) -> Decision:
    """Every compression method present (streaming_llm, h2o, tova, knorm, window, ...: every row with a bounded
    cache) against dense within the trained context, where dense is not extrapolating: if compression improved
    prediction, some method at budget B would beat dense there (its paired ΔNLL interval below 0)."""
    beats, worse, open_, parts = [], [], [], []
    for e in d.entries:
        if e.row.is_dense or d.is_long(e.run) is not False or not finite(e.delta):
            continue
        ci = e.row.delta_nll_ci
        label = f"{e.row.label()} ({e.run.max_tokens} tokens)"
        parts.append(f"{label}: ΔNLL {signed(e.delta)}{spread(ci, e.run.num_samples)}")
        if ci is None:
            open_.append(label)
        elif ci.high < 0:
            beats.append(label)
        elif ci.low > 0:
            worse.append(label)
        else:
            open_.append(label)
    found = "; ".join(parts)
    if not parts:
        return Decision(UNDECIDED, "no cache-method rows within the trained context")
    if beats:
        return Decision(PASS, f"beats dense: {', '.join(beats)}. {found}")
    if not open_:
        return Decision(FAIL, found)
    return Decision(UNDECIDED, f"{found}; intervals that include 0 or are missing: {', '.join(open_)}")


COMPRESSION = HypothesisRules("compression", "压缩改善预测 compression improves prediction", (
    Rule("every_size", "the effect on every model size", KEY, lambda d: by_model_size(d, only_large=False),
         Words("the effect on every model size", "effect not on every model size",
               "cannot decide: one model size"), "size"),
    Rule("every_hardware", "the effect on every device and dtype", KEY, _every_hardware,
         Words("the effect on every device/dtype", "effect not on every device/dtype",
               "cannot decide: one device/dtype"), "hardware"),
    Rule("short_and_long", "the effect at short and at long lengths", KEY, _short_and_long,
         Words("the effect at every length", "effect not at every length",
               "cannot decide: intervals too wide, or lengths on one side of the trained context"), "length"),
    Rule("interior_optimum", "an interior optimum over cache sizes", KEY, _interior_optimum,
         Words("best cache size inside the range", "best cache size at the end of the range",
               "cannot decide: fewer than 3 cache sizes"), "cache"),
    Rule("beats_within_context", "some compression method beats dense within the trained context", KEY,
         _any_method_within_context,
         Words("a method beats dense within the context",
               "no compression method at these budgets beats dense within the trained context",
               "cannot decide: no interval excludes 0"), "eviction"),
))


def compression(d: Data):
    return COMPRESSION.judge(d)
