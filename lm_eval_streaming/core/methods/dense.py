"""Dense: full causal attention over every earlier token, at true positions (the baseline)."""

from __future__ import annotations

from dataclasses import dataclass

from lm_eval_streaming.core.policy import CachePolicy, register_policy


@register_policy
@dataclass(frozen=True)
class Dense(CachePolicy):
    """Sees everything; start_size and recent_size are ignored."""

    method = "dense"
    full_attention = True

    @property
    def recent(self) -> None:
        return None

    def record_sizes(self) -> tuple[int, None]:
        return 0, None

    def describe(self) -> str:
        return "dense"
