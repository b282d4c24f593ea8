"""Leaderboard on a synthetic lm-eval --output_path directory (results JSON written here in lm-eval's format)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from lm_eval_streaming.leaderboard import command as lb

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
    assert lb.main([str(tmp_path / "empty"), "--output", str(tmp_path / "b")]) == 2
    assert "no lm-eval results" in capsys.readouterr().err


def test_pivot_puts_tasks_in_natural_order_with_stderr():
    from lm_eval_streaming.leaderboard.command import pivot

    rows = [{"model_name": "m__dense", "streaming_ppl_10000/token_perplexity": 30.0,
             "streaming_ppl_2000/token_perplexity": 20.0, "streaming_ppl_2000/token_perplexity_stderr": 1.5},
            {"model_name": "m__streaming_llm-s4-r252", "streaming_ppl_2000/token_perplexity": 21.0}]
    lines = pivot(rows, "token_perplexity").splitlines()
    assert lines[0] == "| task | m__dense | m__streaming_llm-s4-r252 |"
    assert lines[2].startswith("| streaming_ppl_2000 | 20.0") and "± 1.5" in lines[2]
    assert lines[3].startswith("| streaming_ppl_10000 | 30.0") and lines[3].endswith("|  |")


# ------------------------------------------------ identity: never merge different settings

REAL_RESULTS = Path(__file__).parent / "data" / "lm_eval_0.4.13_results_streaming_hf.json"


def real_results(pretrained, ppl: float, *, model="streaming_hf", method="dense", args=None, config=None,
                 date=1.7e9) -> dict:
    """A results file as lm-eval 0.4.13 wrote it for ``--model streaming_hf`` (tests/data: a real run,
    ``pretty_env_info`` trimmed), with this model, token perplexity and settings."""
    import copy

    data = copy.deepcopy(json.loads(REAL_RESULTS.read_text()))
    model_args = {"pretrained": pretrained, "method": method, **(args or {})}
    data["config"].update(model=model, model_args=model_args, streaming_method=method, **(config or {}))
    if model != "streaming_hf":
        for key in [k for k in data["config"] if k.startswith("streaming_")]:
            del data["config"][key]
    data["results"]["streaming_ppl_500"]["token_perplexity,none"] = ppl
    data["date"] = date
    data["model_name"] = pretrained
    data["model_name_sanitized"] = pretrained.replace("/", "__")
    return data


def write_output_path(root: Path, data: dict, stamp="2026-01-01T10-00-00.000001") -> Path:
    """What ``lm_eval --output_path root`` leaves: root/<model_name_sanitized>/results_<stamp>.json."""
    folder = root / data["model_name_sanitized"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"results_{stamp}.json").write_text(json.dumps(data))
    return root


def leaderboard_cli(*argv, cwd=None):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "lm_eval_streaming.cli", "leaderboard", *map(str, argv)],
                          capture_output=True, text=True, timeout=300, cwd=cwd)


def csv_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_models_whose_directories_share_a_name_stay_apart(tmp_path):
    """Issue 12 item 4: runs/a/tiny-neox and runs/b/tiny-neox are two models, two rows, through the real command."""
    out_a = write_output_path(tmp_path / "out_a", real_results("runs/a/tiny-neox", 111.0))
    out_b = write_output_path(tmp_path / "out_b", real_results("runs/b/tiny-neox", 222.0, date=1.8e9))
    board = tmp_path / "board"
    proc = leaderboard_cli(out_a, out_b, "--output", board, "--pivot", "token_perplexity", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = csv_rows(board / "comparison.csv")
    got = {r["model_id"]: (r["model_name"], float(r["streaming_ppl_500/token_perplexity"])) for r in rows}
    assert got == {"runs/a/tiny-neox": ("a/tiny-neox__dense", 111.0), "runs/b/tiny-neox": ("b/tiny-neox__dense", 222.0)}
    assert "| a/tiny-neox__dense | b/tiny-neox__dense |" in proc.stdout  # the pivot's header
    files = sorted((board / "results").rglob("results_*.json"))
    by_folder = {p.parent.relative_to(board / "results").as_posix():
                 json.loads(p.read_text())["results"]["streaming_ppl_500"]["token_perplexity"] for p in files}
    assert by_folder == {"a/tiny-neox__dense": 111.0, "b/tiny-neox__dense": 222.0}


# field -> (changes to the first run, changes to the second run); everything else equal
DIFFERENT_SETTINGS = {
    "dtype": ({}, {"config": {"model_dtype": "torch.float16"}, "args": {"dtype": "float16"}}),
    "revision": ({}, {"config": {"model_revision": "v2"}, "args": {"revision": "v2"}}),
    "model_sha": ({"config": {"model_sha": "1111"}}, {"config": {"model_sha": "2222"}}),
    "attn_implementation": ({"config": {"streaming_attn_implementation": "sdpa"}},
                            {"config": {"streaming_attn_implementation": "eager"}, "args": {"attn_implementation": "eager"}}),
    "chunk_size": ({}, {"config": {"streaming_chunk_size": 64}, "args": {"chunk_size": 64}}),
    "limit": ({"config": {"limit": 1.0}}, {"config": {"limit": 10.0}}),
    "device": ({"config": {"device": "cpu"}}, {"config": {"device": "mps"}}),
    "recent_size": ({"method": "streaming_llm", "config": {"streaming_recent_size": 252}},
                    {"method": "streaming_llm", "config": {"streaming_recent_size": 124}, "args": {"recent_size": 124}}),
    "hf max_length": ({"model": "hf", "args": {"max_length": 2048}}, {"model": "hf", "args": {"max_length": 4096}}),
    "one relative path run from two directories": (
        {"pretrained": "runs/tiny", "config": {"streaming_pretrained": "/home/u/x/runs/tiny"}},
        {"pretrained": "runs/tiny", "config": {"streaming_pretrained": "/home/u/y/runs/tiny"}}),
    "default model vs another GGUF's conversion": (
        {"pretrained": "/c/lm_eval_streaming/smollm2-135m-conv1"},
        {"pretrained": "/c/lm_eval_streaming/smollm2-135m-conv1-src0123456789ab"}),
}


@pytest.mark.parametrize("field", sorted(DIFFERENT_SETTINGS))
def test_runs_differing_in_anything_that_changes_numbers_are_two_rows(tmp_path, field):
    first, second = DIFFERENT_SETTINGS[field]
    for i, (change, ppl) in enumerate(((first, 10.0), (second, 20.0))):
        change = dict(change)
        pretrained = change.pop("pretrained", "EleutherAI/pythia-70m")
        write_output_path(tmp_path / f"out{i}", real_results(pretrained, ppl, date=1.7e9 + i, **change))
    out = lb.build([tmp_path / "out0", tmp_path / "out1"], tmp_path / "board")
    values = sorted(r["streaming_ppl_500/token_perplexity"] for r in out["rows"])
    assert values == [10.0, 20.0], (field, [r["model_name"] for r in out["rows"]])
    names = [r["model_name"] for r in out["rows"]]
    assert len(set(names)) == 2, names
    assert len({p.parent for p in out["files"]}) == 2


def test_one_setting_written_differently_is_one_row_and_a_rerun_replaces(tmp_path):
    """Defaults spelled out or left out, aliases of the default model, batch size: the same setting."""
    runs = [("smollm2-135m", {}, 30.0), ("default", {"args": {"recent_size": "252", "start_size": 4}}, 31.0),
            ("/home/u/.cache/lm_eval_streaming/smollm2-135m-conv1", {"args": {"batch_size": 4}}, 32.0)]
    for i, (pretrained, change, ppl) in enumerate(runs):
        write_output_path(tmp_path / f"out{i}", real_results(pretrained, ppl, method="streaming_llm", date=1.7e9 + i,
                                                             **change))
    out = lb.build([tmp_path / f"out{i}" for i in range(3)], tmp_path / "board")
    assert [r["model_name"] for r in out["rows"]] == ["smollm2-135m__streaming_llm-s4-r252"]
    assert out["rows"][0]["streaming_ppl_500/token_perplexity"] == 32.0  # the newest run


def test_a_malformed_results_file_is_named(tmp_path):
    data = real_results("EleutherAI/pythia-70m", 10.0, method="streaming_llm", args={"recent_size": "abc"})
    del data["config"]["streaming_recent_size"]
    src = write_output_path(tmp_path / "out", data)
    proc = leaderboard_cli(src, "--output", tmp_path / "board")
    assert proc.returncode == 2
    assert proc.stderr.startswith("lm-eval-streaming leaderboard: error: ") and "Traceback" not in proc.stderr
    assert "results_2026-01-01T10-00-00.000001.json" in proc.stderr and "recent_size='abc'" in proc.stderr


@pytest.mark.slow
def test_real_lm_eval_runs_of_two_models_sharing_a_directory_name(tmp_path):
    """Two real ``lm_eval`` runs (two tiny random models saved as runs/a/tiny-neox and runs/b/tiny-neox, relative
    paths), then the real ``leaderboard`` command: each model's own perplexity, read from its own results file, in
    its own row."""
    import subprocess
    import sys

    from conftest import load_tokenizer, make_model

    tok = load_tokenizer()
    for seed, name in enumerate("ab"):
        make_model("gpt_neox", seed=seed).save_pretrained(tmp_path / "runs" / name / "tiny-neox")
        tok.save_pretrained(tmp_path / "runs" / name / "tiny-neox")
    expected = {}
    for name in "ab":
        proc = subprocess.run([sys.executable, "-m", "lm_eval", "--model", "streaming_hf", "--model_args",
                               f"pretrained=runs/{name}/tiny-neox,method=dense", "--tasks", "streaming_ppl_500",
                               "--limit", "1", "--output_path", f"out_{name}"],
                              cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        (result,) = (tmp_path / f"out_{name}").rglob("results_*.json")
        data = json.loads(result.read_text())
        expected[str(tmp_path / "runs" / name / "tiny-neox")] = \
            data["results"]["streaming_ppl_500"]["token_perplexity,none"]
    assert len(set(expected.values())) == 2  # two different models: a merge could not hide

    proc = leaderboard_cli("out_a", "out_b", "--output", "board", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = csv_rows(tmp_path / "board" / "comparison.csv")
    assert {r["model_id"]: float(r["streaming_ppl_500/token_perplexity"]) for r in rows} == expected
    assert sorted(r["model_name"] for r in rows) == ["a/tiny-neox__dense", "b/tiny-neox__dense"]
