"""The numerical hypothesis, judged from *measured* numerics per device x dtype x attention kernel.

A dense kernel is judged from what was measured on its rows (``benchmark`` records them):

- the causality probe (max |dlogit| at positions <= p when the tokens after p change): a kernel that lets
  a position see the future moves logits by O(0.1..10); float32 noise is about 1e-5, so > ``CAUSAL_TOL``
  is a leak;
- the kernel error (mean |dNLL| per token against the project's float32 reference kernel): above the
  verdict's tolerance (the "no change" threshold for NLL differences) the kernel changes the very quantity
  the comparison is about;
- NaN/Inf counts of logits, token NLLs and the kernel error.

``broken``: any of them fails. ``clean``: all three were measured and pass. Otherwise ``not measured``,
naming what is missing: a field that was not measured is unknown, never clean.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

from .verdict_base import (Criterion, FAIL, HUGE_LOGIT, Hypothesis, PASS, UNDECIDED, _Data, _anomalous,
                           _call_id, _effect, _f, _fin, _mean_delta, _nonfinite,
                           _signed)
from .verdict_criteria import _by_model_size, _cache_curves

CAUSAL_TOL = 1e-2  # max |dlogit|
NONFINITE_COUNTS = ("nan_logits", "inf_logits", "nonfinite_tokens")
BROKEN, CLEAN, UNMEASURED = "broken", "clean", "not measured"
DEVICE_TYPES = ("cpu", "cuda", "mps")


@dataclass
class KernelJudgement:
    device: str
    dtype: str
    kernel: str
    status: str  # BROKEN | CLEAN | UNMEASURED
    evidence: str


def _num(x) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def _device_type(device) -> str:
    return str(device or "?").split(":")[0]


def judge_kernel(rows: list[dict], tol: float) -> tuple[str, str]:
    """(status, evidence) of one device/dtype/kernel from its dense rows."""
    probes = [r["causality"] for r in rows if isinstance(r.get("causality"), dict)]
    errors = [r["kernel_error"] for r in rows if isinstance(r.get("kernel_error"), dict)]
    counts = [sum(int(_num(r.get(k))) for k in NONFINITE_COUNTS) for r in rows
              if all(r.get(k) is not None for k in NONFINITE_COUNTS)]
    parts, broken, missing = [], False, []
    if probes:
        worst = max((_num(p.get("max_abs_dlogit_overall")) for p in probes), key=lambda v: (not math.isnan(v), v))
        leak = math.isnan(worst) or worst > CAUSAL_TOL
        broken |= leak
        parts.append(f"causality probe max |Δlogit| {worst:.2g}" + (" (leaks the future)" if leak else ""))
    else:
        missing.append("causality probe")
    if errors:
        mean = max(_num(e.get("mean_abs_dnll")) for e in errors)
        peak = max(_num(e.get("max_abs_dnll")) for e in errors)
        bad = sum(int(_num(e.get("nonfinite") or 0)) for e in errors)
        large = math.isnan(mean) or mean > tol or bad > 0
        broken |= large
        parts.append(f"kernel error mean |ΔNLL| {mean:.2g} (max {peak:.2g}) vs {errors[0].get('reference')}"
                     + (f", {bad} non-finite" if bad else "") + (f" (> {tol})" if large else ""))
    else:
        missing.append("kernel error")
    if counts:
        broken |= sum(counts) > 0
        parts.append(f"{sum(counts)} NaN/Inf logits or token NLLs")
    else:
        missing.append("NaN/Inf counts")
    if broken:
        return BROKEN, "; ".join(parts)
    if missing:
        return UNMEASURED, "; ".join(parts + [f"not measured: {', '.join(missing)}"])
    return CLEAN, "; ".join(parts)


def judge_kernels(dense_rows: list[dict], tol: float) -> list[KernelJudgement]:
    groups = defaultdict(list)
    for r in dense_rows:
        groups[(_device_type(r.get("device")), str(r.get("dtype")), str(r.get("attn_implementation") or "?"))].append(r)
    return [KernelJudgement(dev, dt, k, *judge_kernel(rows, tol)) for (dev, dt, k), rows in sorted(groups.items())]


def _listing(judgements: list[KernelJudgement]) -> str:
    by_hw = defaultdict(list)
    for j in judgements:
        by_hw[f"{j.device}/{j.dtype}"].append(j.kernel)
    return ", ".join(f"{hw} ({', '.join(ks)})" for hw, ks in by_hw.items())


def numerical_scope(judgements: list[KernelJudgement]) -> tuple[str, str, str]:
    """(status, evidence, scope): PASS when a measured kernel is broken (named, with numbers), FAIL when every
    measured kernel is clean, "cannot decide" when nothing was measured; scope names what was measured where."""
    broken = [j for j in judgements if j.status == BROKEN]
    clean = [j for j in judgements if j.status == CLEAN]
    unmeasured = [j for j in judgements if j.status == UNMEASURED]
    untested = [d.upper() if d != "cpu" else "CPU" for d in DEVICE_TYPES
                if not any(j.device == d and j.status != UNMEASURED for j in judgements)]
    notes = []
    if clean:
        notes.append(f"ruled out on {_listing(clean)}")
    if broken:
        notes.append(f"supported for {_listing(broken)}")
    if unmeasured:
        notes.append(f"not measured (older rows without kernel error / probe) on {_listing(unmeasured)}")
    if untested:
        notes.append(f"not measured on {', '.join(untested)}: cannot decide there")
    scope = "; ".join(notes)
    detail = " | ".join(f"{j.device}/{j.dtype}/{j.kernel}: {j.status} ({j.evidence})" for j in judgements)
    if broken:
        return "pass", f"{scope}. {detail}", scope
    if clean:
        return "fail", f"{scope}. {detail}", scope
    return "cannot decide", f"no dense row has a kernel error, causality probe and NaN/Inf counts. {detail}", scope


# ---- numerical problem
def _numerical(d: _Data) -> Hypothesis:
    h = Hypothesis("numerical", "数值稳定性 numerical stability of the dense baseline")
    tol = d.tol
    status, evidence, scope = numerical_scope(judge_kernels(d.dense, tol))
    h.criteria.append(Criterion("measured kernel error, causality probe and NaN/Inf of the dense kernels", status,
                                evidence, key=True))
    h.scope = scope
    rows = [r for r in d.dense if r.get("max_abs_logit") is not None]
    if rows:
        worst = max(rows, key=lambda r: _num(r.get("max_abs_logit")))
        scores = [_num(r.get("max_abs_attn_score")) for r in rows if r.get("max_abs_attn_score") is not None]
        h.criteria.append(Criterion(
            "logit and attention-score magnitudes (informational)", PASS if _anomalous(worst) else FAIL,
            f"max |logit| {_f(worst.get('max_abs_logit'), 1)} over {len(rows)} dense rows (huge means > {HUGE_LOGIT:g}); "
            + (f"max |attention score| {_f(max(scores), 1)} where the project's kernel ran"
               if scores else "attention scores not measured (they are observable only in the project's kernel)"),
            required=False))

    # N2: only in large models.
    h.criteria.append(_by_model_size(d, only_large=True))

    # N3: growing with length.
    groups = defaultdict(list)
    for r in d.ref:
        groups[(r.get("model_id"), r.get("device"), r.get("dtype"), r.get("start_size"), r.get("recent_size"))].append(r)
    growth, flat = [], []
    for key, rs in groups.items():
        by_len = defaultdict(list)
        for r in rs:
            by_len[r.get("max_tokens")].append(r)
        if len(by_len) < 2:
            continue
        lens = sorted(by_len)
        adv = [-_mean_delta(by_len[L]) for L in lens]
        dense_bad = []
        for L in lens:
            ds = [d.calls[_call_id(r)]["dense"] for r in by_len[L]]
            dense_bad.append(sum(_nonfinite(x) for x in ds if x))
        if any(_fin(a) and a > tol for a in adv) or any(dense_bad):  # where there is an effect to grow
            growth.append((key, lens, adv, dense_bad))
        else:
            flat.append(key)
    if not growth and flat:
        h.criteria.append(Criterion("the effect grows with sequence length", FAIL,
                                    f"no advantage over dense and no non-finite values at any length in "
                                    f"{len(flat)} setting(s) with several lengths"))
    elif not growth:
        h.criteria.append(Criterion("the effect grows with sequence length", UNDECIDED,
                                    f"only one length per setting (lengths: {', '.join(map(str, d.lengths)) or 'none'})"))
    else:
        grows, parts = [], []
        for key, lens, adv, bad in growth:
            g_adv = _fin(adv[-1]) and _fin(adv[0]) and adv[-1] - adv[0] > tol
            g_bad = bad[-1] > bad[0] and all(b2 >= b1 for b1, b2 in zip(bad, bad[1:]))
            grows.append(g_adv or g_bad)
            parts.append(f"{key[0]} {key[1]}/{key[2]}: advantage (-ΔNLL) "
                         + ", ".join(f"{L}: {_signed(a)}" for L, a in zip(lens, adv))
                         + ("; dense non-finite " + ", ".join(f"{L}: {b}" for L, b in zip(lens, bad)) if any(bad) else ""))
        h.criteria.append(Criterion("the effect grows with sequence length", PASS if all(grows) else FAIL,
                                    "; ".join(parts)))

    # N4: a bigger cache approaches the baseline.
    curves = _cache_curves(d)
    if not curves:
        h.criteria.append(Criterion("a bigger cache approaches the dense baseline", UNDECIDED,
                                    "fewer than 2 recent sizes per setting"))
    else:
        oks, parts = [], []
        for key, pts in curves:
            absd = [abs(_num(r.get("delta_nll_vs_dense"))) for _, r in pts]
            ok = absd[-1] < absd[0] and all(b <= a + tol / 2 for a, b in zip(absd, absd[1:]))
            oks.append(ok)
            parts.append(f"{key[0]} len={key[1]}: |ΔNLL| by recent size "
                         + ", ".join(f"{rc}: {_f(a)}" for (rc, _), a in zip(pts, absd)))
        h.criteria.append(Criterion("a bigger cache approaches the dense baseline", PASS if all(oks) else FAIL,
                                    "; ".join(parts)))

    # N5 (informational): absent on CUDA.
    cuda = [r for r in d.ref if str(r.get("device", "")).startswith("cuda")]
    other = [r for r in d.ref if r.get("device") and not str(r.get("device")).startswith("cuda")]
    if cuda and other:
        ev = (f"mean ΔNLL on CUDA {_signed(_mean_delta(cuda))} vs elsewhere {_signed(_mean_delta(other))}; "
              f"dense rows anomalous on CUDA: {sum(_anomalous(r) for r in d.dense if str(r.get('device', '')).startswith('cuda'))}")
        status = PASS if _effect(cuda, tol) != "effect" and _effect(other, tol) == "effect" else FAIL
    else:
        ev, status = "needs rows on CUDA and on another device", UNDECIDED
    h.criteria.append(Criterion("possibly absent on CUDA (optional)", status, ev, required=False))
    return h
