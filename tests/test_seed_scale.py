"""Issue 16, the seed's scale: dense as the seed ran it (``KERNEL@full``: one plain forward per sample),
kernel checks without a second copy of the weights (every attention call paired with the float32
reference from the same q/k/v), and the records / table / arguments of both and of the position_shift
ablation. References are written here: a plain HF forward, a probe kernel, kernels broken on purpose."""

from __future__ import annotations

import math
import random

import pytest
import torch
from conftest import load_tokenizer, make_model
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from lm_eval_streaming.core.attention import REFERENCE_KERNEL
from lm_eval_streaming.core.methods import policy_for
from lm_eval_streaming.core.scoring import score_sequences
from lm_eval_streaming.options import StreamingArgError

VOCAB = 1000
ARCHS = ("gpt_neox", "llama")
CALLS: list[tuple[int, int, int]] = []  # (layer, query length, key length) seen by the probe kernel


def probe_kernel(module, query, key, value, attention_mask, *args, **kwargs):
    CALLS.append((module.layer_idx, query.shape[2], key.shape[2]))
    return sdpa_attention_forward(module, query, key, value, attention_mask, *args, **kwargs)


def future_kernel(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Broken on purpose: every query also sees the next key (what pytorch#195910 does on MPS)."""
    q, k = query.shape[2], key.shape[2]
    groups = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(groups, 1), value.repeat_interleave(groups, 1)
    allowed = torch.arange(k)[None, :] <= torch.arange(k - q, k)[:, None] + 1
    scores = (query @ key.transpose(2, 3)) * (scaling or query.shape[-1] ** -0.5)
    probs = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)
    return (probs @ value).transpose(1, 2).contiguous(), None


def noisy_kernel(module, query, key, value, attention_mask, *args, **kwargs):
    out, weights = sdpa_attention_forward(module, query, key, value, attention_mask, *args, **kwargs)
    return out + 1e-2 * torch.randn_like(out), weights


AttentionInterface.register("test_probe", probe_kernel)
AttentionInterface.register("test_future", future_kernel)
AttentionInterface.register("test_noise16", noisy_kernel)


def _ids(n, seed=0):
    g = random.Random(seed)
    return [g.randrange(VOCAB) for _ in range(n)]


@pytest.fixture(scope="module")
def models():
    return {arch: make_model(arch, vocab=VOCAB) for arch in ARCHS}


@torch.no_grad()
def plain_forward_nll(model, ids) -> torch.Tensor:
    """What the seed computed: one ``model(input_ids)`` over the whole sample, written here."""
    logits = model(input_ids=torch.tensor([ids])).logits[0].double()
    return -torch.log_softmax(logits[:-1], -1).gather(-1, torch.tensor(ids[1:])[:, None]).squeeze(-1)


# ---------------------------------------------------------------- (a) dense in one call
@pytest.mark.parametrize("arch", ARCHS)
def test_one_call_is_one_attention_call_per_layer_over_the_whole_sample(models, arch):
    model, ids = models[arch], _ids(70, seed=1)
    layers = model.config.num_hidden_layers
    CALLS.clear()
    score_sequences(model, [ids], policy_for("dense"), chunk_size=16, attn_implementation="test_probe", one_call=True)
    assert CALLS == [(layer, 70, 70) for layer in range(layers)]
    CALLS.clear()  # the chunked path, for contrast: one call per layer per chunk, later chunks see the cache
    score_sequences(model, [ids], policy_for("dense"), chunk_size=16, attn_implementation="test_probe")
    assert len(CALLS) == layers * math.ceil(69 / 16) and CALLS[-1] == (layers - 1, 69 - 64, 69)


@pytest.mark.parametrize("arch", ARCHS)
def test_one_call_equals_chunked_and_a_plain_forward(models, arch):
    model, ids = models[arch], _ids(90, seed=2)
    plain = plain_forward_nll(model, ids)
    dense = policy_for("dense")
    for kernel in (None, "sdpa", "eager", REFERENCE_KERNEL):
        full = score_sequences(model, [ids], dense, 16, attn_implementation=kernel, one_call=True)[0].nll.double()
        chunked = score_sequences(model, [ids], dense, 16, attn_implementation=kernel)[0].nll.double()
        assert (full - chunked).abs().max() < 1e-4, kernel
        assert (full - plain).abs().max() < 1e-4, kernel


def test_one_call_is_for_dense_only(models):
    with pytest.raises(StreamingArgError, match="chunk_size=full.*method=streaming_llm"):
        score_sequences(models["llama"], [_ids(20)], policy_for("streaming_llm", 2, 4), 8, one_call=True)


@pytest.mark.parametrize("arch", ARCHS)
def test_causality_probe_on_the_one_call_path_flags_a_kernel_that_sees_the_future(models, arch):
    from lm_eval_streaming.core.kernel_checks import causality_probe

    model, ids = models[arch], _ids(120, seed=3)
    for kernel in ("sdpa", "eager", REFERENCE_KERNEL):
        assert causality_probe(model, ids, kernel, chunk_size=32, one_call=True).max < 1e-4, kernel
    leaky = causality_probe(model, ids, "test_future", chunk_size=32, one_call=True)
    assert min(leaky.max_abs_dlogit) > 1e-2, leaky.max_abs_dlogit


# ---------------------------------------------------------------- (b) attention error, same q/k/v
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("one_call", [False, True])
def test_attention_error_small_for_clean_kernels_and_flags_broken_ones(models, arch, one_call):
    from lm_eval_streaming.core.kernel_checks import attention_error

    model, seqs = models[arch], [_ids(100, seed=4), _ids(60, seed=5)]
    layers = model.config.num_hidden_layers
    for kernel in ("sdpa", "eager"):
        err, scored = attention_error(model, seqs, kernel, chunk_size=32, one_call=one_call)
        assert err.max < 1e-4 and err.nonfinite == 0, (kernel, err.max)
        assert err.sum_abs.shape == (layers, 100 if one_call else 99)
        assert [len(s.nll) for s in scored] == [99, 59]
    for kernel in ("test_future", "test_noise16"):
        err, _ = attention_error(model, seqs, kernel, chunk_size=32, one_call=one_call)
        assert err.max > 1e-2 and all(m > 1e-3 for m in err.max_by_layer), (kernel, err.max_by_layer)


def test_reference_attention_by_query_blocks_equals_one_block(models):
    """The reference's memory bound (query blocks) does not change what it computes."""
    from lm_eval_streaming.core.kernel_checks import reference_attention

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 4, 40, 16, generator=g), torch.randn(1, 2, 50, 16, generator=g),
               torch.randn(1, 2, 50, 16, generator=g))
    whole = reference_attention(None, q, k, v, 0.25, max_scores=1 << 30)
    blocks = reference_attention(None, q, k, v, 0.25, max_scores=4 * 50 * 3)  # 3 queries per block
    assert torch.allclose(whole, blocks, atol=1e-6)
    # against attention written here: query i at position 10 + i sees keys 0..10+i (GQA: head h uses kv h // 2)
    kk, vv = k.repeat_interleave(2, 1), v.repeat_interleave(2, 1)
    mask = torch.arange(50)[None, :] <= torch.arange(10, 50)[:, None]
    probs = torch.softmax((q @ kk.transpose(2, 3) * 0.25).masked_fill(~mask, float("-inf")), -1)
    assert torch.allclose(whole, (probs @ vv).transpose(1, 2), atol=1e-5)


