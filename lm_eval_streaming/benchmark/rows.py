"""One benchmark row: score every sample with one setting, timed, with memory and diagnostics;
the paired differences to the run's reference dense row; the kernel checks of a dense row."""

from __future__ import annotations

import math
import threading
import time

import torch

from lm_eval_streaming.core.attention import REFERENCE_KERNEL
from lm_eval_streaming.core.kernel_checks import attention_error, causality_probe, kernel_error
from lm_eval_streaming.records.metrics import bucketize, exceeds_trained_context, position_buckets, position_edges, relative_edges, \
    t_interval
from lm_eval_streaming.records import CausalityStats, KernelErrorStats, Row
from lm_eval_streaming.records.run import AttentionLayerError, ModuleDivergence, WholeForwardStats
from lm_eval_streaming.core.diagnostics import Diagnostics
from lm_eval_streaming.core.scoring import ScoredTokens, resolve_kernel, score_sequences
from lm_eval_streaming.core.sessions import input_device


class _PeakRSS:
    """Samples this process's resident memory in a thread: the peak while a row runs."""

    def __init__(self, interval: float = 0.02):
        import psutil

        self.proc, self.interval, self.peak = psutil.Process(), interval, 0
        self._stop = threading.Event()

    def __enter__(self):
        self.peak = self.proc.memory_info().rss
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)


def _finite_mean(values: torch.Tensor) -> float:
    finite = values[torch.isfinite(values)].double()
    return float(finite.mean()) if len(finite) else math.nan


def score_row(model, samples: list[list[int]], policy, chunk_size: int, num_warmup: int,
              trained_context: int | None, attn_implementation: str | None = None,
              one_call: bool = False, progress=None) -> tuple[Row, list[ScoredTokens]]:
    """Score ``samples`` with ``policy`` (dense: through ``attn_implementation``, None = the model's own
    kernel; ``one_call``: one plain forward per sample): warm-up passes untimed, every scored token timed.
    ``progress`` is called with the number of scored positions after each chunk. The row has no deltas yet."""
    kernel = resolve_kernel(model, policy, attn_implementation)
    device = input_device(model)
    for _ in range(num_warmup):  # untimed: allocation, kernel selection, lazy init
        score_sequences(model, [samples[0][: chunk_size + 1]], policy, chunk_size, attn_implementation=kernel,
                        one_call=one_call)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    diag = Diagnostics()
    scored: list[ScoredTokens] = []
    with _PeakRSS() as rss:
        start = time.perf_counter()
        for seq in samples:
            scored += score_sequences(model, [seq], policy, chunk_size, diag, attn_implementation=kernel,
                                      one_call=one_call, progress=progress)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        elapsed = time.perf_counter() - start
    expected = sum(len(s) - 1 for s in samples)
    n_tokens = sum(len(s.nll) for s in scored)
    if n_tokens != expected or n_tokens == 0:  # never turn an unscored buffer into a number
        raise RuntimeError(f"scored {n_tokens} of {expected} tokens")
    nll = torch.cat([s.nll for s in scored])
    positions = torch.cat([s.positions for s in scored])
    finite = torch.isfinite(nll)
    per_sample_nll = [_finite_mean(s.nll) for s in scored]
    per_sample_acc = [float(s.correct.double().mean()) for s in scored]
    nll_mean = _finite_mean(nll)
    _, nll_ci = t_interval(per_sample_nll)
    acc, acc_ci = t_interval(per_sample_acc)
    by_pos, by_rel, curve = position_buckets(positions, nll, trained_context)
    per_sample_curve = [bucketize(s.positions, s.nll, curve.edges).nll for s in scored]
    if acc_ci is not None:  # a t interval can reach past the bounds an accuracy has
        acc_ci = type(acc_ci)(max(0.0, acc_ci.low), min(1.0, acc_ci.high))
    start_size, recent_size = policy.record_sizes()
    diagnostics = diag.as_dict()
    row = Row(
        method=policy.method, start_size=start_size, recent_size=recent_size, attn_implementation=kernel,
        one_call=one_call if policy.full_attention else None, position_shift=getattr(policy, "position_shift", None),
        evict_every=getattr(policy, "evict_every", None),
        ppl=math.exp(nll_mean), acc=acc, nll_mean=nll_mean,
        ppl_ci=None if nll_ci is None else type(nll_ci)(math.exp(nll_ci.low), math.exp(nll_ci.high)),
        acc_ci=acc_ci, per_sample_nll=per_sample_nll, per_sample_acc=per_sample_acc, scored_tokens=n_tokens,
        tokens_per_s=n_tokens / elapsed, latency_ms_per_token=1000 * elapsed / n_tokens,
        peak_kv_bytes=diagnostics["peak_kv_bytes"], peak_rss_bytes=rss.peak,
        cuda_max_allocated_bytes=torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
        max_position=diagnostics["max_position"],
        exceeded_trained_context=exceeds_trained_context(diagnostics["max_position"], trained_context),
        stream_length=max(len(s) for s in samples),
        nll_by_position=by_pos, nll_by_relative_position=by_rel, nll_curve=curve,
        nll_curve_per_sample=per_sample_curve, nonfinite_tokens=int((~finite).sum()), nan_logits=diagnostics["nan_logits"],
        inf_logits=diagnostics["inf_logits"], max_abs_logit=diagnostics["max_abs_logit"],
        max_abs_attn_score=diagnostics["max_abs_attn_score"], nonfinite_attn_scores=diagnostics["nonfinite_attn_scores"],
    )
    return row, scored


