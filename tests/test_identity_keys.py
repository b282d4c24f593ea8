"""Issue 18: every place that keys, merges, dedupes or caches by a setting keys by everything that changes
the number (and by nothing that does not). Each test goes through the command where a user meets it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

TEXT = "the king and the queen walk to the old castle by the river where a cold wind blows over the hills "
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def _task_dir(root: Path) -> Path:
    """One rolling-perplexity task of three documents long enough that a 2+4 cache differs from dense."""
    task_dir = root / "tasks"
    task_dir.mkdir(exist_ok=True)
    data = task_dir / "d.jsonl"
    data.write_text("".join(json.dumps({"text": TEXT * (2 + i)}) + "\n" for i in range(3)))
    (task_dir / "tiny_roll.yaml").write_text(
        "task: tiny_roll\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: " + str(data) +
        "\ntest_split: test\noutput_type: loglikelihood_rolling\ndoc_to_text: ''\ndoc_to_target: '{{text}}'\n"
        "metric_list:\n  - metric: word_perplexity\n")
    return task_dir


def lm_eval(root: Path, model: str, margs: str, out: str, *extra) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lm_eval", "--model", model, "--model_args", margs, "--tasks", "tiny_roll",
         "--include_path", str(_task_dir(root)), "--device", "cpu", "--output_path", str(root / out), *extra],
        cwd=root, env=ENV, capture_output=True, text=True, timeout=600)


def word_ppl(root: Path, out: str) -> float:
    (path,) = (root / out).rglob("results_*.json")
    return json.loads(path.read_text())["results"]["tiny_roll"]["word_perplexity,none"]


def _ok(proc):
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


# ------------------------------------------------------------------ 1. --use_cache and the tokenizer
def _reversed_merges(tok_dir: Path) -> None:
    """Same vocabulary and special tokens (so the same prefix token id), other merges: other token ids."""
    path = tok_dir / "tokenizer.json"
    spec = json.loads(path.read_text())
    spec["model"]["merges"] = spec["model"]["merges"][: len(spec["model"]["merges"]) // 50]
    path.write_text(json.dumps(spec))


@pytest.mark.slow
def test_use_cache_refuses_a_changed_tokenizer_at_the_same_path(tiny_model_dirs, tmp_path):
    tok = tmp_path / "tok"
    shutil.copytree(tiny_model_dirs["gpt_neox"], tok)
    cache = tmp_path / "cache" / "c"
    margs = f"pretrained={tiny_model_dirs['gpt_neox']},tokenizer={tok},method=dense"
    _ok(lm_eval(tmp_path, "streaming_hf", margs, "a", "--use_cache", str(cache)))
    _reversed_merges(tok)
    fresh = word_ppl(tmp_path, "a"), _ok(lm_eval(tmp_path, "streaming_hf", margs, "fresh")) and word_ppl(tmp_path,
                                                                                                          "fresh")
    assert fresh[0] != pytest.approx(fresh[1], rel=1e-3), "the two tokenizers score alike: the test proves nothing"
    again = lm_eval(tmp_path, "streaming_hf", margs, "b", "--use_cache", str(cache))
    # Refused (one line naming the tokenizer), never the first tokenizer's numbers with exit 0.
    assert again.returncode != 0 and "tokenizer_content=" in again.stderr and "Traceback" not in again.stderr
    assert not list((tmp_path / "b").rglob("results_*.json"))


def test_fingerprint_holds_tokenizer_model_files_policy_and_args(tiny_model_dirs, tmp_path):
    from lm_eval_streaming.harness.model import StreamingHFLM

    tok = tmp_path / "tok"
    shutil.copytree(tiny_model_dirs["llama"], tok)
    model = str(tiny_model_dirs["llama"])
    base = StreamingHFLM(pretrained=model, tokenizer=str(tok), device="cpu", recent_size=8).cache_fingerprint()
    same = StreamingHFLM(pretrained=model + "/", tokenizer=str(tok) + "/", device="cpu", recent_size=8,
                         batch_size=4).cache_fingerprint()
    assert same == base  # spelling and batch size change no number
    _reversed_merges(tok)
    others = [StreamingHFLM(pretrained=model, tokenizer=str(tok), device="cpu", recent_size=8),  # content
              StreamingHFLM(pretrained=model, device="cpu", recent_size=8),  # the model's own tokenizer
              StreamingHFLM(pretrained=model, tokenizer=str(tiny_model_dirs["llama"]), device="cpu", recent_size=8,
                            add_bos_token=True),
              StreamingHFLM(pretrained=model, tokenizer=str(tiny_model_dirs["llama"]), device="cpu", recent_size=8,
                            chunk_size=16)]
    prints = [o.cache_fingerprint() for o in others]
    assert len(set(prints + [base])) == len(prints) + 1


# ------------------------------------------------------------------ 2. hf never reads streaming_hf's cache
@pytest.mark.slow
def test_hf_on_a_cache_filled_by_streaming_hf_computes_its_own_numbers(tiny_model_dirs, tmp_path):
    path = tiny_model_dirs["gpt_neox"]
    cache = tmp_path / "cache" / "c"
    _ok(lm_eval(tmp_path, "streaming_hf", f"pretrained={path},start_size=2,recent_size=4", "s",
                "--use_cache", str(cache)))
    _ok(lm_eval(tmp_path, "hf", f"pretrained={path}", "fresh"))
    assert word_ppl(tmp_path, "s") != pytest.approx(word_ppl(tmp_path, "fresh"), rel=1e-3)
    cached = _ok(lm_eval(tmp_path, "hf", f"pretrained={path}", "h", "--use_cache", str(cache)))
    assert word_ppl(tmp_path, "h") == pytest.approx(word_ppl(tmp_path, "fresh"), rel=1e-6)
    assert "Requests remaining: 3" in cached.stderr + cached.stdout


# ------------------------------------------------------------------ 6. attention implementation names
@pytest.mark.slow
@pytest.mark.parametrize("name", ["nonsense", "flash_attention_2"])
def test_unknown_or_missing_attention_kernel_is_one_line_before_loading(tiny_model_dirs, tmp_path, name):
    import transformers.utils as tu

    if name == "flash_attention_2" and tu.is_flash_attn_2_available():
        pytest.skip("flash-attn is installed here")
    proc = lm_eval(tmp_path, "streaming_hf", f"pretrained={tiny_model_dirs['llama']},method=dense,"
                                             f"attn_implementation={name}", "x")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert f"attn_implementation={name!r}" in proc.stderr and "sdpa" in proc.stderr
    assert "Loading weights" not in proc.stderr  # refused before from_pretrained


def test_benchmark_dense_attn_names_a_kernel_that_is_not_installed():
    import transformers.utils as tu

    from lm_eval_streaming.benchmark.args import check_dense_attn
    from lm_eval_streaming.options import StreamingArgError

    if tu.is_flash_attn_2_available():
        pytest.skip("flash-attn is installed here")
    with pytest.raises(StreamingArgError, match="flash_attention_2.*not available here.*available: default"):
        check_dense_attn("sdpa,flash_attention_2")


# ------------------------------------------------------------------ 8. revision on a local directory
@pytest.mark.slow
def test_revision_on_a_local_directory_is_warned_and_left_out_of_the_identity(tiny_model_dirs, tmp_path):
    from lm_eval_streaming.leaderboard.command import build

    path = tiny_model_dirs["llama"]
    _ok(lm_eval(tmp_path, "streaming_hf", f"pretrained={path},recent_size=8", "runs/a"))
    warned = _ok(lm_eval(tmp_path, "streaming_hf", f"pretrained={path},recent_size=8,revision=v2", "runs/b"))
    lines = [ln for ln in warned.stderr.splitlines() if "revision=v2 is ignored" in ln]
    assert len(lines) == 1 and "local directory" in lines[0]
    out = build([tmp_path / "runs"], tmp_path / "board")
    assert len(out["runs"]) == 2 and len(out["rows"]) == 1  # the same files scored twice: one setting


# ------------------------------------------------------------------ 7. the position the rotary embedding saw
def bench_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lm_eval_streaming.cli", "benchmark", *map(str, args)], env=ENV,
                          capture_output=True, text=True, timeout=600)


def largest_distance(n_tokens: int, start: int, recent: int, shift: bool) -> int:
    """Brute force from StreamingLLM's definition: the query at t sees sinks j < start (at distance
    min(t, start + recent) - j with the shift, t - j without) and the keys t - recent .. t."""
    best = 0
    for t in range(n_tokens - 1):  # the last token is only a target
        for j in range(t + 1):
            if j < start:
                best = max(best, (min(t, start + recent) if shift else t) - j)
            elif j >= t - recent:
                best = max(best, t - j)
    return best


@pytest.mark.slow
def test_streaming_row_records_the_position_attention_saw_and_the_stream_length(tiny_model_dirs, tmp_path):
    from lm_eval_streaming.records import load_runs

    out = tmp_path / "run.json"  # the tiny models are trained (max_position_embeddings) to 256 positions
    proc = bench_cli("--model_id", tiny_model_dirs["llama"], "--max_tokens", 400, "--num_samples", 1,
                     "--recent_sizes", 12, "--start_size", 4, "--num_warmup", 0, "--chunk_size", 64,
                     "--dense_attn", "sdpa", "--position_shift", "true,false", "--no_kernel_error",
                     "--no_causality_probe", "--output", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = load_runs([out])
    assert run.trained_context == 256
    by_kind = {(r.method, r.position_shift): r for r in run.rows}
    dense, shifted, true = by_kind[("dense", None)], by_kind[("streaming_llm", True)], by_kind[("streaming_llm", False)]
    assert all(r.stream_length == 400 for r in run.rows)
    assert (dense.max_position, dense.exceeded_trained_context) == (398, True)
    assert shifted.max_position == largest_distance(400, 4, 12, shift=True) == 16
    assert shifted.exceeded_trained_context is False
    assert true.max_position == largest_distance(400, 4, 12, shift=False) == 398 and true.exceeded_trained_context


def test_old_records_of_cache_methods_load_with_the_position_unknown():
    from lm_eval_streaming.records import Run

    row = {"method": "streaming_llm", "start_size": 4, "recent_size": 252, "attn_implementation": "lm_eval_streaming",
           "ppl": 10.0, "nll_mean": 2.3, "max_position": 24998, "exceeded_trained_context": True}
    dense = {**row, "method": "dense", "recent_size": None}
    run = Run.from_dict({"schema": "lm_eval_streaming.run/2", "model_id": "m", "max_tokens": 25000, "num_samples": 1,
                         "dtype": "float32", "device": "cpu", "chunk_size": 512, "rows": [row, dense]})
    assert (run.rows[0].max_position, run.rows[0].exceeded_trained_context, run.rows[0].stream_length) == (None,) * 3
    assert (run.rows[1].max_position, run.rows[1].exceeded_trained_context) == (24998, True)


# ------------------------------------------------------------------ 4. leaderboard settings
def _results(model_args: str, acc: float, task: str = "tiny_mc", shots: int = 0, gen_kwargs=None, seed: int = 1234,
             version: float = 1.0, config_extra=None, multiturn=None, date: float = 1.0e9) -> dict:
    """A results file as lm-eval 0.4.13 writes it (the fields the leaderboard reads, and typical others)."""
    return {"results": {task: {"alias": task, "acc,none": acc, "acc_stderr,none": 0.01}},
            "configs": {task: {"task": task, "output_type": "multiple_choice", "num_fewshot": shots,
                               "metadata": {"version": version, "pretrained": model_args}, **(config_extra or {})}},
            "versions": {task: version}, "n-shot": {task: shots},
            "config": {"model": "streaming_hf", "model_args": model_args, "model_dtype": "torch.float32",
                       "model_revision": "main", "model_sha": "", "device": "cpu", "limit": None,
                       "gen_kwargs": gen_kwargs or {}, "random_seed": 0, "numpy_seed": seed, "torch_seed": seed,
                       "fewshot_seed": seed},
            "fewshot_as_multiturn": multiturn, "date": date}


def _board(tmp_path, runs: list[dict], *dirs) -> subprocess.CompletedProcess:
    root = tmp_path / "out"
    for i, data in enumerate(runs):
        folder = root / f"m{i}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"results_2025-01-01T10-00-0{i}.json").write_text(json.dumps(data))
    return _cli("leaderboard", *(dirs or [root]), "--output", tmp_path / "board")


def _cli(*argv) -> subprocess.CompletedProcess:
    """``lm-eval-streaming ARGV`` in this process (the console script's main): exit code, stdout, stderr."""
    import contextlib
    import io

    from lm_eval_streaming.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as e:
            code = e.code
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


@pytest.mark.parametrize("change", [
    {"shots": 2}, {"gen_kwargs": {"temperature": 0.7, "do_sample": True}}, {"seed": 7}, {"version": 2.0},
    {"config_extra": {"doc_to_text": "Q: {{ctx}}"}}, {"multiturn": True}])
def test_leaderboard_keeps_runs_that_differ_in_a_setting_apart(tmp_path, change):
    margs = "pretrained=smollm2-135m,method=dense"
    proc = _board(tmp_path, [_results(margs, 0.25), _results(margs, 0.5, date=1.1e9, **change)])
    assert proc.returncode == 0, proc.stderr
    assert "2 runs, 2 rows" in proc.stdout
    table = (tmp_path / "board" / "comparison.md").read_text()
    assert "0.2500" in table and "0.5000" in table  # neither number lost
    column = {"shots": "num_fewshot", "gen_kwargs": "gen_kwargs", "seed": "seeds", "version": "task_config",
              "config_extra": "task_config", "multiturn": "prompt"}[next(iter(change))]
    assert column in table.splitlines()[0]  # shown where rows differ


def test_leaderboard_merges_what_changes_no_number(tiny_model_dirs, tmp_path):
    """fewshot_as_multiturn unset or false, a tokenizer path with or without a slash: one setting."""
    tok = tiny_model_dirs["llama"]
    runs = [_results(f"pretrained=smollm2-135m,tokenizer={tok}", 0.25, multiturn=None),
            _results(f"pretrained=smollm2-135m,tokenizer={tok}/", 0.25, task="tiny_mc2", multiturn=False, date=2e9)]
    proc = _board(tmp_path, runs)
    assert proc.returncode == 0, proc.stderr
    assert "2 runs, 1 rows" in proc.stdout


def test_leaderboard_keys_method_options_with_their_defaults_filled(tmp_path):
    """evict_every=1 given or left to its default is one setting; evict_every=4, position_shift=false are others."""
    base = "pretrained=smollm2-135m,method=h2o"
    same = [_results(base, 0.25), _results(base + ",evict_every=1", 0.5, task="tiny_mc2", date=1.1e9)]
    assert "2 runs, 1 rows" in _board(tmp_path / "a", same).stdout
    other = [_results(base, 0.25), _results(base + ",evict_every=4", 0.5, date=1.1e9),
             _results("pretrained=smollm2-135m,method=streaming_llm", 0.3, date=1.2e9),
             _results("pretrained=smollm2-135m,method=streaming_llm,position_shift=false", 0.4, date=1.3e9)]
    proc = _board(tmp_path / "b", other)
    assert proc.returncode == 0, proc.stderr
    assert "4 runs, 4 rows" in proc.stdout
    table = (tmp_path / "b" / "board" / "comparison.md").read_text()
    assert "policy_options" in table.splitlines()[0] and "evict_every=4" in table and "position_shift=False" in table


def test_leaderboard_merges_runs_of_one_setting_on_other_tasks_and_dedupes_a_copy(tmp_path):
    margs = "pretrained=smollm2-135m,method=dense"
    runs = [_results(margs, 0.25, shots=2), _results(margs, 0.5, task="tiny_mc2", shots=2, date=1.1e9)]
    proc = _board(tmp_path, runs + [runs[0]])  # the third file is a copy of the first
    assert proc.returncode == 0, proc.stderr
    assert "2 runs, 1 rows" in proc.stdout
    again = _board(tmp_path, runs, tmp_path / "out", tmp_path / "out")  # one folder given twice
    assert "2 runs, 1 rows" in again.stdout


def test_leaderboard_one_checkpoint_under_two_spellings_is_one_row(tiny_model_dirs, tmp_path):
    real = Path(tiny_model_dirs["llama"])
    link = tmp_path / "link-to-model"
    link.symlink_to(real)
    spellings = [str(real), str(real) + "/", f"{real.parent}/../{real.parent.name}/{real.name}", str(link)]
    runs = [{**_results(f"pretrained={s},method=dense", 0.25, date=1e9 + i),
             "config": {**_results("", 0)["config"], "model": "hf", "model_args": f"pretrained={s}"}}
            for i, s in enumerate(spellings)]
    for i, r in enumerate(runs):
        r["results"]["tiny_mc"]["acc,none"] = 0.25 + i / 1000  # distinct files
    proc = _board(tmp_path, runs)
    assert proc.returncode == 0, proc.stderr
    assert "4 runs, 1 rows" in proc.stdout


# ------------------------------------------------------------------ 5. the same run read twice
def _report(tmp_path, *files) -> str:
    out = tmp_path / "report.md"
    proc = _cli("analyze", *files, "--output", out)
    assert proc.returncode == 0, proc.stderr
    # the report without the line naming its data files (they differ by design)
    return "\n".join(ln for ln in out.read_text().splitlines() if "Data: " not in ln and ".json" not in ln), proc


def test_analyze_counts_a_run_read_twice_once(tmp_path):
    from synthetic_runs import make_run

    from lm_eval_streaming.records.io import write_run

    run = make_run("smollm2-135m", lambda m, method, r, k, p, a: 2.0 + (0.1 if r else 0.0) + p / 1e4,
                   max_tokens=2000, trained_context=8192)
    one = tmp_path / "run.json"
    write_run(one, run)
    copy = tmp_path / "copy.json"
    copy.write_bytes(one.read_bytes())
    single, _ = _report(tmp_path, one)
    for files in ((one, one), (one, copy)):
        twice, proc = _report(tmp_path, *files)
        assert twice == single
        assert "(1 result file: 1 run," in (tmp_path / "report.md").read_text()
    assert "counted once" in proc.stderr  # the copy is named


def test_duplicate_recent_sizes_are_one_row():
    from lm_eval_streaming.benchmark.args import check_benchmark_args
    from lm_eval_streaming.experiment.config import expand_cells, validate_config

    assert check_benchmark_args(recent_sizes="16,16", max_tokens=100)["recent_sizes"] == [16]
    config = validate_config({"name": "x", "model_id": "smollm2-135m", "methods": ["streaming_llm"],
                              "max_tokens": 100, "recent_sizes": [16, 16]}, "x.yaml")
    assert [c["recent_sizes"] for c in expand_cells(config)] == [[16]]


@pytest.mark.slow
def test_benchmark_recent_sizes_16_16_writes_one_row(tiny_model_dirs, tmp_path):
    from lm_eval_streaming.records import load_runs

    out = tmp_path / "run.json"
    proc = bench_cli("--model_id", tiny_model_dirs["llama"], "--max_tokens", 40, "--num_samples", 1,
                     "--recent_sizes", "16,16", "--num_warmup", 0, "--dense_attn", "sdpa", "--no_kernel_error",
                     "--no_causality_probe", "--output", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = load_runs([out])
    assert [(r.method, r.recent_size) for r in run.rows] == [("dense", None), ("streaming_llm", 16)]


# ------------------------------------------------------------------ 3. one checkpoint, two spellings
def test_analyze_sees_one_model_under_two_spellings(tiny_model_dirs, tmp_path):
    from synthetic_runs import make_run

    from lm_eval_streaming.analysis.data import Data
    from lm_eval_streaming.analysis.inputs import read_results
    from lm_eval_streaming.records.io import write_run

    real = Path(tiny_model_dirs["llama"])
    link = tmp_path / "same-model"
    link.symlink_to(real)
    files = []
    for i, spelling in enumerate([str(real), str(real) + "/", str(link)]):
        run = make_run(spelling, lambda m, method, r, k, p, a: 2.0 + (0.1 if r else 0.0) + p / 1e4 + i / 100,
                       max_tokens=1000 * (i + 1), trained_context=256)
        files.append(tmp_path / f"run{i}.json")
        write_run(files[-1], run)
    data = Data(read_results(files, "analyze"), tol=0.01)
    assert data.models == [str(real)] and len(data.runs) == 3
    proc = _cli("analyze", *files, "--output", tmp_path / "r.md")
    assert proc.returncode == 0, proc.stderr


@pytest.mark.slow
def test_experiment_store_knows_a_cell_under_another_spelling(tiny_model_dirs, tmp_path):
    real = Path(tiny_model_dirs["llama"])
    out = tmp_path / "r.jsonl"

    def config(spelling):
        path = tmp_path / f"c{len(list(tmp_path.glob('c*.yaml')))}.yaml"
        path.write_text(f"name: spell\nmodel_id: {spelling}\nmethods: [streaming_llm]\nmax_tokens: 40\n"
                        "recent_sizes: [8]\nnum_samples: 1\nnum_warmup: 0\ndevice: cpu\ndense_attn: [sdpa]\n"
                        "kernel_error: false\ncausality_probe: false\n")
        return path

    cli = [sys.executable, "-m", "lm_eval_streaming.cli", "experiment"]
    first = subprocess.run(cli + [str(config(real)), "--output", str(out), "--no-progress"], env=ENV,
                           capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    for spelling in (f"{real}/", f"{real.parent}/../{real.parent.name}/{real.name}"):
        dry = subprocess.run(cli + [str(config(spelling)), "--output", str(out), "--dry-run"], env=ENV,
                             capture_output=True, text=True, timeout=600)
        assert dry.returncode == 0, dry.stderr[-3000:]
        assert "0 to run" in dry.stdout, dry.stdout