def test_low_precision_checks_make_no_float32_copy_of_the_weights(tiny_model_dirs, monkeypatch):
    """float16 weights: the benchmark's checks use the same weights (no deepcopy), record that, and still
    measure each attention call against float32 from the same q/k/v."""
    from transformers import AutoModelForCausalLM

    from lm_eval_streaming.benchmark.command import run_benchmark
    from lm_eval_streaming.core import kernel_checks

    def no_copy(*a, **k):
        raise AssertionError("a float32 copy of the weights was made")

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dirs["llama"]).eval().half()
    monkeypatch.setattr(kernel_checks, "float32_reference", no_copy)
    monkeypatch.setattr(torch.nn.Module, "float", no_copy)  # how a float32 copy of the weights is made
    run = run_benchmark(str(tiny_model_dirs["llama"]), methods=[], max_tokens=80, num_samples=2, num_warmup=0,
                        chunk_size=32, dense_attn="sdpa,sdpa@full,lm_eval_streaming", model=model,
                        tokenizer=load_tokenizer(), progress=False)
    sdpa, full, ref = run.rows
    assert (sdpa.one_call, full.one_call, ref.one_call) == (False, True, False)
    for row in (sdpa, full):
        ke = row.kernel_error
        assert ke.reference.startswith(f"{REFERENCE_KERNEL}/float16/") and ke.float32_weights is False
        assert ke.attention_reference.startswith(f"{REFERENCE_KERNEL}/float32")
        assert 0 < ke.attention_max_abs < 1e-1 and len(ke.attention_layers) == model.config.num_hidden_layers
        assert row.causality.max_abs_dlogit_overall < 1e-2
    assert ref.kernel_error.attention_layers is None  # the reference against itself is not a measurement


