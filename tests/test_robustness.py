"""Bad input gets a clear error naming the value; numerics problems are reported, never averaged away."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch
from conftest import load_tokenizer, make_model

from lm_eval_streaming.core.architectures import UnsupportedArchitecture, check_supported
from lm_eval_streaming.core.methods import policy_for
from lm_eval_streaming.options import StreamingArgError
from lm_eval_streaming.core.diagnostics import Diagnostics
from lm_eval_streaming.core.memory import InsufficientMemory
from lm_eval_streaming.core.scoring import score_sequences


@pytest.mark.parametrize("model_type,config_kwargs,fragment", [
    ("gpt2", {}, "learned absolute position"),
    ("bloom", {}, "ALiBi"),
])
def test_unsupported_architectures_are_refused_by_name(model_type, config_kwargs, fragment):
    from transformers import AutoConfig

    config = AutoConfig.for_model(model_type, **config_kwargs)
    with pytest.raises(UnsupportedArchitecture) as err:
        check_supported(config, policy_for("streaming_llm"))
    assert repr(model_type) in str(err.value) and fragment in str(err.value)
    check_supported(config, policy_for("dense"))  # dense is a plain forward: any causal LM


def test_sliding_window_models_position_methods_yes_score_methods_refused():
    from transformers import AutoConfig

    for config in (AutoConfig.for_model("mistral", sliding_window=None),
                   AutoConfig.for_model("qwen2", use_sliding_window=False)):
        for method in ("streaming_llm", "window", "h2o"):
            check_supported(config, policy_for(method))
    for config in (AutoConfig.for_model("mistral", sliding_window=4096),
                   AutoConfig.for_model("qwen2", use_sliding_window=True, sliding_window=4096, max_window_layers=0)):
        for method in ("streaming_llm", "window", "sliding_recompute", "dense"):
            check_supported(config, policy_for(method))
        with pytest.raises(UnsupportedArchitecture, match="sliding-window layers .*method=h2o"):
            check_supported(config, policy_for("h2o"))


def test_streaming_hf_refuses_gpt2_before_loading_weights(tmp_path):
    from transformers import GPT2Config

    GPT2Config(n_layer=1, n_embd=16, n_head=2).save_pretrained(tmp_path)  # a config, no weights at all
    load_tokenizer().save_pretrained(tmp_path)
    from lm_eval_streaming.harness.model import StreamingHFLM

    with pytest.raises(UnsupportedArchitecture, match="'gpt2'"):
        StreamingHFLM(pretrained=str(tmp_path), device="cpu")


def test_missing_path_and_missing_tokenizer(tmp_path):
    from lm_eval_streaming.harness.model import StreamingHFLM

    with pytest.raises(StreamingArgError, match="no such checkpoint directory"):
        StreamingHFLM(pretrained=str(tmp_path / "nope"))
    make_model("llama").save_pretrained(tmp_path / "m")
    with pytest.raises(StreamingArgError, match="has no tokenizer files"):
        StreamingHFLM(pretrained=str(tmp_path / "m"))


@pytest.mark.parametrize("key", ["recent", "recnt_size", "start"])
def test_typo_of_own_arg_is_named(key):
    from lm_eval_streaming.harness.model import StreamingHFLM

    with pytest.raises(StreamingArgError, match=f"unknown model arg '{key}'"):
        StreamingHFLM(pretrained="/nope", **{key: 4})


@pytest.mark.slow
def test_cli_user_error_is_one_line_without_traceback(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "lm_eval", "--model", "streaming_hf", "--model_args",
                           "method=sinks", "--tasks", "streaming_ppl_500"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "lm_eval_streaming: error: method='sinks' is unknown: expected one of" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_dense_refuses_when_estimated_memory_exceeds_free(monkeypatch):
    import lm_eval_streaming.core.memory as memory

    model = make_model("llama")
    monkeypatch.setattr(memory, "available_bytes", lambda device: 50 * 2**20)  # 50 MiB free
    ids = list(range(3000))
    with pytest.raises(InsufficientMemory, match="method=dense over 3000 tokens"):
        score_sequences(model, [ids], policy_for("dense"), chunk_size=512)
    score_sequences(model, [ids[:600]], policy_for("streaming_llm", 4, 60), chunk_size=64)  # fits


@pytest.mark.slow
def test_streaming_memory_is_flat_on_100k_tokens():
    from transformers import LlamaConfig, LlamaForCausalLM

    
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1,
                                         max_position_embeddings=512)).eval()
    peaks = {}
    for n in (2_000, 100_000):
        diag = Diagnostics()
        out = score_sequences(model, [[i % 64 for i in range(n)]], policy_for("streaming_llm", 4, 60), 4096, diag)
        assert torch.isfinite(out[0].nll).all()
        peaks[n] = diag.peak_kv_bytes
    assert peaks[100_000] == peaks[2_000]


def _rolling(lm, texts):
    from lm_eval.api.instance import Instance

    reqs = [Instance(request_type="loglikelihood_rolling", doc={}, arguments=(t,), idx=i) for i, t in enumerate(texts)]
    return lm.loglikelihood_rolling(reqs, disable_tqdm=True)


@pytest.fixture(scope="module")
def tiny_lm(tiny_model_dirs):
    from lm_eval_streaming.harness.model import StreamingHFLM

    return StreamingHFLM(pretrained=str(tiny_model_dirs["llama"]), device="cpu", recent_size=8, start_size=2)


def test_empty_one_token_and_short_documents(tiny_lm):
    empty, one, short = _rolling(tiny_lm, ["", "Hello", "A short text, shorter than the cache."])
    assert float(empty) == 0.0 and empty.n_tokens == 0
    assert one.n_tokens == 1 and math.isfinite(float(one))
    assert short.n_tokens == len(tiny_lm.tok_encode("A short text, shorter than the cache."))


def test_nan_logits_are_reported_not_averaged(tiny_lm):
    from lm_eval_streaming.harness.task_metrics import process_results

    with torch.no_grad():
        saved = tiny_lm.model.lm_head.weight[7].clone()
        tiny_lm.model.lm_head.weight[7] = float("nan")
    try:
        before = tiny_lm.diagnostics.nan_logits
        (res,) = _rolling(tiny_lm, ["The old king walks to the castle by the river."])
    finally:
        with torch.no_grad():
            tiny_lm.model.lm_head.weight[7] = saved
    assert math.isnan(float(res)) and res.n_nonfinite == res.n_tokens
    assert tiny_lm.diagnostics.nan_logits > before
    metrics = process_results({"text": "The old king walks to the castle by the river."}, [res])
    assert metrics["nonfinite_tokens"] == (res.n_tokens, 1) or metrics["nonfinite_tokens"] == res.n_tokens \
        or metrics["nonfinite_tokens"][0] == res.n_tokens


def test_nonfinite_attention_scores_are_counted_only_where_attended():
    from lm_eval_streaming.core.attention import ScoreStats

    scores = torch.tensor([[1.0, -7.0, 0.0], [float("inf"), 2.0, float("nan")]])
    stats = ScoreStats()
    stats.observe(scores.clone())
    assert stats.nonfinite_scores == 2 and stats.max_abs_score == 7.0
    clean = ScoreStats()
    clean.observe(torch.tensor([[3.0, -9.5]]))
    assert clean.nonfinite_scores == 0 and clean.max_abs_score == 9.5
