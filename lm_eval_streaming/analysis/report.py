"""The markdown report of an analysis: verdicts, the conclusion template, every criterion with its numbers,
figures and the data table ("n/a" where a value was not measured)."""

from __future__ import annotations

from pathlib import PurePath
from typing import Iterable
from urllib.parse import quote

from lm_eval_streaming.analysis.base import (CAUSAL_TOL, HUGE_ATTN_SCORE, HUGE_LOGIT, HW_TOLERANCE, KERNEL_SHARE,
                                             MIN_INTERVAL_DOCS, OPEN, RULED_OUT, STEPS, UNDECIDED, Analysis, fmt,
                                             code, signed, spread, step_ref, wrap)
from lm_eval_streaming.analysis.first_screen import SEED, first_screen, next_step, open_steps
from lm_eval_streaming.analysis.critical import smoothing_text
from lm_eval_streaming.analysis.families import default_model_note, effect_seen, every_model, title
from lm_eval_streaming.analysis.hypotheses.numerics import BROKEN, CLEAN, UNMEASURED
from lm_eval_streaming.analysis.data import Data, Scored, kernel_name, nonfinite, samples_text

GLOSSARY = (("现象描述", "what was observed"), ("原因分析", "cause"), ("压缩提升预测能力", "compression improves prediction"),
            ("数值稳定性问题", "numerical problem (of dense)"), ("其他: 位置外推 (超出训练长度)",
                                                      "other: position extrapolation (past the trained length)"),
            ("适用范围", "where it holds"), ("模型大小 / 序列长度 / 硬件限制", "model size / sequence length / hardware"),
            ("实际意义", "what it means in practice"), ("证据不足, 无法判定", "not enough evidence, cannot decide"),
            ("参数", "parameters"))

COLUMNS = ("run", "samples", "model", "device", "dtype", "tokens", "method", "kernel", "ppl", "acc [CI]", "ΔNLL [CI]", "Δacc",
           "vs dense",
           "kernel error (mean)", "probe max abs Δlogit", "non-finite", "max abs logit")


def run_name(run, row=None) -> str:
    """Which run a row comes from: its experiment, or its result file (the row's own when the run was read from
    several: lm-eval folders, one per method; there the folder tells the file apart)."""
    source = (row.source if row is not None else None) or run.source
    return run.experiment or ("/".join(PurePath(source).parts[-3:]) if source else "n/a")


def figure_link(path: str) -> str:
    """A markdown image whose target survives spaces and other specials in the path (percent-encoded)."""
    posix = PurePath(path).as_posix()
    return f"![{PurePath(path).stem}]({quote(posix)})"


def _acc(row, n: int) -> str:
    """Accuracy with its interval kept within [0, 1] (a t interval can reach past the bounds); from fewer than
    MIN_INTERVAL_DOCS documents the interval is not shown."""
    if row.acc is None:
        return "not measured"
    ci = row.acc_ci
    if ci is None or n < MIN_INTERVAL_DOCS:
        return fmt(row.acc, 4)
    return fmt(row.acc, 4) + f" [{max(0.0, ci.low):.4f}, {min(1.0, ci.high):.4f}]"


def _cells(e: Scored) -> list[str]:
    run, row = e.run, e.row
    ke, probe, bad = row.kernel_error, row.causality, nonfinite(row)
    return [run_name(run, row), samples_text(run), run.model_id, run.device, run.dtype, str(run.max_tokens),
            row.label(), kernel_name(row) if row.attn_implementation else "n/a", fmt(row.ppl, 2),
            _acc(row, run.num_samples),
            "" if row.delta_nll_vs_dense is None else signed(row.delta_nll_vs_dense) + spread(row.delta_nll_ci,
                                                                                             run.num_samples),
            "" if row.delta_acc_vs_dense is None else signed(row.delta_acc_vs_dense, 4),
            row.delta_reference or "",
            "n/a" if ke is None else f"{ke.mean_abs_dnll:.2g}",
            "n/a" if probe is None else f"{probe.max_abs_dlogit_overall:.2g}",
            "n/a" if bad is None else str(bad), fmt(row.max_abs_logit, 1)]


