"""What scoring observes besides the NLLs: numerics and memory, the evidence that separates position
extrapolation from numerical trouble."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from lm_eval_streaming.core.attention import ScoreStats, numerics


@dataclass
class Diagnostics:
    """Numerics and memory seen while scoring: what separates extrapolation from numerics.

    Attention scores are observable only inside the project's kernel; with another
    kernel (sdpa, eager, ...) they are reported as None: not measured, never 0.
    """

    nan_logits: int = 0
    inf_logits: int = 0
    max_abs_logit: float = 0.0
    # largest query-key position difference attention scored: the position the rotary embedding encodes
    # (StreamingLLM's shift keeps it at most start_size + recent_size however long the stream)
    max_position: int = -1
    max_stream_position: int = -1  # largest true position in the stream (the stream length - 1)
    peak_kv_bytes: int = 0
    scores: ScoreStats = field(default_factory=ScoreStats)
    scores_measured: bool = False

    def observe_logits(self, logits: torch.Tensor) -> None:
        max_abs, n_nan, n_inf = numerics(logits)
        self.max_abs_logit = max(self.max_abs_logit, max_abs)
        self.nan_logits += n_nan
        self.inf_logits += n_inf

    def as_dict(self) -> dict:
        return {
            "nan_logits": self.nan_logits,
            "inf_logits": self.inf_logits,
            "max_abs_logit": self.max_abs_logit,
            "max_abs_attn_score": self.scores.max_abs_score if self.scores_measured else None,
            "nonfinite_attn_scores": self.scores.nonfinite_scores if self.scores_measured else None,
            "max_position": self.max_position,
            "max_stream_position": self.max_stream_position,
            "peak_kv_bytes": self.peak_kv_bytes,
        }

    def observe_cache(self, pos: int, kv_bytes: int, distance: int | None = None) -> None:
        """After ``pos`` tokens of the stream; ``distance``: the largest query-key distance scored (None: the
        keys sit at their true positions and the first is kept, so it is ``pos - 1``)."""
        self.max_stream_position = max(self.max_stream_position, pos - 1)
        self.max_position = max(self.max_position, pos - 1 if distance is None else distance)
        self.peak_kv_bytes = max(self.peak_kv_bytes, kv_bytes)
