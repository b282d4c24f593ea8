"""The benchmark's table: one line per row of a :class:`~lm_eval_streaming.records.Run`; ``n/a`` where a
value was not measured (never 0)."""

from __future__ import annotations

from lm_eval_streaming.records import Interval, Run

NA = "n/a"


def _num(value, fmt: str) -> str:
    return NA if value is None else f"{value:{fmt}}"


def _ci(interval: Interval | None, fmt: str) -> str:
    return NA if interval is None else f"[{interval.low:{fmt}}, {interval.high:{fmt}}]"


def _mib(value) -> str:
    return NA if value is None else f"{value / 2**20:.1f}"


def format_table(run: Run) -> str:
    from tabulate import tabulate

    rows = []
    for r in run.rows:
        delta = "" if r.delta_nll_vs_dense is None else f"{r.delta_nll_vs_dense:+.4f} {_ci(r.delta_nll_ci, '+.4f')}"
        logits = NA if r.nan_logits is None else f"{r.nan_logits}/{r.inf_logits}"
        exceeded = NA if r.exceeded_trained_context is None else ("yes" if r.exceeded_trained_context else "no")
        kerr = "" if r.kernel_error is None else f"{r.kernel_error.mean_abs_dnll:.1e}/{r.kernel_error.max_abs_dnll:.1e}"
        probe = "" if r.causality is None else f"{r.causality.max_abs_dlogit_overall:.1e}"
        wf = r.whole_forward
        whole = "" if wf is None else f"{wf.mean_abs_dnll:.1e}/{wf.max_abs_dnll:.1e}" + (
            "" if wf.first_divergence is None else f", first off: {wf.first_divergence.module} "
            f"@{wf.first_divergence.position}")
        rows.append([
            r.method_label(),
            (r.attn_implementation or NA) + (" @full (1 call)" if r.one_call else ""),
            "all" if r.recent_size is None else f"{r.start_size}+{r.recent_size}",
            f"{r.ppl:.3f}", _ci(r.ppl_ci, ".3f"), f"{r.acc:.4f}", _ci(r.acc_ci, ".4f"), delta,
            _num(r.tokens_per_s, ".1f"), _num(r.latency_ms_per_token, ".2f"), _mib(r.peak_kv_bytes),
            _mib(r.peak_rss_bytes), _mib(r.cuda_max_allocated_bytes), _num(r.max_position, "d"), exceeded, logits,
            _num(r.max_abs_logit, ".1f"), _num(r.max_abs_attn_score, ".1f"), kerr, probe, whole,
        ])
    head = ["method", "kernel", "cache", "ppl", "ppl 95% CI", "acc", "acc 95% CI", "dNLL vs dense [95% CI]",
            "tok/s", "ms/tok", "KV MiB", "RSS MiB", "CUDA MiB", "max pos", "> trained ctx", "NaN/Inf logits",
            "max|logit|", "max|score|", "kernel |dNLL| mean/max", "causality max|dlogit|",
            "whole-forward |dNLL| vs float32 mean/max"]
    reference = next((r.delta_reference for r in run.rows if r.delta_reference), None)
    title = (f"model={run.model_id} tokens={run.max_tokens} samples={run.num_samples} dtype={run.dtype} "
             f"device={run.device} trained_context={run.trained_context} torch={run.versions.get('torch')} "
             f"transformers={run.versions.get('transformers')}; dNLL relative to dense[{reference or NA}]")
    return title + "\n" + tabulate(rows, headers=head, tablefmt="github", disable_numparse=True)