def _table(a: Analysis) -> str:
    entries = [Scored(run, row) for run in a.runs for row in run.rows]
    entries.sort(key=lambda e: (e.run.model_id, e.run.device, e.run.dtype, e.run.max_tokens, run_name(e.run, e.row),
                                not e.row.is_dense,
                                e.row.method, e.row.recent_size or 0, e.row.attn_implementation or ""))
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_cells(e)) + " |" for e in entries]
    return "\n".join(lines)


MAX_CELL = 90  # characters of a table cell; longer evidence goes to the details list below the table


def cell(text: str) -> str:
    text = str(text).replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= MAX_CELL else text[: MAX_CELL - 20].rsplit(" ", 1)[0] + " … (details below)"


def table(head, rows) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + [
        "| " + " | ".join(cell(c) for c in r) + " |" for r in rows]


def status_text(c) -> str:
    """What the outcome means, in the rule's own words ("no huge logits or attention scores: ok")."""
    return c.outcome or c.status


SHORT_NAMES = {"compression": "压缩提升预测能力 compression", "numerical": "数值稳定性问题 numerics",
               "extrapolation": "其他: 位置外推 position extrapolation"}  # the template's three lines


def _verdict_table(a: Analysis) -> list[str]:
    """One row per hypothesis; with several families one per hypothesis and family (each judged on its own runs),
    then the line over families."""
    if a.families:
        rows = [[label] + r for label, fa in a.families.items() for r in _verdict_rows(fa)]
        rows.sort(key=lambda r: list(SHORT_NAMES.values()).index(r[1]) if r[1] in SHORT_NAMES.values() else 9)
        out = table(("family", "hypothesis", "verdict", "decided by (key criteria)", "key numbers"), rows) + [""]
        for h in a.hypotheses.values():
            out += wrap(f"- {SHORT_NAMES.get(h.name, h.label)} over families: {h.scope}", "  ")
        return out
    return table(("hypothesis", "verdict", "decided by (key criteria)", "key numbers"), _verdict_rows(a))


def _verdict_rows(a: Analysis) -> list[list[str]]:
    rows = []
    for h in a.hypotheses.values():
        deciding = {RULED_OUT: h.failed(), OPEN: h.undecided()}.get(h.verdict, h.keys)
        by = "; ".join(f"{c.name} ({status_text(c)})" for c in deciding[:1]) or "no key criterion"
        by += f"; +{len(deciding) - 1} more (criteria below)" if len(deciding) > 1 else ""
        numbers = deciding[0].brief(MAX_CELL) if deciding else ""
        if h.verdict == OPEN and h.steps():
            numbers = "next: " + ", ".join(f"step `{s}`" for s in h.steps())
        rows.append([SHORT_NAMES.get(h.name, h.label), h.verdict + (f" ({h.where})" if h.where else ""), by, numbers])
    return rows


def _criteria_table(h) -> list[str]:
    def numbers(c):
        return c.evidence if len(c.evidence) <= MAX_CELL or not c.short else c.short

    out = table(("criterion", "key or side", "outcome", "numbers"),
                [[c.name, "key" if c.key else "side", status_text(c), numbers(c)] for c in h.criteria])
    long = [c for c in h.criteria if len(c.evidence) > MAX_CELL]
    nexts = [c for c in h.criteria if c.status == UNDECIDED and c.next_step]
    if long or nexts:
        out.append("")
    for c in long:
        out += wrap(f"- {c.name}: " + (f"see '{c.see}'" if c.see else c.evidence), "  ")
    for c in nexts:
        out += wrap(f"- to decide '{c.name}': {step_ref(c.step)}", "  ")
    return out


def _kernel_table(a: Analysis) -> list[str]:
    if not a.kernels:
        return ["No dense rows."]
    return table(("device/dtype/kernel", "probe", "kernel error", "whole forward vs float32", "NaN/Inf", "verdict"),
                 [[f"{j.device}/{j.dtype}/{j.kernel}", j.cells["probe"], j.cells["kernel error"],
                   j.cells.get("whole forward", "not measured"), j.cells["NaN/Inf"],
                   {BROKEN: "numerical problem found", CLEAN: "numerical problem not found",
                    UNMEASURED: "not measured"}[j.status]] for j in a.kernels])


