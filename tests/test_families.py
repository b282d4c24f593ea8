"""The streaming methods on the model families people load, each against an independent token-by-token
reference (``family_reference.py``: the unchanged HF model, eager, one token at a time, its cache rebuilt
from our own record of what the method keeps), in float32 on ~40-token documents with a small cache (2+8).

The reference is first checked against things it must equal: the model's own forward when it evicts nothing,
transformers' own keys at shifted positions (its re-rotation), and test_exactness's Llama reference.
"""

from __future__ import annotations

import random

import pytest
import torch
from family_reference import kept, layer_inv_freq, plain_nll, reference_nll, rotate
from transformers import AutoConfig, AutoModelForCausalLM

from lm_eval_streaming.core.architectures import check_supported
from lm_eval_streaming.core.methods import policy_for
from lm_eval_streaming.core.scoring import score_sequences

VOCAB, LENGTH, SINKS, RECENT = 1000, 40, 2, 8
TOL = 1e-5  # nats/token, float32
BASE = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256, bos_token_id=0, eos_token_id=0, pad_token_id=0,
            tie_word_embeddings=False)
SLIDING_3 = ["sliding_attention", "full_attention", "sliding_attention"]
LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 16}

# case -> (model type, config overrides). W6: the layers' own window <= the budget (10); W16: larger.
FAMILIES = {
    "llama": ("llama", {}),
    "llama3_rope": ("llama", {"rope_parameters": LLAMA3_ROPE}),
    "mistral": ("mistral", {"sliding_window": None}),
    "mistral_W6": ("mistral", {"sliding_window": 6}),
    "mistral_W16": ("mistral", {"sliding_window": 16}),
    "qwen2": ("qwen2", {}),
    "qwen3": ("qwen3", {"head_dim": 16}),
    "gemma": ("gemma", {"head_dim": 16}),
    "gemma2_W6": ("gemma2", {"head_dim": 16, "sliding_window": 6, "attn_logit_softcapping": 5.0,
                             "query_pre_attn_scalar": 24}),
    "gemma2_W16": ("gemma2", {"head_dim": 16, "sliding_window": 16, "attn_logit_softcapping": 5.0,
                              "query_pre_attn_scalar": 24}),
    "gemma3_W6": ("gemma3_text", {"head_dim": 16, "sliding_window": 6, "num_hidden_layers": 3,
                                  "layer_types": SLIDING_3, "query_pre_attn_scalar": 24}),
    "gemma3_W16": ("gemma3_text", {"head_dim": 16, "sliding_window": 16, "num_hidden_layers": 3,
                                   "layer_types": SLIDING_3, "query_pre_attn_scalar": 24}),
    "phi3": ("phi3", {}),
    "stablelm": ("stablelm", {}),  # partial rotary (a quarter of each head)
    "phi": ("phi", {}),  # Phi-2: partial rotary (half of each head)
    "olmo2": ("olmo2", {}),
    "granite": ("granite", {}),
    "cohere": ("cohere", {}),  # interleaved rotary
    "glm": ("glm", {"head_dim": 16}),  # interleaved rotary on half of each head
    "ernie4_5": ("ernie4_5", {"head_dim": 16}),  # interleaved rotary
    "helium": ("helium", {"head_dim": 16}),  # interleaved rotary
    "gptj": ("gptj", {"n_embd": 64, "n_head": 4, "n_layer": 2, "n_positions": 256, "rotary_dim": 8,
                      "n_inner": 128}),  # interleaved rotary on the first 8 dims of each head
    "gpt_oss_W6": ("gpt_oss", {"head_dim": 16, "sliding_window": 6, "layer_types": SLIDING_3[:2],
                               "num_local_experts": 4, "num_experts_per_tok": 2}),  # learned sinks
    "gpt_oss_W16": ("gpt_oss", {"head_dim": 16, "sliding_window": 16, "layer_types": SLIDING_3[:2],
                                "num_local_experts": 4, "num_experts_per_tok": 2}),
}
# (method, position_shift option or None: the method has none)
VARIANTS = [("streaming_llm", None), ("streaming_llm", False), ("window", None)]


