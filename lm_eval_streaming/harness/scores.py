"""What the scoring loop hands back to lm-eval.

lm-eval passes a model's answer to a task's ``process_results`` untouched, so a
``float`` subclass can carry token-level statistics next to the log-likelihood
that every lm-eval model returns. Tasks read the extras when present; other
models' plain floats still get the standard metrics.
"""

from __future__ import annotations

from lm_eval_streaming.records.metrics import REGIONS, context_region

# Buckets of the NLL by absolute position relative to the model's trained context L
# (``max_position_embeddings``), as records.metrics defines the regions: below 0.9 L, around it, beyond 1.1 L.
CONTEXT_BUCKETS = tuple(f"{region}_ctx" for region in REGIONS)


def context_bucket(position: int, trained_context: int | None) -> str | None:
    """The bucket of a position; None when the trained context is unknown (the bucket metrics are then NaN)."""
    region = context_region(position, trained_context)
    return None if region is None else f"{region}_ctx"


class RollingResult(float):
    """Total log-likelihood of a document (a float), plus token statistics.

    Attributes:
        n_tokens: tokens scored.
        n_correct: tokens whose top-1 prediction was right.
        nll_sum: sum of finite per-token NLLs (nats).
        n_nonfinite: tokens whose NLL was NaN or Inf (left out of ``nll_sum``).
        bucket_nll: {bucket: (nll_sum, count)} for ``CONTEXT_BUCKETS``.
        trained_context: the model's ``max_position_embeddings`` (or None).
    """

    def __new__(cls, loglikelihood: float, **stats):
        obj = super().__new__(cls, loglikelihood)
        obj.n_tokens = int(stats.get("n_tokens", 0))
        obj.n_correct = int(stats.get("n_correct", 0))
        obj.nll_sum = float(stats.get("nll_sum", -loglikelihood))
        obj.n_nonfinite = int(stats.get("n_nonfinite", 0))
        obj.bucket_nll = dict(stats.get("bucket_nll", {}))
        obj.trained_context = stats.get("trained_context")
        return obj

    def __reduce__(self):
        # Keep the extras through pickling (accelerate gathers results across processes).
        return (_rebuild, (float(self), self.stats()))

    def stats(self) -> dict:
        return {
            "n_tokens": self.n_tokens,
            "n_correct": self.n_correct,
            "nll_sum": self.nll_sum,
            "n_nonfinite": self.n_nonfinite,
            "bucket_nll": self.bucket_nll,
            "trained_context": self.trained_context,
        }


def _rebuild(value: float, stats: dict) -> RollingResult:
    return RollingResult(value, **stats)