def _critical_table(a: Analysis) -> list[str]:
    if not a.critical:
        return ["No run has NLL-by-position curves of dense and streaming on the same buckets."]
    rows = []
    for p in sorted(a.critical, key=lambda p: (p.run.model_id, p.run.device, p.run.dtype, p.run.max_tokens)):
        m = p.multiple(p.pooled)
        rows.append([run_name(p.run), f"{p.run.model_id} {p.run.device}/{p.run.dtype}", str(p.run.max_tokens),
                     str(p.run.num_samples), f"{p.dense.label()} vs {p.streaming.label()}",
                     "not reached" if p.pooled is None else f"{p.pooled:.0f}", "" if m is None else f"{m:.2f}x",
                     p.spread()])
    return table(("run", "model device/dtype", "tokens", "samples", "rows", "critical point (tokens)",
                  "x trained context", "per sample"), rows)


def _template(a: Analysis) -> list[str]:
    """The seed's 结论模板 in its own form."""
    out = wrap("Terms: " + "; ".join(f"{zh} = {en}" for zh, en in GLOSSARY))
    out += ["", "### 现象描述", ""] + wrap(a.phenomenon) + ["", "### 原因分析", ""]
    for ticked, label, why in a.reasons:
        out += wrap(f"- {'☑' if ticked else '□'} {label}: {why}", "  ")
    if not any(t for t, _, _ in a.reasons):
        step = next_step(a)
        out += [""] + wrap("无法判定 (cannot decide): no hypothesis is supported by its key criteria."
                           + (f" Next: {step_ref(step[0])}" if step else ""))
    out += ["", "### 适用范围", ""]
    size = a.scope["model size"]
    out += wrap(f"- 模型大小: {size if size.startswith('无法判定') else size}", "  ")
    out += wrap(f"- 序列长度: {a.scope['sequence length']}", "  ")
    out += wrap(f"- 硬件限制: MPS / CUDA / CPU: {a.scope['hardware']}", "  ")
    out += ["", "### 实际意义", ""] + wrap(a.meaning)
    return out


def _per_family(a: Analysis, render) -> list[str]:
    """``render(a)``, or with several families ``render`` of each family under its name."""
    if not a.families:
        return render(a)
    out = []
    for label, fa in a.families.items():
        out += [f"### {title(label, fa)}", ""] + render(fa) + [""]
    return out[:-1]


def _readable_summary(a: Analysis) -> list[str]:
    ticked = next((label for t, label, _ in a.reasons if t), None)
    cp = a.critical_main
    lines = [f"- Cause: {'☑ ' + ticked if ticked else '无法判定 cannot decide (no hypothesis supported by its key criteria)'}.",
             "- Critical point: " + (f"dense's NLL stays more than {a.tolerance} nats above streaming's from {cp.text()} "
                                     f"on, in {cp.run.max_tokens}-token samples; per sample: {cp.spread()}."
                                     if cp else "not reached in this data.")]
    abl = a.hypotheses["extrapolation"].criterion("ablation")
    if abl is not None:
        lines.append("- Ablation (position_shift=false): " + (f"{status_text(abl)}: {abl.evidence}"
                                                              if abl.status != UNDECIDED else
                                                              f"{abl.evidence}; {step_ref(abl.step)}"))
    lines += [f"- {n}" for n in a.notes]
    if not any(str(r.device).startswith("mps") for r in a.runs):
        lines.append(f"- The seed's setting (Pythia-6.9B, MPS, float16) was not measured here: {step_ref('hardware')}.")
    out = []
    for line in lines:
        out += wrap(line, "  ")
    return out


