"""The KV cache of the position-based methods (streaming_llm, window, dense through the project's kernel):
the one owner of what each layer holds and of what a query may see.

Each layer follows a :class:`LayerRule`: the method's policy bounded by the layer's own sliding window
(``docs/methods.md``, "Models with sliding-window layers"):
- a layer whose own window W fits in the method's budget (``W <= start_size + recent_size``), and every layer
  under ``dense``, is the model's layer exactly: the last W - 1 keys (all keys without a window), true positions;
- every other layer keeps the method's entries (sinks + recent), and never sees a key at an apparent distance
  of W or more (with the positional shift the sinks sit within the budget, so only the no-shift ablation is cut).
So the cache stays bounded, no layer sees a distance beyond its own window, and with a cache larger than
the document every layer is the model's own.

Keys are stored rotated at their TRUE positions; the attention function (``attention.py``) applies the
positional shift to the queries, so nothing here is re-rotated when tokens are evicted. Layers that follow
the same rule with the same rotary embedding share one :class:`SlotGroup`: the positions of their entries,
the view of the current chunk, what stays after it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.cache_utils import Cache, DynamicLayer

from lm_eval_streaming.core.attention import LayerView, sink_rotation
from lm_eval_streaming.core.layers import LayerSpec
from lm_eval_streaming.core.policy import CachePolicy


@dataclass(frozen=True)
class LayerRule:
    """What one layer keeps and sees: ``policy`` bounded by the layer's own ``window`` (None: no window)."""

    policy: CachePolicy
    window: int | None = None

    @property
    def own(self) -> bool:
        """The layer is the model's own: dense, or a window no larger than the method's budget."""
        return self.policy.full_attention or (self.window is not None and self.window <= self.policy.budget)

    @property
    def sinks(self) -> int:
        return 0 if self.own else self.policy.sinks

    def sink_query_position(self, q_pos: torch.Tensor) -> torch.Tensor | None:
        return None if self.own else self.policy.sink_query_position(q_pos)

    def visible(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        """[Q, K] bool: a query at true position q_pos[i] may attend the key at k_pos[j]."""
        q, k = q_pos[:, None], k_pos[None, :]
        if self.own:
            allowed = k <= q
            return allowed if self.window is None else allowed & (q - k < self.window)
        allowed = self.policy.key_mask(q_pos, k_pos)
        if self.window is not None:
            apparent = q - k
            shifted = self.sink_query_position(q_pos)
            if shifted is not None:
                apparent = torch.where(k < self.sinks, shifted[:, None] - k, apparent)
            allowed &= apparent < self.window
        return allowed

    def retained(self, n_seen: int) -> tuple[int, int]:
        """(leading, trailing) slots kept after ``n_seen`` slots of the stream."""
        if self.own:
            return (n_seen, 0) if self.window is None else (0, min(self.window - 1, n_seen))
        return self.policy.retained(n_seen)


def retain_slots(t: torch.Tensor, sinks: int, recent: int, dim: int) -> torch.Tensor:
    """The first ``sinks`` and the last ``recent`` slots of ``t`` along ``dim`` (a new tensor, so the evicted
    memory is freed)."""
    stored = t.shape[dim]
    return torch.cat([t.narrow(dim, 0, sinks), t.narrow(dim, stored - recent, recent)], dim=dim)


class SlotGroup:
    """The positions of the entries of every layer that follows one rule with one rotary embedding, and what the
    current chunk's queries see. Positions are [K] (one set for the batch) or [B, K] (rows at their own
    positions, with ``valid`` marking real tokens; the sinks are every row's first slots)."""

    def __init__(self, rule: LayerRule, spec: LayerSpec):
        self.rule, self.spec = rule, spec
        self.pos = self.valid = None
        self.n_slots = 0
        self.keep = (0, 0)  # (leading, trailing) slots every layer of the group keeps after this chunk
        self.view: LayerView | None = None
        self.distance = -1  # largest apparent query-key distance the chunk scores

    def begin(self, q_pos: torch.Tensor, q_valid: torch.Tensor | None, measure: bool = False) -> None:
        """A chunk of queries at ``q_pos`` ([Q], or [B, Q] with ``q_valid``) arrives: its view, and what stays."""
        rule = self.rule
        if q_valid is None:
            k_pos = q_pos if self.pos is None else torch.cat([self.pos, q_pos])
            blocked, k_valid = ~rule.visible(q_pos, k_pos), None
            n_sinks = int((k_pos < rule.sinks).sum())
            shifted = rule.sink_query_position(q_pos)
            delta = None if shifted is None else shifted - q_pos
        else:
            if self.pos is None:
                self.pos = q_pos.new_zeros((q_pos.shape[0], 0))
                self.valid = torch.zeros((q_pos.shape[0], 0), dtype=torch.bool)
            k_pos, k_valid = torch.cat([self.pos, q_pos], dim=1), torch.cat([self.valid, q_valid], dim=1)
            blocked = torch.stack([~rule.visible(q, k) | ~v[None, :] for q, k, v in zip(q_pos, k_pos, k_valid)])
            n_q, n_k = q_pos.shape[1], k_pos.shape[1]
            own = torch.zeros(n_q, n_k, dtype=torch.bool)
            own[torch.arange(n_q), torch.arange(n_k - n_q, n_k)] = True
            blocked = torch.where(q_valid[:, :, None], blocked, ~own)[:, None]  # a padding query sees itself
            n_sinks = min(rule.sinks, n_k)
            shifted = rule.sink_query_position(q_pos)
            delta = None if shifted is None else (shifted - q_pos).masked_fill(~q_valid, 0)[:, None]
        self.view = LayerView(blocked)
        if delta is not None and n_sinks and bool((delta != 0).any()):
            self.view.n_sink_keys = n_sinks
            self.view.sink_cos, self.view.sink_sin = sink_rotation(delta, self.spec.inv_freq, self.spec.interleaved)
            self.view.interleaved = self.spec.interleaved
        if measure:
            self.distance = self._largest_distance(q_pos, k_pos, shifted)
        self.n_slots += q_pos.shape[-1]
        self.keep = rule.retained(self.n_slots)
        self.pos = retain_slots(k_pos, *self.keep, -1)
        if k_valid is not None:
            self.valid = retain_slots(k_valid, *self.keep, -1)

    def _largest_distance(self, q_pos, k_pos, shifted) -> int:
        dist = q_pos[..., :, None] - k_pos[..., None, :]
        n = self.view.n_sink_keys
        if n:
            dist[..., :n] = shifted[..., :, None] - k_pos[..., None, :n]
        return int(dist.masked_fill(self.view.blocked.view(dist.shape), -1).max())

    def select_rows(self, rows: torch.Tensor) -> None:
        if self.pos is not None and self.pos.dim() == 2:
            self.pos, self.valid = self.pos[rows], self.valid[rows]


class StreamingLayer(DynamicLayer):
    """One layer's keys and values; its :class:`SlotGroup` says which stay after each chunk. ``update``
    returns every key the chunk's queries may need (the kept entries plus the chunk), then evicts."""

    is_croppable = False

    def __init__(self, group: SlotGroup, **kwargs):
        super().__init__(**kwargs)
        self.group = group

    def update(self, key_states, value_states, *args, **kwargs):
        keys, values = super().update(key_states, value_states, *args, **kwargs)
        leading, trailing = self.group.keep
        if keys.shape[-2] != leading + trailing:
            self.keys, self.values = (retain_slots(t, leading, trailing, -2) for t in (keys, values))
        return keys, values

    def get_seq_length(self) -> int:
        return self.group.n_slots

    def nbytes(self) -> int:
        return layer_nbytes(self)


class StreamingCache(Cache):
    """A ``transformers`` cache of :class:`StreamingLayer`s, one per decoder layer, and the view source of the
    project's kernel: ``begin`` a chunk, run the model, and each layer's attention asks ``view(layer_idx)``."""

    def __init__(self, policy: CachePolicy, specs: list[LayerSpec]):
        groups: dict[tuple, SlotGroup] = {}
        self.layer_groups = []
        for spec in specs:
            rule = LayerRule(policy, spec.window)
            key = (rule, spec.layer_type, spec.interleaved)
            self.layer_groups.append(groups.setdefault(key, SlotGroup(rule, spec)))
        self.groups = list(groups.values())
        super().__init__(layers=[StreamingLayer(g) for g in self.layer_groups])
        self.policy = policy

    @property
    def rows_at_own_positions(self) -> bool:
        """Whether rows may sit at their own positions (padding between a row's sinks and its recent tokens):
        only when every layer keeps slots by count from both ends (no layer of its own window)."""
        return all(g.rule.window is None for g in self.groups)

    def begin(self, q_pos: torch.Tensor, q_valid: torch.Tensor | None = None, measure: bool = False) -> int:
        """The next chunk's query positions; returns the largest distance it scores (``measure``; else -1)."""
        for group in self.groups:
            group.begin(q_pos, q_valid, measure)
        return max(g.distance for g in self.groups) if measure else -1

    def view(self, layer_idx: int, window: int | None = None) -> LayerView:
        group = self.layer_groups[layer_idx]
        if window != group.rule.window:
            raise RuntimeError(f"layer {layer_idx}: the model passes sliding_window={window} to attention, but its "
                               f"config gives {group.rule.window}: the project's kernel would compute another model")
        return group.view

    def select_rows(self, rows: torch.Tensor) -> None:
        self.batch_select_indices(rows)
        for group in self.groups:
            group.select_rows(rows.cpu())

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
