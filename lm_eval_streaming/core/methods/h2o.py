"""H2O, heavy-hitter oracle (Zhang et al. 2023, arXiv 2306.14048): keep the keys with the largest
attention accumulated over the queries so far, plus the most recent tokens."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lm_eval_streaming.core.eviction import ScoredPolicy, group_sum
from lm_eval_streaming.core.policy import register_policy


@register_policy
@dataclass(frozen=True)
class H2O(ScoredPolicy):
    """``start_size`` sinks, then ``recent_size`` split as the paper does, half and half: the last
    ``recent_size - recent_size // 2`` tokens always, and the ``recent_size // 2`` heavy hitters among the
    older ones. Scores per (layer, KV head): the probabilities every query gave the key since it entered,
    summed over queries and over the query heads that share the KV head (per head without GQA)."""

    method = "h2o"

    @property
    def heavy(self) -> int:
        return self.recent_size // 2

    def forced_recent(self) -> int:
        return self.recent_size - self.heavy

    def accumulate(self, score: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        return score + group_sum(probs, score.shape[1])
