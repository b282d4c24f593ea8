"""The markdown report of an analysis: verdicts, the conclusion template, every criterion with its numbers,
figures and the data table ("n/a" where a value was not measured)."""

from __future__ import annotations

from pathlib import PurePath
from typing import Iterable
from urllib.parse import quote

from lm_eval_streaming.analysis.base import (CAUSAL_TOL, HUGE_ATTN_SCORE, HUGE_LOGIT, HW_TOLERANCE, KERNEL_SHARE, Analysis, fmt, interval,
                           signed)
from lm_eval_streaming.analysis.data import Scored, nonfinite

COLUMNS = ("run", "samples", "model", "device", "dtype", "tokens", "method", "kernel", "ppl", "acc", "ΔNLL [CI]", "Δacc",
           "vs dense",
           "kernel error (mean)", "probe max abs Δlogit", "non-finite", "max abs logit")


def run_name(run) -> str:
    """Which run a row comes from: its experiment, or its result file."""
    return run.experiment or (PurePath(run.source).name if run.source else "n/a")


def figure_link(path: str) -> str:
    """A markdown image whose target survives spaces and other specials in the path (percent-encoded)."""
    posix = PurePath(path).as_posix()
    return f"![{PurePath(path).stem}]({quote(posix)})"


def _cells(e: Scored) -> list[str]:
    run, row = e.run, e.row
    ke, probe, bad = row.kernel_error, row.causality, nonfinite(row)
    return [run_name(run), str(run.num_samples), run.model_id, run.device, run.dtype, str(run.max_tokens), row.label(),
            row.attn_implementation or "n/a", fmt(row.ppl, 2), fmt(row.acc, 4),
            "" if row.delta_nll_vs_dense is None else signed(row.delta_nll_vs_dense) + interval(row.delta_nll_ci),
            "" if row.delta_acc_vs_dense is None else signed(row.delta_acc_vs_dense, 4),
            row.delta_reference or "",
            "n/a" if ke is None else f"{ke.mean_abs_dnll:.2g}",
            "n/a" if probe is None else f"{probe.max_abs_dlogit_overall:.2g}",
            "n/a" if bad is None else str(bad), fmt(row.max_abs_logit, 1)]


def _table(a: Analysis) -> str:
    entries = [Scored(run, row) for run in a.runs for row in run.rows]
    entries.sort(key=lambda e: (e.run.model_id, e.run.device, e.run.dtype, e.run.max_tokens, run_name(e.run),
                                not e.row.is_dense,
                                e.row.method, e.row.recent_size or 0, e.row.attn_implementation or ""))
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_cells(e)) + " |" for e in entries]
    return "\n".join(lines)


def render_report(a: Analysis, sources: Iterable[str] = (), figure_links: Iterable[str] = ()) -> str:
    out = ["# StreamingLLM vs dense attention: which hypothesis does the data support?", ""]
    srcs = list(sources)
    if srcs:
        rows = sum(len(r.rows) for r in a.runs)
        out += ["Data: " + ", ".join(f"`{s}`" for s in srcs) + f" ({len(a.runs)} runs, {rows} rows).", ""]
    out += ["## Verdicts", "", a.summary, "",
            "## Conclusion (结论)", "",
            f"**现象 (Phenomenon):** {a.phenomenon}", "",
            f"**原因 (Cause):** {a.cause}", ""]
    if a.cause_evidence:
        out += ["Evidence:", ""] + [f"- {e}" for e in a.cause_evidence] + [""]
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
        out += ["## Figures", ""] + [figure_link(p) for p in links] + [""]
    out += ["## Data", "", _table(a), "",
            f"Thresholds: no change below {a.tolerance} nats/token (set with --tolerance); device/dtype spread <= "
            f"{HW_TOLERANCE}; a dense kernel is broken when its causality probe exceeds {CAUSAL_TOL:g} (float32 noise "
            f"is ~1e-5), its mean kernel error exceeds {KERNEL_SHARE:g} x the streaming advantage in the same run (the "
            "tolerance where there is none), or it produced NaN/Inf; huge |logit| > "
            f"{HUGE_LOGIT:g}, huge |attention score| > {HUGE_ATTN_SCORE:g} (informational). ΔNLL = NLL(row) - "
            "NLL(dense row named in 'vs dense') on the same samples; negative = better than dense. n/a = not measured.",
            ""]
    return "\n".join(out)
