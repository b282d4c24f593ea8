"""Generation on models with sliding-window layers (Mistral's window on every layer, Gemma-3's sliding and
global layers): exact against ``model.generate`` (the model's own sliding cache), and a batch = one at a time."""

from __future__ import annotations

import pytest
import torch

from lm_eval_streaming.core.attention import REFERENCE_KERNEL
from lm_eval_streaming.core.generation import generate_batch
from lm_eval_streaming.core.methods import policy_for

PROMPTS = [[5, 9, 2, 44, 17, 3, 8, 90, 12], [7, 7, 7, 7, 7, 7, 7, 1, 2, 3, 4, 5], [31, 41, 59],
           [600, 500, 400, 300, 200, 100, 50, 25, 12, 6, 3]]
HYBRIDS = {
    "mistral": {"sliding_window": 5},
    "gemma3_text": {"sliding_window": 5, "layer_types": ["sliding_attention", "full_attention", "sliding_attention"]},
}


@pytest.fixture(scope="module", params=sorted(HYBRIDS))
def hybrid(request):
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    config = AutoConfig.for_model(request.param, vocab_size=1000, hidden_size=64, intermediate_size=128,
                                  num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                  pad_token_id=0, bos_token_id=1, eos_token_id=2, **HYBRIDS[request.param])
    model = AutoModelForCausalLM.from_config(config).float().eval()
    with torch.no_grad():  # peaked attention, so a wrong window shows in the tokens
        for name, p in model.named_parameters():
            if "q_proj" in name or "k_proj" in name:
                p.mul_(4)
    model.generation_config.eos_token_id = None
    return model


def _hf(model, prompt, **options):
    with torch.no_grad():
        return model.generate(torch.tensor([prompt]), pad_token_id=0, **options)[0, len(prompt):].tolist()


def test_dense_through_both_kernels_equals_model_generate(hybrid):
    ref = [_hf(hybrid, p, max_new_tokens=12, do_sample=False) for p in PROMPTS]
    for kernel in (None, REFERENCE_KERNEL):
        got = generate_batch(hybrid, PROMPTS, policy_for("dense"), {"max_new_tokens": 12}, chunk_size=4,
                             attn_implementation=kernel)
        assert got == ref, kernel


@pytest.mark.parametrize("method", ["streaming_llm", "window"])
def test_cache_larger_than_the_text_equals_model_generate(hybrid, method):
    got = generate_batch(hybrid, PROMPTS, policy_for(method, 4, 200), {"max_new_tokens": 12}, chunk_size=4)
    assert got == [_hf(hybrid, p, max_new_tokens=12, do_sample=False) for p in PROMPTS]


@pytest.mark.parametrize("sizes", [(2, 6), (1, 3)])  # the window (5) above and within the budget
@pytest.mark.parametrize("method", ["streaming_llm", "window"])
def test_batch_equals_one_at_a_time(hybrid, method, sizes):
    policy = policy_for(method, *sizes)
    options = {"max_new_tokens": 12, "repetition_penalty": 1.2}
    alone = [generate_batch(hybrid, [p], policy, options, chunk_size=4)[0] for p in PROMPTS]
    assert generate_batch(hybrid, PROMPTS, policy, options, chunk_size=4) == alone
