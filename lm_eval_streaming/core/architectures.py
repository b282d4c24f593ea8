"""Which Hugging Face models the project's kernel and the streaming methods compute exactly, and why not the rest.

Decided from the config before any weights load: the layer types (transformers' own rule), the rope type of
each layer type, and a table of families whose attention the kernel cannot take (``docs/conformance.md``,
made by ``lm-eval-streaming conformance``, lists every model type of the installed transformers).
"""

from __future__ import annotations

from lm_eval_streaming.core.attention import LINEAR_ROPE_TYPES, REFERENCE_KERNEL
from lm_eval_streaming.core.layers import layer_types, rope_types, unsupported_layer_types
from lm_eval_streaming.errors import UserError

# Families whose positions the streaming methods cannot move or bound (position-only eviction would still
# leave them at absolute positions past what they were trained on, or their attention bias is not rotary).
REFUSED_STREAMING = {
    "gpt2": "learned absolute position embeddings",
    "gpt_neo": "learned absolute position embeddings",
    "gpt_bigcode": "learned absolute position embeddings",
    "opt": "learned absolute position embeddings",
    "biogpt": "learned absolute position embeddings",
    "xglm": "sinusoidal absolute position embeddings",
    "bloom": "ALiBi position biases",
    "mpt": "ALiBi position biases",
    "falcon": "ALiBi or rotary depending on the checkpoint; not supported yet",
}
# Families whose attention the project's kernel cannot compute (filled from the conformance table).
REFUSED_KERNEL: dict[str, str] = {}


class UnsupportedArchitecture(UserError, ValueError):
    pass


def _model_type(config) -> str:
    return getattr(config.get_text_config(), "model_type", None) or getattr(config, "model_type", "?")


def check_kernel_supported(config) -> None:
    """Refuse, in one line, a model the project's kernel (any method, dense included) would compute wrong."""
    model_type = _model_type(config)
    if model_type in REFUSED_KERNEL:
        raise UnsupportedArchitecture(f"architecture {model_type!r} ({REFUSED_KERNEL[model_type]}) cannot run through "
                                      "the project's kernel; method=dense with the model's own kernel works")
    bad = unsupported_layer_types(config)
    if bad:
        raise UnsupportedArchitecture(f"architecture {model_type!r} has {', '.join(bad)} layers, which the project's "
                                      "kernel does not compute; method=dense with the model's own kernel works")


def check_supported(config, policy, kernel: str | None = None) -> None:
    """Refuse, naming the architecture, anything ``policy`` (through ``kernel``: None, the model's own for
    dense) would silently compute wrong."""
    if policy.full_attention:
        if kernel == REFERENCE_KERNEL:
            check_kernel_supported(config)
        return
    method = policy.method
    model_type = _model_type(config)
    if model_type in REFUSED_STREAMING:
        raise UnsupportedArchitecture(f"architecture {model_type!r} ({REFUSED_STREAMING[model_type]}) is not supported "
                                      f"by method={method}; method=dense works with any causal LM")
    check_kernel_supported(config)
    windows = [w for _, w in layer_types(config) if w is not None]
    if windows and not policy.uses_position_slots:
        raise UnsupportedArchitecture(
            f"architecture {model_type!r} has sliding-window layers ({min(windows)} tokens), which method={method} "
            "does not support yet (its cache keeps entries by score); streaming_llm and window do")
    if policy.needs_rotary:
        for layer_type, rope_type in rope_types(config).items():
            if rope_type not in LINEAR_ROPE_TYPES:
                where = "" if layer_type == "*" else f" (layers of type {layer_type})"
                raise UnsupportedArchitecture(
                    f"rope_type {rope_type!r} of {model_type!r}{where} is not supported by method={method} with the "
                    f"positional shift (angles must be linear in the position): supported rope types are "
                    f"{', '.join(LINEAR_ROPE_TYPES)}")


def num_layers(model) -> int:
    return model.config.get_text_config().num_hidden_layers
