"""The KV cache that keeps attention sinks plus a window of recent tokens.

Keys are stored rotated at their TRUE positions; the attention function
(``attention.py``) applies the positional shift, so nothing here is re-rotated
when tokens are evicted.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, DynamicLayer

from lm_eval_streaming.core.policy import CachePolicy


class SinkWindowLayer(DynamicLayer):
    """One layer's cache: the first ``sinks`` entries and the last ``recent``.

    ``update`` returns every key the current chunk's queries may need (the kept
    entries plus the chunk), then evicts down to what the next chunk needs.
    """

    is_croppable = False

    def __init__(self, policy: CachePolicy, **kwargs):
        super().__init__(**kwargs)
        self.policy = policy
        self.n_seen = 0

    def update(self, key_states, value_states, *args, **kwargs):
        keys, values = super().update(key_states, value_states, *args, **kwargs)
        self.n_seen += key_states.shape[-2]
        self._evict()
        return keys, values

    def _evict(self) -> None:
        sinks, recent = self.policy.retained(self.n_seen)
        stored = self.keys.shape[-2]
        if stored == sinks + recent:
            return
        self.keys, self.values = (retain_slots(t, sinks, recent, -2) for t in (self.keys, self.values))

    def get_seq_length(self) -> int:
        return self.n_seen

    def reset(self) -> None:
        super().reset()
        self.n_seen = 0

    def nbytes(self) -> int:
        return layer_nbytes(self)


def retain_slots(t: torch.Tensor, sinks: int, recent: int, dim: int) -> torch.Tensor:
    """The first ``sinks`` and the last ``recent`` slots of ``t`` along ``dim`` (a new tensor, so the evicted
    memory is freed): what the cache keeps, and what a session tracks of each slot beside it."""
    stored = t.shape[dim]
    return torch.cat([t.narrow(dim, 0, sinks), t.narrow(dim, stored - recent, recent)], dim=dim)


class StreamingCache(Cache):
    """A ``transformers`` cache of ``SinkWindowLayer``s, one per decoder layer."""

    def __init__(self, policy: CachePolicy, num_layers: int):
        super().__init__(layers=[SinkWindowLayer(policy) for _ in range(num_layers)])
        self.policy = policy

    def nbytes(self) -> int:
        return cache_nbytes(self)


def layer_nbytes(layer) -> int:
    """Bytes of one cache layer's keys and values (0 before its first update)."""
    keys, values = getattr(layer, "keys", None), getattr(layer, "values", None)
    if keys is None or values is None or not getattr(layer, "is_initialized", True):
        return 0
    return keys.numel() * keys.element_size() + values.numel() * values.element_size()


def cache_nbytes(cache: Cache) -> int:
    """Bytes held by any transformers cache made of layers (ours or a DynamicCache)."""
    return sum(layer_nbytes(layer) for layer in cache.layers)