def test_checks_memory_estimate_is_within_the_budget_for_pythia_6_9b_float16():
    from lm_eval_streaming.benchmark.command import CHECKS_MEMORY_SHARE
    from lm_eval_streaming.benchmark.speed_tables import pythia_model
    from lm_eval_streaming.core.kernel_checks import checks_extra_bytes, float32_copy_bytes

    model = pythia_model("pythia-6.9b", "float16", "meta")
    weights = sum(p.numel() * 2 for p in model.parameters())
    # written out from the shapes: the probe's second KV cache for 2000 tokens, 32 layers x 4096 x 2 bytes x 2
    assert checks_extra_bytes(model, 2000) >= 2 * 32 * 4096 * 2 * 2000
    assert checks_extra_bytes(model, 5000) <= CHECKS_MEMORY_SHARE * weights
    assert float32_copy_bytes(model) == 2 * weights  # what the checks cost before


# ---------------------------------------------------------------- benchmark, records, arguments
def test_benchmark_default_set_has_one_call_dense_and_says_when_it_does_not_fit(tiny_model_dirs, monkeypatch,
                                                                               capsys):
    from transformers import AutoModelForCausalLM

    from lm_eval_streaming.benchmark import command
    from lm_eval_streaming.benchmark.table import format_table
    from lm_eval_streaming.core import memory

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dirs["llama"]).eval()
    kwargs = dict(methods=["streaming_llm"], max_tokens=60, num_samples=1, num_warmup=0, recent_sizes=[8],
                  chunk_size=16, model=model, tokenizer=load_tokenizer(), progress=False, kernel_error=False,
                  causality_probe=False, position_shift="true,false")
    run = command.run_benchmark(str(tiny_model_dirs["llama"]), **kwargs)
    assert [r.label() for r in run.rows] == ["dense[sdpa]", "dense[sdpa@full]", "dense[lm_eval_streaming]",
                                             "streaming_llm 4+8", "streaming_llm noshift 4+8"]
    assert [r.position_shift for r in run.rows] == [None, None, None, True, False]
    table = format_table(run)
    assert "sdpa @full (1 call)" in table and "streaming_llm noshift" in table
    # the memory estimate of one call is what decides: make it not fit
    need = memory.estimate_bytes(model, policy_for("dense"), 60, 1, 16, one_call=True, kernel="sdpa")
    monkeypatch.setattr(memory, "available_bytes", lambda device: need - 1)
    run = command.run_benchmark(str(tiny_model_dirs["llama"]), **kwargs)
    assert "dense[sdpa@full]" not in [r.label() for r in run.rows]
    err = capsys.readouterr().err
    assert err.count("default@full (dense in one call) left out") == 1 and "needs about" in err
    with pytest.raises(memory.InsufficientMemory, match="one call"):  # asked for by name: refused before work
        command.run_benchmark(str(tiny_model_dirs["llama"]), **{**kwargs, "dense_attn": "sdpa,sdpa@full"})


def test_new_row_fields_round_trip_and_old_rows_load_as_none():
    from lm_eval_streaming.records import Row, Run
    from lm_eval_streaming.records.run import AttentionLayerError, Buckets, KernelErrorStats

    ke = KernelErrorStats("lm_eval_streaming/float16/mps", 1e-3, 1e-2, 0, float32_weights=False,
                          attention_reference="lm_eval_streaming/float32 on the same q/k/v/mps",
                          attention_mean_abs=1e-4, attention_max_abs=1e-3, attention_nonfinite=0,
                          attention_layers=[AttentionLayerError(0, 1e-4, 1e-3, Buckets([0, 256, 512], [1e-4, None],
                                                                                        [256, 0]), [1e-3, None])])
    rows = [Row("dense", 0, None, "sdpa", 30.0, math.log(30.0), one_call=True, kernel_error=ke),
            Row("streaming_llm", 4, 252, REFERENCE_KERNEL, 31.0, math.log(31.0), position_shift=False)]
    run = Run("m", 100, 1, "float16", "mps", 512, rows)
    back = Run.from_dict(run.to_dict())
    assert back.rows == rows
    assert [r.label() for r in back.rows] == ["dense[sdpa@full]", "streaming_llm noshift 4+252"]
    old = run.to_dict()
    for row in old["rows"]:
        row.pop("one_call"), row.pop("position_shift")
    row = old["rows"][0]["kernel_error"]
    for key in ("float32_weights", "attention_reference", "attention_mean_abs", "attention_max_abs",
                "attention_nonfinite", "attention_layers"):
        row.pop(key)
    loaded = Run.from_dict(old)
    assert [(r.one_call, r.position_shift) for r in loaded.rows] == [(None, None), (None, None)]
    assert loaded.rows[0].kernel_error.attention_layers is None and loaded.rows[0].kernel_error.float32_weights is None


