"""Generation with the streaming cache: memory constant as the text grows; exact against a plain forward."""

from __future__ import annotations

import torch
from conftest import make_model

from lm_eval_streaming.core.generation import generate
from lm_eval_streaming.core.methods import policy_for
from lm_eval_streaming.core.scoring import Diagnostics


def test_cache_memory_is_constant_as_generated_text_grows():
    model = make_model("llama", vocab=1000)
    peaks = []
    for n in (20, 300):
        diag = Diagnostics()
        out = generate(model, [1, 2, 3, 4, 5], policy_for("streaming_llm", 2, 8), n, decode=str,
                       eos_token_id=None, diagnostics=diag)
        assert len(out) == n
        peaks.append(diag.peak_kv_bytes)
    assert peaks[0] == peaks[1] > 0


def test_dense_greedy_generation_equals_argmax_of_plain_forward():
    model = make_model("gpt_neox", vocab=1000)
    prompt = [5, 17, 42, 7, 99, 3]
    out = generate(model, prompt, policy_for("dense"), 12, decode=str, eos_token_id=None, chunk_size=4)
    model.set_attn_implementation("sdpa")
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(12):
            seq.append(int(model(input_ids=torch.tensor([seq])).logits[0, -1].argmax()))
    assert out == seq[len(prompt):]


def test_stop_strings_end_generation():
    model = make_model("llama", vocab=1000)
    full = generate(model, [1, 2, 3], policy_for("streaming_llm", 2, 8), 10, decode=lambda t: " ".join(map(str, t)),
                    eos_token_id=None)
    stop = str(full[2])
    cut = generate(model, [1, 2, 3], policy_for("streaming_llm", 2, 8), 10,
                   decode=lambda t: " ".join(map(str, t)), stop=[stop], eos_token_id=None)
    assert cut == full[: len(cut)] and len(cut) <= full.index(full[2]) + 1
