"""Score-based KV eviction (H2O, TOVA, key-norm): the policy base, the cache that tracks scores, pruning.

Semantics (one rule for every score-based method, ``docs/eviction.md``):

- The cache is pruned after every ``evict_every`` = E tokens of the stream (after the tokens at
  positions t with (t + 1) % E == 0); E = 1 is the methods' original one-token-per-step eviction.
- Between prunings the queries see the kept entries plus the new tokens, causally.  A pruning keeps
  ``start_size + recent_size`` entries: the sinks (positions < start_size) always, the rest chosen by the
  method's score.  So a query sees at most ``budget + E - 1`` past tokens and the cache peaks at
  ``budget + E`` entries.
- Each (sequence, layer, KV head) keeps its own set; a method that scores per layer (TOVA) gives every
  KV head of a layer the same set.  With grouped-query attention a KV head is shared by a group of query
  heads, so per-KV-head scores sum the probabilities of the group's query heads.
- Ties: the lower position is evicted first (the later token is kept).
- Positions: kept keys sit at their true distances by default (what the papers do: keys are cached
  rotated at their true positions, queries come at theirs).  ``position_shift=True`` places each kept
  key at its slot in the cache instead (StreamingLLM's rule generalised): the cache reads, in position
  order, slots 0..n-1, then the new tokens; every kept key is re-rotated to its slot relative to the queries.

The attention kernel hands a layer its float32 probabilities only when the method scores by them
(``ScoredPolicy.observes``); position-only methods never build this cache nor compute anything for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from transformers.cache_utils import Cache, DynamicLayer

from lm_eval_streaming.core.attention import LayerView, rerotate, sink_rotation
from lm_eval_streaming.core.cache import cache_nbytes
from lm_eval_streaming.core.layers import LayerSpec
from lm_eval_streaming.core.policy import CachePolicy
from lm_eval_streaming.options import as_bool, as_int

__all__ = ["ScoredPolicy", "EvictingCache", "chunk_mask", "group_sum", "keep_top", "pieces"]


@dataclass(frozen=True)
class ScoredPolicy(CachePolicy):
    """Base of the score-based methods: sinks + ``recent_size`` entries chosen by a score."""

    evict_every: int = 1
    position_shift: bool = False

    min_recent: ClassVar[int] = 1
    uses_position_slots: ClassVar[bool] = False  # entries kept by score: no layer of its own window yet
    observes: ClassVar[bool] = True  # needs the attention probabilities (False: scores from keys only)

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "evict_every", as_int("evict_every", self.evict_every, 1))
        object.__setattr__(self, "position_shift", as_bool("position_shift", self.position_shift))

    @property
    def sinks(self) -> int:
        return self.start_size

    @property
    def needs_rotary(self) -> bool:
        return self.position_shift

    def forced_recent(self) -> int:
        """Most recent tokens kept at every pruning besides the sinks (H2O's recent window)."""
        return 0

    def accumulate(self, score: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        """New score [B, Hkv, K] of the cache entries after a chunk's probabilities [B, H, Q, K]."""
        raise NotImplementedError

    def prune_score(self, score: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """Score [B, Hkv, K] to keep by (higher is kept) at a pruning."""
        return score

    def describe(self) -> str:
        shift = "-shift" if self.position_shift else ""
        return f"{self.method}-s{self.start_size}-r{self.recent_size}-e{self.evict_every}{shift}"


def group_sum(probs: torch.Tensor, kv_heads: int) -> torch.Tensor:
    """[B, H, Q, K] -> [B, Hkv, K]: summed over the queries and over the query heads of each KV group."""
    batch, heads, n_q, n_k = probs.shape
    return probs.view(batch, kv_heads, heads // kv_heads, n_q, n_k).sum(dim=(2, 3))


def keep_top(key: torch.Tensor, keep: int) -> torch.Tensor:
    """Indices [.., keep] (ascending) of the ``keep`` largest entries of ``key`` [.., N] along the last dim;
    among equal keys the later index wins (entries are in position order: the lower position is evicted)."""
    n = key.shape[-1]
    flipped = key.flip(-1)  # later entries first, so a stable sort prefers them among ties
    order = torch.sort(flipped, dim=-1, descending=True, stable=True).indices[..., :keep]
    return (n - 1 - order).sort(dim=-1).values


class ScoredLayer(DynamicLayer):
    """One layer's cache for a :class:`ScoredPolicy`: keys/values [B, Hkv, N, D] in position order, their true
    positions and scores [B, Hkv, N]. ``update`` returns what the chunk's queries attend; ``prune`` evicts."""

    is_croppable = False

    def __init__(self, policy: ScoredPolicy, spec: LayerSpec, **kwargs):
        super().__init__(**kwargs)
        self.policy, self.spec = policy, spec
        self.n_seen = 0
        self.pos = self.score = None

    def update(self, key_states, value_states, *args, **kwargs):
        n_kept = 0 if self.pos is None else self.pos.shape[-1]
        batch, kv_heads, n_new, _ = key_states.shape
        keys, values = super().update(key_states, value_states, *args, **kwargs)
        new_pos = torch.arange(self.n_seen, self.n_seen + n_new, device=keys.device).expand(batch, kv_heads, n_new)
        new_score = torch.zeros(batch, kv_heads, n_new, dtype=torch.float32, device=keys.device)
        self.pos = new_pos if self.pos is None else torch.cat([self.pos, new_pos], dim=-1)
        self.score = new_score if self.score is None else torch.cat([self.score, new_score], dim=-1)
        start = self.n_seen
        self.n_seen += n_new
        if self.policy.position_shift and n_kept:
            # Queries and new keys stay at their true positions; a kept key at slot s is moved to the distance
            # its slot gives: rotated to s + start - n_kept (a relative shift, so the queries need no change).
            slots = torch.arange(n_kept, device=keys.device)
            delta = slots + start - n_kept - self.pos[..., :n_kept]
            cos, sin = sink_rotation(delta, self.spec.inv_freq.to(keys.device), self.spec.interleaved)
            kept = rerotate(keys[..., :n_kept, :], cos, sin, self.spec.interleaved)
            keys = torch.cat([kept, keys[..., n_kept:, :]], dim=-2)
        return keys, values

    def observe(self, probs: torch.Tensor) -> None:
        self.score = self.policy.accumulate(self.score, probs)

    def prune(self) -> None:
        """Keep the sinks, the forced recent window and the best-scored rest, ``budget`` entries in all."""
        policy = self.policy
        if self.pos is None or self.pos.shape[-1] <= policy.budget:
            return
        forced = self.pos < policy.sinks
        recent = policy.forced_recent()
        if recent:
            forced |= self.pos >= self.n_seen - recent
        key = policy.prune_score(self.score, self.keys).masked_fill(forced, float("inf"))
        idx = keep_top(key, policy.budget)
        take = lambda t: t.gather(2, idx[..., None].expand(-1, -1, -1, t.shape[-1]))  # noqa: E731
        self.keys, self.values = take(self.keys), take(self.values)
        self.pos, self.score = self.pos.gather(-1, idx), self.score.gather(-1, idx)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        super().batch_select_indices(indices)
        if self.pos is not None:
            self.pos, self.score = self.pos[indices], self.score[indices]

    def get_seq_length(self) -> int:
        return self.n_seen

    @property
    def n_kept(self) -> int:
        return 0 if self.pos is None else self.pos.shape[-1]


class EvictingCache(Cache):
    """A ``transformers`` cache of :class:`ScoredLayer`s, one per decoder layer."""

    def __init__(self, policy: ScoredPolicy, specs: list[LayerSpec]):
        super().__init__(layers=[ScoredLayer(policy, spec) for spec in specs])
        self.policy = policy

    def views(self, blocked: torch.Tensor):
        """The view source of one piece: every layer sees its kept entries and the piece causally (``blocked``,
        from :func:`chunk_mask`); no layer of this cache has a window of its own (``check_supported``)."""
        view = LayerView(blocked)

        def layer_view(layer_idx: int, window: int | None) -> LayerView:
            if window is not None:
                raise RuntimeError(f"layer {layer_idx} has a sliding window of its own ({window}): method="
                                   f"{self.policy.method} keeps entries by score and does not support it")
            return view
        return layer_view

    @property
    def n_kept(self) -> int:
        """Entries every layer holds now (the same count in every layer and head)."""
        return self.layers[0].n_kept

    def observe(self, layer_idx: int, probs: torch.Tensor) -> None:
        """Called by the attention kernel with a layer's float32 probabilities [B, H, Q, K]."""
        self.layers[layer_idx].observe(probs)

    def select_rows(self, rows: torch.Tensor) -> None:
        self.batch_select_indices(rows)

    def prune(self) -> None:
        for layer in self.layers:
            layer.prune()

    def nbytes(self) -> int:
        return cache_nbytes(self)


def pieces(policy: ScoredPolicy, pos: int, n: int) -> list[tuple[int, int]]:
    """[(a, b)] splitting n tokens starting at stream position ``pos`` at the pruning boundaries."""
    out, a = [], 0
    every = policy.evict_every
    while a < n:
        b = min(n, a + every - (pos + a) % every)
        out.append((a, b))
        a = b
    return out


def chunk_mask(n_kept: int, n_q: int) -> torch.Tensor:
    """[Q, n_kept + Q] bool, True where blocked: every kept entry is visible, the new tokens causally."""
    blocked = torch.zeros(n_q, n_kept + n_q, dtype=torch.bool)
    blocked[:, n_kept:] = torch.ones(n_q, n_q, dtype=torch.bool).triu(1)
    return blocked

