"""analyze on lm-eval's own outputs: ``--output_path`` folders of streaming_hf perplexity runs as typed runs.

Fast tests write lm-eval-shaped results/samples files and check the rows against numbers computed here from
the per-document items (scipy's paired t interval). The slow test scores the same documents through the
benchmark path (score_row, set_deltas) and through lm-eval (streaming_hf, --log_samples) and compares the
verdicts.
"""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys

import pytest

from lm_eval_streaming.records.lm_eval_runs import load_lm_eval_runs

TIME = "2026-12-01T10-00-00.000000"


def _write(out, method, docs, recent=252, samples=True, time=TIME, model="streaming_hf", limit=4.0):
    """An lm-eval output folder: results_<time>.json (+ samples_<task>_<time>.jsonl) for task t_ppl_500.
    ``docs``: [(doc_id, nll_sum, tokens, correct)]."""
    folder = out / "smollm2-135m"
    folder.mkdir(parents=True, exist_ok=True)
    nll = sum(d[1] for d in docs) / sum(d[2] for d in docs)
    results = {"t_ppl_500": {"token_perplexity,none": math.exp(nll),
                             "token_accuracy,none": sum(d[3] for d in docs) / sum(d[2] for d in docs),
                             "nonfinite_tokens,none": 0, "sample_len": len(docs)}}
    config = {"model": model, "model_args": {"method": method, "recent_size": recent, "pretrained": "smollm2-135m"},
              "model_dtype": "torch.float32", "streaming_method": method, "streaming_start_size": 4,
              "streaming_recent_size": recent, "streaming_chunk_size": 512, "streaming_attn_implementation": "sdpa",
              "streaming_device": "cpu", "limit": limit,
              "streaming_diagnostics": {"max_position": 511 if method == "dense" else recent + 3, "nan_logits": 0}}
    (folder / f"results_{time}.json").write_text(json.dumps(
        {"results": results, "config": config, "max_length": 8192, "lm_eval_version": "0.4.13"}))
    if samples:
        lines = [json.dumps({"doc_id": i, "doc_hash": f"h{i}", "token_perplexity": [s, n], "token_accuracy": [c, n],
                             "nll_below_ctx": [s, n], "nonfinite_tokens": 0}) for i, s, n, c in docs]
        random.Random(len(method)).shuffle(lines)  # lm-eval's sample order is not the document order
        (folder / f"samples_t_ppl_500_{time}.jsonl").write_text("\n".join(lines) + "\n")


def _docs(seed, shift=0.0, n_docs=5):
    rng = random.Random(seed)
    out = []
    for i in range(n_docs):
        n = 480 + 10 * i
        out.append((i, n * (3.0 + 0.3 * rng.random() + shift), n, int(n * (0.4 - 0.05 * rng.random()))))
    return out


def _paired(a, b):
    """Paired mean difference of per-document mean NLL and its 95% t interval, by scipy."""
    from scipy import stats

    diff = [x[1] / x[2] - y[1] / y[2] for x, y in zip(a, b)]
    mean = sum(diff) / len(diff)
    low, high = stats.t.interval(0.95, len(diff) - 1, loc=mean, scale=stats.sem(diff))
    return mean, low, high


def test_rows_are_paired_by_document(tmp_path):
    dense, stream = _docs(0), _docs(1, shift=0.2)
    _write(tmp_path / "main_dense", "dense", dense)
    _write(tmp_path / "main_streaming_llm", "streaming_llm", stream)
    warnings = []
    (run,) = load_lm_eval_runs([tmp_path / "main_dense", tmp_path / "main_streaming_llm"], warnings.append)
    assert not warnings
    assert run.num_samples == 5 and run.trained_context == 8192 and run.model_id == "smollm2-135m"
    assert run.max_tokens == max(d[2] for d in dense) + 1
    rows = {r.method: r for r in run.rows}
    mean, low, high = _paired(stream, dense)
    s = rows["streaming_llm"]
    assert s.delta_nll_vs_dense == pytest.approx(mean) and s.delta_reference == "sdpa"
    assert (s.delta_nll_ci.low, s.delta_nll_ci.high) == (pytest.approx(low), pytest.approx(high))
    assert rows["dense"].per_sample_nll == pytest.approx([d[1] / d[2] for d in dense])  # in document order
    assert rows["dense"].nll_mean == pytest.approx(sum(d[1] for d in dense) / sum(d[2] for d in dense))
    # the region buckets carry token counts (what the extrapolation rules weigh)
    assert rows["dense"].nll_by_relative_position.count[0] == sum(d[2] for d in dense)


def test_only_documents_every_setting_scored_are_paired(tmp_path):
    dense, stream = _docs(0, n_docs=6), _docs(1, shift=0.2, n_docs=4)
    _write(tmp_path / "a", "dense", dense)
    _write(tmp_path / "b", "streaming_llm", stream)
    warnings = []
    (run,) = load_lm_eval_runs([tmp_path], warnings.append)
    assert run.num_samples == 4 and any("4 of them scored by every setting" in w for w in warnings)
    s = next(r for r in run.rows if r.method == "streaming_llm")
    assert s.delta_nll_vs_dense == pytest.approx(_paired(stream, dense[:4])[0])


