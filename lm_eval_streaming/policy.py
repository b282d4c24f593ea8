"""The cache policy: which past tokens a query sees, and at which positions.

Every method sees at most ``start_size + recent_size`` past tokens plus the
current token (except ``dense``, which sees all of them):

- ``streaming_llm``: the first ``start_size`` tokens (attention sinks) and the
  last ``recent_size`` tokens; positions by slot in the cache (positional shift).
- ``window``: the last ``start_size + recent_size`` tokens, no sinks, same budget.
- ``sliding_recompute``: the last ``start_size + recent_size`` tokens re-encoded
  from scratch for every token (positions 0..W), the slow oracle.
- ``dense``: full causal attention at true positions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

METHODS = ("streaming_llm", "dense", "window", "sliding_recompute")


class StreamingArgError(ValueError):
    """A model argument the user gave is not allowed."""


def as_int(name: str, value, minimum: int = 0, allow_none: bool = False) -> int | None:
    """Accept ints, integral floats (lm-eval turns ``1e3`` into 1000.0) and
    numeric strings; reject the rest with a message naming the argument."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool):
        raise StreamingArgError(f"{name}={value!r} is not allowed: expected an integer >= {minimum}")
    parsed = value
    if isinstance(value, str):
        try:
            parsed = float(value.strip())
        except ValueError:
            raise StreamingArgError(
                f"{name}={value!r} is not a number: expected an integer >= {minimum}"
            ) from None
    if isinstance(parsed, float):
        if not math.isfinite(parsed) or not parsed.is_integer():
            raise StreamingArgError(f"{name}={value!r} is not an integer: expected an integer >= {minimum}")
        parsed = int(parsed)
    if not isinstance(parsed, int):
        raise StreamingArgError(f"{name}={value!r} has type {type(value).__name__}: expected an integer >= {minimum}")
    if parsed < minimum:
        raise StreamingArgError(f"{name}={value!r} is too small: expected an integer >= {minimum}")
    return parsed


@dataclass(frozen=True)
class CachePolicy:
    method: str = "streaming_llm"
    start_size: int = 4
    recent_size: int = 252

    def __post_init__(self):
        if self.method not in METHODS:
            raise StreamingArgError(f"method={self.method!r} is unknown: expected one of {', '.join(METHODS)}")
        object.__setattr__(self, "start_size", as_int("start_size", self.start_size, 0))
        recent_min = 1 if self.method == "streaming_llm" else 0
        object.__setattr__(self, "recent_size", as_int("recent_size", self.recent_size, recent_min))
        if self.method in ("window", "sliding_recompute") and self.budget < 1:
            raise StreamingArgError(
                f"start_size + recent_size = {self.budget} for method={self.method}: expected at least 1"
            )

    @property
    def budget(self) -> int:
        """Past tokens a query may see (the KV cache size, without the current token)."""
        return self.start_size + self.recent_size

    @property
    def sinks(self) -> int:
        return self.start_size if self.method == "streaming_llm" else 0

    @property
    def recent(self) -> int | None:
        """Recent tokens kept in the cache; None means all of them (dense)."""
        if self.method == "dense":
            return None
        if self.method == "streaming_llm":
            return self.recent_size
        return self.budget

    @property
    def uses_cache(self) -> bool:
        return self.method != "sliding_recompute"

    def key_mask(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        """[Q, K] bool: query at true position q_pos[i] may attend key k_pos[j]."""
        q = q_pos[:, None]
        k = k_pos[None, :]
        allowed = k <= q
        if self.recent is not None:
            allowed &= (k < self.sinks) | (k >= q - self.recent)
        return allowed

    def sink_query_position(self, q_pos: torch.Tensor) -> torch.Tensor:
        """With positional shift a query sits at slot min(t, sinks + recent) of the
        cache, so sink j is seen at distance min(t, sinks + recent) - j."""
        return torch.clamp(q_pos, max=self.sinks + self.recent)

    def retained(self, n_seen: int) -> tuple[int, int]:
        """(sinks, recent) entries the cache keeps after ``n_seen`` tokens."""
        if self.recent is None:
            return n_seen, 0
        sinks = min(self.sinks, n_seen)
        return sinks, min(self.recent, n_seen - sinks)

    def describe(self) -> str:
        if self.method == "dense":
            return "dense"
        if self.method == "streaming_llm":
            return f"streaming_llm-s{self.start_size}-r{self.recent_size}"
        return f"{self.method}-w{self.budget}"
