"""`analyze()`: the phenomenon, the three hypotheses, and the conclusion template (现象 / 原因 / 适用范围 / 实际意义),
whose scope names model families, lengths, hardware and kernels only as measured."""

from __future__ import annotations

from collections import defaultdict

from lm_eval_streaming.records import Run
from lm_eval_streaming.analysis.base import (OPEN, PASS, RULED_OUT, SUPPORTED, TOLERANCE, Analysis, fmt, interval, signed)
from lm_eval_streaming.analysis.hypotheses.compression import compression
from lm_eval_streaming.analysis.data import Data, delta_class, effect, family_of, kernel_name, size_label
from lm_eval_streaming.analysis.hypotheses.extrapolation import extrapolation
from lm_eval_streaming.analysis.hypotheses.numerics import BROKEN, UNMEASURED, judge_kernels, listing, numerical


def _dense_kernels(d: Data, runs) -> str:
    kernels = sorted({kernel_name(d.dense_of(r)) for r in runs if d.dense_of(r)})
    return ", ".join(kernels) or "none"


def phenomenon(d: Data) -> tuple[str, bool]:
    ref = d.ref
    if not ref:
        return "No streaming_llm rows in the data: nothing to compare with dense.", False
    better = [e for e in ref if delta_class(e.row, d.tol) == "better"]
    worse = [e for e in ref if delta_class(e.row, d.tol) == "worse"]
    lower = [e for e in ref if e.delta is not None and e.delta < 0]
    single = [e for e in ref if e.delta is not None and e.row.delta_nll_ci is None]
    best = min(ref, key=lambda e: e.delta if e.delta is not None else float("inf"))
    dense = d.dense_of(best.run)
    cache = ", ".join(sorted({f"{e.row.start_size}+{e.row.recent_size}" for e in ref}))
    text = (f"StreamingLLM ({cache} sinks+recent) has a lower NLL than dense attention (through "
            f"{_dense_kernels(d, d.runs)}) in {len(lower)} of {len(ref)} settings ({len(better)} significant, "
            f"{len(worse)} significantly worse"
            + (f"; {len(single)} without an interval: one sample, never called significant" if single else "")
            + f"). Best streaming setting: {best.setting('method')}: perplexity {fmt(best.row.ppl, 2)} vs dense "
              f"{fmt(dense.ppl if dense else None, 2)}, ΔNLL {signed(best.delta)}{interval(best.row.delta_nll_ci)} "
              f"nats/token, Δaccuracy {signed(best.row.delta_acc_vs_dense, 4)}{interval(best.row.delta_acc_ci)}.")
    if not better:
        text += " The seed's phenomenon (streaming better than dense) is not reproduced with significance in this data."
    return text, bool(better)


# ------------------------------------------------------------------ 适用范围
def _size_scope(d: Data) -> str:
    families = defaultdict(list)
    for m in d.models:
        families[family_of(d.model_run[m])].append(m)
    parts = []
    for (family, tc), models in families.items():
        tested = ", ".join(size_label(d.model_run[m]) for m in models)
        eff = [m for m in models if effect([e for e in d.ref if e.run.model_id == m], d.tol) == "effect"]
        where = f"{family} (trained context {tc})"
        if not eff:
            parts.append(f"{where}: no model size shows the effect (tested: {tested})")
        elif len(models) < 2:
            parts.append(f"{where}: only {tested} tested: the size range cannot be bounded")
        else:
            parts.append(f"{where}: >= {size_label(d.model_run[eff[0]])} (tested: {tested})")
    return "; ".join(parts) + ("; sizes compared only within a family" if len(families) > 1 else "") or "none"


def _length_scope(d: Data, cause_key: str | None) -> str:
    def as_multiple(run: Run) -> str:
        return f"{run.max_tokens} ({run.max_tokens / run.trained_context:.2g}x)" if run.trained_context \
            else str(run.max_tokens)

    runs = sorted({(r.max_tokens, r.trained_context): r for r in d.runs}.values(),
                  key=lambda r: (r.max_tokens, r.trained_context or 0))
    tested = ", ".join(as_multiple(r) for r in runs) or "none"
    eff = sorted((e.run for e in d.ref if delta_class(e.row, d.tol) == "better"), key=lambda r: r.max_tokens)
    tcs = ", ".join(f"{tc} for {m}" for m, tc in d.trained_contexts.items() if tc)
    if not eff:
        return f"no length shows a significant effect (tested, tokens and multiple of the trained context: {tested})"
    text = f">= {as_multiple(eff[0])} tokens (tested: {tested}; trained context {tcs or 'unknown'})"
    if cause_key == "extrapolation":
        text += "; i.e. only past the trained context"
    return text


