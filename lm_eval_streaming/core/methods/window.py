"""Window attention without sinks, same cache budget: the paper's failing baseline."""

from __future__ import annotations

from dataclasses import dataclass

from lm_eval_streaming.core.policy import CachePolicy, register_policy
from lm_eval_streaming.options import StreamingArgError


@register_policy
@dataclass(frozen=True)
class Window(CachePolicy):
    """The last ``start_size + recent_size`` tokens, positions by cache slot (a window is contiguous,
    so slot distances equal true distances: no re-rotation is needed)."""

    method = "window"

    def __post_init__(self):
        super().__post_init__()
        if self.budget < 1:
            raise StreamingArgError(f"start_size + recent_size = {self.budget} for method={self.method}: "
                                    "expected at least 1")
