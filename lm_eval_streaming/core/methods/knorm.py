"""Key-norm (Devoto et al. 2024, arXiv 2406.11430): keep the keys with the smallest L2 norm, which
the paper finds are the ones attended most. Needs no attention probabilities."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lm_eval_streaming.core.eviction import ScoredPolicy
from lm_eval_streaming.core.policy import register_policy

# Significant bits the norms are compared at: the keys' dtype's, at most this many (float32 keys).
MAX_NORM_BITS = 20


def norm_bits(dtype: torch.dtype) -> int:
    """Significant bits of a key norm that decide (float32: 20, float16: 11, bfloat16: 8)."""
    return min(1 - math.frexp(torch.finfo(dtype).eps)[1] + 1, MAX_NORM_BITS)  # eps = 2**-(significand bits - 1)


def rounded_norm(keys: torch.Tensor) -> torch.Tensor:
    """[..., D] -> [...]: the float32 L2 norm of each key, rounded (half to even) to ``norm_bits`` significant bits."""
    norm = keys.float().norm(dim=-1)
    exponent = torch.floor(torch.log2(norm.clamp_min(torch.finfo(torch.float32).tiny)))
    step = torch.exp2(exponent + 1 - norm_bits(keys.dtype))
    return torch.round(norm / step) * step


@register_policy
@dataclass(frozen=True)
class KeyNorm(ScoredPolicy):
    """``start_size`` sinks, then per (layer, KV head) the ``recent_size`` keys of smallest L2 norm (of the
    whole key: rotary embeddings preserve it, so the true-position and shifted keys agree). The rule, to
    reproduce it: each key's float32 norm rounded to 20 significant bits (float32 keys; float16 11, bfloat16
    8: the dtype's own), the smallest kept; equal rounded norms keep the later key."""

    method = "knorm"
    observes = False

    def prune_score(self, score: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        # Norms equal but for rounding (a repeated token in the first layer: the same key, only rotated, its norm
        # ~1e-7 apart) tie at 20 bits (relative 2**-20 ~ 1e-6), so the tie rule and not the batch's float32
        # rounding decides; norms further apart than that (a relative 2.9e-5 on SmolLM2) are ranked by value.
        return -rounded_norm(keys)
