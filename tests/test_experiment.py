"""Experiment configs and the resumable runner, with a fake run_benchmark (no model is loaded)."""

from __future__ import annotations

import json
import os
import sys
import types
from pathlib import Path

import pytest
import yaml

from lm_eval_streaming import experiment as ex

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


def fake_record(method, recent, **cell):
    dense = method == "dense"
    nll = 3.0 + (0 if dense else 0.01 * recent / 252) + cell["max_tokens"] / 1e5
    return {
        "model_id": cell["model_id"], "method": method, "start_size": cell.get("start_size", 4),
        "recent_size": None if dense else recent, "max_tokens": cell["max_tokens"],
        "num_samples": cell.get("num_samples", 1), "dtype": cell.get("dtype", "float32"),
        "device": cell.get("device", "cpu"), "chunk_size": 512, "trained_context": 8192,
        "ppl": 2.718281828 ** nll, "ppl_ci": [1.0, 2.0], "acc": 0.4, "acc_ci": [0.3, 0.5], "nll_mean": nll,
        "delta_nll_vs_dense": None if dense else nll - 3.0 - cell["max_tokens"] / 1e5,
        "delta_nll_ci": None if dense else [-0.1, 0.1], "delta_acc_vs_dense": None if dense else 0.0,
        "delta_acc_ci": None if dense else [-0.01, 0.01], "nan_logits": 0, "inf_logits": 0,
        "max_abs_logit": 30.0, "max_abs_attn_score": 20.0, "nonfinite_attn_scores": 0, "nonfinite_tokens": 0,
        "exceeded_trained_context": cell["max_tokens"] > 8192, "max_position": cell["max_tokens"] - 1,
    }


class FakeBenchmark:
    """Deterministic fake; raises ``fail_with`` on call number ``fail_on`` (1-based)."""

    def __init__(self, fail_on=None, fail_with=KeyboardInterrupt):
        self.calls = []
        self.fail_on, self.fail_with = fail_on, fail_with

    def __call__(self, **kw):
        self.calls.append(kw)
        if self.fail_on is not None and len(self.calls) == self.fail_on:
            raise self.fail_with()
        rows = [fake_record("dense", None, **kw)]
        for m in kw["methods"]:
            for r in kw.get("recent_sizes", [252]):
                rows.append(fake_record(m, r, **kw))
        return rows


