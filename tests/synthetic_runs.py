"""Typed runs built from a per-token NLL function, for the verdict tests: every number a row carries (means,
deltas, buckets) is computed here by brute force from the function, independently of the code under test."""

from __future__ import annotations

import math

from lm_eval_streaming.records import Buckets, CausalityStats, Interval, KernelErrorStats, Row, Run

STEP = 32  # each synthetic token stands for STEP tokens: keeps the fake fast
REL_EDGES = [0.0, 0.25, 0.5, 0.75, 0.9, 1.1, 1.25, 1.5, 2.0, 3.0, 4.0]
CI_HALF = 0.02  # the paired-difference interval half-width of every synthetic streaming row


def buckets(values, positions, edges) -> Buckets:
    """Token-weighted mean per [edges[i], edges[i+1]) (None when empty), counts in real tokens."""
    nll, count = [], []
    for lo, hi in zip(edges, edges[1:]):
        inside = [v for v, p in zip(values, positions) if lo <= p < hi]
        nll.append(sum(inside) / len(inside) if inside else None)
        count.append(len(inside) * STEP)
    return Buckets([float(e) for e in edges], nll, count)


def clean_numerics(run_args: dict, kernel: str) -> dict:
    """Measured and clean: what a healthy float32 dense kernel records."""
    return {"nan_logits": 0, "inf_logits": 0, "nonfinite_tokens": 0, "max_abs_logit": 25.0,
            "kernel_error": KernelErrorStats(f"lm_eval_streaming/float32/{run_args['device']}", 1e-6, 1e-5, 0),
            "causality": CausalityStats([10, 100], [0.0, 0.0], 0.0)}


def make_run(model_id: str, nll, *, max_tokens: int, trained_context: int, dtype: str = "float32",
             device: str = "cpu", methods=("streaming_llm", "window"), recent_sizes=(252,), num_samples: int = 2,
             dense_kernels=("sdpa",), model_family: str | None = None, model_params: float | None = None,
             numerics=clean_numerics, relative_buckets: bool = True, cell_key: str | None = None,
             ablation: bool = False) -> Run:
    """``nll(model_id, method, recent, kernel, position, run_args)`` gives each token's NLL. ``numerics(run_args,
    kernel)`` gives the measured fields of a dense row (``{}``: nothing measured). Deltas are against the first
    dense kernel. ``ablation``: a streaming_llm row with position_shift=False per recent size, whose NLL is
    ``nll(..., "streaming_llm noshift", ...)``."""
    args = {"model_id": model_id, "max_tokens": max_tokens, "trained_context": trained_context, "dtype": dtype,
            "device": device}
    positions = list(range(0, max_tokens, STEP))
    abs_edges = list(range(0, max_tokens + 256, 256))

    def row(method, recent, kernel, reference, shift=None):
        name = method + (" noshift" if shift is False else "")
        values = [nll(model_id, name, recent, kernel, p, args) for p in positions]
        mean = sum(values) / len(values)
        dense = recent is None
        delta = None if reference is None else mean - reference
        ci = None if delta is None or num_samples < 2 else Interval(delta - CI_HALF, delta + CI_HALF)
        extra = numerics(args, kernel) if dense else {"nan_logits": 0, "inf_logits": 0, "nonfinite_tokens": 0,
                                                      "max_abs_logit": 25.0, "max_abs_attn_score": 40.0,
                                                      "nonfinite_attn_scores": 0}
        return Row(
            method=method, start_size=0 if dense else 4, recent_size=recent, position_shift=shift,
            attn_implementation=kernel if dense else "lm_eval_streaming", ppl=math.exp(mean), acc=0.5 - mean / 20,
            nll_mean=mean, ppl_ci=None, acc_ci=None,
            delta_reference=None if reference is None else dense_kernels[0],
            delta_nll_vs_dense=delta, delta_nll_ci=ci,
            delta_acc_vs_dense=None if delta is None else -delta / 20,
            delta_acc_ci=None if ci is None else Interval(-delta / 20 - 0.01, -delta / 20 + 0.01),
            max_position=max_tokens - 1 if dense else min(max_tokens - 1, 4 + recent),
            exceeded_trained_context=(max_tokens > trained_context) if dense else False,
            nll_by_position=buckets(values, positions, abs_edges),
            nll_by_relative_position=(buckets(values, [p / trained_context for p in positions], REL_EDGES)
                                      if relative_buckets else None),
            nll_curve=buckets(values, positions, abs_edges), **extra)

    rows = [row("dense", None, dense_kernels[0], None)]
    ref = rows[0].nll_mean
    rows += [row("dense", None, k, ref) for k in dense_kernels[1:]]
    rows += [row(m, r, "lm_eval_streaming", ref) for m in methods for r in recent_sizes]
    if ablation:
        rows += [row("streaming_llm", r, "lm_eval_streaming", ref, shift=False) for r in recent_sizes]
    return Run(model_id=model_id, max_tokens=max_tokens, num_samples=num_samples, dtype=dtype, device=device,
               chunk_size=512, rows=rows, model_family=model_family, model_params=model_params,
               trained_context=trained_context, versions={"torch": "x"}, machine="test",
               experiment="synthetic" if cell_key else None, cell_key=cell_key)
