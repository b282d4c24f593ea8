"""Experiment configs and the resumable runner, with a fake run_benchmark (no model is loaded)."""

from __future__ import annotations

import json
import math
import os
import sys
import types
from pathlib import Path

import pytest
import yaml

from lm_eval_streaming import experiment as ex
from lm_eval_streaming.experiment import store
from lm_eval_streaming.records import Interval, Row, Run, load_runs

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


def fake_row(method, recent, **cell) -> Row:
    dense = method == "dense"
    nll = 3.0 + (0 if dense else 0.01 * recent / 252) + cell["max_tokens"] / 1e5
    return Row(method=method, start_size=0 if dense else cell["start_size"], recent_size=None if dense else recent,
               attn_implementation="sdpa" if dense else "lm_eval_streaming", ppl=math.exp(nll), acc=0.4,
               nll_mean=nll, ppl_ci=Interval(1.0, 2.0), per_sample_nll=[nll] * cell["num_samples"],
               delta_reference=None if dense else "sdpa",
               delta_nll_vs_dense=None if dense else nll - 3.0 - cell["max_tokens"] / 1e5,
               max_abs_logit=30.0, max_position=cell["max_tokens"] - 1)


class FakeBenchmark:
    """Deterministic fake; raises ``fail_with`` on call number ``fail_on`` (1-based)."""

    def __init__(self, fail_on=None, fail_with=KeyboardInterrupt):
        self.calls = []
        self.fail_on, self.fail_with = fail_on, fail_with

    def __call__(self, **kw):
        self.calls.append(kw)
        if self.fail_on is not None and len(self.calls) == self.fail_on:
            raise self.fail_with()
        rows = [fake_row("dense", None, **kw)] + [fake_row(m, r, **kw) for m in kw["methods"]
                                                   for r in kw["recent_sizes"]]
        return Run(model_id=kw["model_id"], max_tokens=kw["max_tokens"], num_samples=kw["num_samples"],
                   dtype=kw["dtype"], device=kw["device"], chunk_size=kw["chunk_size"], rows=rows,
                   trained_context=8192)


