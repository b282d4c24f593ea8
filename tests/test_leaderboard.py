"""Leaderboard on a synthetic lm-eval --output_path directory (results JSON written here in lm-eval's format)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from lm_eval_streaming import leaderboard as lb

TASK = "streaming_ppl_2000"


def lm_eval_results(model, model_args, metrics, extra_config=None, date=1.7e9, task=TASK):
    """The shape lm-eval 0.4.13 writes to results_<date>.json (fields the reader needs plus typical others)."""
    results = {"alias": task}
    for name, (value, stderr) in metrics.items():
        results[f"{name},none"] = value
        results[f"{name}_stderr,none"] = stderr
    return {
        "results": {task: results},
        "group_subtasks": {task: []},
        "configs": {task: {"task": task, "output_type": "loglikelihood_rolling"}},
        "versions": {task: 1.0},
        "n-shot": {task: 0},
        "higher_is_better": {task: {k: False for k in metrics}},
        "n-samples": {task: {"original": 3, "effective": 3}},
        "config": {"model": model, "model_args": model_args, "model_num_parameters": 134515008,
                   "model_dtype": "torch.float32", "model_revision": "main", "model_sha": "abc123",
                   "batch_size": "1", "batch_sizes": [], "device": "cpu", "use_cache": None, "limit": None,
                   "bootstrap_iters": 100000, "gen_kwargs": {}, **(extra_config or {})},
        "git_hash": "deadbeef", "date": date, "model_name": "smollm2-135m", "model_name_sanitized": "smollm2-135m",
    }


def write_run(root: Path, stamp: str, data: dict) -> Path:
    folder = root / data["model_name_sanitized"]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"results_{stamp}.json"
    path.write_text(json.dumps(data))
    return path


def make_output_dir(root: Path) -> None:
    ppl = lambda v: {"word_perplexity": (v * 2, "N/A"), "token_perplexity": (v, 0.5), "token_accuracy": (0.4, 0.01)}
    write_run(root, "2025-01-01T10-00-00.000001", lm_eval_results(
        "streaming_hf", "pretrained=smollm2-135m,method=streaming_llm,start_size=4,recent_size=252", ppl(11.0),
        {"streaming_method": "streaming_llm"}, date=1.0e9))
    write_run(root, "2025-01-01T11-00-00.000001", lm_eval_results(
        "streaming_hf", {"pretrained": "smollm2-135m", "method": "dense"}, ppl(12.5), date=1.1e9))
    write_run(root, "2025-01-01T12-00-00.000001", lm_eval_results(
        "streaming_hf", "pretrained=smollm2-135m,recent_size=1020", ppl(11.5), date=1.2e9))
    write_run(root, "2025-01-01T13-00-00.000001", lm_eval_results(
        "streaming_hf", "pretrained=smollm2-135m,method=window,start_size=0,recent_size=256", ppl(40.0), date=1.3e9))
    write_run(root, "2025-01-01T14-00-00.000001", lm_eval_results(
        "hf", "pretrained=/cache/lm_eval_streaming/smollm2-135m-conv1,max_length=8192", ppl(12.0), date=1.4e9))
    # a later run of the first setting on another task: merged into the same row
    write_run(root, "2025-01-02T10-00-00.000001", lm_eval_results(
        "streaming_hf", "pretrained=smollm2-135m,method=streaming_llm,start_size=4,recent_size=252",
        {"token_perplexity": (20.0, 1.0)}, date=1.5e9, task="streaming_pg19_2000"))


def test_names_keep_methods_apart_and_tables_have_metrics(tmp_path):
    src = tmp_path / "lm_eval_out"
    make_output_dir(src)
    out = lb.build([src], tmp_path / "board")
    names = [r["model_name"] for r in out["rows"]]
    assert names == ["smollm2-135m__dense", "smollm2-135m__hf-windowed", "smollm2-135m__streaming_llm-s4-r252",
                     "smollm2-135m__streaming_llm-s4-r1020", "smollm2-135m__window-s0-r256"]
    assert len(out["runs"]) == 6 and len(out["files"]) == 6 and len(set(out["files"])) == 6
    hf = next(r for r in out["rows"] if r["model_name"].endswith("hf-windowed"))
    assert hf["method"] == "hf (windowed)" and hf["start_size"] is None

    with open(out["csv"], newline="") as f:
        table = list(csv.DictReader(f))
    assert {"model", "method", "start_size", "recent_size", "dtype", "model_name",
            f"{TASK}/token_perplexity", f"{TASK}/token_perplexity_stderr", f"{TASK}/word_perplexity",
            "streaming_pg19_2000/token_perplexity"} <= set(table[0])
    by_name = {r["model_name"]: r for r in table}
    s = by_name["smollm2-135m__streaming_llm-s4-r252"]
    assert float(s[f"{TASK}/token_perplexity"]) == 11.0 and float(s["streaming_pg19_2000/token_perplexity"]) == 20.0
    assert (s["method"], s["start_size"], s["recent_size"], s["dtype"]) == ("streaming_llm", "4", "252", "float32")
    assert by_name["smollm2-135m__streaming_llm-s4-r1020"]["method"] == "streaming_llm"  # default method
    assert by_name["smollm2-135m__dense"]["recent_size"] == ""
    assert f"{TASK}/word_perplexity_stderr" not in s  # lm-eval's "N/A" is not a metric value

    md = out["markdown"].read_text()
    assert f" {TASK}/token_perplexity |" in md.splitlines()[0] and "_stderr" not in md.splitlines()[0]
    assert "| smollm2-135m | hf (windowed) |" in md and "11.0000 ± 0.5000" in md and "| window | 0 | 256 |" in md


def test_leaderboard_files_are_open_llm_style_and_not_reread(tmp_path):
    src = tmp_path / "lm_eval_out"
    make_output_dir(src)
    board = src / "board"  # output inside the input dir: must not be read back as input
    assert lb.main([str(src), "--output", str(board)]) == 0
    files = sorted((board / "results").rglob("results_*.json"))
    assert len(files) == 6
    docs = [json.loads(p.read_text()) for p in files]
    names = {d["config"]["model_name"] for d in docs}
    assert "smollm2-135m__dense" in names and "smollm2-135m__window-s0-r256" in names
    dense = next(d for d in docs if d["config"]["model_name"] == "smollm2-135m__dense")
    assert dense["config"]["model_dtype"] == "torch.float32" and dense["config"]["model_sha"] == "abc123"
    assert dense["results"][TASK]["token_perplexity"] == 12.5
    assert dense["results"][TASK]["token_perplexity_stderr"] == 0.5
    assert "word_perplexity_stderr" not in dense["results"][TASK]  # "N/A" is not a number
    assert lb.main([str(src), "--output", str(board)]) == 0
    assert len(sorted((board / "results").rglob("results_*.json"))) == 6
    assert len(lb.load_runs(src, exclude=board)) == 6


def test_model_args_parsing_and_defaults():
    assert lb.parse_model_args("pretrained=a/b,method=dense") == {"pretrained": "a/b", "method": "dense"}
    assert lb.parse_model_args({"recent_size": 4}) == {"recent_size": 4}
    ident = lb.run_identity({"config": {"model": "streaming_hf", "model_args": "pretrained=EleutherAI/pythia-6.9b"}})
    assert ident["model_name"] == "EleutherAI/pythia-6.9b__streaming_llm-s4-r252"
    ident = lb.run_identity({"config": {"model": "streaming_hf", "model_args": {"recent_size": 1e3}}})
    assert ident["model_name"] == "smollm2-135m__streaming_llm-s4-r1000"


def test_empty_dir_is_an_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert lb.main([str(tmp_path / "empty"), "--output", str(tmp_path / "b")]) == 1
    assert "no lm-eval results" in capsys.readouterr().err


def test_pivot_puts_tasks_in_natural_order_with_stderr():
    from lm_eval_streaming.leaderboard import pivot

    rows = [{"model_name": "m__dense", "streaming_ppl_10000/token_perplexity": 30.0,
             "streaming_ppl_2000/token_perplexity": 20.0, "streaming_ppl_2000/token_perplexity_stderr": 1.5},
            {"model_name": "m__streaming_llm-s4-r252", "streaming_ppl_2000/token_perplexity": 21.0}]
    lines = pivot(rows, "token_perplexity").splitlines()
    assert lines[0] == "| task | m__dense | m__streaming_llm-s4-r252 |"
    assert lines[2].startswith("| streaming_ppl_2000 | 20.0") and "± 1.5" in lines[2]
    assert lines[3].startswith("| streaming_ppl_10000 | 30.0") and lines[3].endswith("|  |")
