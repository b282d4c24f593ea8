"""Key-norm (Devoto et al. 2024, arXiv 2406.11430): keep the keys with the smallest L2 norm, which
the paper finds are the ones attended most. Needs no attention probabilities."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lm_eval_streaming.core.eviction import ScoredPolicy
from lm_eval_streaming.core.policy import register_policy


@register_policy
@dataclass(frozen=True)
class KeyNorm(ScoredPolicy):
    """``start_size`` sinks, then per (layer, KV head) the ``recent_size`` keys of smallest L2 norm (of the
    whole key: rotary embeddings preserve it, so the true-position and shifted keys agree), norms compared
    on a grid of 2**-14 of the largest one."""

    method = "knorm"
    observes = False

    def prune_score(self, score: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        norm = keys.float().norm(dim=-1)
        # Norms equal but for rounding (a repeated token in the first layer: the same key, only rotated) must
        # tie, so that the tie rule and not the batch's float32 rounding decides: compare on a grid of
        # 2**-14 of the head's largest norm (rounding is ~1e-7 relative).
        grid = norm.amax(dim=-1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny) * 2.0**-14
        return -torch.round(norm / grid)
