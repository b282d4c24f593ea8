"""The numerical hypothesis, judged from *measured* numerics per device x dtype x attention kernel.

Each dense kernel is judged from what its rows measured (``benchmark`` records them):

- the causality probe (max |Δlogit| at positions <= p when the tokens after p change): above ``CAUSAL_TOL``
  the kernel lets a position see the future;
- the kernel error (mean |ΔNLL| per token against the float32 reference kernel): it bounds how far the kernel
  moves the mean NLL, so it is compared with the streaming advantage it would have to explain, in the same
  run (``KERNEL_SHARE`` of it; ``TOLERANCE``-sized when there is no advantage);
- NaN/Inf counts of logits and token NLLs (and of the kernel error's tokens).

``broken``: any of them fails, named with its numbers. ``clean``: all three were measured and pass. Otherwise
``not measured``, naming what is missing: a field that was not measured is unknown, never clean. The seed's
indirect signs (only large models, growing with length, a bigger cache approaching dense) are reported beside
the measurement, as information: the measurement decides.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from lm_eval_streaming.analysis.base import (CAUSAL_TOL, FAIL, HUGE_ATTN_SCORE, HUGE_LOGIT, KERNEL_SHARE, PASS,
                                             UNDECIDED, finite, fmt, signed)
from lm_eval_streaming.analysis.criteria import by_model_size, cache_curves
from lm_eval_streaming.analysis.data import (LOGIT_COUNTS, Data, Scored, effect, kernel_name, logit_counts_measured,
                                             mean_delta, nonfinite)
from lm_eval_streaming.analysis.rules import KEY, SIDE, Decision, HypothesisRules, Rule, Words

BROKEN, CLEAN, UNMEASURED = "broken", "clean", "not measured"
DEVICE_TYPES = ("cpu", "cuda", "mps")


@dataclass
class KernelJudgement:
    device: str  # device type: cpu, cuda, mps
    dtype: str
    kernel: str
    status: str  # BROKEN | CLEAN | UNMEASURED
    evidence: str
    lengths: list[int]  # run lengths (tokens) where the kernel error or the probe was measured
    cells: dict[str, str]  # the kernel table's probe / kernel error / NaN/Inf cells ("not measured" when not)


def device_type(device: str) -> str:
    return str(device).split(":")[0]


def advantage(d: Data, e: Scored) -> float | None:
    """How much lower the run's reference streaming NLL is than this dense row's (nats/token, paired on the
    run's samples); None without a streaming row. Deltas are recorded against the run's reference dense row,
    so another dense kernel's gap is the difference of the two deltas."""
    s = d.ref_of(e.run)
    offset = 0.0 if e.row.delta_reference is None else e.row.delta_nll_vs_dense
    if s is None or not finite(s.delta) or not finite(offset):
        return None
    return offset - s.delta


def error_limit(adv: float | None, tol: float) -> tuple[float, str]:
    if adv is not None and adv > tol:
        return KERNEL_SHARE * adv, f"{KERNEL_SHARE:g} x the {adv:.3g} streaming advantage"
    return tol, "the no-change tolerance: no streaming advantage to explain"


def _tokens(lengths) -> str:
    return ", ".join(map(str, sorted(set(lengths)))) + " tokens"


def judge_kernel(d: Data, entries: list[Scored]) -> tuple[str, str, list[int], dict[str, str]]:
    """(status, evidence, measured lengths, table cells) of one device/dtype/kernel from its dense rows."""
    parts, missing, broken = [], [], False
    cells = dict.fromkeys(("probe", "kernel error", "NaN/Inf"), "not measured")
    probes = [e for e in entries if e.row.causality is not None]
    if probes:
        e = max(probes, key=lambda e: (not finite(e.row.causality.max_abs_dlogit_overall),
                                       e.row.causality.max_abs_dlogit_overall))
        c = e.row.causality
        worst = c.max_abs_dlogit_overall
        at = next((p for p, v in zip(c.positions, c.max_abs_dlogit) if v == worst), None)
        leak = not finite(worst) or worst > CAUSAL_TOL
        broken |= leak
        cells["probe"] = (f"max abs Δlogit {worst:.2g}" + (f" at p={at}" if leak and at is not None else "")
                          + (f" > {CAUSAL_TOL:g}: sees the future" if leak else f" <= {CAUSAL_TOL:g}"))
        parts.append(f"causality probe max |Δlogit| {worst:.2g}" + (f" at p={at}" if leak and at is not None else "")
                     + f" ({e.run.model_id}; probed at {_tokens(x.run.max_tokens for x in probes)}"
                     + (f"; > {CAUSAL_TOL:g}: positions see the future)" if leak else ")"))
    else:
        missing.append("causality probe")
    errors = []
    for e in entries:
        if e.row.kernel_error is not None:
            limit, why = error_limit(advantage(d, e), d.tol)
            errors.append((e.row.kernel_error, limit, why, e))
    if errors:
        def badness(item):
            ke, limit, _, _ = item
            return (bool(ke.nonfinite) or not finite(ke.mean_abs_dnll), ke.mean_abs_dnll / limit)

        ke, limit, why, e = max(errors, key=badness)
        large = bool(ke.nonfinite) or not finite(ke.mean_abs_dnll) or ke.mean_abs_dnll > limit
        broken |= large
        cells["kernel error"] = (f"mean {ke.mean_abs_dnll:.2g}, max {ke.max_abs_dnll:.2g} ({e.run.max_tokens} tok): "
                                 f"{'above' if large else 'within'} {limit:.3g}")
        parts.append(f"kernel error mean |ΔNLL| {ke.mean_abs_dnll:.2g} (max {ke.max_abs_dnll:.2g}) vs {ke.reference} "
                     f"({e.run.model_id}, {e.run.max_tokens} tokens): {'above' if large else 'within'} {limit:.3g} "
                     f"({why})"
                     + (f", {ke.nonfinite} non-finite tokens" if ke.nonfinite else ""))
    else:
        missing.append("kernel error")
    broken |= _whole_forward(d, entries, cells, parts)
    counted = [e for e in entries if logit_counts_measured(e.row)]
    if counted:
        total = sum(getattr(e.row, k) for e in counted for k in LOGIT_COUNTS)
        broken |= total > 0
        cells["NaN/Inf"] = f"{total} in {len(counted)} row(s)"
        parts.append(f"{total} NaN/Inf logits or token NLLs in {len(counted)} row(s)")
    else:
        missing.append("NaN/Inf counts")
    lengths = sorted({e.run.max_tokens for e in probes} | {e.run.max_tokens for *_, e in errors})
    unmeasured = [e for e in entries if e.row.kernel_error is None and e.row.causality is None]
    if lengths and unmeasured:
        parts.append(f"no kernel error or probe in {len(unmeasured)} row(s) at "
                     f"{_tokens(e.run.max_tokens for e in unmeasured)}")
    if broken:
        return BROKEN, "; ".join(parts), lengths, cells
    if missing:
        return UNMEASURED, "; ".join(parts + [f"not measured: {', '.join(missing)}"]), lengths, cells
    return CLEAN, "; ".join(parts), lengths, cells


def _whole_forward(d: Data, entries: list[Scored], cells: dict, parts: list) -> bool:
    """The rows' dtype against a float32 shadow of the same forward (``Row.whole_forward``): broken when the
    mean |ΔNLL| passes the same limit as the kernel error or a token is NaN/Inf; the first module whose output
    diverged is named either way. Not measured (older files, float32 runs: their own shadow): a note only."""
    shadowed = [e for e in entries if e.row.whole_forward is not None]
    if not shadowed:
        cells["whole forward"] = "not measured" if entries and entries[0].run.dtype != "float32" else "float32: 0"
        return False

    def badness(e):
        w = e.row.whole_forward
        limit, _ = error_limit(advantage(d, e), d.tol)
        return bool(w.nonfinite) or not finite(w.mean_abs_dnll), w.mean_abs_dnll / limit

    e = max(shadowed, key=badness)
    w = e.row.whole_forward
    limit, why = error_limit(advantage(d, e), d.tol)
    large = bool(w.nonfinite) or not finite(w.mean_abs_dnll) or w.mean_abs_dnll > limit
    f = next((x.row.whole_forward.first_divergence for x in shadowed if x.row.whole_forward.first_divergence), None)
    where = "" if f is None else (f"; first off: {f.kind} {f.module}" + (f" (layer {f.layer})" if f.layer is not None
                                  else "") + f" at position {f.position}, relative error {f.rel_error:.2g}")
    cells["whole forward"] = (f"mean {w.mean_abs_dnll:.2g}, max {w.max_abs_dnll:.2g}: "
                              f"{'above' if large else 'within'} {limit:.3g}{where}")
    parts.append(f"whole-forward error mean |ΔNLL| {w.mean_abs_dnll:.2g} (max {w.max_abs_dnll:.2g}) vs {w.reference} "
                 f"({e.run.model_id}, {e.run.max_tokens} tokens): {'above' if large else 'within'} {limit:.3g} "
                 f"({why})" + (f", {w.nonfinite} non-finite tokens" if w.nonfinite else "") + where)
    return large


def judge_kernels(d: Data) -> list[KernelJudgement]:
    groups = defaultdict(list)
    for e in d.dense:
        groups[(device_type(e.run.device), e.run.dtype, kernel_name(e.row))].append(e)
    return [KernelJudgement(dev, dt, k, *judge_kernel(d, entries)) for (dev, dt, k), entries in sorted(groups.items())]


def listing(judgements: list[KernelJudgement], with_lengths: bool = True) -> str:
    """``cpu/float32 (eager, sdpa; 1000, 4000 tokens), cpu/float16 (sdpa; 1000 tokens)``."""
    by_hw = defaultdict(list)
    for j in judgements:
        by_hw[f"{j.device}/{j.dtype}"].append(j)
    out = []
    for hw, js in by_hw.items():
        lengths = sorted({n for j in js for n in j.lengths})
        out.append(f"{hw} ({', '.join(j.kernel for j in js)}" + (f"; {_tokens(lengths)})" if with_lengths and lengths
                                                                 else ")"))
    return ", ".join(out)


def numerical_scope(judgements: list[KernelJudgement]) -> tuple[str, str, str]:
    """(status, evidence, scope): PASS when a measured kernel is broken (named, with numbers), FAIL when every
    measured kernel is clean, UNDECIDED when nothing was measured; scope names what was measured where."""
    broken = [j for j in judgements if j.status == BROKEN]
    clean = [j for j in judgements if j.status == CLEAN]
    unmeasured = [j for j in judgements if j.status == UNMEASURED]
    untested = [dev.upper() for dev in DEVICE_TYPES
                if not any(j.device == dev and j.status != UNMEASURED for j in judgements)]
    notes = []
    if broken:
        notes.append(f"supported for {listing(broken)}")
    if clean:
        notes.append(f"ruled out on {listing(clean)}")
    if unmeasured:
        notes.append(f"not measured for {listing(unmeasured, with_lengths=False)}")
    if untested:
        notes.append(f"not measured on {', '.join(untested)}: cannot decide there")
    scope = "; ".join(notes)
    detail = " | ".join(f"{j.device}/{j.dtype}/{j.kernel}: {j.status} ({j.evidence})" for j in judgements)
    if broken:
        return PASS, f"{scope}. {detail}", scope
    if clean:
        return FAIL, f"{scope}. {detail}", scope
    return UNDECIDED, f"no dense kernel has a kernel error, a causality probe and NaN/Inf counts. {detail}", scope


def _where(judgements: list[KernelJudgement]) -> str:
    """``found on MPS (float16); not found on CPU; not measured on CUDA`` by device type."""
    found = defaultdict(set)
    for j in judgements:
        found[j.status].add(j.device)
    parts = []
    for status, words in ((BROKEN, "found on"), (CLEAN, "not found on")):
        devices = sorted(found[status] - (found[BROKEN] if status == CLEAN else set()))
        if devices:
            parts.append(f"{words} {', '.join(dev.upper() for dev in devices)}")
    measured = found[BROKEN] | found[CLEAN]
    missing = [dev.upper() for dev in DEVICE_TYPES if dev not in measured]
    if missing:
        parts.append(f"not measured on {', '.join(missing)}")
    return "numerical problem " + "; ".join(parts)


# ------------------------------------------------------------------ the hypothesis
def _measured(d: Data) -> Decision:
    judgements = judge_kernels(d)
    status, evidence, _ = numerical_scope(judgements)
    counts = {st: sum(j.status == st for j in judgements) for st in (BROKEN, CLEAN, UNMEASURED)}
    broken = [j for j in judgements if j.status == BROKEN]
    short = ((f"broken: {listing(broken, with_lengths=False)}; " if broken else "")
             + ", ".join(f"{n} {st}" for st, n in counts.items() if n)  # never "0 clean" where nothing was
             + f" of {len(judgements)} device/dtype/kernels")
    return Decision(status, evidence, short=short, see="Numerics per dense kernel")


def _scope(d: Data) -> tuple[str, str]:
    judgements = judge_kernels(d)
    return numerical_scope(judgements)[2], _where(judgements)


def _magnitudes(d: Data) -> Decision:
    logits = [e for e in d.dense if e.row.max_abs_logit is not None]
    scores = [e.row.max_abs_attn_score for e in d.dense if e.row.max_abs_attn_score is not None]
    if not logits:
        return Decision(UNDECIDED, "max |logit| not measured")
    worst = max(logits, key=lambda e: e.row.max_abs_logit)
    huge = worst.row.max_abs_logit > HUGE_LOGIT or any(s > HUGE_ATTN_SCORE for s in scores)
    return Decision(
        PASS if huge else FAIL,
        f"max |logit| {fmt(worst.row.max_abs_logit, 1)} over {len(logits)} dense rows (huge means > {HUGE_LOGIT:g}); "
        + (f"max |attention score| {fmt(max(scores), 1)} where it was observable (huge means > {HUGE_ATTN_SCORE:g})"
           if scores else "attention scores not measured (observable only in the project's kernel)"))


def _grows_with_length(d: Data) -> Decision:
    groups = defaultdict(lambda: defaultdict(list))
    for e in d.ref:
        r = e.run
        groups[(r.model_id, r.device, r.dtype, e.row.start_size, e.row.recent_size)][r.max_tokens].append(e)
    growth, flat = [], []
    for key, by_len in groups.items():
        if len(by_len) < 2:
            continue
        lens = sorted(by_len)
        adv = [-mean_delta(by_len[n]) for n in lens]
        bad = [sum(nonfinite(d.dense_of(e.run)) or 0 for e in by_len[n] if d.dense_of(e.run)) for n in lens]
        if any(finite(a) and a > d.tol for a in adv) or any(bad):  # an effect that could grow
            growth.append((key, lens, adv, bad))
        else:
            flat.append(key)
    if not growth:
        if flat:
            return Decision(FAIL, f"no advantage over dense and no measured non-finite values at any length "
                                         f"in {len(flat)} setting(s) with several lengths")
        return Decision(UNDECIDED, f"only one length per setting (lengths: "
                                          f"{', '.join(map(str, d.lengths)) or 'none'})")
    grows, parts = [], []
    for key, lens, adv, bad in growth:
        grows.append((finite(adv[-1]) and finite(adv[0]) and adv[-1] - adv[0] > d.tol)
                     or (bad[-1] > bad[0] and all(b2 >= b1 for b1, b2 in zip(bad, bad[1:]))))
        parts.append(f"{key[0]} {key[1]}/{key[2]}: advantage (-ΔNLL) "
                     + ", ".join(f"{n}: {signed(a)}" for n, a in zip(lens, adv))
                     + ("; dense non-finite " + ", ".join(f"{n}: {b}" for n, b in zip(lens, bad)) if any(bad) else ""))
    return Decision(PASS if all(grows) else FAIL, "; ".join(parts))


def _bigger_cache_approaches(d: Data) -> Decision:
    curves = cache_curves(d)
    if not curves:
        return Decision(UNDECIDED, "fewer than 2 recent sizes per setting")
    oks, parts = [], []
    for key, pts in curves:
        absd = [abs(e.delta) for _, e in pts]
        oks.append(absd[-1] < absd[0] and all(b <= a + d.tol / 2 for a, b in zip(absd, absd[1:])))
        parts.append(f"{key[0]} {key[1]} tokens: |ΔNLL| by recent size "
                     + ", ".join(f"{rc}: {fmt(a)}" for (rc, _), a in zip(pts, absd)))
    return Decision(PASS if all(oks) else FAIL, "; ".join(parts))


def _absent_on_cuda(d: Data) -> Decision:
    cuda = [e for e in d.ref if device_type(e.run.device) == "cuda"]
    other = [e for e in d.ref if device_type(e.run.device) != "cuda"]
    if not (cuda and other):
        return Decision(UNDECIDED, "needs streaming rows on CUDA and on another device")
    return Decision(PASS if effect(cuda, d.tol) != "effect" and effect(other, d.tol) == "effect" else FAIL,
                     f"mean ΔNLL on CUDA {signed(mean_delta(cuda))} vs elsewhere {signed(mean_delta(other))}")


# The seed's indirect signs are side criteria: the measurement (the key criterion) decides.
NUMERICAL = HypothesisRules("numerical", "数值稳定性 numerical stability of the dense baseline", (
    Rule("kernels_measured", "measured kernel error, causality probe and NaN/Inf of each dense kernel", KEY, _measured,
         Words("numerical problem found", "no numerical problem where measured",
               "cannot decide: not measured"), "hardware"),
    Rule("magnitudes", "huge logits or attention scores", SIDE, _magnitudes,
         Words("huge logits or attention scores found", "no huge logits or attention scores: ok",
               "not measured")),
    Rule("only_large", "the effect appears only in large models", SIDE, lambda d: by_model_size(d, only_large=True),
         Words("only in large models", "not only in large models")),
    Rule("grows_with_length", "the effect grows with sequence length", SIDE, _grows_with_length,
         Words("grows with length", "does not grow with length")),
    Rule("bigger_cache", "a bigger cache approaches the dense baseline", SIDE, _bigger_cache_approaches,
         Words("a bigger cache approaches dense", "a bigger cache does not approach dense")),
    Rule("absent_on_cuda", "possibly absent on CUDA", SIDE, _absent_on_cuda,
         Words("absent on CUDA", "not absent on CUDA")),
), scope=_scope)


def numerical(d: Data):
    return NUMERICAL.judge(d)
