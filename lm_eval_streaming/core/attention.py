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

What a layer's queries may see comes from the cache that owns the entries (``cache.py``): a session
``serve``s a view source for the duration of one model call, and the kernel asks it for the layer's
:class:`LayerView`. Every argument transformers hands an attention function is honoured (``scaling``,
``sliding_window``, ``softcap``, learned sinks ``s_aux``) or refused by name: none is ignored.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

import torch
from transformers import AttentionInterface

from lm_eval_streaming.options import REFERENCE_KERNEL, StreamingArgError

# rope types whose angle is linear in the position, so rotations compose.
LINEAR_ROPE_TYPES = ("default", "linear", "llama3", "yarn")
# Arguments a model hands attention functions that carry nothing the view does not already decide.
_POSITIONAL_KWARGS = ("position_ids", "cache_position", "is_causal", "output_attentions", "use_cache",
                      "position_embeddings", "past_key_values", "past_key_value")


class UnsupportedAttentionArgument(RuntimeError):
    """The model handed the project's kernel an argument it does not implement."""


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
class LayerView:
    """What one layer's queries see in one chunk: answered by the cache that owns the entries."""

    blocked: torch.Tensor  # [Q, K] or [B, 1, Q, K] bool: True where the query may NOT attend the key
    n_sink_keys: int = 0  # the first keys, scored with the query re-rotated by sink_cos / sink_sin
    sink_cos: torch.Tensor | None = None  # [Q, rot_dim] or [B, 1, Q, rot_dim]
    sink_sin: torch.Tensor | None = None
    interleaved: bool = False  # rotary pairs (2i, 2i+1) (GPT-J, Cohere) instead of the two halves


@dataclass
class Serving:
    """One model call's source of layer views: ``views(layer_idx, sliding_window)`` -> :class:`LayerView`;
    ``stats``: score numerics to record; ``observe(layer_idx, float32 probs [B, H, Q, K])``: score-based eviction."""

    views: Callable[[int, int | None], LayerView]
    stats: ScoreStats | None = None
    observe: Callable[[int, torch.Tensor], None] | None = None
    _device_views: dict = field(default_factory=dict)

    def view(self, layer_idx: int, window: int | None, device) -> LayerView:
        view = self.views(layer_idx, window)
        moved = self._device_views.get((id(view), device))
        if moved is None:  # one copy per view and device, shared by the layers that share the view
            moved = LayerView(view.blocked.to(device), view.n_sink_keys,
                              None if view.sink_cos is None else view.sink_cos.to(device),
                              None if view.sink_sin is None else view.sink_sin.to(device), view.interleaved)
            self._device_views[(id(view), device)] = (view, moved)
        else:
            moved = moved[1]
        return moved


_SERVING: ContextVar[Serving | None] = ContextVar("lm_eval_streaming_serving", default=None)


@contextmanager
def serve(serving: Serving):
    """While inside, the project's kernel takes its layer views from ``serving``."""
    token = _SERVING.set(serving)
    try:
        yield serving
    finally:
        _SERVING.reset(token)


def sink_rotation(delta: torch.Tensor, inv_freq: torch.Tensor, interleaved: bool = False):
    """cos, sin [..., rot_dim] rotating a query by ``delta`` positions ([Q] or [B, 1, Q])."""
    # float32 (MPS has no float64); HF rotates keys in float32 too, so the error is of the same order.
    angles = delta.to(torch.float32)[..., None] * inv_freq.to(torch.float32)
    emb = angles.repeat_interleave(2, dim=-1) if interleaved else torch.cat([angles, angles], dim=-1)
    return emb.cos(), emb.sin()


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _rotate_pairs(x: torch.Tensor) -> torch.Tensor:
    return torch.stack((-x[..., 1::2], x[..., ::2]), dim=-1).flatten(-2)


def rerotate(query: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool = False) -> torch.Tensor:
    """Rotate the rotary part (the first ``cos.shape[-1]`` dims) of ``query`` further."""
    rot_dim = cos.shape[-1]
    q_rot = query[..., :rot_dim].to(torch.float32)
    cos, sin = cos.to(q_rot), sin.to(q_rot)
    turn = _rotate_pairs if interleaved else _rotate_half
    q_rot = (q_rot * cos + turn(q_rot) * sin).to(query.dtype)
    return torch.cat([q_rot, query[..., rot_dim:]], dim=-1)


def attend(query, key, value, view: LayerView, scaling: float, softcap: float | None = None,
           s_aux: torch.Tensor | None = None, stats: ScoreStats | None = None, observe=None):
    """query [B, H, Q, D]; key/value [B, Hkv, K, D] rotated at true positions -> output [B, Q, H, D] and the
    float32 probabilities (handed to ``observe`` when given)."""
    batch, heads, n_q, _ = query.shape
    kv_heads = key.shape[1]
    # Grouped-query attention without copying keys: fold the query groups into the query axis.
    grouped = lambda x: x.reshape(batch, kv_heads, (heads // kv_heads) * n_q, x.shape[-1])  # noqa: E731
    scores = torch.matmul(grouped(query * scaling), key.transpose(2, 3)).view(batch, heads, n_q, -1)
    n = view.n_sink_keys
    if n:
        shifted = rerotate(query, view.sink_cos, view.sink_sin, view.interleaved)
        sink = torch.matmul(grouped(shifted * scaling), key[..., :n, :].transpose(2, 3))
        scores[..., :n] = sink.view(batch, heads, n_q, n)
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    blocked = view.blocked
    if stats is not None:
        stats.observe(scores.masked_fill_(blocked, 0))
    scores.masked_fill_(blocked, float("-inf"))
    if s_aux is not None:  # learned sinks: one extra logit per head in the softmax, no value
        extra = s_aux.reshape(1, -1, 1, 1).expand(batch, -1, n_q, 1).to(scores.dtype)
        probs = torch.softmax(torch.cat([scores, extra], dim=-1), dim=-1, dtype=torch.float32)[..., :-1]
    else:
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32)
    if observe is not None:
        observe(probs)
    out = torch.matmul(grouped(probs.to(value.dtype).view(batch, heads, n_q, -1)), value)
    out = out.view(batch, heads, n_q, value.shape[-1])  # value heads may be narrower (latent attention)
    return out.transpose(1, 2).contiguous()


def check_attention_kwargs(kwargs: dict) -> None:
    """Refuse, by name, an argument the kernel would otherwise ignore."""
    for name, value in kwargs.items():
        if value is not None and value is not False and name not in _POSITIONAL_KWARGS:
            raise UnsupportedAttentionArgument(
                f"the model passes {name}={type(value).__name__} to its attention, which the project's kernel "
                f"({REFERENCE_KERNEL}) does not implement: use method=dense with attn_implementation=sdpa")


def sink_window_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                          sliding_window=None, softcap=None, s_aux=None, **kwargs):
    """query [B, H, Q, D]; key/value [B, Hkv, K, D] (cache + chunk), rotated at true positions."""
    serving = _SERVING.get()
    if serving is None:
        raise RuntimeError(
            "lm_eval_streaming attention was called outside a streaming session: run the model "
            "through lm_eval_streaming.core.scoring, not model.generate() or a plain forward"
        )
    check_attention_kwargs(kwargs)
    if dropout:
        raise UnsupportedAttentionArgument(f"attention dropout {dropout} (the model is in training mode)")
    view = serving.view(module.layer_idx, sliding_window, query.device)
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    observe = None if serving.observe is None else (lambda p: serving.observe(module.layer_idx, p))
    return attend(query, key, value, view, scaling, softcap, s_aux, serving.stats, observe), None


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
