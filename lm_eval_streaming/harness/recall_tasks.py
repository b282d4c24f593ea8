"""lm-eval side of the recall tasks: two loglikelihood requests per document, and the metrics.

``streaming_recall_<D>`` (``class: !function utils.RecallTask``): each document
issues two ordinary ``loglikelihood`` requests, so any lm-eval model scores it
(``hf``, ``streaming_hf``, APIs with log-probs):

* idx 0: the passage P given the cue line alone (first copy);
* idx 1: P given everything before its second copy (cue, P, D tokens, cue).

The task is raw text by definition: ``--apply_chat_template`` and few-shot
settings do not change the requests (a warning says so).

``streaming_passkey_<D>`` is a plain YAML ``generate_until`` task; its
``process_results`` is :func:`passkey_results`.
"""

from __future__ import annotations

import logging
import math
import re

from lm_eval.api.instance import Instance
from lm_eval.api.task import ConfigurableTask

from lm_eval_streaming.harness.recall_data import PASSKEY_DEPTHS

log = logging.getLogger(__name__)


class RecallTask(ConfigurableTask):
    """A ConfigurableTask whose documents each issue the two requests above."""

    _warned_template = False

    def __init__(self, config=None, **kwargs):
        config = {k: v for k, v in (config or {}).items() if k != "class"}  # "class" is not a TaskConfig field
        super().__init__(config=config, **kwargs)

    def construct_requests(self, doc, ctx, **kwargs):
        if kwargs.pop("apply_chat_template", False) and not RecallTask._warned_template:
            RecallTask._warned_template = True
            log.warning("streaming_recall scores raw text: --apply_chat_template does not change its requests")
        kwargs.pop("chat_template", None)
        return [
            Instance(request_type="loglikelihood", doc=doc, arguments=(doc["context_first"], doc["continuation"]),
                     idx=0, **kwargs),
            Instance(request_type="loglikelihood", doc=doc, arguments=(doc["context_second"], doc["continuation"]),
                     idx=1, **kwargs),
        ]


def _token_accuracy(loglikelihood) -> float | None:
    """Top-1 accuracy over the continuation's tokens, when the model reports the counts
    (``streaming_hf`` returns a float carrying ``n_tokens`` / ``n_correct``); None otherwise."""
    n_tokens = getattr(loglikelihood, "n_tokens", None)
    n_correct = getattr(loglikelihood, "n_correct", None)
    if not n_tokens or n_correct is None:
        return None
    return n_correct / n_tokens


def recall_results(doc: dict, results) -> dict:
    """Per-document metrics; NLLs in nats per Pythia token of the passage (both copies have the same text).

    recall_gain = NLL(first copy) - NLL(second copy); recall_nll = NLL(second copy); recall_exact = 1 if
    the whole second copy is the model's greedy continuation (lm-eval's is_greedy); recall_acc = next-token
    top-1 accuracy on the second copy, only when the model reports token counts.
    """
    if len(results) != 2:
        raise ValueError(f"streaming_recall document {doc.get('doc_id')}: expected 2 results, got {len(results)}")
    (ll_first, _), (ll_second, greedy_second) = results
    n = int(doc["n_passage_tokens_pythia"])
    first, second = -float(ll_first) / n, -float(ll_second) / n  # NaN stays NaN: never averaged away silently
    out = {
        "recall_gain": first - second,
        "recall_nll": second,
        "first_nll": first,
        "recall_exact": float(bool(greedy_second)) if math.isfinite(second) else math.nan,
    }
    acc = _token_accuracy(ll_second)
    if acc is not None:
        out["recall_acc"] = acc
    return out


def depth_metric(depth_percent: int) -> str:
    return f"exact_match_depth_{int(depth_percent)}"


PASSKEY_METRICS = ("exact_match",) + tuple(depth_metric(d) for d in PASSKEY_DEPTHS)
_NUMBER = re.compile(r"\d+")


def passkey_results(doc: dict, results) -> dict:
    """exact_match: the first number in the answer equals the pass key; also under the document's depth."""
    answer = results[0] if results else ""
    found = _NUMBER.search(answer or "")
    hit = float(found is not None and found.group(0) == str(doc["passkey"]))
    return {"exact_match": hit, depth_metric(doc["depth_percent"]): hit}
