"""The cache policy: which past tokens a query sees, at which positions, and what the cache keeps.

A policy is a small frozen dataclass, one subclass per method, registered by
name (``lm_eval_streaming/core/methods/``, which also looks them up). Everything else asks the policy instead
of comparing method names, so adding a method is one new class and its tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from lm_eval_streaming.options import DEFAULT_RECENT_SIZE, DEFAULT_START_SIZE, as_int

__all__ = ["CachePolicy", "register_policy"]

_REGISTRY: dict[str, type["CachePolicy"]] = {}


def register_policy(cls: type["CachePolicy"]) -> type["CachePolicy"]:
    """Class decorator: make a policy available by its ``method`` name."""
    _REGISTRY[cls.method] = cls
    return cls


@dataclass(frozen=True)
class CachePolicy:
    """Base class. Subclasses set the class attributes and override what differs."""

    start_size: int = DEFAULT_START_SIZE
    recent_size: int = DEFAULT_RECENT_SIZE

    method: ClassVar[str] = ""
    full_attention: ClassVar[bool] = False  # every earlier token at true positions (the dense baseline)
    uses_cache: ClassVar[bool] = True  # False: every position re-encodes its window (no KV cache)
    min_recent: ClassVar[int] = 0
    uses_position_slots: ClassVar[bool] = True  # keeps entries by position (layers of their own window supported)

    def __post_init__(self):
        object.__setattr__(self, "start_size", as_int("start_size", self.start_size, 0))
        object.__setattr__(self, "recent_size", as_int("recent_size", self.recent_size, self.min_recent))

    @property
    def budget(self) -> int:
        """Past tokens a query may see (the KV cache size, without the current token)."""
        return self.start_size + self.recent_size

    @property
    def sinks(self) -> int:
        """Leading tokens kept for ever (attention sinks)."""
        return 0

    @property
    def recent(self) -> int | None:
        """Most recent tokens kept; None means all of them."""
        return self.budget

    @property
    def needs_rotary(self) -> bool:
        """Whether the attention re-rotates queries (positional shift), so the model needs linear RoPE."""
        return False

    def key_mask(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        """[Q, K] bool: query at true position q_pos[i] may attend key k_pos[j]."""
        q = q_pos[:, None]
        k = k_pos[None, :]
        allowed = k <= q
        if self.recent is not None:
            allowed &= (k < self.sinks) | (k >= q - self.recent)
        return allowed

    def sink_query_position(self, q_pos: torch.Tensor) -> torch.Tensor | None:
        """Position a query takes when it scores the sink keys; None: its true position."""
        return None

    def retained(self, n_seen: int) -> tuple[int, int]:
        """(sinks, recent) entries the cache keeps after ``n_seen`` tokens."""
        if self.recent is None:
            return n_seen, 0
        sinks = min(self.sinks, n_seen)
        return sinks, min(self.recent, n_seen - sinks)

    def record_sizes(self) -> tuple[int, int | None]:
        """(start_size, recent_size) as results record them."""
        return self.start_size, self.recent_size

    def describe(self) -> str:
        return f"{self.method}-w{self.budget}"
