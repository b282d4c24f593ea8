"""`analyze()`: the phenomenon, the three hypotheses, and the conclusion template (现象 / 原因 / 适用范围 / 实际意义),
whose scope names model families, lengths, hardware and kernels only as measured."""

from __future__ import annotations

from collections import defaultdict

from lm_eval_streaming.records import Run
from lm_eval_streaming.records.lm_eval_rolling import PER_BYTE, POSITION_TASK, ROLLING
from lm_eval_streaming.analysis.base import (OPEN, PASS, RULED_OUT, SUPPORTED, TOLERANCE, Analysis, fmt, spread, step_ref,
                                            signed)
from lm_eval_streaming.analysis.hypotheses.compression import COMPRESSION
from lm_eval_streaming.analysis.critical import critical_points
from lm_eval_streaming.analysis.families import combine, split_families
from lm_eval_streaming.analysis.data import Data, params_of, delta_class, effect, family_of, kernel_name, size_label
from lm_eval_streaming.analysis.hypotheses.extrapolation import EXTRAPOLATION
from lm_eval_streaming.analysis.hypotheses.numerics import (NUMERICAL, BROKEN, UNMEASURED, device_type, judge_kernels,
                                                             listing)

# The three hypotheses, each a list of rule records (analysis.rules); a new one is one entry here.
HYPOTHESES = {h.name: h for h in (COMPRESSION, NUMERICAL, EXTRAPOLATION)}


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
    n = best.run.num_samples
    cache = ", ".join(sorted({f"{e.row.start_size}+{e.row.recent_size}" for e in ref}))
    text = (f"StreamingLLM ({cache} sinks+recent) has a lower NLL than dense attention (through "
            f"{_dense_kernels(d, d.runs)}) in {len(lower)} of {len(ref)} settings ({len(better)} significant, "
            f"{len(worse)} significantly worse"
            + (f"; {len(single)} without an interval: one sample, never called significant" if single else "")
            + f"). Best streaming setting: {best.setting('method')}: perplexity {fmt(best.row.ppl, 2)} vs dense "
              f"{fmt(dense.ppl if dense else None, 2)}, ΔNLL {signed(best.delta)}{spread(best.row.delta_nll_ci, n)} "
              f"nats/token, Δaccuracy {signed(best.row.delta_acc_vs_dense, 4)}{spread(best.row.delta_acc_ci, n)}.")
    if not better:
        text += " The seed's phenomenon (streaming better than dense) is not reproduced with significance in this data."
    return text, bool(better)


# ------------------------------------------------------------------ 适用范围
def _size_scope(d: Data, points=(), bounds: list | None = None) -> str:
    """Model sizes with the effect (streaming significantly better, or a critical point reached), per family."""
    families = defaultdict(list)
    for m in d.models:
        families[family_of(d.model_run[m])].append(m)
    reached = {p.run.model_id for p in points if p.pooled is not None}
    parts = []
    bounds = bounds if bounds is not None else []
    for (family, tc), models in families.items():
        tested = ", ".join(size_label(d.model_run[m]) for m in models)
        eff = [m for m in models
               if m in reached or effect([e for e in d.ref if e.run.model_id == m], d.tol) == "effect"]
        where = f"{family} (trained context {tc})"
        if not eff:
            parts.append(f"{where}: no model size shows the effect (tested: {tested})")
        elif len(models) < 2:
            parts.append(f"{where}: only {tested} tested, the effect is seen there: the size range cannot be bounded")
        else:
            parts.append(f"{where}: >= {size_label(d.model_run[eff[0]])} (tested: {tested})")
            bounds.append(params_of(d.model_run[eff[0]]))
    return "; ".join(parts) + ("; sizes compared only within a family" if len(families) > 1 else "") or "none"


def main_critical(points: list):
    """The one the template cites: reached, from the longest run (most positions past it), then most samples."""
    reached = [p for p in points if p.pooled is not None and p.dense.is_dense]
    return max(reached, key=lambda p: (p.run.max_tokens, p.run.num_samples), default=None)


