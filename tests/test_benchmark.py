"""``benchmark``: the run it records (checked against a plain HF forward), argument validation before
any work, distinct samples, device fallback, dense through several kernels with measured numerics."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import VOCAB, load_tokenizer

from lm_eval_streaming.options import StreamingArgError
from lm_eval_streaming.records import load_runs
from lm_eval_streaming.benchmark.samples import load_samples


def bench_cli(*args, timeout=600):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "lm_eval_streaming.cli", "benchmark", *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def no_weights(tiny_model_dirs, tmp_path_factory):
    """A checkpoint directory with config and tokenizer but no weights: loading the model fails, so any
    error that names an argument instead was raised before the model was loaded."""
    path = tmp_path_factory.mktemp("no-weights")
    for f in tiny_model_dirs["llama"].iterdir():
        if not f.name.endswith(".safetensors"):
            shutil.copy(f, path / f.name)
    return path


@torch.no_grad()
def plain_sample_nll(model, ids) -> torch.Tensor:
    """Per-token NLL from one plain HF forward over the whole sample (independent of the project's code)."""
    logits = model(input_ids=torch.tensor([ids])).logits[0].double()
    return -torch.log_softmax(logits[:-1], -1).gather(-1, torch.tensor(ids[1:])[:, None]).squeeze(-1)


@pytest.mark.slow
def test_benchmark_run_matches_a_plain_forward(tiny_model_dirs, tmp_path):
    from transformers import AutoModelForCausalLM

    model_dir, out = tiny_model_dirs["llama"], tmp_path / "run.json"
    proc = bench_cli("--model_id", model_dir, "--max_tokens", 200, "--num_samples", 3, "--recent_sizes", 16,
                     "--num_warmup", 1, "--chunk_size", 64, "--output", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = load_runs([out])
    assert [(r.method, r.attn_implementation, r.recent_size) for r in run.rows] == [
        ("dense", "sdpa", None), ("dense", "sdpa", None), ("dense", "lm_eval_streaming", None),
        ("streaming_llm", "lm_eval_streaming", 16)]
    assert [r.one_call for r in run.rows] == [False, True, False, None]  # default@full: the seed's plain forward
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    reference = [plain_sample_nll(model, s) for s in load_samples(load_tokenizer(), 200, 3)]
    all_tokens = torch.cat(reference)
    for dense in run.dense_rows():
        assert dense.ppl == pytest.approx(math.exp(float(all_tokens.mean())), rel=1e-4)
        assert dense.per_sample_nll == pytest.approx([float(r.mean()) for r in reference], abs=1e-4)
        assert dense.kernel_error.max_abs_dnll < 1e-4 and dense.kernel_error.reference.startswith("lm_eval_streaming")
        assert dense.causality.max_abs_dlogit_overall < 1e-4 and dense.causality.samples_probed == 1
    base, full, ref_kernel, stream = run.rows
    assert base.delta_reference is None and base.delta_nll_vs_dense is None  # the reference of the deltas
    assert ref_kernel.delta_reference == stream.delta_reference == full.delta_reference == "sdpa"
    assert stream.delta_nll_vs_dense == pytest.approx(
        sum(a - b for a, b in zip(stream.per_sample_nll, base.per_sample_nll)) / 3)
    assert stream.kernel_error is None and stream.causality is None
    assert base.max_abs_attn_score is None and ref_kernel.max_abs_attn_score is not None  # sdpa cannot observe scores
    assert run.sample_spec.endswith("disjoint-windows/1") and run.trained_context == 256
    sdpa_line = next(line for line in proc.stdout.splitlines() if "| sdpa " in line)
    assert "n/a" in sdpa_line


@pytest.mark.slow
def test_flags_choose_kernels_and_turn_checks_off(tiny_model_dirs, tmp_path):
    out = tmp_path / "run.json"
    proc = bench_cli("--model_id", tiny_model_dirs["llama"], "--max_tokens", 100, "--num_samples", 2,
                     "--recent_sizes", 16, "--num_warmup", 0, "--dense_attn", "eager,lm_eval_streaming",
                     "--no_kernel_error", "--no_causality_probe", "--output", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = load_runs([out])
    assert [r.attn_implementation for r in run.dense_rows()] == ["eager", "lm_eval_streaming"]
    assert all(r.kernel_error is None and r.causality is None for r in run.rows)
    assert [r.delta_reference for r in run.rows] == [None, "eager", "eager"]  # model's own not listed: the first


def test_a_broken_kernel_is_flagged_in_its_row(tiny_model_dirs):
    from test_kernels import leaky_kernel, noisy_kernel  # noqa: F401  (registers test_leaky / test_noisy)
    from transformers import AutoModelForCausalLM

    from lm_eval_streaming.benchmark.command import run_benchmark

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dirs["llama"]).eval()
    run = run_benchmark(str(tiny_model_dirs["llama"]), methods=[], max_tokens=120, num_samples=2, num_warmup=0,
                        chunk_size=64, dense_attn="sdpa,test_leaky,test_noisy", model=model,
                        tokenizer=load_tokenizer(), progress=False)
    rows = {r.attn_implementation: r for r in run.rows}
    assert rows["sdpa"].causality.max_abs_dlogit_overall < 1e-4 and rows["sdpa"].kernel_error.max_abs_dnll < 1e-4
    assert min(rows["test_leaky"].causality.max_abs_dlogit) > 1e-2
    assert rows["test_noisy"].kernel_error.mean_abs_dnll > 1e-3


# ---------------------------------------------------------------- validation before any work
def test_a_row_the_model_refuses_stops_the_run_before_any_row_is_scored(tiny_model_dirs, monkeypatch):
    """A method that fails on the loaded model (here the rotary probe: a rotation the other way) is found
    before the dense rows run, not after them (real Gemma-3 in bfloat16 lost 4.5 minutes of dense rows so)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    import lm_eval_streaming.benchmark.rows as rows
    import lm_eval_streaming.core.architectures as architectures
    from lm_eval_streaming.benchmark.command import run_benchmark

    monkeypatch.setattr(architectures, "SHIFT_REFUSED", {})
    scored = []
    real = rows.score_row
    monkeypatch.setattr(rows, "score_row", lambda *a, **k: scored.append(a[2]) or real(*a, **k))
    torch.manual_seed(0)
    config = AutoConfig.for_model("nanochat", vocab_size=VOCAB, hidden_size=64, intermediate_size=128,
                                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    model = AutoModelForCausalLM.from_config(config).float().eval()
    with pytest.raises(architectures.UnsupportedArchitecture, match="shifts positions"):
        run_benchmark(str(tiny_model_dirs["llama"]), methods=["streaming_llm"], recent_sizes=[16], max_tokens=80,
                      num_samples=1, num_warmup=0, chunk_size=32, dense_attn="sdpa", model=model,
                      tokenizer=load_tokenizer(), progress=False)
    assert scored == []


@pytest.mark.slow
@pytest.mark.parametrize("args, needle", [
    (["--chunk_size", "-100"], "chunk_size=-100"),
    (["--chunk_size", "0"], "chunk_size=0"),
    (["--max_tokens", "1"], "max_tokens=1"),
    (["--num_samples", "0"], "num_samples=0"),
    (["--recent_sizes", "0"], "recent_sizes=0"),
    (["--recent_sizes", "16,x"], "recent_sizes='x'"),
    (["--start_size", "-1"], "start_size=-1"),
    (["--num_warmup", "-1"], "num_warmup=-1"),
    (["--dense_attn", "sdpa,nosuch"], "dense_attn='nosuch'"),
    (["--device", "tpu"], "device='tpu'"),
    (["--num_samples", "1000", "--max_tokens", "20000"], "num_samples=1000"),
])
def test_bad_arguments_fail_before_the_model_loads(no_weights, args, needle):
    proc = bench_cli("--model_id", no_weights, *args)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert needle in proc.stderr and "cannot be loaded" not in proc.stderr, proc.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("model_id", ["/does/not/exist", "./nope"])
def test_missing_model_path_is_one_line(model_id, tmp_path):
    proc = bench_cli("--model_id", model_id, "--output", tmp_path / "r.json")
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and len(lines) == 1, proc.stderr[-3000:]
    assert model_id in lines[0] and "no such checkpoint directory" in lines[0]


@pytest.mark.slow
def test_unwritable_output_fails_before_work(tiny_model_dirs, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    proc = bench_cli("--model_id", tiny_model_dirs["llama"], "--output", blocker / "run.json")
    assert proc.returncode == 2 and "not writable" in proc.stderr and "benchmark rows" not in proc.stderr


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("device", ["cuda", "mps"])
def test_missing_device_falls_back_with_a_warning(tiny_model_dirs, tmp_path, device):
    out = tmp_path / "run.json"
    proc = bench_cli("--model_id", tiny_model_dirs["llama"], "--device", device, "--max_tokens", 60,
                     "--num_samples", 1, "--recent_sizes", 8, "--num_warmup", 0, "--dense_attn", "default",
                     "--no_kernel_error", "--no_causality_probe", "--output", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"device={device} is not available here; using cpu" in proc.stderr
    assert load_runs([out])[0].device == "cpu"


# ---------------------------------------------------------------- samples
def _find(haystack: list[int], needle: list[int]) -> list[int]:
    first = needle[0]
    return [i for i in range(len(haystack) - len(needle) + 1)
            if haystack[i] == first and haystack[i:i + len(needle)] == needle]


@pytest.mark.parametrize("max_tokens, num_samples", [(2000, 25), (30000, 3)])
def test_samples_are_distinct_disjoint_windows(max_tokens, num_samples):
    """More samples than documents: disjoint windows, located by brute force in the joined corpus."""
    from lm_eval_streaming.benchmark.samples import corpus_file

    tok = load_tokenizer()
    docs = [tok(json.loads(line)["text"], add_special_tokens=False)["input_ids"]
            for line in corpus_file().read_text().splitlines() if line.strip()]
    corpus = [t for d in docs for t in d]
    got = load_samples(tok, max_tokens, num_samples)
    assert len(got) == num_samples and all(len(s) == max_tokens for s in got)
    spans = []
    for s in got:
        starts = _find(corpus, s[:64])
        start = next(i for i in starts if corpus[i:i + max_tokens] == s)
        spans.append((start, start + max_tokens))
    spans.sort()
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:])), "windows overlap"


def test_too_many_samples_are_refused_with_the_count_that_fits():
    with pytest.raises(StreamingArgError, match=r"num_samples=500 with max_tokens=20000: .* holds only \d+"):
        load_samples(load_tokenizer(), 20000, 500)


def test_an_unscored_row_is_an_error_not_a_number(monkeypatch):
    from conftest import make_model

    from lm_eval_streaming.benchmark import rows as benchmark_rows
    from lm_eval_streaming.core.methods import baseline_policy

    monkeypatch.setattr(benchmark_rows, "score_sequences", lambda *a, **k: [])
    with pytest.raises(RuntimeError, match="scored 0 of 9 tokens"):
        benchmark_rows.score_row(make_model("llama"), [list(range(10))], baseline_policy(), 4, 0, 256)


def _bos_tokenizer():
    """The default tokenizer made to put its <|im_start|> (id 1) before every text, as Gemma's puts <bos>."""
    import copy

    from tokenizers.processors import TemplateProcessing

    tok = copy.deepcopy(load_tokenizer())
    tok.backend_tokenizer.post_processor = TemplateProcessing(single="<|im_start|> $A", pair="<|im_start|> $A $B",
                                                              special_tokens=[("<|im_start|>", 1)])
    assert tok("x")["input_ids"][0] == 1 and tok("x", add_special_tokens=False)["input_ids"][0] != 1
    return tok


@pytest.mark.parametrize("max_tokens, num_samples", [(2000, 4), (30000, 2)])
def test_samples_start_with_the_tokens_the_tokenizer_puts_before_a_text(max_tokens, num_samples):
    """A tokenizer that adds a BOS (Gemma) gets it before every sample, then max_tokens - 1 tokens of text, the
    text cut as the windows of a tokenizer without one (brute force: round robin per document, or the joined
    documents for windows longer than a document). A tokenizer without one is unchanged."""
    from lm_eval_streaming.benchmark.samples import corpus_file, sample_spec, text_prefix

    tok, plain_tok = _bos_tokenizer(), load_tokenizer()
    docs = [plain_tok(json.loads(line)["text"], add_special_tokens=False)["input_ids"]
            for line in corpus_file().read_text().splitlines() if line.strip()]
    n = max_tokens - 1
    if all(len(d) >= n for d in docs):
        expected = [d[n * i:n * (i + 1)] for i in range(3) for d in docs if len(d) >= n * (i + 1)]
    else:
        joined = [t for d in docs for t in d]
        expected = [joined[n * i:n * (i + 1)] for i in range(len(joined) // n)]
    got = load_samples(tok, max_tokens, num_samples)
    assert got == [[1] + w for w in expected[:num_samples]]
    assert text_prefix(plain_tok) == [] and text_prefix(tok) == [1]
    assert sample_spec(text_prefix(tok)).endswith(":prefix=1") and ":prefix" not in sample_spec([])


def test_the_cell_key_names_a_prefix_only_when_the_tokenizer_puts_one(monkeypatch):
    """Records scored without Gemma's <bos> must not count as done for the samples with it."""
    from lm_eval_streaming.benchmark import samples
    from lm_eval_streaming.core import loading
    from lm_eval_streaming import experiment as ex

    cell = ex.expand_cells(ex.validate_config({"name": "t", "description": "d", "model_id": "smollm2-135m",
                                               "methods": ["streaming_llm"], "device": "cpu",
                                               "grid": {"max_tokens": [100]}}, "t.yaml"))[0]
    keys = {}
    for name, tok in (("plain", load_tokenizer()), ("bos", _bos_tokenizer())):
        samples.model_prefix.cache_clear()
        monkeypatch.setattr(loading, "load_tokenizer", lambda model_id, tok=tok: tok)
        keys[name] = ex.cell_key(cell)
    samples.model_prefix.cache_clear()
    assert keys["plain"] != keys["bos"]
