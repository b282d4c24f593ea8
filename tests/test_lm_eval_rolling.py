"""analyze on lm-eval's standard rolling perplexity tasks (loglikelihood_rolling, wikitext-style word/byte
perplexity), scored with streaming_hf: rows paired by document, NLL per token counted with the run's tokenizer
(per byte, said, without it). The task is defined here, not one of the project's."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lm_eval_streaming.records.lm_eval_rolling import PER_BYTE, load_rolling_runs

TIME = "2026-12-02T10-00-00.000000"
WORDS = "the king and the queen walk to the old castle by the river where a cold wind blows over the hills "
TASK = "my_wiki"


def _texts(n=4):
    return [WORDS * (3 + 2 * i) for i in range(n)]


def _write(out: Path, method: str, logliks, pretrained: str, recent=16):
    """An lm-eval output folder of a rolling task, as lm-eval 0.4.13 writes it with --log_samples."""
    folder = out / "tiny"
    folder.mkdir(parents=True, exist_ok=True)
    texts = _texts(len(logliks))
    results = {TASK: {"word_perplexity,none": 100.0, "byte_perplexity,none": 2.0, "bits_per_byte,none": 1.0,
                      "sample_len": len(texts)}}
    config = {"model": "streaming_hf",
              "model_args": {"method": method, "recent_size": recent, "pretrained": pretrained},
              "model_dtype": "torch.float32", "streaming_method": method, "streaming_start_size": 4,
              "streaming_recent_size": recent, "streaming_chunk_size": 512, "streaming_attn_implementation": "sdpa",
              "streaming_device": "cpu", "streaming_pretrained": pretrained, "limit": None,
              "streaming_diagnostics": {"max_position": 300 if method == "dense" else recent + 3, "nan_logits": 0}}
    (folder / f"results_{TIME}.json").write_text(json.dumps({"results": results, "config": config,
                                                             "max_length": 2048}))
    lines = [json.dumps({"doc_id": i, "doc_hash": f"h{i}", "arguments": {"gen_args_0": {"arg_0": t}},
                         "word_perplexity": [ll, len(t.split())], "byte_perplexity": [ll, len(t.encode())],
                         "bits_per_byte": [ll, len(t.encode())]})
             for i, (t, ll) in reversed(list(enumerate(zip(texts, logliks))))]  # not in document order
    (folder / f"samples_{TASK}_{TIME}.jsonl").write_text("\n".join(lines) + "\n")


def _paired(a, b):
    from scipy import stats

    diff = [x - y for x, y in zip(a, b)]
    mean = sum(diff) / len(diff)
    half = stats.t.ppf(0.975, len(diff) - 1) * stats.sem(diff)
    return mean, mean - half, mean + half


@pytest.mark.parametrize("with_tokenizer", [True, False])
def test_rolling_runs_pair_documents_per_token_or_per_byte(tmp_path, tiny_model_dirs, with_tokenizer):
    from conftest import load_tokenizer

    pretrained = str(tiny_model_dirs["gpt_neox"]) if with_tokenizer else str(tmp_path / "gone")
    dense_ll, stream_ll = [-300.0, -520.0, -700.0, -990.0], [-310.0, -515.0, -730.0, -1000.0]
    _write(tmp_path / "a", "dense", dense_ll, pretrained)
    _write(tmp_path / "b", "streaming_llm", stream_ll, pretrained)
    warnings = []
    [run] = load_rolling_runs([tmp_path / "a", tmp_path / "b"], warnings.append)
    # the reference: tokens by the tokenizer itself (or UTF-8 bytes), NLL = -loglikelihood / units
    tok = load_tokenizer()
    units = [len(tok(t, add_special_tokens=False)["input_ids"]) if with_tokenizer else len(t.encode())
             for t in _texts()]
    dense = [-ll / n for ll, n in zip(dense_ll, units)]
    stream = [-ll / n for ll, n in zip(stream_ll, units)]
    rows = {r.method: r for r in run.rows}
    assert rows["dense"].per_sample_nll == pytest.approx(dense)
    assert rows["streaming_llm"].per_sample_nll == pytest.approx(stream)
    mean, low, high = _paired(stream, dense)
    s = rows["streaming_llm"]
    assert (s.delta_nll_vs_dense, s.delta_nll_ci.low, s.delta_nll_ci.high) == pytest.approx((mean, low, high))
    assert s.acc is None and s.delta_acc_vs_dense is None and s.nll_by_relative_position is None
    assert run.num_samples == 4 and run.trained_context == 2048
    assert run.sample_spec.endswith(PER_BYTE) is (not with_tokenizer)
    assert any("per byte" in w for w in warnings) is (not with_tokenizer)
    assert any("no NLL by position" in w and "streaming_ppl_<N>" in w for w in warnings)


def test_analyze_reads_rolling_runs_and_says_what_needs_the_projects_tasks(tmp_path, tiny_model_dirs):
    from lm_eval_streaming.analysis.report import render_report
    from lm_eval_streaming.analysis.verdict import analyze
    from lm_eval_streaming.analysis.inputs import read_results

    pretrained = str(tiny_model_dirs["gpt_neox"])
    _write(tmp_path / "a", "dense", [-300.0, -520.0, -700.0, -990.0], pretrained)
    _write(tmp_path / "b", "streaming_llm", [-310.0, -515.0, -730.0, -1000.0], pretrained)
    runs = read_results([str(tmp_path / "a"), str(tmp_path / "b")], "analyze")
    assert len(runs) == 1
    report = render_report(analyze(runs))
    row = next(line for line in report.splitlines() if line.startswith("| ") and " cpu/float32 | " in line)
    assert "| 4 |" in row and "[" in row  # four documents: the interval is shown
    assert "streaming_ppl_<N>" in report


ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
def test_real_lm_eval_rolling_task_read_and_paired_against_a_plain_forward(tmp_path, tiny_model_dirs):
    """lm_eval itself on a task defined here; the dense row's per-document NLL equals a plain HF forward's."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in _texts(3)))
    (tmp_path / f"{TASK}.yaml").write_text(
        f"task: {TASK}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\n"
        "output_type: loglikelihood_rolling\ndoc_to_text: ''\ndoc_to_target: '{{text}}'\nmetric_list:\n"
        "  - metric: word_perplexity\n  - metric: byte_perplexity\n  - metric: bits_per_byte\n")
    path = tiny_model_dirs["gpt_neox"]
    for method in ("dense", "streaming_llm"):
        proc = subprocess.run(
            [sys.executable, "-m", "lm_eval", "--model", "streaming_hf", "--model_args",
             f"pretrained={path},method={method},start_size=2,recent_size=8", "--tasks", TASK, "--include_path",
             str(tmp_path), "--device", "cpu", "--log_samples", "--output_path", str(tmp_path / method)],
            cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
    [run] = load_rolling_runs([tmp_path / "dense", tmp_path / "streaming_llm"], lambda msg: None)
    tok, model = AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path).float().eval()
    reference = []
    for text in _texts(3):
        ids = torch.tensor([[tok.eos_token_id] + tok(text, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)
        reference.append(-logp.gather(1, ids[0, 1:, None]).mean().item())
    dense = next(r for r in run.rows if r.is_dense)
    assert dense.per_sample_nll == pytest.approx(reference, abs=1e-4)
    stream = next(r for r in run.rows if r.method == "streaming_llm")
    assert stream.delta_nll_vs_dense == pytest.approx(
        sum(s - d for s, d in zip(stream.per_sample_nll, dense.per_sample_nll)) / 3)
    assert math.isfinite(stream.delta_nll_vs_dense) and stream.delta_nll_ci is not None