def build(case: str, seed: int = 0):
    model_type, overrides = FAMILIES[case]
    kwargs = dict(BASE) if model_type != "gptj" else {"vocab_size": VOCAB, "bos_token_id": 0, "eos_token_id": 0,
                                                        "tie_word_embeddings": False}
    kwargs.update(overrides)
    config = AutoConfig.for_model(model_type, **kwargs)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).float().eval()
    with torch.no_grad():  # sharper attention, so which keys a query sees matters
        for name, p in model.named_parameters():
            if any(k in name for k in ("q_proj", "k_proj")):
                p.mul_(4.0)
    return model


@pytest.fixture(scope="module")
def models():
    cache = {}

    def get(case):
        if case not in cache:
            cache[case] = build(case)
        return cache[case]

    return get


def _ids(n=LENGTH, seed=0):
    g = random.Random(seed)
    return [g.randrange(VOCAB) for _ in range(n)]


# --- the reference checked against what it must equal (these pass without the project's code) ---

@pytest.mark.parametrize("case", FAMILIES)
def test_reference_without_eviction_is_the_model_itself(models, case):
    model, ids = models(case), _ids(seed=1)
    own = plain_nll(model, ids)
    assert (reference_nll(model, ids, None) - own).abs().max() <= TOL
    assert (reference_nll(model, ids, "streaming_llm", 4, LENGTH) - own).abs().max() <= TOL


@pytest.mark.parametrize("case", FAMILIES)
def test_reference_rotation_matches_the_model_keys_at_shifted_positions(models, case):
    """Keys the model stores for a sequence fed at positions +5 = ours rotated by +5 (every layer)."""
    from transformers import DynamicCache

    model, ids = models(case), torch.tensor([_ids(12, seed=2)])
    model.set_attn_implementation("eager")
    caches = []
    for offset in (0, 5):
        cache = DynamicCache(config=model.config)
        with torch.no_grad():
            model(input_ids=ids, position_ids=torch.arange(12)[None] + offset, cache=cache, use_cache=True)
        caches.append(cache)
    for layer in range(model.config.num_hidden_layers):
        k0, k5 = caches[0].layers[layer].keys, caches[1].layers[layer].keys
        n = min(k0.shape[-2], k5.shape[-2])  # a sliding layer's cache may keep only its window
        moved = rotate(k0[..., -n:, :], *layer_inv_freq(model, layer), 5)
        assert torch.allclose(moved, k5[..., -n:, :], atol=1e-4), (layer, (moved - k5[..., -n:, :]).abs().max())


def test_reference_equals_test_exactness_reference_on_llama(models):
    from test_exactness import reference_nll as llama_reference

    model, ids = models("llama"), _ids(seed=3)
    ours = reference_nll(model, ids, "streaming_llm", SINKS, RECENT)
    assert (ours - llama_reference(model, ids, SINKS, RECENT)).abs().max() <= TOL


def test_sliding_layer_semantics():
    """A layer's own window W <= budget: its last W-1 tokens; larger: the method's sinks + recent."""
    assert kept(20, 6, "streaming_llm", 2, 8, True) == [(k, 20 - k) for k in range(15, 20)]
    assert kept(20, 16, "streaming_llm", 2, 8, True) == [(0, 10), (1, 9)] + [(k, 20 - k) for k in range(12, 20)]
    assert kept(20, None, "streaming_llm", 2, 8, False)[:2] == [(0, 20), (1, 19)]
    assert kept(20, None, "window", 2, 8, True) == [(k, 20 - k) for k in range(10, 20)]
    assert kept(5, None, "streaming_llm", 2, 8, True) == [(k, 5 - k) for k in range(5)]


# --- the project's streaming methods against the reference ---

@pytest.mark.parametrize("method", sorted({m for m, _ in VARIANTS}))
@pytest.mark.parametrize("case", FAMILIES)
def test_family_is_accepted(models, case, method):
    """The families above are run, not refused, by the user's path (``check_supported`` before loading)."""
    check_supported(models(case).config, policy_for(method, start_size=SINKS, recent_size=RECENT))