def test_without_samples_no_interval_and_one_line(tmp_path):
    _write(tmp_path / "a", "dense", _docs(0), samples=False)
    _write(tmp_path / "b", "streaming_llm", _docs(1), samples=False)
    warnings = []
    (run,) = load_lm_eval_runs([tmp_path], warnings.append)
    assert all(r.delta_nll_vs_dense is None and r.per_sample_nll is None for r in run.rows)
    assert sum("--log_samples" in w for w in warnings) == 2


def test_settings_that_change_numbers_are_separate_runs_and_hf_is_skipped(tmp_path):
    _write(tmp_path / "a", "dense", _docs(0))
    _write(tmp_path / "b", "dense", _docs(0), limit=2.0)
    _write(tmp_path / "c", "dense", _docs(0), model="hf")
    warnings = []
    runs = load_lm_eval_runs([tmp_path], warnings.append)
    assert len(runs) == 2
    assert any("'hf', not streaming_hf" in w for w in warnings)


def test_analyze_reads_folders_mixed_with_benchmark_files(tmp_path):
    """The CLI: an lm-eval folder and a benchmark JSON in one call; both runs reach the report."""
    from synthetic_runs import make_run

    from lm_eval_streaming.records import write_run

    _write(tmp_path / "main_dense", "dense", _docs(0))
    _write(tmp_path / "main_streaming_llm", "streaming_llm", _docs(1, shift=0.2))
    bench = make_run("smollm2-135m", lambda *a: 3.0, max_tokens=2000, trained_context=8192)
    write_run(tmp_path / "bench.json", bench)
    out = subprocess.run([sys.executable, "-m", "lm_eval_streaming.cli", "analyze", str(tmp_path / "main_dense"),
                          str(tmp_path / "main_streaming_llm"), str(tmp_path / "bench.json")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "(3 result files: 2 runs," in out.stdout  # two lm-eval files (one run) and the benchmark file


# ------------------------------------------------------------------ the same documents, two paths
@pytest.mark.slow
def test_same_verdict_as_the_benchmark_path(tiny_model_dirs, tmp_path):
    """Four streaming_ppl_500 documents, a tiny Llama (trained context 256, so dense runs past it): scored by
    benchmark's score_row / set_deltas, and by lm-eval (streaming_hf, --log_samples, one folder per method)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lm_eval.tasks import TaskManager
    from lm_eval_streaming.analysis.verdict import analyze
    from lm_eval_streaming.benchmark.rows import score_row
    from lm_eval_streaming.records.metrics import set_deltas
    from lm_eval_streaming.core.methods import policy_for
    from lm_eval_streaming.records import Run

    path = str(tiny_model_dirs["llama"])
    settings = {"dense": (4, 28), "streaming_llm": (4, 28), "window": (4, 28)}
    folders = []
    for method, (start, recent) in settings.items():
        folder = tmp_path / f"main_{method}"
        cmd = [sys.executable, "-m", "lm_eval", "--model", "streaming_hf", "--model_args",
               f"pretrained={path},method={method},start_size={start},recent_size={recent},chunk_size=64",
               "--tasks", "streaming_ppl_500", "--limit", "4", "--device", "cpu", "--output_path", str(folder),
               "--log_samples"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-2000:]
        folders.append(folder)
    (lm_run,) = load_lm_eval_runs(folders)

    # The benchmark path on the documents lm-eval scored, encoded as the adapter encodes them.
    docs = TaskManager().load(["streaming_ppl_500"])["tasks"]["streaming_ppl_500"].dataset["test"]
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    samples = [[tok.eos_token_id] + tok(docs[i]["text"], add_special_tokens=False)["input_ids"] for i in range(4)]
    rows = [score_row(model, samples, policy_for(m, s, r), 64, 0, 256)[0] for m, (s, r) in settings.items()]
    for row in rows[1:]:
        set_deltas(row, rows[0])
    bench = Run(model_id=lm_run.model_id, max_tokens=max(map(len, samples)), num_samples=4, dtype="float32",
                device="cpu", chunk_size=64, rows=rows, trained_context=256)
    assert lm_run.max_tokens == bench.max_tokens and lm_run.trained_context == 256
    by_label = {r.label(): r for r in lm_run.rows}
    for row in rows:
        ours = by_label[row.label()]
        assert ours.per_sample_nll == pytest.approx(row.per_sample_nll, abs=1e-4)
        if row.delta_nll_vs_dense is not None:
            assert ours.delta_nll_vs_dense == pytest.approx(row.delta_nll_vs_dense, abs=1e-4)
    a, b = analyze([bench]), analyze([lm_run])
    assert {k: h.verdict for k, h in a.hypotheses.items()} == {k: h.verdict for k, h in b.hypotheses.items()}
    assert a.cause_key == b.cause_key