def write_config(tmp_path, data, name="exp.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data, sort_keys=False))
    return p


BASE = {"name": "t", "description": "test", "model_id": "smollm2-135m", "methods": ["streaming_llm", "window"],
        "start_size": 4, "num_samples": 2, "dtype": "float32", "device": "cpu",
        "grid": {"max_tokens": [100, 200], "recent_sizes": [8, 16, 32]}}


# ------------------------------------------------------------------ validation
@pytest.mark.parametrize("change, field, allowed", [
    ({"colour": "red"}, "colour", "allowed:"),
    ({"methods": ["streaming_llm", "h2o"]}, "methods", "window"),
    ({"methods": ["dense"]}, "methods", "baseline"),
    ({"dtype": "fp16"}, "dtype", "float32, bfloat16, float16"),
    ({"device": "gpu"}, "device", "cuda:N"),
    ({"num_samples": "three"}, "num_samples", "integer >= 1"),
    ({"num_samples": 0}, "num_samples", "integer >= 1"),
    ({"start_size": True}, "start_size", "integer >= 0"),
    ({"model_id": None}, "model_id", "model id"),
    ({"grid": {"max_tokens": [100], "colour": [1]}}, "grid.colour", "max_tokens"),
    ({"grid": {"max_tokens": []}}, "grid.max_tokens", "non-empty list"),
    ({"grid": {"max_tokens": [100, "x"]}}, "grid.max_tokens", "integer >= 1"),
    ({"grid": {"device": ["cpu", "tpu"]}, "max_tokens": 100}, "grid.device", "mps"),
    ({"grid": {"max_tokens": [100], "start_size": [4]}}, "grid.start_size", "one place"),
    ({"grid": {"max_tokens": [100], "recent_sizes": [0]}}, "grid.recent_sizes", "integer >= 1"),
])
def test_validation_names_field_and_file(tmp_path, change, field, allowed):
    data = {k: v for k, v in BASE.items() if k != "grid"}
    data["grid"] = {"max_tokens": [100]}
    data.update(change)
    if "device" in data.get("grid", {}):
        del data["device"]
    if data.get("model_id") is None:
        del data["model_id"]
    path = write_config(tmp_path, data, "bad_config.yaml")
    with pytest.raises(ex.ConfigError) as info:
        ex.load_config(path)
    msg = str(info.value)
    assert "bad_config.yaml" in msg and f"'{field}'" in msg and allowed in msg, msg


def test_missing_required_field(tmp_path):
    data = {k: v for k, v in BASE.items() if k != "grid"}
    path = write_config(tmp_path, data, "nolen.yaml")
    with pytest.raises(ex.ConfigError, match=r"nolen\.yaml: field 'max_tokens': missing"):
        ex.load_config(path)


def test_cli_bad_config_exits_2_before_loading_anything(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval_streaming.benchmark", None)  # importing it would fail
    path = write_config(tmp_path, {**BASE, "dtype": "float64"}, "x.yaml")
    assert ex.main([str(path), "--output", str(tmp_path / "r.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "x.yaml" in err and "'dtype'" in err and "float32, bfloat16, float16" in err


def test_shipped_configs_are_valid_and_match_the_seed():
    configs = {p.stem: ex.load_config(p) for p in CONFIGS.glob("*.yaml")}
    assert {"length", "cache_size", "model_size", "hardware", "offline_length", "offline_cache_size",
            "offline_dtype", "offline_model_size"} <= set(configs)
    for name, c in configs.items():
        for cell in ex.expand_cells(c):
            assert cell["methods"][0] == "streaming_llm"
            if name not in ("offline_cache_size", "offline_dtype"):  # sized down for 2 CPU cores
                assert cell["methods"] == ["streaming_llm", "window"]
    cells = {k: ex.expand_cells(c) for k, c in configs.items()}
    assert [c["max_tokens"] for c in cells["length"]] == [500, 1000, 2000, 5000]
    assert all(c["recent_sizes"] == [252] and c["model_id"] == "EleutherAI/pythia-6.9b" for c in cells["length"])
    assert [c["recent_sizes"] for c in cells["cache_size"]] == [[124, 252, 508, 1020]]
    assert all(c["max_tokens"] == 2000 for c in cells["cache_size"] + cells["model_size"])
    assert [c["model_id"] for c in cells["model_size"]] == [
        "EleutherAI/pythia-70m-deduped", "EleutherAI/pythia-410m-deduped", "EleutherAI/pythia-6.9b"]
    assert {(c["device"], c["dtype"]) for c in cells["hardware"]} == {
        (d, t) for d in ("cuda", "mps", "cpu") for t in ("float32", "bfloat16", "float16")}
    lengths = [c["max_tokens"] for c in cells["offline_length"]]
    assert min(lengths) < 8192 < max(lengths) and all(c["num_samples"] <= 3 for c in cells["offline_length"])
    assert [c["recent_sizes"] for c in cells["offline_cache_size"]] == [[124, 252, 508, 1020]]
    assert {c["dtype"] for c in cells["offline_dtype"]} == {"float32", "bfloat16", "float16"}
    assert all(c["model_id"] == "smollm2-135m" for k in cells if k.startswith("offline") for c in cells[k])
    assert "only one" in configs["offline_model_size"]["description"].lower()


def test_cells_and_keys_are_stable():
    config = ex.validate_config(BASE, "mem.yaml")
    cells = ex.expand_cells(config)
    assert len(cells) == 6 and cells[0]["max_tokens"] == 100 and cells[0]["recent_sizes"] == [8]
    keys = [ex.cell_key(c) for c in cells]
    assert len(set(keys)) == 6
    assert keys == [ex.cell_key(c) for c in ex.expand_cells(ex.validate_config(BASE, "mem.yaml"))]
    # key order in the cell does not matter
    assert ex.cell_key(dict(reversed(list(cells[0].items())))) == keys[0]


# ------------------------------------------------------------------ runner
def _rows_without_time(path):
    return sorted((json.dumps({k: v for k, v in r.items() if k not in ("finished_at", "source")}, sort_keys=True)
                   for r in ex.load_results(path)))


@pytest.mark.parametrize("exc", [KeyboardInterrupt, SystemExit])
def test_kill_and_resume_equals_uninterrupted_run(tmp_path, exc):
    config = ex.validate_config(BASE, "mem.yaml")
    ref_path = tmp_path / "ref.jsonl"
    ex.run_experiment(config, ref_path, run_benchmark=FakeBenchmark(), progress=False, log=lambda *a: None)

    out = tmp_path / "killed.jsonl"
    killer = FakeBenchmark(fail_on=3, fail_with=exc)
    with pytest.raises(exc):
        ex.run_experiment(config, out, run_benchmark=killer, progress=False, log=lambda *a: None)
    assert len(ex.read_entries(out)) == 2  # the two finished cells survived; the third is lost

    resumed = FakeBenchmark()
    summary = ex.run_experiment(config, out, run_benchmark=resumed, progress=False, log=lambda *a: None)
    assert len(resumed.calls) == 4 and len(summary["skipped_finished"]) == 2
    assert _rows_without_time(out) == _rows_without_time(ref_path)
    assert len(ex.load_results(out)) == 6 * 3  # dense + 2 methods per cell

    again = FakeBenchmark()
    ex.run_experiment(config, out, run_benchmark=again, progress=False, log=lambda *a: None)
    assert again.calls == []


def test_torn_last_line_is_ignored_and_repaired(tmp_path):
    config = ex.validate_config(BASE, "mem.yaml")
    out = tmp_path / "torn.jsonl"
    with pytest.raises(KeyboardInterrupt):
        ex.run_experiment(config, out, run_benchmark=FakeBenchmark(fail_on=3), progress=False, log=lambda *a: None)
    full = out.read_bytes()
    with open(out, "ab") as f:  # a kill in the middle of writing the third line
        f.write(full.splitlines(keepends=True)[0][:57])
    assert len(ex.read_entries(out)) == 2
    assert len(ex.load_results(out)) == 2 * 3
    bench = FakeBenchmark()
    ex.run_experiment(config, out, run_benchmark=bench, progress=False, log=lambda *a: None)
    assert len(bench.calls) == 4
    lines = out.read_bytes().split(b"\n")
    assert lines[-1] == b"" and all(json.loads(line) for line in lines[:-1])
    assert len(lines) - 1 == 6


def test_load_results_merges_cell_fields(tmp_path):
    config = ex.validate_config(BASE, "mem.yaml")
    out = tmp_path / "r.jsonl"
    ex.run_experiment(config, out, run_benchmark=FakeBenchmark(), progress=False, log=lambda *a: None)
    rows = ex.load_results([out])
    r = next(r for r in rows if r["method"] == "window")
    assert r["experiment"] == "t" and len(r["cell_key"]) == 16 and r["methods"] == ["streaming_llm", "window"]
    assert r["recent_sizes"] == [r["recent_size"]] and r["num_samples"] == 2 and r["finished_at"]


def test_cli_end_to_end_with_injected_benchmark(tmp_path, monkeypatch, capsys):
    fake = FakeBenchmark()
    monkeypatch.setitem(sys.modules, "lm_eval_streaming.benchmark", types.SimpleNamespace(run_benchmark=fake))
    cfg = write_config(tmp_path, BASE)
    out = tmp_path / "cli.jsonl"
    assert ex.main([str(cfg), "--output", str(out), "--dry-run"]) == 0
    assert fake.calls == [] and "6 to run" in capsys.readouterr().out
    assert ex.main([str(cfg), "--output", str(out), "--no-progress", "--where", "max_tokens=200"]) == 0
    assert len(fake.calls) == 3 and all(c["max_tokens"] == 200 for c in fake.calls)
    assert ex.main([str(cfg), "--output", str(out), "--no-progress"]) == 0
    assert len(fake.calls) == 6 and len(ex.read_entries(out)) == 6


def test_unavailable_device_cells_are_skipped(tmp_path):
    data = {**BASE, "grid": {"max_tokens": [100], "device": ["cpu", "cuda:7"]}}
    del data["device"]
    config = ex.validate_config(data, "mem.yaml")
    bench = FakeBenchmark()
    summary = ex.run_experiment(config, tmp_path / "d.jsonl", run_benchmark=bench, progress=False,
                                log=lambda *a: None)
    assert [c["device"] for c in bench.calls] == ["cpu"] and len(summary["skipped_unavailable"]) == 1


def test_real_path_loads_each_model_once(tmp_path, monkeypatch):
    """Without an injected benchmark the runner uses benchmark.run_benchmark, loading a model once for
    consecutive cells of the same model/dtype/device."""
    loads, calls = [], []

    def load_model(model_id, dtype="float32", device=None, method="dense"):
        loads.append((model_id, dtype, device, method))
        return object(), object()

    def run_benchmark(model_id=None, methods=(), max_tokens=2000, recent_sizes=(252,), num_samples=5,
                      num_warmup=2, start_size=4, dtype="float32", device=None, chunk_size=512,
                      model=None, tokenizer=None):
        assert model is not None and tokenizer is not None
        calls.append(max_tokens)
        return FakeBenchmark()(model_id=model_id, methods=list(methods), max_tokens=max_tokens,
                               recent_sizes=list(recent_sizes), num_samples=num_samples, dtype=dtype, device=device)

    monkeypatch.setitem(sys.modules, "lm_eval_streaming.benchmark",
                        types.SimpleNamespace(run_benchmark=run_benchmark, load_model=load_model))
    data = {**BASE, "grid": {"max_tokens": [100, 200], "dtype": ["float32", "bfloat16"]}}
    del data["dtype"]
    config = ex.validate_config(data, "mem.yaml")
    ex.run_experiment(config, tmp_path / "r.jsonl", progress=False, log=lambda *a: None)
    assert calls == [100, 200, 100, 200]  # grouped by model/dtype: 2 loads for 4 cells
    assert loads == [("smollm2-135m", "float32", "cpu", "streaming_llm"),
                     ("smollm2-135m", "bfloat16", "cpu", "streaming_llm")]


def test_real_kill_and_resume_gives_the_uninterrupted_results(tiny_model_dirs, tmp_path):
    """SIGKILL a real `lm-eval-streaming experiment` (tiny model) after its first cell; the re-run
    finishes the grid, and every cell's scores equal an uninterrupted run's."""
    import signal
    import subprocess
    import time

    cfg = tmp_path / "kill.yaml"
    cfg.write_text(yaml.safe_dump({
        "name": "kill", "model_id": str(tiny_model_dirs["llama"]), "methods": ["streaming_llm", "window"],
        "start_size": 2, "recent_sizes": [16], "num_samples": 2, "num_warmup": 0, "device": "cpu",
        "dtype": "float32", "grid": {"max_tokens": [150, 300, 450]},
    }))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "lm_eval_streaming.cli", "experiment", str(cfg), "--no-progress", "--output"]
    killed = tmp_path / "killed.jsonl"
    proc = subprocess.Popen(cmd + [str(killed)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and (not killed.exists() or not killed.read_text().count("\n")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    n_before = killed.read_text().count("\n")
    assert 1 <= n_before < 3, "the kill must land mid-grid"
    assert subprocess.run(cmd + [str(killed)], env=env, capture_output=True).returncode == 0
    clean = tmp_path / "clean.jsonl"
    assert subprocess.run(cmd + [str(clean)], env=env, capture_output=True).returncode == 0

    def scores(path):
        return {(r["cell_key"], r["method"]): (r["ppl"], r["acc"], r["nll_mean"]) for r in ex.load_results([path])}

    resumed, uninterrupted = scores(killed), scores(clean)
    assert len(uninterrupted) == 3 * 3 and resumed.keys() == uninterrupted.keys()
    for key, value in uninterrupted.items():
        assert resumed[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