def _family_summary(fa: Analysis) -> list[str]:
    """One family's summary; where the family shows no effect, its supported hypothesis is not called its cause."""
    lines = _readable_summary(fa)
    if fa.cause_key and not effect_seen(fa) and lines[0].startswith("- Cause: ☑ "):
        lines[:1] = wrap("- Cause: no effect to explain here (streaming not significantly better, no critical point); "
                         f"its key criteria support {lines[0].removeprefix('- Cause: ☑ ')}", "  ")
    return lines


def _next_commands(a: Analysis) -> list[str]:
    """Every open step once, each command printed once (the first screen's is not repeated)."""
    first = next_step(a)
    out = []
    for sid, names in open_steps(a).items():
        s = STEPS[sid]
        note = default_model_note(a, sid) if a.families and s.offline else ""
        out += wrap(f"- `{sid}`: {s.adds}; decides: {'; '.join(names)}{note}", "  ")
        for command, hub in ((s.offline, False), (s.hub, True)):
            if not command or (names == [SEED] and not hub):  # the seed's device: no offline stand-in
                continue
            where = "with a model hub (or on a Mac with `--device mps`)" if hub else "offline"
            if first == (sid, not hub):
                out.append(f"  {where}: the command on the first screen")
            else:
                out += [f"  {where}:", ""] + code(command, "      ") + [""]
    return out or ["Nothing is open: every key criterion of the open hypotheses was decided."]


def render_report(a: Analysis, sources: Iterable[str] = (), figure_links: Iterable[str] = ()) -> str:
    srcs = list(sources)
    d = Data(a.runs, a.tolerance)
    out = first_screen(a, d, srcs) + [""]
    out += ["Below: Next commands · Verdicts · Summary · 结论 (the seed's template) · Criteria · "
            + ("Figures · " if figure_links else "") + "Data", ""]
    out += ["## Next commands", ""] + _next_commands(a) + [""]
    out += ["## Verdicts", ""] + _verdict_table(a) + [""]
    out += wrap("A hypothesis is supported or ruled out by its key criteria only; side criteria inform. "
                "How it judges: docs/verdict.md.") + [""]
    out += ["## Summary", ""] + _per_family(a, _family_summary if a.families else _readable_summary) + [""]
    if a.families:
        out += wrap(f"Over families: {every_model(a.families)}.") + [""]
    out += ["## 结论 (the seed's template)", ""] + _template(a) + [""]
    out += ["## Critical point", ""] + wrap(f"Rule: the first position after which dense's NLL exceeds streaming's by "
                                            f"more than {a.tolerance} nats/token and stays above; smoothing: "
                                            f"{smoothing_text(a.critical) or 'n/a'}.") + [""]
    out += _critical_table(a) + [""]
    out += ["## Numerics per dense kernel", ""] + _per_family(a, _kernel_table) + [""]
    out += ["## Criteria, hypothesis by hypothesis", ""]
    for h in a.hypotheses.values():
        out += [f"### {h.label}: {h.verdict}", ""] + (wrap(f"Over families: {h.scope}.") + [""] if a.families else [])
        out += _criteria_table(h) + [""]
    links = list(figure_links)
    if links:
        out += ["## Figures", ""] + [figure_link(p) for p in links] + [""]
    out += ["## Data", ""] + (wrap("Sources: " + ", ".join(f"`{s}`" for s in srcs) + ".") + [""] if srcs else [])
    out += [_table(a), ""]
    out += wrap(f"Thresholds: no change below {a.tolerance} nats/token (set with --tolerance); device/dtype spread <= "
                f"{HW_TOLERANCE}; a dense kernel is broken when its causality probe exceeds {CAUSAL_TOL:g} (float32 "
                f"noise is ~1e-5), its mean kernel error exceeds {KERNEL_SHARE:g} x the streaming advantage in the same "
                "run (the tolerance where there is none), or it produced NaN/Inf; huge |logit| > "
                f"{HUGE_LOGIT:g}, huge |attention score| > {HUGE_ATTN_SCORE:g} (informational). ΔNLL = NLL(row) - "
                "NLL(dense row named in 'vs dense') on the same samples; negative = better than dense. n/a = not "
                "measured.") + [""]
    return "\n".join(out)