@pytest.mark.parametrize("value, needle", [("maybe", "position_shift='maybe'"), ("", "position_shift=''"),
                                           ([1], "position_shift=1")])
def test_bad_position_shift_is_one_line(value, needle):
    from lm_eval_streaming.benchmark.args import check_benchmark_args

    with pytest.raises(StreamingArgError) as e:
        check_benchmark_args(position_shift=value)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_dense_attn_accepts_kernel_at_full_and_refuses_unknown_kernels():
    from lm_eval_streaming.benchmark.args import check_dense_attn

    assert check_dense_attn("sdpa@full,sdpa,lm_eval_streaming") == ["sdpa@full", "sdpa", "lm_eval_streaming"]
    with pytest.raises(StreamingArgError, match="dense_attn='nosuch@full'"):
        check_dense_attn("sdpa,nosuch@full")


def test_position_shift_does_not_apply_to_dense():
    with pytest.raises(StreamingArgError, match="position_shift=False does not apply to method=dense"):
        policy_for("dense", position_shift=False)


@pytest.mark.parametrize("method", ["streaming_llm", "h2o"])
def test_position_shift_takes_the_same_spellings_for_every_method(method):
    """lm-eval's model_args pass strings: true/false/1/0 mean the bool for every method, anything else is one line."""
    for word, value in (("false", False), ("True", True), ("0", False), (1, True)):
        assert policy_for(method, 4, 8, position_shift=word).position_shift is value
    with pytest.raises(StreamingArgError, match=r"position_shift='maybe' is not allowed: expected true or false"):
        policy_for(method, 4, 8, position_shift="maybe")


def test_experiment_config_grids_position_shift_and_one_call(tmp_path):
    from lm_eval_streaming.experiment.config import ConfigError, expand_cells, load_config

    path = tmp_path / "c.yaml"
    path.write_text("name: x\nmodel_id: smollm2-135m\nmethods: [streaming_llm]\nmax_tokens: 100\ndevice: cpu\n"
                    "dense_attn: [default@full]\ngrid:\n  position_shift: [[true, false], false]\n")
    cells = expand_cells(load_config(path))
    assert [c["position_shift"] for c in cells] == [[True, False], [False]]
    assert all(c["dense_attn"] == ["default@full"] for c in cells)
    path.write_text("name: x\nmodel_id: smollm2-135m\nmethods: [streaming_llm]\nmax_tokens: 100\n"
                    "position_shift: sometimes\n")
    with pytest.raises(ConfigError, match="position_shift"):
        load_config(path)


# ---------------------------------------------------------------- lm-eval: chunk_size=full
def test_lm_eval_adapter_chunk_size_full_is_one_plain_forward(tiny_model_dirs):
    from transformers import AutoModelForCausalLM

    from lm_eval_streaming.harness.model import StreamingHFLM

    path = str(tiny_model_dirs["llama"])
    ids = [_ids(50, seed=7), _ids(33, seed=8)]
    full = StreamingHFLM(pretrained=path, device="cpu", method="dense", chunk_size="full", batch_size=2)
    chunked = StreamingHFLM(pretrained=path, device="cpu", method="dense", chunk_size=8)
    plain = AutoModelForCausalLM.from_pretrained(path).eval()
    for a, b, seq in zip(full._score(ids, "full", True), chunked._score(ids, "chunked", True), ids):
        assert (a.nll.double() - plain_forward_nll(plain, seq)).abs().max() < 1e-4
        assert (a.nll - b.nll).abs().max() < 1e-4
    assert full.get_model_info()["streaming_chunk_size"] == "full"
    assert "chunk_size=full" in full.cache_fingerprint() and "chunk_size=8" in chunked.cache_fingerprint()


def test_lm_eval_adapter_refuses_chunk_size_full_for_a_cache_method_before_loading():
    from lm_eval_streaming.harness.model import StreamingHFLM

    with pytest.raises(StreamingArgError, match="chunk_size=full .*method=streaming_llm"):
        StreamingHFLM(pretrained="/nonexistent/never/loaded", method="streaming_llm", chunk_size="full")


def test_run_identity_reads_chunk_size_full():
    from lm_eval_streaming.records.identity import run_identity

    ident = run_identity({"config": {"model": "streaming_hf", "model_args": "method=dense,chunk_size=full",
                                     "streaming_method": "dense", "streaming_chunk_size": "full"}})
    assert ident["chunk_size"] == "full" and ident["method"] == "dense"
