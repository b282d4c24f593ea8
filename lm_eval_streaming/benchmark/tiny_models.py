"""Tiny random models of every causal-LM type the installed transformers registers (for the conformance table).

Each type's default config (``AutoConfig.for_model``) is shrunk generically: a few layers, hidden 64, 4 heads
(2 KV heads where the family groups them), vocabulary 1000, sliding windows of 12 tokens so they bite on short
documents, and the per-layer lists (``layer_types`` ...) cut to one layer of each kind the family mixes.
A type that cannot be built this way is reported with the reason, not skipped silently.
"""

from __future__ import annotations

import torch

VOCAB = 1000
WINDOW = 12  # every sliding window: shorter than the conformance documents
LAYERS = 2

# canonical config name -> tiny value (set only where the family's config has the attribute)
SIZES = {
    "hidden_size": 64, "num_attention_heads": 4, "intermediate_size": 128, "vocab_size": VOCAB,
    "max_position_embeddings": 256, "moe_intermediate_size": 64, "shared_expert_intermediate_size": 64,
    "num_experts": 4, "num_local_experts": 4, "n_routed_experts": 4, "num_experts_per_tok": 2,
    "kv_lora_rank": 16, "q_lora_rank": 32, "qk_rope_head_dim": 8, "qk_nope_head_dim": 8, "v_head_dim": 16,
    "d_model": 64, "d_ff": 128, "ffn_dim": 128, "encoder_ffn_dim": 128, "decoder_ffn_dim": 128,
    "encoder_layers": LAYERS, "decoder_layers": LAYERS, "encoder_attention_heads": 4,
    "decoder_attention_heads": 4, "n_group": 1, "topk_group": 1,
}
# set even where the default leaves them None: some models need them (Ministral's head_dim, Nemotron's KV heads)
NEEDED = ("head_dim", "num_key_value_heads", "num_experts_per_tok")


def causal_lm_types() -> list[str]:
    """Every model type transformers maps to a causal-LM class, from its own registry."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)


def _layer_pick(config, n_layers: int) -> list[int]:
    """Which original layers the tiny model keeps: the first layer of each kind in ``layer_types`` (so a
    family mixing sliding and full layers keeps both), then the next ones up to ``LAYERS``."""
    kinds = getattr(config, "layer_types", None)
    picks = []
    if isinstance(kinds, (list, tuple)) and len(kinds) == n_layers:
        seen = {}
        for i, kind in enumerate(kinds):
            seen.setdefault(kind, i)
        picks = sorted(seen.values())[:4]
    for i in range(n_layers):
        if len(picks) >= LAYERS:
            break
        if i not in picks:
            picks.append(i)
    return sorted(picks)


def _shrink(config) -> None:
    """Shrink one (sub-)config in place."""
    n_layers = getattr(config, "num_hidden_layers", None)
    if isinstance(n_layers, int):
        pick = _layer_pick(config, n_layers)
        for name, value in list(vars(config).items()):  # per-layer lists follow the picked layers
            if isinstance(value, (list, tuple)) and len(value) == n_layers and n_layers > 1:
                setattr(config, name, type(value)(value[i] for i in pick))
        config.num_hidden_layers = len(pick)
    heads = getattr(config, "num_attention_heads", None)
    kv = getattr(config, "num_key_value_heads", None)
    sizes = dict(SIZES)
    if kv is not None or "num_key_value_heads" in vars(config):
        sizes["num_key_value_heads"] = 2 if isinstance(heads, int) and isinstance(kv, int) and kv < heads else 4
    # head_dim 16; MLA families (a rotary part of the head) keep head_dim = their rotary head dim
    sizes["head_dim"] = SIZES["qk_rope_head_dim"] if getattr(config, "qk_rope_head_dim", None) else 16
    sizes["rotary_dim"] = 8  # GPT-J / CodeGen: the rotary part of a 16-dim head
    sizes["sliding_window"] = WINDOW
    for name, value in sizes.items():
        if getattr(config, name, None) is not None or (name in NEEDED and name in vars(config)):
            try:
                setattr(config, name, value)
            except AttributeError:  # a derived property (e.g. Falcon's head_dim)
                pass
    for name, value in list(vars(config).items()):  # special token ids must fit the tiny vocabulary
        if name.endswith("_token_id") and isinstance(value, int) and value >= VOCAB:
            setattr(config, name, VOCAB - 1)
        if name.endswith("_token_id") and isinstance(value, list):
            setattr(config, name, [min(v, VOCAB - 1) if isinstance(v, int) else v for v in value])


def tiny_config(model_type: str):
    """The family's default config, shrunk (its sub-configs too)."""
    from transformers import AutoConfig

    config = AutoConfig.for_model(model_type)
    for name in getattr(config, "sub_configs", {}) or {}:
        sub = getattr(config, name, None)
        if sub is not None and hasattr(sub, "to_dict"):
            _shrink(sub)
    _shrink(config)
    return config


def tiny_model(model_type: str, seed: int = 0):
    """A float32 random model of ``model_type`` in eval mode."""
    from transformers import AutoModelForCausalLM

    config = tiny_config(model_type)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return model.float().eval()
