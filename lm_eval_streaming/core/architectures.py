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
_ENCODER = "a bidirectional encoder: its forward attends both ways, so a causal or chunked score differs"
_SEQ2SEQ = "the decoder of an encoder-decoder family: its positions and cache are not the project's"
# Model types whose forward no chunked score reproduces (docs/conformance.md: the model's own attention, chunk by
# chunk, differs from one forward): only ``method=dense`` in one plain forward (chunk_size=full) scores them.
NOT_CHUNKABLE = {
    **dict.fromkeys(("bert", "bert-generation", "big_bird", "camembert", "data2vec-text", "electra", "ernie",
                     "megatron-bert", "rembert", "roberta", "roberta-prelayernorm", "roc_bert", "roformer", "xlm",
                     "xlm-roberta", "xlm-roberta-xl"), _ENCODER),
    "openai-gpt": "no KV cache: a chunk would see only itself",
    "cpmant": "its own position bias and cache layout",
    "mamba": "recurrent (state-space) layers", "falcon_mamba": "recurrent (state-space) layers",
    "minimax": "linear-attention layers", "moshi": "a depth decoder beside its attention",
}
# Model types whose attention the project's kernel does not reproduce (docs/conformance.md: WRONG or crash).
REFUSED_KERNEL = {
    **dict.fromkeys(("bart", "bigbird_pegasus", "blenderbot", "blenderbot-small", "marian", "mbart", "mvp", "pegasus",
                     "plbart", "trocr"), _SEQ2SEQ),
    "bloom": "ALiBi position biases", "mpt": "ALiBi position biases",
    "gpt_neo": "local attention layers with their own masks", "xglm": "its own attention signature",
    "git": "image-text attention masks", "got_ocr2": "a vision-language model's own forward",
    "gpt_neox_japanese": "its own attention signature",
}


_LATENT = "latent attention: the rotary part sits at the end of each head"
_NOPE = "global layers without rotary embedding"
# Model types whose rotation the positional shift cannot reproduce, found by the rotary probe (``rotary_probe.py``,
# which also stops any family not listed here whose rotation turns out otherwise); the shift is refused on them,
# position_shift=false and window work.
SHIFT_REFUSED = {
    **dict.fromkeys(("deepseek_v2", "deepseek_v3", "minicpm3", "glm4_moe_lite", "sarvam_mla", "youtu", "axk1"),
                    _LATENT),
    **dict.fromkeys(("cohere2", "cohere2_moe", "exaone4", "exaone_moe", "afmoe", "flint", "kolibri1"), _NOPE),
    "nanochat": "its rotation turns the other way",
}


class UnsupportedArchitecture(UserError, ValueError):
    pass


def _model_type(config, table: dict | None = None) -> str:
    """The model type (the text model's, or the outer one when it is the one in ``table``)."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    outer = getattr(config, "model_type", "?")
    if table is not None and outer in table:
        return outer
    return getattr(text, "model_type", None) or outer


def check_chunkable(config, one_call: bool = False) -> None:
    """Refuse a model that no chunked score reproduces, unless it is scored in one plain forward."""
    model_type = _model_type(config, NOT_CHUNKABLE)
    if model_type in NOT_CHUNKABLE and not one_call:
        raise UnsupportedArchitecture(f"architecture {model_type!r} ({NOT_CHUNKABLE[model_type]}) cannot be scored in "
                                      "chunks; only method=dense with chunk_size=full (one plain forward) scores it")


def check_kernel_supported(config) -> None:
    """Refuse, in one line, a model the project's kernel (any method, dense included) would compute wrong."""
    model_type = _model_type(config, {**NOT_CHUNKABLE, **REFUSED_KERNEL})
    if model_type in NOT_CHUNKABLE:
        raise UnsupportedArchitecture(f"architecture {model_type!r} ({NOT_CHUNKABLE[model_type]}) cannot run through "
                                      "the project's kernel; method=dense with chunk_size=full scores it")
    if model_type in REFUSED_KERNEL:
        raise UnsupportedArchitecture(f"architecture {model_type!r} ({REFUSED_KERNEL[model_type]}) cannot run through "
                                      "the project's kernel; method=dense with the model's own kernel works")
    bad = unsupported_layer_types(config)
    if bad:
        raise UnsupportedArchitecture(f"architecture {model_type!r} has {', '.join(bad)} layers, which the project's "
                                      "kernel does not compute; method=dense with the model's own kernel works")


def check_supported(config, policy, kernel: str | None = None, one_call: bool = False) -> None:
    """Refuse, naming the architecture, anything ``policy`` (through ``kernel``: None, the model's own for
    dense; ``one_call``: dense in one plain forward) would silently compute wrong."""
    if policy.full_attention:
        if kernel == REFERENCE_KERNEL:
            check_kernel_supported(config)
        check_chunkable(config, one_call)
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
    if policy.needs_rotary and _model_type(config, SHIFT_REFUSED) in SHIFT_REFUSED:
        model_type = _model_type(config, SHIFT_REFUSED)
        raise UnsupportedArchitecture(f"architecture {model_type!r} ({SHIFT_REFUSED[model_type]}) cannot take "
                                      f"method={method}'s positional shift; position_shift=false or method=window "
                                      "keep every key at its true position and work")
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