def write_config(tmp_path, data, name="exp.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data, sort_keys=False))
    return p


BASE = {"name": "t", "description": "test", "model_id": "smollm2-135m", "methods": ["streaming_llm", "window"],
        "start_size": 4, "num_samples": 2, "dtype": "float32", "device": "cpu",
        "grid": {"max_tokens": [100, 200], "recent_sizes": [8, 16, 32]}}
QUIET = dict(progress=False, log=lambda *a: None)


# ------------------------------------------------------------------ validation
@pytest.mark.parametrize("change, field, allowed", [
    ({"colour": "red"}, "colour", "allowed:"),
    ({"methods": ["streaming_llm", "snapkv"]}, "methods", "window"),  # a method not (yet) implemented
    ({"methods": ["dense"]}, "methods", "baseline"),
    ({"dtype": "fp16"}, "dtype", "float32, bfloat16, float16"),
    ({"device": "gpu"}, "device", "cuda:N"),
    ({"num_samples": "three"}, "num_samples", "integer >= 1"),
    ({"num_samples": 0}, "num_samples", "integer >= 1"),
    ({"start_size": True}, "start_size", "integer >= 0"),
    ({"model_id": None}, "model_id", "model id"),
    ({"model_id": "/does/not/exist"}, "model_id", "no such checkpoint directory"),
    ({"grid": {"max_tokens": [100], "colour": [1]}}, "grid.colour", "max_tokens"),
    ({"grid": {"max_tokens": []}}, "grid.max_tokens", "non-empty list"),
    ({"grid": {"max_tokens": [100, "x"]}}, "grid.max_tokens", "integer >= 2"),
    ({"grid": {"max_tokens": [1]}}, "grid.max_tokens", "max_tokens=1"),
    ({"grid": {"device": ["cpu", "tpu"]}, "max_tokens": 100}, "grid.device", "mps"),
    ({"grid": {"max_tokens": [100], "start_size": [4]}}, "grid.start_size", "one place"),
    ({"grid": {"max_tokens": [100], "recent_sizes": [0]}}, "grid.recent_sizes", "integer >= 1"),
    ({"grid": {"max_tokens": [100], "chunk_size": [0]}}, "grid.chunk_size", "integer >= 1"),
    ({"grid": {"max_tokens": [100], "dense_attn": [["sdpa", "nosuch"]]}}, "grid.dense_attn", "nosuch"),
    ({"kernel_error": "yes"}, "kernel_error", "true or false"),
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
            if name in ("length", "cache_size", "model_size", "hardware", "offline_length", "offline_length_long"):
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
    numerics = cells["offline_numerics"]
    assert {c["dtype"] for c in numerics} == {"float32", "bfloat16", "float16"}
    assert all(c["dense_attn"] == ["default", "eager", "lm_eval_streaming"] and c["kernel_error"] and
               c["causality_probe"] for c in numerics)


def test_cells_and_keys_are_stable():
    config = ex.validate_config(BASE, "mem.yaml")
    cells = ex.expand_cells(config)
    assert len(cells) == 6 and cells[0]["max_tokens"] == 100 and cells[0]["recent_sizes"] == [8]
    keys = [ex.cell_key(c) for c in cells]
    assert len(set(keys)) == 6
    assert keys == [ex.cell_key(c) for c in ex.expand_cells(ex.validate_config(BASE, "mem.yaml"))]
    assert ex.cell_key(dict(reversed(list(cells[0].items())))) == keys[0]  # key order does not matter


def test_keys_cover_defaults_and_sample_version(monkeypatch):
    """A cell is keyed with every default filled in: writing a default out gives the same key, changing one
    (or how samples are built) gives another, so an old cell never passes as done."""
    implicit = ex.expand_cells(ex.validate_config(BASE, "a.yaml"))[0]
    explicit_cfg = {**BASE, "chunk_size": 512, "num_warmup": 2, "dense_attn": ["default", "default@full", "lm_eval_streaming"],
                    "kernel_error": True, "causality_probe": True}
    explicit = ex.expand_cells(ex.validate_config(explicit_cfg, "b.yaml"))[0]
    assert ex.cell_key(implicit) == ex.cell_key(explicit)
    for change in ({"chunk_size": 256}, {"kernel_error": False}, {"dense_attn": ["sdpa"]}, {"num_warmup": 0}):
        other = ex.expand_cells(ex.validate_config({**BASE, **change}, "c.yaml"))[0]
        assert ex.cell_key(other) != ex.cell_key(implicit), change
    from lm_eval_streaming.benchmark import samples

    before = ex.cell_key(implicit)
    monkeypatch.setattr(samples, "SAMPLES_VERSION", "other/2")
    assert ex.cell_key(implicit) != before


def test_dense_attn_is_gridable():
    config = ex.validate_config({**BASE, "grid": {"max_tokens": [100], "dense_attn": [
        "sdpa", ["eager", "lm_eval_streaming"]]}}, "g.yaml")
    assert [c["dense_attn"] for c in ex.expand_cells(config)] == [["sdpa"], ["eager", "lm_eval_streaming"]]


# ------------------------------------------------------------------ runner
def _scores(path):
    return sorted((r.cell_key, row.method, row.recent_size, row.ppl, row.nll_mean)
                  for r in load_runs([path]) for row in r.rows)


@pytest.mark.parametrize("exc", [KeyboardInterrupt, SystemExit])
def test_kill_and_resume_equals_uninterrupted_run(tmp_path, exc):
    config = ex.validate_config(BASE, "mem.yaml")
    ref_path = tmp_path / "ref.jsonl"
    ex.run_experiment(config, ref_path, run_benchmark=FakeBenchmark(), **QUIET)

    out = tmp_path / "killed.jsonl"
    with pytest.raises(exc):
        ex.run_experiment(config, out, run_benchmark=FakeBenchmark(fail_on=3, fail_with=exc), **QUIET)
    assert len(ex.read_entries(out)) == 2  # the two finished cells survived; the third is lost
    assert not store._claims_path(out).exists()  # the interrupted cell's claim was released

    resumed = FakeBenchmark()
    summary = ex.run_experiment(config, out, run_benchmark=resumed, **QUIET)
    assert len(resumed.calls) == 4 and len(summary["skipped_finished"]) == 2
    assert _scores(out) == _scores(ref_path) and len(_scores(out)) == 6 * 3

    again = FakeBenchmark()
    ex.run_experiment(config, out, run_benchmark=again, **QUIET)
    assert again.calls == []


def test_torn_last_line_is_ignored_and_repaired(tmp_path):
    config = ex.validate_config(BASE, "mem.yaml")
    out = tmp_path / "torn.jsonl"
    with pytest.raises(KeyboardInterrupt):
        ex.run_experiment(config, out, run_benchmark=FakeBenchmark(fail_on=3), **QUIET)
    full = out.read_bytes()
    with open(out, "ab") as f:  # a kill in the middle of writing the third line
        f.write(full.splitlines(keepends=True)[0][:57])
    assert len(ex.read_entries(out)) == 2 and len(load_runs([out])) == 2
    bench = FakeBenchmark()
    ex.run_experiment(config, out, run_benchmark=bench, **QUIET)
    assert len(bench.calls) == 4
    lines = out.read_bytes().split(b"\n")
    assert lines[-1] == b"" and all(json.loads(line) for line in lines[:-1]) and len(lines) - 1 == 6


def test_stored_runs_carry_cell_and_key(tmp_path):
    config = ex.validate_config(BASE, "mem.yaml")
    out = tmp_path / "r.jsonl"
    ex.run_experiment(config, out, run_benchmark=FakeBenchmark(), **QUIET)
    runs = load_runs([out])
    assert {r.cell_key for r in runs} == {ex.cell_key(c) for c in ex.expand_cells(config)}
    run = runs[0]
    assert run.experiment == "t" and run.cell["methods"] == ["streaming_llm", "window"] and run.finished_at
    rows = [(r, row) for r in runs for row in r.rows]  # each row with the cell it came from
    assert len(rows) == 6 * 3 and rows[1][0].cell["recent_sizes"] == [rows[1][1].recent_size]


def test_cli_end_to_end_with_injected_benchmark(tmp_path, monkeypatch, capsys):
    fake = FakeBenchmark()
    monkeypatch.setattr("lm_eval_streaming.experiment.runner._get_run_benchmark", lambda progress=True: fake)
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
    summary = ex.run_experiment(config, tmp_path / "d.jsonl", run_benchmark=bench, **QUIET)
    assert [c["device"] for c in bench.calls] == ["cpu"] and len(summary["skipped_unavailable"]) == 1


def test_real_path_loads_each_model_once(tmp_path, monkeypatch):
    """Without an injected benchmark the runner uses benchmark.run_benchmark, loading a model once for
    consecutive cells of the same model/dtype/device."""
    loads, calls = [], []

    def load_model(model_id, dtype="float32", device=None, method="dense", tokenizer=None, methods=()):
        loads.append((model_id, dtype, device))
        return object(), object()

    def run_benchmark(model=None, tokenizer=None, progress=True, **cell):
        assert model is not None and tokenizer is not None
        calls.append(cell["max_tokens"])
        return FakeBenchmark()(**cell)

    import lm_eval_streaming.benchmark

    fake = types.SimpleNamespace(run_benchmark=run_benchmark, load_model=load_model)
    monkeypatch.setitem(sys.modules, "lm_eval_streaming.benchmark.command", fake)
    monkeypatch.setattr(lm_eval_streaming.benchmark, "command", fake, raising=False)  # `from pkg import command`
    data = {**BASE, "grid": {"max_tokens": [100, 200], "dtype": ["float32", "bfloat16"]}}
    del data["dtype"]
    ex.run_experiment(ex.validate_config(data, "mem.yaml"), tmp_path / "r.jsonl", **QUIET)
    assert calls == [100, 200, 100, 200]  # grouped by model/dtype: 2 loads for 4 cells
    assert loads == [("smollm2-135m", "float32", "cpu"), ("smollm2-135m", "bfloat16", "cpu")]


# ------------------------------------------------------------------ claims
def _claim(pid, host=None, age=0.0):
    import socket
    import time

    now = time.time()
    return {"experiment": "t", "pid": pid, "host": host or socket.gethostname(), "pid_started": None,
            "claimed_at": now - age, "heartbeat": now - age}


def _dead_pid() -> int:
    import subprocess

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.parametrize("who, taken_over", [
    ("dead pid on this host", True),
    ("live pid on this host", False),
    ("other host, fresh heartbeat", False),
    ("other host, stale heartbeat", True),
])
def test_claims_of_other_runners(tmp_path, who, taken_over):
    config = ex.validate_config({**BASE, "grid": {"max_tokens": [100, 200]}}, "mem.yaml")
    cells = ex.expand_cells(config)
    out = tmp_path / "c.jsonl"
    claim = {"dead pid on this host": _claim(_dead_pid()), "live pid on this host": _claim(os.getppid()),
             "other host, fresh heartbeat": _claim(1, "elsewhere"),
             "other host, stale heartbeat": _claim(1, "elsewhere", age=store.STALE_AFTER_S + 5)}[who]
    store._claims_path(out).write_text(json.dumps({ex.cell_key(cells[0]): claim}))
    bench = FakeBenchmark()
    summary = ex.run_experiment(config, out, run_benchmark=bench, **QUIET)
    ran = [c["max_tokens"] for c in bench.calls]
    assert ran == ([100, 200] if taken_over else [200])
    assert summary["claimed_elsewhere"] == ([] if taken_over else [ex.cell_key(cells[0])])


SPLIT_RUNNER = """
import sys, time, pathlib
sys.path.insert(0, {tests!r})
from test_experiment import FakeBenchmark
import lm_eval_streaming.experiment.runner as runner
import lm_eval_streaming.cli, lm_eval_streaming.options, torch, tqdm  # noqa: F401  (loaded before the start line)
ready, go = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
class Slow(FakeBenchmark):  # slow enough that a busy machine still starts the other runner within a cell
    def __call__(self, **kw):
        time.sleep(1.5)
        return super().__call__(**kw)
runner._get_run_benchmark = lambda progress=True: Slow()
ready.touch()
while not go.exists():
    time.sleep(0.01)
sys.exit(runner.main([sys.argv[3], "--output", sys.argv[4], "--no-progress"]))
"""


@pytest.mark.slow
def test_two_runners_on_one_output_split_the_grid(tmp_path):
    """Two real `experiment` processes started together on one JSONL compute every cell exactly once."""
    import subprocess
    import time

    cfg = write_config(tmp_path, BASE)
    out, go = tmp_path / "shared.jsonl", tmp_path / "go"
    script = SPLIT_RUNNER.format(tests=str(REPO / "tests"))
    procs, ready = [], []
    for i in range(2):
        ready.append(tmp_path / f"ready{i}")
        procs.append(subprocess.Popen([sys.executable, "-c", script, str(ready[i]), str(go), str(cfg), str(out)],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    deadline = time.time() + 120
    while not all(r.exists() for r in ready) and time.time() < deadline:
        time.sleep(0.05)
    go.touch()
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    keys = [e["cell_key"] for e in ex.read_entries(out)]
    assert len(keys) == 6 and len(set(keys)) == 6  # every cell once: no cell computed twice
    runs_per_process = [int(o.strip().splitlines()[-1].split()[0]) for o, _ in outputs]
    assert sum(runs_per_process) == 6 and min(runs_per_process) >= 1, outputs


# ------------------------------------------------------------------ the real command
def _cli(*args, timeout=600):
    import subprocess

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "lm_eval_streaming.cli", *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=timeout)


def _tiny_config(tmp_path, model_dir, **over):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump({
        "name": "tiny", "model_id": str(model_dir), "methods": ["streaming_llm", "window"], "start_size": 2,
        "recent_sizes": [16], "num_samples": 2, "num_warmup": 0, "device": "cpu", "dtype": "float32",
        "causality_probe": False, "grid": {"max_tokens": [150, 300, 450]}, **over}))
    return cfg


@pytest.mark.slow
def test_unwritable_output_fails_before_any_cell(tiny_model_dirs, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    proc = _cli("experiment", _tiny_config(tmp_path, tiny_model_dirs["llama"]), "--no-progress",
                "--output", blocker / "out.jsonl")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert str(blocker) in proc.stderr and "cells run" not in proc.stdout


@pytest.mark.parametrize("over, needle", [
    ({"model_id": "/does/not/exist"}, "/does/not/exist"),
    ({"grid": {"max_tokens": [1]}}, "max_tokens=1"),
])
def test_dry_run_rejects_what_the_run_would(tmp_path, tiny_model_dirs, over, needle):
    proc = _cli("experiment", _tiny_config(tmp_path, tiny_model_dirs["llama"], **over), "--dry-run")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and needle in proc.stderr, proc.stderr[-2000:]


KILLABLE = """
import sys, time
import lm_eval_streaming.experiment.runner as runner
real = runner._get_run_benchmark
def blocking(progress=True):
    bench, calls = real(progress), []
    def run(**cell):
        calls.append(cell)
        if len(calls) == 2:  # the second cell never finishes: the kill lands mid-grid, every time
            time.sleep(3600)
        return bench(**cell)
    return run
runner._get_run_benchmark = blocking
sys.exit(runner.main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_real_kill_and_resume_gives_the_uninterrupted_results(tiny_model_dirs, tmp_path):
    """SIGKILL a real experiment (tiny model) after its first cell; the re-run through the real command
    finishes the grid, and every cell's scores equal an uninterrupted run's."""
    import signal
    import subprocess
    import time

    cfg = _tiny_config(tmp_path, tiny_model_dirs["llama"])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    killed = tmp_path / "killed.jsonl"
    proc = subprocess.Popen([sys.executable, "-c", KILLABLE, str(cfg), "--no-progress", "--output", str(killed)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and len(ex.read_entries(killed)) < 1:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert len(ex.read_entries(killed)) == 1
    assert store._claims_path(killed).exists()  # the killed runner's claim on cell 2 is left behind ...
    resumed = _cli("experiment", cfg, "--no-progress", "--output", killed)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "2 cells run, 1 already done" in resumed.stdout  # ... and is stale: its pid is dead
    clean = tmp_path / "clean.jsonl"
    assert _cli("experiment", cfg, "--no-progress", "--output", clean).returncode == 0

    def scores(path):
        return {(r.cell_key, row.label()): (row.ppl, row.acc, row.nll_mean) for r in load_runs([path])
                for row in r.rows}

    resumed_scores, uninterrupted = scores(killed), scores(clean)
    # 3 cells x 5 rows (dense default, default@full, lm_eval_streaming; 2 cache sizes)
    assert len(uninterrupted) == 3 * 5 and resumed_scores.keys() == uninterrupted.keys()
    for key, value in uninterrupted.items():
        assert resumed_scores[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key


@pytest.mark.slow
def test_resume_keys_a_local_model_by_its_files(tiny_model_dirs, tmp_path):
    """New weights at the same path are another model: the re-run scores them, and its numbers are a fresh
    output's, not the old model's."""
    import shutil

    from conftest import make_model

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dirs["llama"], model)
    cfg = _tiny_config(tmp_path, model, methods=["window"], num_samples=1, grid={"max_tokens": [150]})
    out = tmp_path / "out.jsonl"
    assert _cli("experiment", cfg, "--no-progress", "--output", out).returncode == 0
    make_model("llama", seed=1).save_pretrained(model)  # other weights, same path, same config
    again = _cli("experiment", cfg, "--no-progress", "--output", out)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "1 cells run, 0 already done" in again.stdout
    fresh = tmp_path / "fresh.jsonl"
    assert _cli("experiment", cfg, "--no-progress", "--output", fresh).returncode == 0

    def ppl(path):
        return [{row.label(): row.ppl for row in r.rows} for r in load_runs([path])]

    old, new = ppl(out)
    (expected,) = ppl(fresh)
    assert new == pytest.approx(expected, rel=1e-9) and old != pytest.approx(expected, rel=1e-3)


def test_a_cell_shows_its_scored_tokens(tiny_model_dirs, tmp_path):
    """A long cell is not silent: under the bar of cells, a bar of the cell's scored tokens (every row's
    samples: 5 rows x 2 samples x 149 predicted tokens at 150 tokens); --no-progress shows neither."""
    cfg = _tiny_config(tmp_path, tiny_model_dirs["llama"], grid={"max_tokens": [150]}, kernel_error=False)
    shown = _cli("experiment", cfg, "--output", tmp_path / "a.jsonl")
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert "benchmark rows:" in shown.stderr and f"/{5 * 2 * 149} [" in shown.stderr, shown.stderr[-2000:]
    quiet = _cli("experiment", cfg, "--no-progress", "--output", tmp_path / "b.jsonl")
    assert quiet.returncode == 0 and "benchmark rows" not in quiet.stderr