@pytest.mark.parametrize("method,shift", VARIANTS, ids=["streaming_llm", "streaming_llm-noshift", "window"])
@pytest.mark.parametrize("case", FAMILIES)
def test_streaming_method_matches_family_reference(models, case, method, shift):
    model, ids = models(case), _ids(seed=4)
    ref = reference_nll(model, ids, method, SINKS, RECENT, shift is not False)
    options = {} if shift is None else {"position_shift": shift}
    for chunk in (1, 16):
        got = score_sequences(model, [ids], policy_for(method, start_size=SINKS, recent_size=RECENT, **options),
                              chunk_size=chunk)[0].nll.double()
        assert (got - ref).abs().max() <= TOL, (chunk, float((got - ref).abs().max()))


@pytest.mark.parametrize("model_type", ["deepseek_v2", "minicpm3", "exaone4", "nanochat"])
def test_shift_is_refused_where_the_models_rotation_is_not_the_projects(model_type, monkeypatch):
    """Multi-head latent attention (the rotary part at the end of each head), global layers without rotary, a
    rotation the other way: refused by name from the config, before any weights load; and the table is what the
    rotary probe measures: without the table entry the run still stops in one line before scoring. Without the
    shift nothing is re-rotated and the run goes on."""
    import lm_eval_streaming.core.architectures as architectures
    from lm_eval_streaming.benchmark.tiny_models import tiny_config, tiny_model

    policy = policy_for("streaming_llm", start_size=SINKS, recent_size=RECENT)
    with pytest.raises(architectures.UnsupportedArchitecture, match=f"'{model_type}' .*positional shift"):
        architectures.check_supported(tiny_config(model_type), policy)
    monkeypatch.setattr(architectures, "SHIFT_REFUSED", {})
    model = tiny_model(model_type)
    ids = [random.Random(3).randrange(VOCAB) for _ in range(LENGTH)]
    with pytest.raises(architectures.UnsupportedArchitecture, match="shifts positions, but layer") as err:
        score_sequences(model, [ids], policy)
    assert "\n" not in str(err.value)
    score_sequences(model, [ids], policy_for("streaming_llm", start_size=SINKS, recent_size=RECENT,
                                             position_shift=False))


@pytest.mark.parametrize("model_type", ["gemma3_text", "llama"])
def test_the_shift_is_accepted_in_bfloat16_on_a_deep_model(model_type, monkeypatch):
    """The rotary probe judges each layer's own rotation, not the bfloat16 rounding that earlier layers pass on:
    a 24-layer model in bfloat16 whose rotation is the project's is accepted (real Gemma-3-270M in bfloat16 was
    refused at layer 7, a tiny 24-layer Gemma-3 at layer 14, relative difference 0.032 > 0.03), and a rotation
    the other way (NanoChat) is still refused in bfloat16."""
    import lm_eval_streaming.core.architectures as architectures
    from lm_eval_streaming.core.layers import layer_specs
    from lm_eval_streaming.core.rotary_probe import shift_mismatch

    def deep(kind):
        config = AutoConfig.for_model(kind, **{**BASE, "num_hidden_layers": 24, "head_dim": 16})
        torch.manual_seed(0)
        return AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).eval()

    model = deep(model_type)
    assert shift_mismatch(model, layer_specs(model), list(range(24))) is None
    monkeypatch.setattr(architectures, "SHIFT_REFUSED", {})
    model = deep("nanochat")
    assert "re-rotated by the project" in shift_mismatch(model, layer_specs(model), list(range(24)))


def test_a_probe_that_overflows_says_so():
    """Queries that overflow (Gemma-3-270M's in float16 do) are named as such, not as a wrong rotary convention."""
    from lm_eval_streaming.core.layers import layer_specs
    from lm_eval_streaming.core.rotary_probe import shift_mismatch

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model("llama", **BASE), dtype=torch.float16).eval()
    with torch.no_grad():
        model.model.layers[1].self_attn.q_proj.weight.mul_(1e6)
    why = shift_mismatch(model, layer_specs(model), [0, 1])
    assert why.startswith("layer 1's queries are not finite (NaN/Inf) in float16"), why
