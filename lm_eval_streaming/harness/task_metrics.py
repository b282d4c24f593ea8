"""Metrics of the streaming perplexity tasks (``tasks/streaming_ppl``, ``tasks/streaming_pg19``).

``process_results`` returns lm-eval's standard ``loglikelihood_rolling`` metrics
for every model, computed as lm-eval's own ``ConfigurableTask.process_results``
does, and adds token-level metrics when the model's answer is a
:class:`lm_eval_streaming.harness.scores.RollingResult`.

Per-document items and their aggregation (all named in each task's ``metric_list``):

==================== ============================== ===========================================
metric               item per document              aggregation
==================== ============================== ===========================================
word_perplexity      (loglikelihood, words)         lm-eval ``weighted_perplexity``
byte_perplexity      (loglikelihood, bytes)         lm-eval ``weighted_perplexity``
bits_per_byte        (loglikelihood, bytes)         lm-eval ``bits_per_byte``
token_perplexity     (nll_sum, finite tokens)       exp(sum nll / sum tokens)
token_accuracy       (correct, tokens)              sum correct / sum tokens
nll_below_ctx ...    (bucket nll_sum, bucket count) sum nll / sum count (NaN if no tokens)
nonfinite_tokens     count                          sum
==================== ============================== ===========================================

Standard errors. lm-eval computes ``<metric>_stderr`` only for aggregations it
knows (``mean``, and a fixed list it bootstraps); a custom aggregation gets
"N/A". Token-weighted aggregates are ratios of sums, so their standard error is
computed here, by linearization of the ratio with documents as clusters (the
usual delta-method / cluster-robust estimator; with equal token counts per
document it equals lm-eval's ``mean_stderr`` of the per-document values). It
reaches lm-eval's tables through companion metrics: ``process_results`` emits
``token_perplexity_stderr`` (same items as ``token_perplexity``) right after
``token_perplexity``, and its aggregation returns the standard error. lm-eval
stores a metric's aggregate under ``"<name>,<filter>"``, so the companion's value
lands under ``"token_perplexity_stderr,none"``, the key lm-eval reads as the
stderr of ``token_perplexity`` (it first writes "N/A" there for
``token_perplexity``, which the companion, aggregated after it, overwrites). The
tables skip names ending in ``_stderr``; results JSON also gets a harmless
``token_perplexity_stderr_stderr: "N/A"``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from lm_eval_streaming.records.metrics import ratio_of_sums
from lm_eval_streaming.records.metrics import ratio_stderr as _ratio_stderr
from lm_eval_streaming.harness.scores import CONTEXT_BUCKETS, RollingResult

NA = "N/A"  # what lm-eval reports for a stderr it cannot compute

STANDARD_METRICS = ("word_perplexity", "byte_perplexity", "bits_per_byte")
BUCKET_METRICS = tuple(f"nll_{bucket}" for bucket in CONTEXT_BUCKETS)
TOKEN_METRICS = (
    "token_perplexity",
    "token_perplexity_stderr",
    "token_accuracy",
    "token_accuracy_stderr",
    *BUCKET_METRICS,
    "nonfinite_tokens",
)


def count_words(text: str) -> int:
    """Words as lm-eval counts them for ``word_perplexity``."""
    return len(re.split(r"\s+", text))


def count_bytes(text: str) -> int:
    """UTF-8 bytes as lm-eval counts them for ``byte_perplexity`` / ``bits_per_byte``."""
    return len(text.encode("utf-8"))


def process_results(doc: dict, results: Sequence[float]) -> dict:
    """lm-eval ``process_results`` for a ``loglikelihood_rolling`` task whose target is ``doc["text"]``."""
    (answer,) = results
    text = doc["text"]
    loglikelihood = float(answer)
    words = count_words(text)
    n_bytes = count_bytes(text)
    out = {
        "word_perplexity": (loglikelihood, words),
        "byte_perplexity": (loglikelihood, n_bytes),
        "bits_per_byte": (loglikelihood, n_bytes),
    }
    if isinstance(answer, RollingResult):
        out.update(token_items(answer))
    return out


def token_items(result: RollingResult) -> dict:
    """Per-document items of the token metrics (see the module docstring).

    Order matters: each ``*_stderr`` companion follows its metric.
    """
    n_finite = result.n_tokens - result.n_nonfinite
    nll = (float(result.nll_sum), int(n_finite))
    acc = (int(result.n_correct), int(result.n_tokens))
    items = {
        "token_perplexity": nll,
        "token_perplexity_stderr": nll,
        "token_accuracy": acc,
        "token_accuracy_stderr": acc,
    }
    for bucket in CONTEXT_BUCKETS:
        nll_sum, count = result.bucket_nll.get(bucket, (0.0, 0))
        if count:  # a bucket the document never reached is left out
            items[f"nll_{bucket}"] = (float(nll_sum), int(count))
    items["nonfinite_tokens"] = int(result.n_nonfinite)
    return items


# --------------------------------------------------------------------------- aggregations


def ratio_stderr(items) -> float | str:
    """records.metrics' cluster standard error, "N/A" (as lm-eval writes it) for fewer than two documents."""
    se = _ratio_stderr(items)
    return NA if se is None else se


def agg_token_perplexity(items) -> float:
    """exp(total NLL / total finite tokens)."""
    return math.exp(ratio_of_sums(items))


def agg_token_perplexity_stderr(items) -> float | str:
    """Delta method: se(exp(r)) = exp(r) * se(r)."""
    se = ratio_stderr(items)
    if isinstance(se, str):
        return se
    return math.exp(ratio_of_sums(items)) * se


def agg_token_accuracy(items) -> float:
    """Correct next-token predictions / tokens."""
    return ratio_of_sums(items)


def agg_token_accuracy_stderr(items) -> float | str:
    return ratio_stderr(items)


def agg_bucket_nll(items) -> float:
    """Mean NLL per token of a position bucket, token-weighted; NaN when the bucket is empty."""
    return ratio_of_sums(items)


def agg_sum(items) -> int:
    return int(sum(items))
