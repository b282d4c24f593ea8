"""The markdown report of an analysis."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from .verdict_base import (Analysis, HUGE_ATTN_SCORE, HUGE_LOGIT, HW_TOLERANCE, TOLERANCE, _ci, _f, _is_dense,
                           _nonfinite, _signed)


# ------------------------------------------------------------------ report
def _table(d_rows: list[dict]) -> str:
    head = ("| model | device | dtype | tokens | method | sinks+recent | ppl | acc | ΔNLL vs dense [CI] | Δacc | "
            "non-finite | max abs logit |\n|---|---|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    key = lambda r: (str(r.get("model_id")), str(r.get("device")), str(r.get("dtype")), r.get("max_tokens") or 0,
                     r.get("method") != "dense", str(r.get("method")), r.get("recent_size") or 0)
    for r in sorted(d_rows, key=key):
        cache = "all" if _is_dense(r) else f"{r.get('start_size')}+{r.get('recent_size')}"
        lines.append(
            f"| {r.get('model_id')} | {r.get('device')} | {r.get('dtype')} | {r.get('max_tokens')} | {r.get('method')} "
            f"| {cache} | {_f(r.get('ppl'), 2)} | {_f(r.get('acc'), 4)} | "
            f"{'' if _is_dense(r) else _signed(r.get('delta_nll_vs_dense')) + _ci(r.get('delta_nll_ci'))} | "
            f"{'' if _is_dense(r) else _signed(r.get('delta_acc_vs_dense'), 4)} | {_nonfinite(r)} | "
            f"{_f(r.get('max_abs_logit'), 1)} |")
    return "\n".join(lines)


def render_report(a: Analysis, sources: Iterable[str] = (), figure_links: Iterable[str] = ()) -> str:
    out = ["# StreamingLLM vs dense attention: which hypothesis does the data support?", ""]
    srcs = list(sources)
    if srcs:
        out += ["Data: " + ", ".join(f"`{s}`" for s in srcs) + f" ({len(a.rows)} rows).", ""]
    out += ["## Verdicts", "", a.summary, "",
            "## Conclusion (结论)", "",
            f"**现象 (Phenomenon):** {a.phenomenon}", "",
            f"**原因 (Cause):** {a.cause}", ""]
    ev = getattr(a, "cause_evidence", [])
    if ev:
        out += ["Evidence:", ""] + [f"- {e}" for e in ev] + [""]
    out += ["**适用范围 (Scope):**", "",
            f"- 模型规模 model size: {a.scope['model size']}",
            f"- 序列长度 sequence length: {a.scope['sequence length']}",
            f"- 硬件 hardware (MPS / CUDA / CPU): {a.scope['hardware']}", "",
            f"**实际意义 (Practical meaning):** {a.meaning}", "",
            "## Judgement rules, criterion by criterion", ""]
    for h in a.hypotheses.values():
        out += [f"### {h.label}: {h.verdict}", ""]
        for c in h.criteria:
            tag = " (key)" if c.key else "" if c.required else " (informational)"
            out.append(f"- [{c.status}] {c.name}{tag}: {c.evidence}")
        out.append("")
    links = list(figure_links)
    if links:
        out += ["## Figures", ""] + [f"![{Path(p).stem}](<{p}>)" for p in links] + [""]  # <..>: paths with spaces
    out += ["## Data", "", _table(a.rows), "",
            f"Thresholds: no change below {TOLERANCE} nats/token (set with --tolerance), device/dtype spread "
            f"<= {HW_TOLERANCE}, huge |logit| > {HUGE_LOGIT:g}, huge |attention score| > {HUGE_ATTN_SCORE:g}. "
            "ΔNLL = NLL(method) - NLL(dense) on the same samples; negative = better than dense.", ""]
    return "\n".join(out)
