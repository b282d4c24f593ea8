"""Attention kernels: the scoped switch, MPS-safe dtypes, dense through the model's own kernel,
and the measured numerics (kernel error, causality probe) against deliberately broken kernels."""

from __future__ import annotations

import random

import pytest
import torch
from conftest import make_model
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import AttentionInterface

from lm_eval_streaming.core.attention import REFERENCE_KERNEL, attention_kernel
from lm_eval_streaming.core.generation import generate
from lm_eval_streaming.core.kernel_checks import causality_probe, kernel_error
from lm_eval_streaming.options import StreamingArgError
from lm_eval_streaming.core.methods import policy_for
from lm_eval_streaming.core.scoring import score_sequences

VOCAB = 1000
ARCHS = ("gpt_neox", "llama")


def _ids(n, seed=0):
    g = random.Random(seed)
    return [g.randrange(VOCAB) for _ in range(n)]


@pytest.fixture(scope="module")
def models():
    return {arch: make_model(arch, vocab=VOCAB) for arch in ARCHS}


# ---------------------------------------------------------------- broken kernels, written here
def _eager(query, key, value, scaling, allowed_offset=0, noise=0.0):
    """Plain attention; a key is visible when k <= q + allowed_offset (0 = causal)."""
    rep = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(rep, 1), value.repeat_interleave(rep, 1)
    scores = (query @ key.transpose(2, 3)).float() * scaling
    n_q, n_k = scores.shape[-2:]
    q_pos = torch.arange(n_k - n_q, n_k)[:, None]
    k_pos = torch.arange(n_k)[None, :]
    scores = scores.masked_fill(k_pos > q_pos + allowed_offset, float("-inf"))
    probs = torch.softmax(scores, -1)
    if noise:
        g = torch.Generator().manual_seed(1)
        jitter = torch.rand(probs.shape, generator=g) * noise * (q_pos + 1).float() / 32  # grows with position
        probs = probs * (1 + jitter)
        probs = probs / probs.sum(-1, keepdim=True)
    out = probs.to(value.dtype) @ value
    return out.transpose(1, 2).contiguous(), None


