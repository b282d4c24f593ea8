"""Generation with the streaming cache: memory constant as the text grows; exact against a plain forward."""

from __future__ import annotations

import torch
from conftest import make_model

from lm_eval_streaming.core.generation import generate
from lm_eval_streaming.core.methods import policy_for
from lm_eval_streaming.core.diagnostics import Diagnostics


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


# ---------------------------------------------------------------- transformers' options, batching
# References: plain transformers ``model.generate`` (its own cache, loop and processors) on the same tiny model.
import pytest  # noqa: E402

from lm_eval_streaming.core.generation import GenerationOptionError, generate_batch  # noqa: E402
from lm_eval_streaming.core.methods import method_names  # noqa: E402

PROMPTS = [[5, 17, 42, 7, 99, 3], [1, 2, 3], [8, 9, 10, 11, 12, 13, 14, 15, 16], [400, 12],
           [7, 7, 7, 7, 7, 7, 7], [31, 41, 59, 26, 53, 58, 97, 93, 23, 84, 62], [2], [600, 500, 400, 300]]


@pytest.fixture(scope="module")
def tiny():
    model = make_model("llama", vocab=1000)
    model.generation_config.eos_token_id = None  # random weights: run to max_new_tokens unless a test sets one
    return model


def _hf(model, prompt, **options):
    with torch.no_grad():
        return model.generate(torch.tensor([prompt]), pad_token_id=0, **options)[0, len(prompt):].tolist()


@pytest.mark.parametrize("method", ["dense", "streaming_llm"])
def test_top_k_1_sampling_is_greedy(tiny, method):
    policy = policy_for(method, 4, 200)  # cache larger than the text: equals dense
    for prompt in PROMPTS[:4]:
        greedy = _hf(tiny, prompt, max_new_tokens=12, do_sample=False)
        torch.manual_seed(1)
        got = generate_batch(tiny, [prompt], policy, {"do_sample": True, "temperature": 1.0, "top_k": 1,
                                                      "max_new_tokens": 12}, chunk_size=4)[0]
        assert got == greedy


def test_sampling_without_top_k_1_is_not_greedy(tiny):
    """The test above can fail: sampling at temperature 1 from the whole distribution leaves greedy."""
    greedy = _hf(tiny, PROMPTS[0], max_new_tokens=12, do_sample=False)
    torch.manual_seed(1)
    got = generate_batch(tiny, [PROMPTS[0]], policy_for("dense"), {"do_sample": True, "temperature": 1.0,
                                                                   "top_k": 0, "max_new_tokens": 12})[0]
    assert got != greedy


@pytest.mark.parametrize("method", ["dense", "streaming_llm"])
def test_repetition_penalty_equals_model_generate(tiny, method):
    policy = policy_for(method, 4, 200)
    changed = False
    for prompt in PROMPTS[:4]:
        ref = _hf(tiny, prompt, max_new_tokens=16, do_sample=False, repetition_penalty=1.3)
        got = generate_batch(tiny, [prompt], policy, {"max_new_tokens": 16, "repetition_penalty": 1.3},
                             chunk_size=4)[0]
        assert got == ref
        changed |= ref != _hf(tiny, prompt, max_new_tokens=16, do_sample=False)
    assert changed, "the penalty changed no continuation: the test proves nothing"


def test_seeded_sampling_equals_model_generate(tiny):
    """Same processors (top_k 50, temperature, top_p), same draws from torch's generator: same samples."""
    for seed in range(3):
        options = {"do_sample": True, "temperature": 0.9, "top_p": 0.95, "max_new_tokens": 12}
        torch.manual_seed(seed)
        ref = _hf(tiny, PROMPTS[0], **options)
        torch.manual_seed(seed)
        assert generate_batch(tiny, [PROMPTS[0]], policy_for("dense"), options)[0] == ref


def test_min_new_tokens_and_eos(tiny):
    prompt = PROMPTS[0]
    eos = _hf(tiny, prompt, max_new_tokens=1, do_sample=False)[0]  # the greedy first token ends the text
    policy = policy_for("streaming_llm", 2, 4)
    assert generate_batch(tiny, [prompt], policy, {"max_new_tokens": 12, "eos_token_id": eos})[0] == [eos]
    ref = _hf(tiny, prompt, max_new_tokens=12, do_sample=False, eos_token_id=eos, min_new_tokens=5)
    got = generate_batch(tiny, [prompt], policy_for("dense"), {"max_new_tokens": 12, "eos_token_id": eos,
                                                               "min_new_tokens": 5})[0]
    assert got == ref and len(got) >= 5 and eos not in got[:5]


@pytest.mark.parametrize("shortest", [1, 2])  # 1: a prompt shorter than the 2 sinks (lockstep), 2: own positions
@pytest.mark.parametrize("method", method_names())
def test_batch_of_8_equals_one_at_a_time(tiny, method, shortest):
    """Prompts of different lengths in one batch: every row continues as it does alone, for every method
    (a small cache, so eviction happens during prefill and generation)."""
    policy = policy_for(method, 2, 6)
    prompts = [p if len(p) >= shortest else p * shortest for p in PROMPTS]
    options = {"max_new_tokens": 12, "repetition_penalty": 1.2, "min_new_tokens": 3, "eos_token_id": 5}
    alone = [generate_batch(tiny, [p], policy, options, chunk_size=4)[0] for p in prompts]
    assert generate_batch(tiny, prompts, policy, options, chunk_size=4) == alone


