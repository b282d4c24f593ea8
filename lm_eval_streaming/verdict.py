"""The phenomenon, the conclusion template and `analyze()`: which hypothesis the data supports."""

from __future__ import annotations

from .verdict_base import (Analysis, OPEN, PASS, RULED_OUT, SUPPORTED, TOLERANCE, _Data, _call_id, _ci,
                           _delta_class, _effect, _f, _fin, _num, _setting,
                           _signed, _size_label)
from .verdict_compression import _compression
from .verdict_extrapolation import _extrapolation
from .verdict_numerics import judge_kernels, _numerical


def _phenomenon(d: _Data) -> tuple[str, bool]:
    ref = d.ref
    if not ref:
        return "No streaming_llm rows in the data: nothing to compare with dense.", False
    n = len(ref)
    better = [r for r in ref if _delta_class(r, d.tol) == "better"]
    lower = [r for r in ref if _num(r.get("delta_nll_vs_dense")) < 0]
    worse = [r for r in ref if _delta_class(r, d.tol) == "worse"]
    best = min(ref, key=lambda r: _num(r.get("delta_nll_vs_dense")) if _fin(_num(r.get("delta_nll_vs_dense"))) else 1e9)
    bd = d.calls[_call_id(best)]["dense"] or {}
    sizes = sorted({(r.get("start_size"), r.get("recent_size")) for r in ref}, key=str)
    cache = ", ".join(f"{s}+{rc}" for s, rc in sizes)
    text = (f"StreamingLLM ({cache} sinks+recent) has a lower NLL than dense attention in {len(lower)} of {n} "
            f"settings ({len(better)} significant, {len(worse)} significantly worse). Best streaming setting: "
            f"{_setting(best, 'method')}: perplexity {_f(best.get('ppl'), 2)} vs dense {_f(bd.get('ppl'), 2)}, "
            f"ΔNLL {_signed(best.get('delta_nll_vs_dense'))}{_ci(best.get('delta_nll_ci'))} nats/token, "
            f"Δaccuracy {_signed(best.get('delta_acc_vs_dense'), 4)}{_ci(best.get('delta_acc_ci'))}.")
    reproduced = bool(better)
    if not reproduced:
        text += (" The seed's phenomenon (streaming better than dense) is not reproduced with significance "
                 "in this data.")
    return text, reproduced




# ---- conclusion
def _scope(d: _Data, cause_key: str | None) -> dict[str, str]:
    tol = d.tol
    eff_models = [m for m in d.models if _effect([r for r in d.ref if r.get("model_id") == m], tol) == "effect"]
    tested_models = ", ".join(_size_label(m) for m in d.models) or "none"
    if not eff_models:
        size = f"no model size shows the effect (tested: {tested_models})"
    elif len(d.models) < 2:
        size = f"only {tested_models} tested: the size range cannot be bounded"
    else:
        smallest = eff_models[0]
        size = f">= {_size_label(smallest)} (tested: {tested_models})"
    eff_len = sorted({r.get("max_tokens") for r in d.ref if _delta_class(r, tol) == "better"})
    tested_len = ", ".join(map(str, d.lengths)) or "none"
    if not eff_len:
        length = f"no length shows a significant effect (tested: {tested_len})"
    else:
        length = f">= {eff_len[0]} tokens (tested: {tested_len})"
        if cause_key == "extrapolation":
            tcs = ", ".join(f"{tc} for {m}" for m, tc in d.trained_contexts.items() if tc)
            length += f"; i.e. only past the trained context ({tcs})"
    devices = sorted({str(r.get("device")) for r in d.ref if _delta_class(r, tol) == "better"})
    tested_dev = sorted({f"{dv}/{dt}" for dv, dt in d.hardware})
    untested = [x for x in ("mps", "cuda", "cpu") if not any(str(dv).startswith(x) for dv, _ in d.hardware)]
    hw = (f"effect seen on {', '.join(devices) or 'none'} (tested: {', '.join(tested_dev) or 'none'}"
          + (f"; not tested: {', '.join(u.upper() for u in untested)}" if untested else "") + ")")
    measured = [j for j in judge_kernels(d.dense, tol) if j.status != "not measured"]
    hw += ("; dense kernels with measured numerics: " + ", ".join(f"{j.device}/{j.dtype}/{j.kernel}" for j in measured)
           if measured else "; no dense kernel's numerics were measured")
    return {"model size": size, "sequence length": length, "hardware": hw}