def kernel_error_stats(model, samples, row: Row, scored: list[ScoredTokens], reference, chunk_size: int,
                       trained_context: int | None, progress=None) -> KernelErrorStats:
    """Per-token |dNLL| of a dense row against the reference scores (shared by all dense rows of a run), and
    (kernels other than the reference) every attention call paired with the float32 reference from the same
    q/k/v in one more pass through the row's path (chunked or one call); ``progress(1)`` after each sample."""
    err = kernel_error(model, samples, row.attn_implementation, chunk_size, scored=scored, reference=reference)
    values = torch.cat(err.abs_dnll)
    positions = torch.cat([s.positions for s in scored]).double()
    top = float(positions.max())
    stats = KernelErrorStats(
        reference=err.reference, mean_abs_dnll=err.mean, max_abs_dnll=err.max, nonfinite=err.nonfinite,
        by_position=bucketize(positions, values, position_edges(top)),
        by_relative_position=bucketize(positions / trained_context, values, relative_edges(top / trained_context))
        if trained_context else None,
        float32_weights=err.reference.split("/")[1] == "float32")
    if row.attn_implementation != REFERENCE_KERNEL:
        att, _ = attention_error(model, samples, row.attn_implementation, chunk_size, bool(row.one_call), progress)
        stats.attention_reference, stats.attention_nonfinite = att.reference, att.nonfinite
        stats.attention_mean_abs, stats.attention_max_abs = att.mean, att.max
        stats.attention_layers = [_layer_error(i, att) for i in range(att.sum_abs.shape[0])]
    elif progress is not None:
        progress(len(samples))
    return stats


def _layer_error(layer: int, att) -> AttentionLayerError:
    """One layer of an AttentionError: mean and max |d output| overall and per query-position bucket."""
    count = att.count[layer]
    seen = count > 0
    pos = torch.arange(len(count), dtype=torch.float64)[seen]
    mean = att.sum_abs[layer][seen].double() / count[seen].double()
    edges = position_edges(float(pos.max()) if len(pos) else 0.0)
    worst = [float(att.max_abs[layer][seen][(pos >= lo) & (pos < hi)].max()) if bool(((pos >= lo) & (pos < hi)).any())
             else None for lo, hi in zip(edges, edges[1:])]
    return AttentionLayerError(layer=layer, mean_abs=att.mean_by_layer[layer], max_abs=att.max_by_layer[layer],
                               by_position=bucketize(pos, mean, edges), max_by_position=worst)


def _worst(values) -> float:
    """Largest value; NaN if any is NaN (a NaN logit difference is never "causal")."""
    values = list(values)
    return math.nan if any(math.isnan(v) for v in values) else max(values, default=math.nan)


def causality_stats(model, samples, row: Row, chunk_size: int, samples_probed: int = 1) -> CausalityStats:
    """Causality probe of a dense row's kernel on the first ``samples_probed`` samples (it costs about
    two passes up to each probed position); samples have one length, so the probed positions agree."""
    probes = [causality_probe(model, seq, row.attn_implementation, chunk_size=chunk_size, one_call=bool(row.one_call))
              for seq in samples[:samples_probed]]
    worst = [_worst(values) for values in zip(*(p.max_abs_dlogit for p in probes))]
    return CausalityStats(list(probes[0].positions), worst, _worst(worst), samples_probed=len(probes))


def whole_forward_stats(model, samples, row: Row, scored: list[ScoredTokens], policy,
                        chunk_size: int) -> WholeForwardStats:
    """The row's per-token NLLs (``scored``) against a float32 shadow of the same forward on the same device
    (same method, kernel, chunking or one call), and the first module whose output diverged."""
    from lm_eval_streaming.core.whole_forward import whole_forward_error

    err = whole_forward_error(model, samples, policy, chunk_size, row.attn_implementation, bool(row.one_call),
                              scored=scored)
    values = torch.cat(err.abs_dnll)
    positions = torch.cat([s.positions for s in scored]).double()
    d = err.first_divergence
    by_kind: dict[str, float] = {}
    for m in err.modules:
        if m.calls:
            by_kind[m.kind] = max(by_kind.get(m.kind, 0.0), m.max_rel)
    return WholeForwardStats(
        reference=f"float32 shadow/{err.kernel}/{err.device}", dtype=err.dtype, mean_abs_dnll=err.mean,
        max_abs_dnll=err.max, nonfinite=err.nonfinite, by_position=bucketize(positions, values,
                                                                             position_edges(float(positions.max()))),
        tolerance=err.tolerance, located=err.located,
        first_divergence=None if d is None else ModuleDivergence(d.name, d.kind, d.layer, d.position, d.rel_error),
        max_rel_by_kind=by_kind, attention_located=all(m.skipped == 0 for m in err.modules if m.kind == "attention"))
