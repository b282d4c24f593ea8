"""StreamingLLM (arXiv 2309.17453): attention sinks + a recent window, positions by cache slot."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lm_eval_streaming.core.policy import CachePolicy, register_policy
from lm_eval_streaming.options import as_bool


@register_policy
@dataclass(frozen=True)
class StreamingLLM(CachePolicy):
    """Keeps the first ``start_size`` tokens (sinks) and the last ``recent_size`` tokens.

    With the positional shift a query at true position t sits at cache slot
    ``min(t, start_size + recent_size)``: recent keys keep their true distance
    (the window is contiguous), sink j is seen at distance ``min(t, S + R) - j``.
    ``position_shift=False`` keeps the same tokens at their TRUE distances (sink j at t - j),
    what NVIDIA/kvpress's StreamingLLMPress does: the ablation that separates "which tokens
    are kept" from "at which distances the sinks are seen".
    """

    position_shift: bool = True

    method = "streaming_llm"
    min_recent = 1

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "position_shift", as_bool("position_shift", self.position_shift))

    @property
    def sinks(self) -> int:
        return self.start_size

    @property
    def recent(self) -> int:
        return self.recent_size

    @property
    def needs_rotary(self) -> bool:
        return self.position_shift

    def sink_query_position(self, q_pos: torch.Tensor) -> torch.Tensor | None:
        if not self.sinks or not self.position_shift:
            return None
        return torch.clamp(q_pos, max=self.sinks + self.recent)

    def describe(self) -> str:
        return f"streaming_llm-s{self.start_size}-r{self.recent_size}" + ("" if self.position_shift else "-noshift")
