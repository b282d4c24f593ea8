"""The streaming methods against independent brute-force references.

The StreamingLLM reference below runs the UNCHANGED Hugging Face model (eager
attention, its own DynamicCache) one token at a time, the way mit-han-lab's
positional shift works: each token enters at slot ``len(cache)``, and after an
eviction the keys that moved one slot left are re-rotated by one position.
It shares no code with ``lm_eval_streaming``.
"""

from __future__ import annotations

import random

import pytest
import torch
from conftest import make_model
from transformers import DynamicCache

from lm_eval_streaming.core.methods import policy_for
from lm_eval_streaming.core.scoring import score_sequences

ARCHS = ("gpt_neox", "llama")
VOCAB = 1000  # small: these tests need no tokenizer


def _inv_freq(config):
    head_dim = config.hidden_size // config.num_attention_heads
    rope = config.rope_parameters
    rot = int(head_dim * rope.get("partial_rotary_factor", 1.0))
    return 1.0 / (rope["rope_theta"] ** (torch.arange(0, rot, 2, dtype=torch.float64) / rot))


def _rotate_keys(keys, inv_freq, shift):
    """Rotate the rotary dims of keys [B, H, L, D] by ``shift`` positions (rotate-half convention)."""
    rot = 2 * len(inv_freq)
    ang = shift * inv_freq
    cos = torch.cat([ang.cos(), ang.cos()]).to(keys.dtype)
    sin = torch.cat([ang.sin(), ang.sin()]).to(keys.dtype)
    x = keys[..., :rot]
    half = rot // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return torch.cat([x * cos + rotated * sin, keys[..., rot:]], dim=-1)


@torch.no_grad()
def reference_nll(model, ids, sinks, recent):
    """Token-by-token StreamingLLM with positional shift: per-token NLL of ids[1:]."""
    model.set_attn_implementation("eager")
    inv_freq = _inv_freq(model.config)
    cache = DynamicCache(config=model.config)
    nll = []
    for t in range(len(ids) - 1):
        slot = cache.get_seq_length()
        out = model(input_ids=torch.tensor([[ids[t]]]), position_ids=torch.tensor([[slot]]),
                    cache=cache, use_cache=True)
        nll.append(-torch.log_softmax(out.logits[0, -1].double(), -1)[ids[t + 1]])
        if cache.get_seq_length() > sinks + recent:
            for layer in cache.layers:
                for name in ("keys", "values"):
                    t_ = getattr(layer, name)
                    kept = torch.cat([t_[..., :sinks, :], t_[..., sinks + 1:, :]], dim=-2)
                    if name == "keys":  # entries after the evicted one moved one slot left
                        kept = torch.cat([kept[..., :sinks, :], _rotate_keys(kept[..., sinks:, :], inv_freq, -1)],
                                         dim=-2)
                    setattr(layer, name, kept)
    return torch.stack(nll)


@torch.no_grad()
def plain_nll(model, ids):
    model.set_attn_implementation("sdpa")
    logits = model(input_ids=torch.tensor([ids])).logits[0].double()
    return -torch.log_softmax(logits[:-1], -1).gather(-1, torch.tensor(ids[1:])[:, None]).squeeze(-1)


@torch.no_grad()
def recompute_reference(model, ids, window):
    """Every token re-encoded from scratch over its last ``window`` tokens plus itself."""
    model.set_attn_implementation("eager")
    nll = []
    for t in range(len(ids) - 1):
        ctx = ids[max(0, t - window): t + 1]
        logits = model(input_ids=torch.tensor([ctx])).logits[0, -1].double()
        nll.append(-torch.log_softmax(logits, -1)[ids[t + 1]])
    return torch.stack(nll)


def ours(model, ids, policy, chunk):
    return score_sequences(model, [ids], policy, chunk_size=chunk)[0].nll.double()  # float32 -> the reference's dtype


@pytest.fixture(scope="module")
def models():
    return {arch: make_model(arch, vocab=VOCAB) for arch in ARCHS}


def _ids(n, seed=0):
    g = random.Random(seed)
    return [g.randrange(VOCAB) for _ in range(n)]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("sinks,recent,length", [(4, 16, 60), (2, 8, 41), (1, 30, 20), (4, 5, 33)])
def test_streaming_llm_matches_token_by_token_reference(models, arch, sinks, recent, length):
    model, ids = models[arch], _ids(length, seed=length)
    ref = reference_nll(model, ids, sinks, recent)
    for chunk in (1, 7, 64):
        got = ours(model, ids, policy_for("streaming_llm", sinks, recent), chunk)
        assert torch.allclose(got, ref, atol=1e-4, rtol=0), (chunk, (got - ref).abs().max())


