"""The compression hypothesis: a bounded cache improves prediction (on every model size, device/dtype and
length, with an interior optimum over cache sizes)."""

from __future__ import annotations

from collections import defaultdict

from lm_eval_streaming.analysis.base import (FAIL, PASS, UNDECIDED, Criterion, Hypothesis, finite, fmt, interval,
                                             run_next, signed)
from lm_eval_streaming.analysis.criteria import by_model_size, cache_curves, matched_groups
from lm_eval_streaming.analysis.data import Data, effect, mean_delta


def compression(d: Data) -> Hypothesis:
    h = Hypothesis("compression", "压缩改善预测 compression improves prediction")
    size = by_model_size(d, only_large=False)
    size.key = True
    h.criteria += [size, _every_hardware(d), _short_and_long(d), _interior_optimum(d)]
    for c, what, missing in zip(h.criteria, ("size", "hardware", "length", "cache"),
                                ("not on every model size", "not on every device/dtype", "not at every length",
                                 "best cache size at the end of the range")):
        if c.status == UNDECIDED:
            c.next_step = run_next(what)
        elif c.status == FAIL:
            c.outcome = f"effect {missing}"
    h.criteria.append(_any_method_within_context(d))
    return h


def _every_hardware(d: Data) -> Criterion:
    name = "the effect on every device and dtype"
    groups, note = matched_groups(d.ref, lambda e: (e.run.device, e.run.dtype),
                                  lambda e: (e.run.model_id, e.run.max_tokens, e.row.start_size, e.row.recent_size))
    per_hw = {hw: (effect(groups[hw], d.tol), mean_delta(groups[hw])) for hw in d.hardware if groups.get(hw)}
    found = "; ".join(f"{dv}/{dt}: {e} (mean ΔNLL {signed(md)})" for (dv, dt), (e, md) in per_hw.items()) + note
    if len(per_hw) < 2:
        return Criterion(name, UNDECIDED, f"only one device/dtype in the data ({found or 'none'}): cannot be decided",
                         key=True)
    effects = [e for e, _ in per_hw.values()]
    status = PASS if all(e == "effect" for e in effects) else FAIL if "none" in effects else UNDECIDED
    return Criterion(name, status, found, key=True)


def _short_and_long(d: Data) -> Criterion:
    name = "the effect at short and at long lengths"
    by_len = defaultdict(list)
    for e in d.ref:
        by_len[e.run.max_tokens].append(e)
    per_len = {n: (effect(es, d.tol), mean_delta(es), d.is_long(es[0].run)) for n, es in sorted(by_len.items())}
    classes = {cls for *_, cls in per_len.values()}
    kind = {True: "long: past the trained context", False: "short", None: "unclassified"}
    found = "; ".join(f"{n} tokens ({kind[cls]}): {e} (mean ΔNLL {signed(md)})" for n, (e, md, cls) in per_len.items())
    if any(e == "none" for e, *_ in per_len.values()):
        return Criterion(name, FAIL, found, key=True)
    if per_len and all(e == "effect" for e, *_ in per_len.values()) and {True, False} <= classes:
        return Criterion(name, PASS, found, key=True)
    if not {True, False} <= classes:
        found += "; needs lengths both within and past the trained context"
    return Criterion(name, UNDECIDED, found or "no streaming rows", key=True)


def _interior_optimum(d: Data) -> Criterion:
    name = "an interior optimum over cache sizes"
    curves = [(k, pts) for k, pts in cache_curves(d) if len(pts) >= 3]
    if not curves:
        return Criterion(name, UNDECIDED, "fewer than 3 recent sizes per setting", key=True)
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
    return Criterion(name, PASS if all(oks) else FAIL, "; ".join(parts), key=True)


EVICTION_COMMAND = ("lm-eval-streaming benchmark --method streaming_llm,h2o,tova,knorm --evict_every 64 "
                    "--max_tokens 4000 --num_samples 8")


def _any_method_within_context(d: Data) -> Criterion:
    """Every compression method present (streaming_llm, h2o, tova, knorm, window, ...: every row with a bounded
    cache) against dense within the trained context, where dense is not extrapolating: if compression improved
    prediction, some method at budget B would beat dense there (its paired ΔNLL interval below 0)."""
    name = "some compression method beats dense within the trained context"
    beats, worse, open_, parts = [], [], [], []
    for e in d.entries:
        if e.row.is_dense or d.is_long(e.run) is not False or not finite(e.delta):
            continue
        ci = e.row.delta_nll_ci
        label = f"{e.row.label()} ({e.run.max_tokens} tokens)"
        parts.append(f"{label}: ΔNLL {signed(e.delta)}{interval(ci) or ' (one sample: no interval)'}")
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
        return Criterion(name, UNDECIDED, "no cache-method rows within the trained context", key=True,
                         next_step=f"run `{EVICTION_COMMAND}`")
    if beats:
        return Criterion(name, PASS, f"beats dense: {', '.join(beats)}. {found}", key=True)
    if not open_:
        return Criterion(name, FAIL, found, key=True,
                         outcome="no compression method at these budgets beats dense within the trained context")
    return Criterion(name, UNDECIDED, f"{found}; intervals that include 0 or are missing: {', '.join(open_)}",
                     key=True, next_step=f"run `{EVICTION_COMMAND}` (more samples narrow the intervals)")
