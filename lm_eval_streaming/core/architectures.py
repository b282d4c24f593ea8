"""Which Hugging Face architectures the streaming methods support, and why not the rest."""

from __future__ import annotations

import torch

from lm_eval_streaming.core.attention import LINEAR_ROPE_TYPES
from lm_eval_streaming.errors import UserError

# Rotary-embedding decoders whose attention goes through transformers' AttentionInterface
# and applies RoPE with the rotate-half convention (GPT-NeoX: on the first rotary_pct of dims).
SUPPORTED_MODEL_TYPES = ("llama", "gpt_neox", "mistral", "qwen2", "qwen3")

_REFUSED = {
    "gpt2": "learned absolute position embeddings",
    "gpt_neo": "learned absolute position embeddings",
    "gptj": "interleaved rotary embeddings not supported yet",
    "opt": "learned absolute position embeddings",
    "bloom": "ALiBi position biases",
    "mpt": "ALiBi position biases",
    "falcon": "ALiBi or rotary depending on the checkpoint; not supported yet",
}


class UnsupportedArchitecture(UserError, ValueError):
    pass


def check_supported(config, policy) -> None:
    """Refuse, naming the architecture, anything ``policy`` would silently compute wrong."""
    if policy.full_attention:
        return
    method = policy.method
    model_type = getattr(config, "model_type", "?")
    if model_type not in SUPPORTED_MODEL_TYPES:
        why = _REFUSED.get(model_type, "not tested with the streaming cache")
        raise UnsupportedArchitecture(
            f"architecture {model_type!r} ({why}) is not supported by method={method}; supported: "
            f"{', '.join(SUPPORTED_MODEL_TYPES)}. method=dense works with any causal LM."
        )
    window = getattr(config, "sliding_window", None)
    if window is not None and getattr(config, "use_sliding_window", True):
        raise UnsupportedArchitecture(
            f"architecture {model_type!r} has its own sliding window ({window} tokens); the streaming "
            f"cache would be applied on top of it. Load a checkpoint with sliding_window=None."
        )
    rope = getattr(config, "rope_parameters", None) or {}
    rope_type = rope.get("rope_type", "default") if isinstance(rope, dict) else "default"
    if rope_type not in LINEAR_ROPE_TYPES:
        raise UnsupportedArchitecture(
            f"rope_type {rope_type!r} of {model_type!r} is not supported (angles must be linear in the "
            f"position): supported rope types are {', '.join(LINEAR_ROPE_TYPES)}"
        )


def rotary_inv_freq(model) -> torch.Tensor:
    """Inverse frequencies of the model's rotary embedding (length rot_dim / 2)."""
    for module in model.modules():
        if hasattr(module, "inv_freq") and module.__class__.__name__.endswith("RotaryEmbedding"):
            return module.inv_freq.detach().float().cpu()
    raise UnsupportedArchitecture(f"no rotary embedding found in {model.__class__.__name__}")


def num_layers(model) -> int:
    return model.config.get_text_config().num_hidden_layers