@pytest.mark.parametrize("arch", ARCHS)
def test_window_matches_reference_without_sinks(models, arch):
    model, ids = models[arch], _ids(50, seed=1)
    ref = reference_nll(model, ids, 0, 12)  # window keeps start+recent recent tokens
    got = ours(model, ids, policy_for("window", 4, 8), 16)
    assert torch.allclose(got, ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize("arch", ARCHS)
def test_dense_equals_plain_hf_forward(models, arch):
    model, ids = models[arch], _ids(70, seed=2)
    ref = plain_nll(model, ids)
    for chunk in (1, 16, 512):
        assert torch.allclose(ours(model, ids, policy_for("dense"), chunk), ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize("arch", ARCHS)
def test_cache_larger_than_document_is_dense(models, arch):
    model, ids = models[arch], _ids(40, seed=3)
    dense = ours(model, ids, policy_for("dense"), 64)
    for method in ("streaming_llm", "window", "sliding_recompute"):
        got = ours(model, ids, policy_for(method, 4, 40), 8)
        assert torch.allclose(got, dense, atol=1e-5, rtol=0), method


@pytest.mark.parametrize("arch", ARCHS)
def test_window_and_streaming_differ(models, arch):
    model, ids = models[arch], _ids(80, seed=4)
    stream = ours(model, ids, policy_for("streaming_llm", 4, 12), 32)
    window = ours(model, ids, policy_for("window", 4, 12), 32)
    assert (stream - window).abs().mean() > 1e-3


@pytest.mark.parametrize("arch", ARCHS)
def test_sliding_recompute_matches_from_scratch_windows(models, arch):
    model, ids = models[arch], _ids(45, seed=5)
    ref = recompute_reference(model, ids, 10)
    for chunk in (1, 9, 64):
        got = ours(model, ids, policy_for("sliding_recompute", 2, 8), chunk)
        assert torch.allclose(got, ref, atol=1e-4, rtol=0), chunk


@pytest.mark.parametrize("arch", ARCHS)
def test_random_configs_chunked_equals_token_by_token(models, arch):
    """Property-style: random start/recent/chunk/length, chunked == chunk_size=1."""
    rng = random.Random(7 if arch == "llama" else 8)
    model = models[arch]
    for trial in range(6):
        sinks, recent = rng.randint(0, 6), rng.randint(1, 24)
        length, chunk = rng.randint(2, 90), rng.randint(2, 70)
        ids = _ids(length, seed=100 + trial)
        policy = policy_for("streaming_llm", sinks, recent)
        one, many = ours(model, ids, policy, 1), ours(model, ids, policy, chunk)
        assert torch.allclose(one, many, atol=1e-4, rtol=0), (sinks, recent, length, chunk)
        assert abs(float(one.sum() - many.sum())) <= 1e-5 * abs(float(one.sum()))


@pytest.mark.parametrize("arch", ARCHS)
def test_batch_of_unequal_lengths_equals_one_by_one(models, arch):
    model = models[arch]
    seqs = [_ids(n, seed=n) for n in (50, 23, 37)]
    policy = policy_for("streaming_llm", 3, 9)
    batched = score_sequences(model, seqs, policy, chunk_size=16)
    for seq, got in zip(seqs, batched):
        alone = score_sequences(model, [seq], policy, chunk_size=5)[0]
        assert torch.allclose(got.nll, alone.nll, atol=1e-4, rtol=0)
        assert torch.equal(got.correct, alone.correct)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_chunked_close_to_token_by_token(dtype):
    model = make_model("llama", vocab=VOCAB).to(dtype)
    ids = _ids(60, seed=9)
    policy = policy_for("streaming_llm", 4, 12)
    one, many = ours(model, ids, policy, 1), ours(model, ids, policy, 32)
    assert torch.isfinite(many).all()
    assert (one - many).abs().mean() < 0.05  # same math, different summation order


@torch.no_grad()
def true_distance_reference(model, ids, sinks, recent):
    """Token-by-token sinks + recent window WITHOUT the positional shift (kvpress's StreamingLLMPress):
    the unchanged HF model, every token at its TRUE position id, its own DynamicCache; after each token
    the oldest non-sink entry is dropped and nothing is re-rotated. Per-token NLL of ids[1:]."""
    model.set_attn_implementation("eager")
    cache = DynamicCache(config=model.config)
    nll = []
    for t in range(len(ids) - 1):
        out = model(input_ids=torch.tensor([[ids[t]]]), position_ids=torch.tensor([[t]]), cache=cache, use_cache=True)
        nll.append(-torch.log_softmax(out.logits[0, -1].double(), -1)[ids[t + 1]])
        for layer in cache.layers:
            if layer.keys.shape[-2] > sinks + recent:
                layer.keys = torch.cat([layer.keys[..., :sinks, :], layer.keys[..., sinks + 1:, :]], dim=-2)
                layer.values = torch.cat([layer.values[..., :sinks, :], layer.values[..., sinks + 1:, :]], dim=-2)
    return torch.stack(nll)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("sinks,recent,length", [(4, 16, 60), (2, 8, 41), (4, 5, 33)])
def test_streaming_llm_without_shift_matches_true_distance_reference(models, arch, sinks, recent, length):
    model, ids = models[arch], _ids(length, seed=length + 1)
    ref = true_distance_reference(model, ids, sinks, recent)
    policy = policy_for("streaming_llm", sinks, recent, position_shift=False)
    for chunk in (1, 7, 64):
        got = ours(model, ids, policy, chunk)
        assert torch.allclose(got, ref, atol=1e-4, rtol=0), (chunk, (got - ref).abs().max())
    # the two variants keep the same tokens and differ only in the sinks' distances
    shifted = ours(model, ids, policy_for("streaming_llm", sinks, recent), 7)
    assert (shifted - got).abs().max() > 1e-3