def _length_scope(d: Data, points: list, main) -> str:
    def as_multiple(run: Run) -> str:
        return f"{run.max_tokens} ({run.max_tokens / run.trained_context:.2g}x)" if run.trained_context \
            else str(run.max_tokens)

    runs = sorted({(r.max_tokens, r.trained_context): r for r in d.runs}.values(),
                  key=lambda r: (r.max_tokens, r.trained_context or 0))
    tested = ", ".join(as_multiple(r) for r in runs) or "none"
    if main is None:
        why = (f"dense's NLL never stays above streaming's by more than {d.tol} nats to the end of a sample"
               if points else "no run has NLL-by-position curves of dense and streaming")
        return f"not reached: {why} (lengths tested, tokens and multiple of the trained context: {tested})"
    significant = any(delta_class(e.row, d.tol) == "better" for e in d.ref)
    others = [p for p in points if p.pooled is not None and p is not main and p.dense.is_dense]
    return (f">= {main.pooled:.0f} tokens" + (" (from the first positions: streaming lower throughout)"
                                              if main.pooled == 0 else "") + (f" ({main.multiple(main.pooled):.2f}x the trained context "
                                              f"{main.run.trained_context})" if main.run.trained_context else "")
            + f": the critical point of {main.run.model_id} {main.run.device}/{main.run.dtype}, "
              f"{main.run.max_tokens}-token samples; per sample: {main.spread()}"
            + (f"; also reached in {len(others)} other run(s) at "
               + ", ".join(f"{p.pooled:.0f} ({p.run.max_tokens} tok)" for p in others[:4]) if others else "")
            + f" (lengths tested: {tested})"
            + ("" if significant else "; no length shows a significant effect (too few samples for an interval, or "
                                      "the interval includes 0)"))


def _hardware_scope(d: Data, points: list, kernels: list) -> str:
    seen, measured = defaultdict(set), defaultdict(set)
    for e in d.ref:
        measured[device_type(e.run.device)].add(e.run.dtype)
    for e in d.ref:
        if delta_class(e.row, d.tol) == "better":
            seen[device_type(e.run.device)].add(f"{e.run.dtype}, {e.run.max_tokens} tok")
    for p in points:
        if p.pooled is not None:
            seen[device_type(p.run.device)].add(f"{p.run.dtype}, past {p.pooled:.0f} of {p.run.max_tokens} tok")
    devices = ("mps", "cuda", "cpu")
    parts = [f"seen on {dev.upper()} ({'; '.join(sorted(seen[dev]))})" for dev in devices if seen[dev]]
    not_seen = [f"{dev.upper()} ({', '.join(sorted(measured[dev]))})" for dev in devices
                if measured[dev] and not seen[dev]]
    untested = [dev.upper() for dev in devices if not measured[dev]]
    parts += [f"not seen on {', '.join(not_seen)}"] if not_seen else []
    parts += [f"not measured: {', '.join(untested)}"] if untested else []
    checked = [j for j in kernels if j.status != UNMEASURED]
    parts.append(f"kernel checks measured for {listing(checked, with_lengths=False)}" if checked
                 else "no dense kernel's numerics were measured")
    return "; ".join(parts) or "no streaming rows"


def _size_line(d: Data, points: list) -> str:
    """模型大小: the smallest size with the effect within a family that has several sizes, else why not."""
    families = defaultdict(list)
    for m in d.models:
        families[family_of(d.model_run[m])].append(m)
    bounded, bounds = [(f, ms) for f, ms in families.items() if len(ms) >= 2], []
    scope = _size_scope(d, points, bounds)
    if not bounded:
        return f"无法判定 cannot decide: {scope}; next: {step_ref('size')}"
    known = [b for b in bounds if b]
    if not known:
        return f"无法判定 cannot decide: {scope}"
    low = min(known)
    return f">= {low / 1e9:.3g}B 参数 ({scope})" if low >= 1e9 else f">= {low / 1e6:.3g}M 参数 ({scope})"


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


REASON_LINES = (("compression", "压缩提升预测能力"), ("numerical", "数值稳定性问题"),
                ("extrapolation", "其他: 位置外推 (超出训练长度)"))


def _reasons(hyps: dict, cause_key: str | None) -> list[tuple[bool, str, str]]:
    """The seed's three 原因分析 lines: exactly one ticked when one hypothesis is supported, else none."""
    out = []
    for key, label in REASON_LINES:
        h = hyps[key]
        if h.verdict == SUPPORTED:
            why = "; ".join(f"{c.name}: {c.brief()}" for c in h.keys)
        elif h.verdict == RULED_OUT:
            why = "ruled out: " + "; ".join(f"{c.outcome or c.name + ' fails'} ({c.brief(110)})" for c in h.failed())
        else:
            steps = h.steps()
            why = ("证据不足 (cannot decide): " + "; ".join(c.name for c in h.undecided())
                   + (f"; next: {step_ref(steps[0])}" if steps else ""))
        out.append((key == cause_key, label, why + (f" [where: {h.scope}]" if h.scope else "")))
    return out


