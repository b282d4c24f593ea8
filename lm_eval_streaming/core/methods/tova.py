"""TOVA, token omission via attention (Oren et al. 2024, arXiv 2401.06104): at each pruning drop the keys
the current (last) query attends to least, its probabilities averaged over all heads of the layer."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lm_eval_streaming.core.eviction import ScoredPolicy
from lm_eval_streaming.core.policy import register_policy


@register_policy
@dataclass(frozen=True)
class TOVA(ScoredPolicy):
    """``start_size`` sinks, then the ``recent_size`` entries the last query of the pruning step weighs most.
    One set per layer (every KV head keeps the same entries): the score is the mean over all query heads,
    as the paper does. The newest token competes too, so it can be dropped at once."""

    method = "tova"

    def accumulate(self, score: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        last = probs[:, :, -1, :].mean(dim=1, keepdim=True)  # [B, 1, K]
        return last.expand_as(score)
