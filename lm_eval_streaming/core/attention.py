"""The attention that implements the cache policy, for a whole chunk at once.

With rotary embeddings a score depends only on the query-key distance. Keys are
cached rotated at their true positions, queries arrive rotated at theirs, so:
- recent keys are scored as they are (the window is contiguous, the distance is true);
- sink keys j are scored with the query re-rotated to ``min(t, sinks + recent)``,
  i.e. at the distance StreamingLLM's positional shift gives them;
then one softmax runs over both. That is token-by-token StreamingLLM, exactly,
for C queries in one pass. The function is registered with transformers'
``AttentionInterface`` and switched on only inside ``with attention_kernel(model, ...)``;
the model's weights and modules are unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from transformers import AttentionInterface

from lm_eval_streaming.options import REFERENCE_KERNEL, StreamingArgError
from lm_eval_streaming.core.policy import CachePolicy

# rope types whose angle is linear in the position, so rotations compose.
LINEAR_ROPE_TYPES = ("default", "linear", "llama3")


def numerics(t: torch.Tensor) -> tuple[float, int, int]:
    """(max |finite value|, NaN count, Inf count) of ``t``: one pass unless something is non-finite."""
    low, high = torch.aminmax(t)  # NaN or Inf shows up in the extremes
    if torch.isfinite(low) and torch.isfinite(high):
        return max(float(-low), float(high)), 0, 0
    nan, inf = torch.isnan(t), torch.isinf(t)
    return float(t.masked_fill(nan | inf, 0).abs().amax()), int(nan.sum()), int(inf.sum())


@dataclass
class ScoreStats:
    """Numerics seen inside attention, for the diagnostics."""

    max_abs_score: float = 0.0
    nonfinite_scores: int = 0

    def observe(self, scores: torch.Tensor) -> None:
        """``scores`` with blocked entries already zeroed."""
        max_abs, n_nan, n_inf = numerics(scores)
        self.max_abs_score = max(self.max_abs_score, max_abs)
        self.nonfinite_scores += n_nan + n_inf


@dataclass
class ChunkContext:
    """What every layer's attention needs for one chunk of queries (shared by layers)."""

    blocked: torch.Tensor  # [Q, K] bool: True where the query may NOT attend the key
    n_sink_keys: int = 0
    sink_cos: torch.Tensor | None = None  # [Q, rot_dim], re-rotation of queries for sink keys
    sink_sin: torch.Tensor | None = None
    stats: ScoreStats | None = field(default=None)
    # score-based eviction (core/eviction.py): called as observe(layer_idx, float32 probs [B, H, Q, K]);
    # None for the position-only methods, which then compute nothing for it
    observe: Callable[[int, torch.Tensor], None] | None = None

    @classmethod
    def build(cls, policy: CachePolicy, q_pos: torch.Tensor, k_pos: torch.Tensor,
              inv_freq: torch.Tensor | None, stats: ScoreStats | None = None) -> "ChunkContext":
        ctx = cls(blocked=~policy.key_mask(q_pos, k_pos), stats=stats)
        shifted = policy.sink_query_position(q_pos)
        if shifted is not None:
            ctx._shift_sinks(shifted - q_pos, inv_freq, int((k_pos < policy.sinks).sum()))
        return ctx

    @classmethod
    def build_rows(cls, policy: CachePolicy, q_pos: torch.Tensor, k_pos: torch.Tensor, q_valid: torch.Tensor,
                   k_valid: torch.Tensor, inv_freq: torch.Tensor | None,
                   stats: ScoreStats | None = None) -> "ChunkContext":
        """Rows at their own positions: q_pos/q_valid [B, Q], k_pos/k_valid [B, K] (the chunk's Q slots are the
        last of the K); padding slots (not valid) are never attended. The sink keys are the first slots of every
        row (the cache layout keeps them there). A padding query attends only its own slot, so it stays finite."""
        rows = [~policy.key_mask(q, k) | ~v[None, :] for q, k, v in zip(q_pos, k_pos, k_valid)]
        blocked = torch.stack(rows)  # [B, Q, K]
        n_q, n_k = q_pos.shape[1], k_pos.shape[1]
        own = torch.zeros(n_q, n_k, dtype=torch.bool)
        own[torch.arange(n_q), torch.arange(n_k - n_q, n_k)] = True
        blocked = torch.where(q_valid[:, :, None], blocked, ~own)
        ctx = cls(blocked=blocked[:, None], stats=stats)
        shifted = policy.sink_query_position(q_pos)
        if shifted is not None:
            ctx._shift_sinks((shifted - q_pos).masked_fill(~q_valid, 0)[:, None], inv_freq, min(policy.sinks, n_k))
        return ctx

    def _shift_sinks(self, delta: torch.Tensor, inv_freq: torch.Tensor, n_sink_keys: int) -> None:
        """Re-rotation of the queries by ``delta`` ([Q], or [B, 1, Q]: the heads share it) for the first
        ``n_sink_keys`` keys; nothing when no query moves."""
        if bool((delta != 0).any()):
            # float32 (MPS has no float64); HF rotates keys in float32 too, so the error is of the same order.
            angles = delta.to(torch.float32)[..., None] * inv_freq.to(torch.float32)
            emb = torch.cat([angles, angles], dim=-1)
            self.n_sink_keys = n_sink_keys
            self.sink_cos, self.sink_sin = emb.cos(), emb.sin()

    def to(self, device) -> "ChunkContext":
        self.blocked = self.blocked.to(device)
        if self.sink_cos is not None:
            self.sink_cos, self.sink_sin = self.sink_cos.to(device), self.sink_sin.to(device)
        return self


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rerotate(query: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the rotary part (the first ``cos.shape[-1]`` dims) of ``query`` further."""
    rot_dim = cos.shape[-1]
    q_rot = query[..., :rot_dim].to(torch.float32)
    cos, sin = cos.to(q_rot), sin.to(q_rot)
    q_rot = (q_rot * cos + _rotate_half(q_rot) * sin).to(query.dtype)
    return torch.cat([q_rot, query[..., rot_dim:]], dim=-1)


def sink_window_attention(module, query, key, value, attention_mask, scaling, dropout=0.0,
                        streaming: ChunkContext | None = None, **kwargs):
    """query [B, H, Q, D]; key/value [B, Hkv, K, D] (cache + chunk), rotated at true positions."""
    if streaming is None:
        raise RuntimeError(
            "lm_eval_streaming attention was called without a chunk context: run the model "
            "through lm_eval_streaming.core.scoring, not model.generate() or a plain forward"
        )
    batch, heads, n_q, dim = query.shape
    kv_heads = key.shape[1]
    # Grouped-query attention without copying keys: fold the query groups into the query axis.
    grouped = lambda x: x.reshape(batch, kv_heads, (heads // kv_heads) * n_q, x.shape[-1])  # noqa: E731
    scores = torch.matmul(grouped(query * scaling), key.transpose(2, 3)).view(batch, heads, n_q, -1)
    n = streaming.n_sink_keys
    if n:
        shifted = rerotate(query, streaming.sink_cos.to(query.device), streaming.sink_sin.to(query.device))
        sink = torch.matmul(grouped(shifted * scaling), key[..., :n, :].transpose(2, 3))
        scores[..., :n] = sink.view(batch, heads, n_q, n)
    blocked = streaming.blocked.to(query.device)  # a no-op unless layers sit on several devices
    if streaming.stats is not None:
        streaming.stats.observe(scores.masked_fill_(blocked, 0))
    scores.masked_fill_(blocked, float("-inf"))
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32)
    if streaming.observe is not None:
        streaming.observe(module.layer_idx, probs)
    probs = probs.to(value.dtype)
    out = torch.matmul(grouped(probs.view(batch, heads, n_q, -1)), value).view(batch, heads, n_q, dim)
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(REFERENCE_KERNEL, sink_window_attention)


@contextmanager
def attention_kernel(model, name: str | None):
    """Route ``model`` through the attention implementation ``name`` (None: leave it as loaded)
    for the duration of the block, and restore what it had on exit, also after an error."""
    previous = model.config._attn_implementation
    if name is None or name == previous:
        yield model
        return
    model.set_attn_implementation(name)
    try:
        yield model
    finally:
        model.set_attn_implementation(previous)


# Packages a registered kernel needs (transformers registers the names whether or not they are installed).
_KERNEL_PACKAGES = {"flash_attention_2": ("is_flash_attn_2_available", "the flash-attn package"),
                    "flash_attention_3": ("is_flash_attn_3_available", "flash-attn 3 (flash_attn_interface)"),
                    "flash_attention_4": ("is_flash_attn_4_available", "flash-attn 4"),
                    "flex_attention": ("is_torch_flex_attn_available", "torch with flex attention")}


def attention_names(available_only: bool = False) -> list[str]:
    """Attention implementations by name: eager, transformers' registered ones, the project's kernel;
    ``available_only``: those whose package is installed here."""
    import transformers.utils as tu
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    names = ["eager", *ALL_ATTENTION_FUNCTIONS.valid_keys(), REFERENCE_KERNEL]
    names = [n for n in dict.fromkeys(names) if "|" not in n]
    if available_only:
        names = [n for n in names if n not in _KERNEL_PACKAGES or getattr(tu, _KERNEL_PACKAGES[n][0], lambda: False)()]
    return names


def check_attention_name(name: str | None, arg: str = "attn_implementation", extra: tuple[str, ...] = ()) -> None:
    """One line naming an attention implementation that is unknown or not installed here, and what is
    available, before any weights load (transformers would fail inside from_pretrained)."""
    if name is None or name in extra:
        return
    available = [*extra, *attention_names(available_only=True)]
    if name in available:
        return
    if isinstance(name, str) and "/" in name:
        import transformers.utils as tu

        if tu.is_kernels_available():
            return  # a hub kernel (org/repo): transformers fetches it
    if name in _KERNEL_PACKAGES:
        raise StreamingArgError(f"{arg}={name!r} is not available here ({_KERNEL_PACKAGES[name][1]} is not installed): "
                                f"available: {', '.join(available)}")
    raise StreamingArgError(f"{arg}={name!r} is unknown: expected one of {', '.join(available)}")