def analyze(runs: list[Run], tolerance: float = TOLERANCE, recall_points=()) -> Analysis:
    """Judge the three hypotheses on typed runs (``records.load_runs``); recall points (``recall.load_recall_results``)
    make the practical meaning cite the measured stop distances, or say that recall was not measured. Runs of
    several model families (``data.family_of``) are judged family by family, never pooled (analysis.families)."""
    from lm_eval_streaming.analysis.recall import practical_meaning

    groups = split_families(list(runs))
    if len(groups) < 2:
        return analyze_family(runs, tolerance, recall_points)
    per = {label: analyze_family(rs, tolerance, None) for label, rs in groups.items()}
    d = Data(list(runs), tolerance)
    points = [p for a in per.values() for p in a.critical if p.dense.is_dense]
    return combine(per, d, _size_line(d, points), practical_meaning(recall_points), CAUSES, REASON_LINES,
                   _not_measured(d))


def analyze_family(runs: list[Run], tolerance: float = TOLERANCE, recall_points=()) -> Analysis:
    """The verdict on the runs of one model family (all of ``runs`` taken as one); ``recall_points=None``: the
    practical meaning without the recall sentence (the analysis over families adds it once)."""
    from lm_eval_streaming.analysis.recall import practical_meaning

    d = Data(list(runs), tolerance)
    text, reproduced = phenomenon(d)
    hyps = {name: h.judge(d) for name, h in HYPOTHESES.items()}
    supported = [k for k, h in hyps.items() if h.verdict == SUPPORTED]
    ruled = [k for k, h in hyps.items() if h.verdict == RULED_OUT]
    open_ = [k for k, h in hyps.items() if h.verdict == OPEN]
    cause_key = supported[0] if len(supported) == 1 else None
    every_point = critical_points(d)
    points = [p for p in every_point if p.dense.is_dense]  # dense against streaming: the critical point proper
    main = main_critical(points)
    if main is not None:
        text += (f" Critical point: dense's NLL exceeds streaming's by more than {d.tol} nats/token and stays above "
                 f"from {main.text()} on ({main.run.max_tokens}-token samples; per sample: {main.spread()}).")
    notes = _not_measured(d)
    if notes:
        text += " " + " ".join(notes)
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
    evidence += [f"rules out {hyps[k].label}: {c.name}: {c.outcome or 'fails'} — {c.evidence}"
                 for k in ruled for c in hyps[k].failed()[:2]]
    summary = []
    for h in hyps.values():
        line = f"- **{h.label}**: {h.verdict}" + (f" ({h.scope})" if h.scope else "")
        if h.verdict == RULED_OUT:
            line += " — by: " + "; ".join(f"{c.name} ({c.outcome or 'fails'})" for c in h.failed())
        elif h.verdict == OPEN:
            line += " — cannot decide: " + "; ".join(c.name for c in h.undecided())
            steps = h.steps()
            line += f"; next: {step_ref(steps[0])}" if steps else ""
        summary.append(line)
    kernels = judge_kernels(d)
    scope = {"model size": _size_line(d, points), "sequence length": _length_scope(d, points, main),
             "hardware": _hardware_scope(d, points, kernels)}
    meaning = _meaning(d, cause_key, hyps) + ("" if recall_points is None else " " + practical_meaning(recall_points))
    return Analysis(runs=d.runs, hypotheses=hyps, phenomenon=text, cause=cause, cause_key=cause_key,
                    cause_evidence=evidence, scope=scope, meaning=meaning, summary="\n".join(summary),
                    tolerance=tolerance, reasons=_reasons(hyps, cause_key), critical=every_point, critical_main=main,
                    kernels=kernels, notes=notes)


def _not_measured(d: Data) -> list[str]:
    """Sentences on what the rows did not measure and what the verdict therefore uses."""
    out = []
    no_acc = [e for e in d.entries if e.row.acc is None]
    if no_acc:
        out.append(f"Accuracy was not measured in {len(no_acc)} of {len(d.entries)} rows: the verdicts use NLL alone.")
    rolling = [r for r in d.runs if ROLLING in (r.sample_spec or "")]
    if rolling:
        per_byte = sum(PER_BYTE in (r.sample_spec or "") for r in rolling)
        out.append(f"{len(rolling)} run(s) are lm-eval rolling perplexity tasks (NLL per document, per token"
                   + (f"; per byte in {per_byte}: their tokenizer could not be loaded" if per_byte else "")
                   + f"): they have no NLL by position, so no critical point and no split beyond the trained "
                     f"context; the project's {POSITION_TASK} tasks measure those.")
    return out