def leaky_kernel(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    return _eager(query, key, value, scaling, allowed_offset=1)  # each query also sees the next token


def noisy_kernel(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    return _eager(query, key, value, scaling, noise=0.5)


def clean_test_kernel(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    return _eager(query, key, value, scaling)


AttentionInterface.register("test_leaky", leaky_kernel)
AttentionInterface.register("test_noisy", noisy_kernel)
AttentionInterface.register("test_clean", clean_test_kernel)


@torch.no_grad()
def plain_nll(model, ids):
    """One plain HF forward (sdpa), independent of the project's code."""
    with attention_kernel(model, "sdpa"):
        logits = model(input_ids=torch.tensor([ids])).logits[0].double()
    return -torch.log_softmax(logits[:-1], -1).gather(-1, torch.tensor(ids[1:])[:, None]).squeeze(-1)


# ---------------------------------------------------------------- the scoped switch
def test_switch_restores_the_models_kernel_even_after_an_error(models):
    model = models["llama"]
    before = model.config._attn_implementation
    score_sequences(model, [_ids(30)], policy_for("streaming_llm", 2, 8), 8)
    assert model.config._attn_implementation == before
    model(input_ids=torch.tensor([_ids(10)]))  # a plain forward still works afterwards
    with pytest.raises(RuntimeError):
        with attention_kernel(model, REFERENCE_KERNEL):
            assert model.config._attn_implementation == REFERENCE_KERNEL
            raise RuntimeError("boom")
    assert model.config._attn_implementation == before


def test_streaming_methods_refuse_another_kernel(models):
    for method in ("streaming_llm", "window", "sliding_recompute"):
        with pytest.raises(StreamingArgError, match="attn_implementation='sdpa'"):
            score_sequences(models["llama"], [_ids(20)], policy_for(method, 2, 8), 8, attn_implementation="sdpa")


# ---------------------------------------------------------------- no float64 on the device path
class Float64Guard(TorchDispatchMode):
    """Raises on any op whose result is float64 (MPS has no float64)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.dtype == torch.float64:
                raise AssertionError(f"{func} produced a float64 tensor")
        return out


def test_guard_catches_float64():
    with pytest.raises(AssertionError, match="float64"):
        with Float64Guard():
            torch.ones(3).double()


@pytest.mark.parametrize("arch", ARCHS)
def test_scoring_and_generation_create_no_float64(models, arch):
    model, ids = models[arch], _ids(70, seed=3)
    with Float64Guard():
        for method in ("streaming_llm", "window", "sliding_recompute"):
            score_sequences(model, [ids, ids[:40]], policy_for(method, 4, 12), 16)
        for kernel in (None, "eager", REFERENCE_KERNEL):
            out = score_sequences(model, [ids], policy_for("dense"), 16, attn_implementation=kernel)
            assert out[0].nll.dtype == torch.float32
        generate(model, ids[:30], policy_for("streaming_llm", 4, 12), 20, decode=str, chunk_size=8)
        generate(model, ids[:30], policy_for("dense"), 5, decode=str, chunk_size=8)


# ---------------------------------------------------------------- dense: the model's own kernel
@pytest.mark.parametrize("arch", ARCHS)
def test_dense_kernels_agree_with_a_plain_forward(models, arch):
    model, ids = models[arch], _ids(90, seed=4)
    ref = plain_nll(model, ids)
    for kernel in ("sdpa", "eager", REFERENCE_KERNEL, "test_clean"):
        for chunk in (1, 32, 512):
            got = score_sequences(model, [ids], policy_for("dense"), chunk, attn_implementation=kernel)[0].nll
            assert torch.allclose(got.double(), ref, atol=1e-4, rtol=0), (kernel, chunk)


def test_dense_default_is_the_models_own_kernel(models):
    """A broken kernel the model was loaded with is what dense runs by default (the seed's baseline)."""
    model, ids = models["llama"], _ids(60, seed=5)
    ref = plain_nll(model, ids)
    with attention_kernel(model, "test_leaky"):
        leaky_default = score_sequences(model, [ids], policy_for("dense"), 16)[0].nll
    assert (leaky_default.double() - ref).abs().max() > 0.1  # it used the leaky kernel
    assert model.config._attn_implementation != "test_leaky"


# ---------------------------------------------------------------- measured numerics
@pytest.mark.parametrize("arch", ARCHS)
def test_kernel_error_is_small_for_clean_kernels_and_flags_noise(models, arch):
    model, seqs = models[arch], [_ids(120, seed=6), _ids(80, seed=7)]
    for kernel in ("sdpa", "eager", REFERENCE_KERNEL):
        err = kernel_error(model, seqs, kernel, chunk_size=32)
        assert err.max < 1e-4 and err.nonfinite == 0, (kernel, err.max)
        assert [len(t) for t in err.abs_dnll] == [119, 79]
    noisy = kernel_error(model, seqs, "test_noisy", chunk_size=32)
    assert noisy.mean > 1e-3 and noisy.kernel == "test_noisy"
    late, early = noisy.abs_dnll[0][60:].mean(), noisy.abs_dnll[0][:20].mean()
    assert late > early  # the noise grows with position, and the error by position shows it


def test_kernel_error_of_low_precision_against_float32_reference():
    model = make_model("llama", vocab=VOCAB).to(torch.bfloat16)
    err = kernel_error(model, [_ids(60, seed=8)], "sdpa", chunk_size=16)
    assert err.reference.startswith(f"{REFERENCE_KERNEL}/float32/")
    assert 1e-5 < err.mean < 0.5  # bfloat16 costs something, but not everything


@pytest.mark.parametrize("arch", ARCHS)
def test_causality_probe_flags_a_kernel_that_sees_the_future(models, arch):
    model, ids = models[arch], _ids(150, seed=9)
    for kernel in ("sdpa", "eager", REFERENCE_KERNEL, "test_noisy"):
        probe = causality_probe(model, ids, kernel, chunk_size=64)
        assert probe.positions and probe.max < 1e-4, (kernel, probe.max_abs_dlogit)
    leaky = causality_probe(model, ids, "test_leaky", chunk_size=64)
    assert leaky.max > 1e-2 and all(d > 1e-2 for d in leaky.max_abs_dlogit), leaky.max_abs_dlogit
    assert model.config._attn_implementation not in ("test_leaky", REFERENCE_KERNEL)


@pytest.mark.parametrize("model_type,extra,kernels", [
    ("mistral", {"sliding_window": 12}, ("sdpa", "eager")),
    # sliding + global layers with softcapping; learned sinks (transformers gives both eager only)
    ("gemma2", {"sliding_window": 12, "attn_logit_softcapping": 5.0}, ("eager",)),
    ("gpt_oss", {"sliding_window": 12, "num_local_experts": 4, "num_experts_per_tok": 2}, ("eager",)),
])
def test_kernel_checks_follow_the_models_own_attention(model_type, extra, kernels):
    """The reference of the kernel checks takes the model's window, softcap and learned sinks: a sound kernel
    has no kernel error and no attention error on these models (the reference used to ignore them)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from lm_eval_streaming.core.kernel_checks import attention_error

    torch.manual_seed(0)
    config = AutoConfig.for_model(model_type, vocab_size=VOCAB, hidden_size=64, intermediate_size=128,
                                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                  **extra)
    model = AutoModelForCausalLM.from_config(config).float().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "q_proj" in name or "k_proj" in name:
                p.mul_(4)
    seqs = [_ids(70, seed=11), _ids(50, seed=12)]
    for kernel in kernels:
        err = kernel_error(model, seqs, kernel, chunk_size=16)
        assert err.max < 1e-4 and err.nonfinite == 0, (kernel, err.max)
        attn, _ = attention_error(model, seqs, kernel, chunk_size=16)
        assert attn.max < 1e-4, (kernel, attn.max)