def _hardware_scope(d: Data) -> str:
    per_hw = defaultdict(set)
    for e in d.dense:
        per_hw[(e.run.device, e.run.dtype)].add(kernel_name(e.row))
    tested = "; ".join(f"{dv}/{dt} (dense through {', '.join(sorted(ks))})" for (dv, dt), ks in sorted(per_hw.items()))
    seen = sorted({f"{e.run.device}/{e.run.dtype}" for e in d.ref if delta_class(e.row, d.tol) == "better"})
    untested = [x.upper() for x in ("mps", "cuda", "cpu") if not any(str(dv).startswith(x) for dv, _ in d.hardware)]
    measured = [j for j in judge_kernels(d) if j.status != UNMEASURED]
    return (f"effect seen on {', '.join(seen) or 'none'}; tested: {tested or 'none'}"
            + (f"; not tested: {', '.join(untested)}" if untested else "")
            + (f"; kernel error and causality probe measured for {listing(measured)}" if measured
               else "; no dense kernel's numerics were measured"))


def _meaning(d: Data, cause_key: str | None, hyps: dict) -> str:
    if cause_key == "extrapolation":
        return ("StreamingLLM does not predict better than dense attention within the model's trained context; it "
                "only avoids positions the model never saw. The 'improvement' measures dense attention running past "
                "max_position_embeddings. Compare against a baseline that stays within the trained context (lm-eval's "
                "`hf` model scores long documents in trained-context windows), and present StreamingLLM as a way to "
                "run past the context at constant memory, not as a better predictor.")
    if cause_key == "numerical":
        broken = [j for j in judge_kernels(d) if j.status == BROKEN]
        return (f"The dense baseline is numerically unreliable through {listing(broken)} (measured: see the numerical "
                "criterion), so its perplexity is not a valid reference there. Re-run the baseline with a kernel and "
                "dtype whose kernel error and causality probe are clean before comparing; the streaming 'gain' is "
                "the baseline's loss.")
    if cause_key == "compression":
        return ("Dropping the middle of the context acts like a regulariser for this model: a bounded cache of the "
                "optimal size both saves memory and lowers perplexity. Tune the recent size per model.")
    missing = sorted({c.name for h in hyps.values() if h.verdict == OPEN for c in h.undecided()})
    return ("No practical conclusion yet: the data does not single out a cause."
            + (f" Missing evidence: {'; '.join(missing)}." if missing else "")
            + " Run the remaining configs (length past the trained context, several model sizes of one family, cache "
              "sizes, devices/dtypes with kernel checks) and analyse all result files together.")


CAUSES = {
    "compression": "压缩改善预测 compression improves prediction",
    "numerical": "数值稳定性 numerical stability (of the dense baseline)",
    "extrapolation": ("其他 other: position extrapolation (位置外推) — dense attention is scored past the model's trained "
                      "context, at positions it never saw; StreamingLLM's positions never exceed its cache size"),
}


def analyze(runs: list[Run], tolerance: float = TOLERANCE, recall_points=()) -> Analysis:
    """Judge the three hypotheses on typed runs (``records.load_runs``); recall points (``recall.load_recall_results``)
    make the practical meaning cite the measured stop distances, or say that recall was not measured."""
    from lm_eval_streaming.analysis.recall import practical_meaning

    d = Data(list(runs), tolerance)
    text, reproduced = phenomenon(d)
    hyps = {"compression": compression(d), "numerical": numerical(d), "extrapolation": extrapolation(d)}
    supported = [k for k, h in hyps.items() if h.verdict == SUPPORTED]
    ruled = [k for k, h in hyps.items() if h.verdict == RULED_OUT]
    open_ = [k for k, h in hyps.items() if h.verdict == OPEN]
    cause_key = supported[0] if len(supported) == 1 else None
    if not reproduced and not supported:
        cause = ("其他 other: no effect to explain — streaming is not significantly better than dense in this data, "
                 "so no cause can be assigned")
    elif cause_key:
        cause = CAUSES[cause_key]
    elif supported:
        cause = "其他 other: undecided — the data fits " + " and ".join(hyps[k].label for k in supported)
    else:
        cause = ("其他 other: undecided — " + (f"ruled out: {', '.join(hyps[k].label for k in ruled)}; " if ruled else "")
                 + (f"not decidable from this data: {', '.join(hyps[k].label for k in open_)}" if open_ else ""))
    evidence = [f"{c.name}: {c.evidence}" for k in supported for c in hyps[k].criteria if c.key and c.status == PASS]
    evidence += [f"rules out {hyps[k].label}: {c.name} fails — {c.evidence}"
                 for k in ruled for c in hyps[k].failed()[:2]]
    summary = []
    for h in hyps.values():
        line = f"- **{h.label}**: {h.verdict}" + (f" ({h.scope})" if h.scope else "")
        if h.verdict == RULED_OUT:
            line += " — fails: " + "; ".join(c.name for c in h.failed())
        elif h.verdict == OPEN:
            line += " — cannot decide: " + "; ".join(c.name for c in h.undecided())
        summary.append(line)
    scope = {"model size": _size_scope(d), "sequence length": _length_scope(d, cause_key),
             "hardware": _hardware_scope(d)}
    meaning = _meaning(d, cause_key, hyps) + " " + practical_meaning(recall_points)
    return Analysis(runs=d.runs, hypotheses=hyps, phenomenon=text, cause=cause, cause_key=cause_key,
                    cause_evidence=evidence, scope=scope, meaning=meaning, summary="\n".join(summary),
                    tolerance=tolerance)
