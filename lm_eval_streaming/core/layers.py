"""What each decoder layer's attention is, as the model defines it: its own sliding window and its rotary
embedding. Read from the installed transformers' own rules (``get_layer_types_and_kwargs``, the model's
rotary modules), never guessed from a family name, so a hybrid model (some layers slide, a rotary base per
layer type) is described layer by layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

# Layer types transformers gives an attention layer; anything else (chunked, linear, conv, shared) is refused.
ATTENTION_LAYER_TYPES = ("full_attention", "sliding_attention")
# Rotary conventions that pair dims (2i, 2i+1) instead of rotating the two halves (rotate_half).
INTERLEAVED_ROTARY = ("gptj", "codegen", "cohere", "cohere2", "glm", "glm4", "ernie4_5", "ernie4_5_moe", "helium")


@dataclass(frozen=True)
class LayerSpec:
    """One layer's attention: ``window`` keys back (a query at t sees t - window < k <= t; None: all
    earlier keys), its layer type, and its rotary embedding (``inv_freq`` [rot_dim / 2], None: no rotary)."""

    layer_type: str = "full_attention"
    window: int | None = None
    interleaved: bool = False
    inv_freq: torch.Tensor | None = field(default=None, compare=False, hash=False, repr=False)


def layer_types(config) -> list[tuple[str, int | None]]:
    """[(layer type, own window)] per decoder layer, by transformers' own rule (what DynamicCache builds)."""
    from transformers.cache_utils import get_layer_types_and_kwargs

    text = config.get_text_config()
    types, kwargs = get_layer_types_and_kwargs(text)
    return [(t, kw.get("sliding_window") if t == "sliding_attention" else None) for t, kw in zip(types, kwargs)]


def unsupported_layer_types(config) -> list[str]:
    """Layer types of ``config`` the project's kernel cannot compute (empty: every layer is attention)."""
    return sorted({t for t, _ in layer_types(config)} - set(ATTENTION_LAYER_TYPES))


def _rotary_modules(model) -> list[torch.nn.Module]:
    return [m for m in model.modules() if m.__class__.__name__.endswith("RotaryEmbedding")]


def _inv_freq(model, layer_type: str) -> torch.Tensor | None:
    """The inverse frequencies the model rotates a layer of ``layer_type`` with (None: no rotary found)."""
    for module in _rotary_modules(model):
        per_type = getattr(module, f"{layer_type}_inv_freq", None)
        if isinstance(per_type, torch.Tensor):
            return per_type.detach().float().cpu()
        if isinstance(getattr(module, "inv_freq", None), torch.Tensor):
            return module.inv_freq.detach().float().cpu()
        table = getattr(module, "embed_positions", None)  # GPT-J: a sin/cos table of base 10000
        if isinstance(table, torch.Tensor) and getattr(module, "pos_embd_dim", None):
            dim = module.pos_embd_dim
            return 1.0 / (10000 ** (torch.arange(0, dim, 2, dtype=torch.int64) / dim)).float()
    return None


def layer_specs(model) -> list[LayerSpec]:
    """One :class:`LayerSpec` per decoder layer of ``model``."""
    config = model.config.get_text_config()
    interleaved = getattr(config, "model_type", "") in INTERLEAVED_ROTARY
    freqs: dict[str, torch.Tensor | None] = {}
    specs = []
    for layer_type, window in layer_types(model.config):
        if layer_type not in freqs:
            freqs[layer_type] = _inv_freq(model, layer_type)
        specs.append(LayerSpec(layer_type, window, interleaved, freqs[layer_type]))
    return specs


def rope_types(config) -> dict[str, str]:
    """{layer type: rope type} from the config's rope parameters (one entry per layer type where the model
    has a rotary embedding per layer type)."""
    text = config.get_text_config()
    rope = getattr(text, "rope_parameters", None) or {}
    if not isinstance(rope, dict):
        return {}
    if all(isinstance(v, dict) for v in rope.values()) and rope:
        return {t: v.get("rope_type", "default") for t, v in rope.items()}
    return {"*": rope.get("rope_type", "default")}