MEANING = {
    "extrapolation": (
        "StreamingLLM does not predict better than dense attention within the model's trained context; it only "
        "avoids positions the model never saw. The 'improvement' measures dense attention running past "
        "max_position_embeddings. Compare against a baseline that stays within the trained context (lm-eval's "
        "`hf` model scores long documents in trained-context windows), and present StreamingLLM as a way to run "
        "past the context at constant memory, not as a better predictor."),
    "numerical": (
        "The dense baseline is numerically broken on this setup (non-finite or overflowing values), so its "
        "perplexity is not a valid reference. Re-run the baseline in float32 (or on CUDA), or fix the attention "
        "computation, before comparing; the streaming 'gain' is the baseline's loss."),
    "compression": (
        "Dropping the middle of the context acts like a regulariser for this model: a bounded cache of the "
        "optimal size both saves memory and lowers perplexity. Tune the recent size per model."),
}


def analyze(rows: list[dict], tolerance: float = TOLERANCE, recall_points=()) -> Analysis:
    d = _Data(rows, tolerance)
    phenomenon, reproduced = _phenomenon(d)
    hyps = {"compression": _compression(d), "numerical": _numerical(d), "extrapolation": _extrapolation(d)}
    supported = [k for k, h in hyps.items() if h.verdict == SUPPORTED]
    ruled = [k for k, h in hyps.items() if h.verdict == RULED_OUT]
    open_ = [k for k, h in hyps.items() if h.verdict == OPEN]
    cause_key = supported[0] if len(supported) == 1 else None
    if not reproduced and not supported:
        cause = ("其他 other: no effect to explain — streaming is not significantly better than dense in this data, "
                 "so no cause can be assigned")
    elif cause_key == "compression":
        cause = "压缩改善预测 compression improves prediction"
    elif cause_key == "numerical":
        cause = "数值稳定性 numerical stability (of the dense baseline)"
    elif cause_key == "extrapolation":
        cause = ("其他 other: position extrapolation (位置外推) — dense attention is scored past the model's trained "
                 "context, at positions it never saw; StreamingLLM's positions never exceed its cache size")
    elif len(supported) > 1:
        cause = "其他 other: undecided — the data fits " + " and ".join(hyps[k].label for k in supported)
    else:
        cause = ("其他 other: undecided — " + (f"ruled out: {', '.join(hyps[k].label for k in ruled)}; " if ruled else "")
                 + (f"not decidable from this data: {', '.join(hyps[k].label for k in open_)}" if open_ else ""))
    evidence = []
    for k in supported:
        evidence += [f"{c.name}: {c.evidence}" for c in hyps[k].criteria if c.key and c.status == PASS]
    for k in ruled:
        evidence += [f"rules out {hyps[k].label}: {c.name} fails — {c.evidence}" for c in hyps[k].failed()[:2]]
    summary_lines = []
    for k, h in hyps.items():
        line = f"- **{h.label}**: {h.verdict}" + (f" ({h.scope})" if h.scope else "")
        if h.verdict == RULED_OUT:
            line += " — fails: " + "; ".join(c.name for c in h.failed())
        elif h.verdict == OPEN:
            line += " — cannot decide: " + "; ".join(c.name for c in h.undecided())
        summary_lines.append(line)
    scope = _scope(d, cause_key)
    meaning = MEANING.get(cause_key) if cause_key else None
    if meaning is None:
        missing = sorted({c.name for k in open_ for c in hyps[k].undecided()})
        meaning = ("No practical conclusion yet: the data does not single out a cause."
                   + (f" Missing evidence: {'; '.join(missing)}." if missing else "")
                   + " Run the remaining configs (length past the trained context, several model sizes, cache sizes, "
                     "devices/dtypes) and analyse all result files together.")
    from .recall import practical_meaning

    meaning += " " + practical_meaning(recall_points)  # measured recall, or "recall was not measured"
    a = Analysis(rows=d.rows, hypotheses=hyps, phenomenon=phenomenon, cause=cause, scope=scope, meaning=meaning,
                 summary="\n".join(summary_lines))
    a.cause_evidence = evidence  # type: ignore[attr-defined]
    a.cause_key = cause_key  # type: ignore[attr-defined]
    return a