def test_dense_batch_through_both_kernels_equals_model_generate(tiny):
    """dense: left padding through the model's attention, lockstep through the project's kernel."""
    from lm_eval_streaming.core.attention import REFERENCE_KERNEL

    ref = [_hf(tiny, p, max_new_tokens=10, do_sample=False) for p in PROMPTS]
    for kernel in (None, REFERENCE_KERNEL):
        assert generate_batch(tiny, PROMPTS, policy_for("dense"), {"max_new_tokens": 10}, chunk_size=4,
                              attn_implementation=kernel) == ref, kernel


def test_batch_with_large_cache_equals_model_generate(tiny):
    policy = policy_for("streaming_llm", 4, 200)
    got = generate_batch(tiny, PROMPTS, policy, {"max_new_tokens": 10}, chunk_size=4)
    assert got == [_hf(tiny, p, max_new_tokens=10, do_sample=False) for p in PROMPTS]


def test_stop_strings_end_rows_of_a_batch(tiny):
    decode = lambda t: " ".join(map(str, t))  # noqa: E731
    full = generate_batch(tiny, PROMPTS[:3], policy_for("dense"), {"max_new_tokens": 10})
    stop = [decode(full[1][2:4])]  # ends row 1 after its 4th token; the others only if they contain it
    cut = generate_batch(tiny, PROMPTS[:3], policy_for("dense"), {"max_new_tokens": 10}, decode=decode, stop=stop)
    assert cut[1] == full[1][:4]
    for c, f in zip(cut, full):
        assert c == f[:len(c)]


@pytest.mark.parametrize("options,named", [
    ({"num_beams": 2}, "num_beams=2"),
    ({"do_sample": True, "num_beams": 3}, "num_beams=3"),
    ({"penalty_alpha": 0.6, "top_k": 4}, "penalty_alpha=0.6"),
    ({"num_return_sequences": 2, "do_sample": True}, "num_return_sequences=2"),
    ({"guidance_scale": 1.5}, "guidance_scale=1.5"),
    ({"cache_implementation": "static"}, "cache_implementation='static'"),
    ({"return_dict_in_generate": True}, "return_dict_in_generate"),
    ({"top_kk": 3}, "top_kk=3"),
    ({"do_sample": True, "temperature": 0.0}, "`temperature` (=0.0)"),
])
def test_options_that_cannot_be_honoured_are_refused_in_one_line(tiny, options, named):
    with pytest.raises(GenerationOptionError) as err:
        generate_batch(tiny, [PROMPTS[0]], policy_for("dense"), {"max_new_tokens": 4, **options})
    message = str(err.value)
    assert named in message and "\n" not in message


@pytest.mark.parametrize("arch", ["llama", "gpt_neox"])
@pytest.mark.parametrize("method", ["streaming_llm", "window", "dense"])
def test_rows_at_their_own_positions_give_each_rows_own_logits(arch, method):
    """``feed_rows`` (generation's padded batch: padding right after each row's sinks) against each row fed
    alone through ``feed``: the logits of every real slot agree, through eviction and the sink shift
    (GPT-NeoX: partial rotary), chunk by chunk and then token by token."""
    from lm_eval_streaming.core.attention import REFERENCE_KERNEL, attention_kernel
    from lm_eval_streaming.core.sessions import open_session

    model = make_model(arch, vocab=1000)
    policy = policy_for(method, 2, 6)
    prompts = [p * 2 if len(p) < 2 else p for p in PROMPTS]  # generation pads these only when no row is
    width, chunk = max(map(len, prompts)), 3  # shorter than the sinks
    torch.manual_seed(3)
    follow = torch.randint(1, 1000, (len(prompts), 9))  # tokens fed one at a time after the prompts
    with torch.no_grad(), attention_kernel(model, REFERENCE_KERNEL):
        alone = []
        for p, more in zip(prompts, follow):
            s = open_session(model, policy)
            alone.append(torch.cat([s.feed(torch.tensor([p]))[0], *[s.feed(t.view(1, 1))[0] for t in more]]))
        ids = torch.zeros(len(prompts), width, dtype=torch.long)
        pos = torch.zeros_like(ids)
        valid = torch.zeros_like(ids, dtype=torch.bool)
        for r, p in enumerate(prompts):
            head = min(policy.sinks, len(p))
            slots = list(range(head)) + list(range(width - len(p) + head, width))
            ids[r, slots], pos[r, slots], valid[r, slots] = torch.tensor(p), torch.arange(len(p)), True
        s = open_session(model, policy)
        got = torch.cat([s.feed_rows(ids[:, a:a + chunk], pos[:, a:a + chunk], valid[:, a:a + chunk])
                         for a in range(0, width, chunk)], dim=1)
        lengths = torch.tensor([len(p) for p in prompts])
        steps = [s.feed_rows(follow[:, i:i + 1], (lengths + i)[:, None], torch.ones(len(prompts), 1, dtype=torch.bool))
                 for i in range(follow.shape[1])]
    for r in range(len(prompts)):
        mine = torch.cat([got[r][valid[r]], *[step[r] for step in steps]])
        assert torch.allclose(mine, alone[r], atol=1e-5), (r, float((mine - alone[r]).abs().max()))
    assert policy.sinks == 0 or any(len(p) + 9 > policy.budget for p in prompts)  # the shift was engaged
