"""Whole-forward dtype error (core/whole_forward.py): defects injected OUTSIDE the attention kernel (rotary
cos/sin computed in half precision, a norm that overflows in float16) are found and located; a sound float32
run reports exactly 0; the float32 shadow is the same forward as a float32 copy of the (rounded) weights."""

from __future__ import annotations

import copy
import random
import types

import pytest
import torch
from conftest import load_tokenizer, make_model, sharpen

from lm_eval_streaming.core.methods import baseline_policy, policy_for
from lm_eval_streaming.core.scoring import score_sequences
from lm_eval_streaming.core.whole_forward import shadow_extra_bytes, whole_forward_error

VOCAB = 1000
N_TOKENS = 400


def _ids(n, seed=0):
    g = random.Random(seed)
    return [g.randrange(VOCAB) for _ in range(n)]


@pytest.fixture(scope="module")
def neox():
    return make_model("gpt_neox", vocab=VOCAB, max_positions=4096)


@pytest.fixture(scope="module")
def neox_full_rotary():
    return full_rotary_model(VOCAB)


def full_rotary_model(vocab: int):
    """Rotary on every head dim (8 frequencies), for the rotary defect at Pythia-like lengths."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(0)
    cfg = GPTNeoXConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=4, rotary_pct=1.0, max_position_embeddings=4096,
                        use_parallel_residual=True)
    return sharpen(GPTNeoXForCausalLM(cfg)).float().eval()


def half_precision_rotary(model):
    """gpt-neox#1003 written here: the rotary angles and cos/sin in the activations' dtype (in float16 the
    angle position * inv_freq is rounded, so cos/sin are wrong at large positions)."""
    rotary = model.gpt_neox.rotary_emb

    def forward(self, x, position_ids):
        angles = position_ids[:, :, None].to(x.dtype) * self.inv_freq.to(x.dtype)[None, None, :]
        emb = torch.cat([angles, angles], dim=-1)
        return emb.cos() * self.attention_scaling, emb.sin() * self.attention_scaling

    rotary.forward = types.MethodType(forward, rotary)
    return model


def large_activations(model, layer: int):
    """Embeddings with std 40 (sum(x^2) over 64 dims is then past float16's 65504) and ``layer``'s attention
    output scaled as much, so what its input norm feeds matters next to the residual stream."""
    with torch.no_grad():
        model.gpt_neox.embed_in.weight.normal_(0, 40.0)
        model.gpt_neox.layers[layer].attention.dense.weight.mul_(40.0)
    return model


def overflowing_norm(model, layer: int):
    """A LayerNorm whose variance is a sum of squares in the activations' dtype: in float16 it overflows to
    inf once sum(x^2) > 65504, and the layer's input comes out as zeros."""
    norm = model.gpt_neox.layers[layer].input_layernorm

    def forward(self, x):
        centered = x - x.mean(-1, keepdim=True)
        var = (centered * centered).sum(-1, keepdim=True) / x.shape[-1]  # no upcast: the defect
        return centered / torch.sqrt(var + self.eps) * self.weight + self.bias

    norm.forward = types.MethodType(forward, norm)
    return model


POLICIES = {"dense chunked": (baseline_policy(), False), "dense one call": (baseline_policy(), True),
            "streaming_llm": (policy_for("streaming_llm", 4, 60), False)}


@pytest.mark.parametrize("path", list(POLICIES))
def test_sound_float32_reports_zero(neox, path):
    policy, one_call = POLICIES[path]
    err = whole_forward_error(neox, [_ids(N_TOKENS)], policy, 128, one_call=one_call)
    assert err.max == 0.0 and err.nonfinite == 0
    assert err.first_divergence is None
    assert err.modules and all(m.max_rel == 0.0 for m in err.modules)


@pytest.mark.parametrize("path", list(POLICIES))
def test_shadow_is_float32_copy_of_the_same_forward(neox, path):
    """The shadow's NLLs = the same path scored by an independent float32 copy of the float16-rounded weights;
    the error is |NLL(float16) - that|, computed here from a plain float16 scoring."""
    policy, one_call = POLICIES[path]
    half = copy.deepcopy(neox).half()
    seq = _ids(N_TOKENS)
    err = whole_forward_error(half, [seq], policy, 128, one_call=one_call)
    ref32 = score_sequences(copy.deepcopy(half).float(), [seq], policy, 128, one_call=one_call)[0].nll
    ref16 = score_sequences(half, [seq], policy, 128, one_call=one_call)[0].nll
    assert torch.allclose(err.shadow_nll[0], ref32, atol=1e-5)
    assert torch.allclose(err.abs_dnll[0], (ref16 - ref32).abs(), atol=1e-5)
    assert 0 < err.max < 0.05  # float16 rounding, no defect
    assert err.first_divergence is None, err.first_divergence
    assert next(half.parameters()).dtype == torch.float16  # every module restored to its dtype
    assert all(p.dtype == torch.float16 for p in half.parameters())


def test_half_precision_rotary_found_and_located(neox_full_rotary):
    neox, n = neox_full_rotary, 2600  # past 2048, where float16 no longer holds every integer position
    seq = _ids(n)
    sound = whole_forward_error(copy.deepcopy(neox).half(), [seq], baseline_policy(), 512)
    broken = half_precision_rotary(copy.deepcopy(neox).half())
    err = whole_forward_error(broken, [seq], baseline_policy(), 512)
    d = err.first_divergence
    assert d is not None and d.kind == "rotary" and d.name.endswith("rotary_emb"), d
    assert d.position > 16  # exact at small positions, wrong once the angle's rounding matters
    assert err.max > 5 * sound.max
    late, early = err.abs_dnll[0][2048:].mean(), err.abs_dnll[0][:256].mean()
    assert late > 5 * early  # grows with the position
    # the same defect is invisible in float32: the shadow and the run agree exactly
    assert whole_forward_error(half_precision_rotary(copy.deepcopy(neox)), [seq], baseline_policy(), 512).max == 0


@pytest.mark.parametrize("path", ["dense chunked", "dense one call"])
def test_overflowing_norm_found_and_located(neox, path):
    policy, one_call = POLICIES[path]
    sound = large_activations(copy.deepcopy(neox), layer=1).half()
    broken = overflowing_norm(copy.deepcopy(sound), layer=1)
    seq = _ids(200)
    sound_err = whole_forward_error(sound, [seq], policy, 128, one_call=one_call)
    assert sound_err.first_divergence is None, sound_err.first_divergence
    err = whole_forward_error(broken, [seq], policy, 128, one_call=one_call)
    d = err.first_divergence
    assert d is not None and (d.kind, d.layer, d.position) == ("norm", 1, 0), d
    assert d.name == "gpt_neox.layers.1.input_layernorm"
    assert err.max > 10 * sound_err.max
    layer0 = next(m for m in err.modules if m.name == "gpt_neox.layers.0.input_layernorm")
    assert layer0.first_position is None  # torch's own LayerNorm accumulates in float32: sound


def test_extra_memory_is_one_module(neox):
    half = copy.deepcopy(neox).half()
    weights32 = sum(p.numel() * 4 for p in half.parameters())
    assert 0 < shadow_extra_bytes(half) < weights32 / 2
    assert shadow_extra_bytes(neox) == 0  # float32: nothing cast


@pytest.mark.slow
def test_benchmark_records_and_names_a_defect_outside_the_kernel():
    """benchmark: a float16 model with a half-precision rotary gets a whole-forward record on its dense rows
    naming the rotary; the record survives the JSON round trip; the sound float16 model's names nothing."""
    from lm_eval_streaming.benchmark.command import run_benchmark
    from lm_eval_streaming.records import Run

    tok = load_tokenizer()
    neox_full_rotary = full_rotary_model(tok.vocab_size)
    runs = {}
    for name, model in (("sound", copy.deepcopy(neox_full_rotary).half()),
                        ("broken", half_precision_rotary(copy.deepcopy(neox_full_rotary).half()))):
        runs[name] = run_benchmark(max_tokens=600, num_samples=1, num_warmup=0, dense_attn="default,default@full",
                                   kernel_error=False, causality_probe=False, model=model, tokenizer=tok,
                                   progress=False, whole_forward="all", recent_sizes=[60])
    for name, run in runs.items():
        run = Run.from_dict(run.to_dict())
        assert all(r.whole_forward is not None for r in run.rows)
        divergences = [r.whole_forward.first_divergence for r in run.rows]
        if name == "sound":
            assert divergences == [None] * len(run.rows)
        else:
            assert all(d is not None and d.kind == "rotary" for d in divergences), divergences
        full = next(r for r in run.rows if r.one_call)
        assert full.whole_forward.attention_located and full.whole_forward.max_rel_by_kind["attention"] >= 0


def test_no_float64_on_the_device_path(neox):
    """The shadow, the location and the doctor's kernel checks run where the model runs: no float64 (MPS)."""
    from test_kernels import Float64Guard

    from lm_eval_streaming.doctor import probes

    half = half_precision_rotary(copy.deepcopy(neox).half())
    q, k, v = (t.half() for t in probes.activations(64, 1, 16))
    with Float64Guard():
        for path in POLICIES.values():
            whole_forward_error(half, [_ids(80)], path[0], 32, one_call=path[1])
        ref = probes.reference_output(q, k, v)
        for (kernel, how), fn in probes.kernel_calls(["sdpa", "eager", "lm_eval_streaming"]).items():
            assert probes.check_kernel(fn, kernel, how, q, k, v, ref).error is None
