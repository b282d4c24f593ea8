"""Sliding window with re-computation: every token re-encodes its window from scratch (the slow oracle)."""

from __future__ import annotations

from dataclasses import dataclass

from lm_eval_streaming.core.policy import register_policy
from lm_eval_streaming.core.methods.window import Window


@register_policy
@dataclass(frozen=True)
class SlidingRecompute(Window):
    """The last ``start_size + recent_size`` tokens, re-encoded at positions 0..W for every query."""

    method = "sliding_recompute"
    uses_cache = False
