"""The verdict claims only what was measured: `lm-eval-streaming analyze` on benchmark --output files,
built from a real run of the default model (docs/experiments/offline_numerics.jsonl) and altered."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest

from lm_eval_streaming.analysis import analyze
from lm_eval_streaming.experiment.flat import flat_row
from lm_eval_streaming.records import load_runs
from lm_eval_streaming.records_io import write_run

REPO = Path(__file__).resolve().parents[1]
REAL = REPO / "docs" / "experiments" / "offline_numerics.jsonl"


@pytest.fixture(scope="module")
def runs():
    found = load_runs([REAL])
    assert {r.dtype for r in found} == {"float32", "bfloat16", "float16"}
    return found


def _analyze_cli(tmp_path, runs, *extra):
    paths = []
    for i, run in enumerate(runs):
        path = tmp_path / f"run {i}.json"  # a space in the path, as users have
        write_run(path, run)
        paths.append(str(path))
    report = tmp_path / "out dir" / "report.md"
    proc = subprocess.run([sys.executable, "-m", "lm_eval_streaming.cli", "analyze", *paths, *extra, "--output",
                           str(report), "--figures", str(tmp_path / "out dir" / "fig s")],
                          capture_output=True, text=True, timeout=300)
    return proc, report.read_text() if report.exists() else ""


def _numeric_line(report: str) -> str:
    return next(line for line in report.splitlines() if line.startswith("- **数值稳定性"))


def test_clean_kernels_are_ruled_out_only_where_measured(tmp_path, runs):
    proc, report = _analyze_cli(tmp_path, runs)
    assert proc.returncode == 0, proc.stderr
    line = _numeric_line(report)
    assert "ruled out on cpu/bfloat16 (eager, lm_eval_streaming, sdpa)" in line
    assert "not measured on CUDA, MPS: cannot decide there" in line
    # figure links with spaces render (angle-bracket link targets)
    assert "](<fig s/kernel_error_vs_position__smollm2-135m_cpu.png>)" in report


def test_a_leaking_kernel_is_supported_for_that_kernel_only(tmp_path, runs):
    broken = copy.deepcopy(runs)
    row = next(r for r in broken[2].rows if r.attn_implementation == "sdpa")
    assert broken[2].dtype == "float16" and row.causality is not None
    row.causality.max_abs_dlogit = [0.0, 0.7, 1.3, 2.0]
    row.causality.max_abs_dlogit_overall = 2.0
    proc, report = _analyze_cli(tmp_path, broken)
    assert proc.returncode == 0, proc.stderr
    line = _numeric_line(report)
    assert "supported for cpu/float16 (sdpa)" in line
    assert "cpu/float16/sdpa: broken (causality probe max |Δlogit| 2 (leaks the future)" in report
    assert "ruled out on cpu/bfloat16 (eager, lm_eval_streaming, sdpa)" in line


def test_unmeasured_is_unknown_never_clean(runs):
    bare = copy.deepcopy(runs)
    for run in bare:
        for row in run.rows:
            row.kernel_error = row.causality = None
            row.nan_logits = row.inf_logits = row.nonfinite_tokens = None
            row.max_abs_attn_score = row.nonfinite_attn_scores = None
    a = analyze([flat_row(run, row) for run in bare for row in run.rows])
    h = a.hypotheses["numerical"]
    assert h.verdict == "undecided"
    text = " ".join(c.evidence for c in h.criteria)
    assert "clean" not in text and "0 non-finite" not in text
    assert "no NaN / Inf" in [c.name for c in a.hypotheses["extrapolation"].criteria]
    nan_criterion = next(c for c in a.hypotheses["extrapolation"].criteria if c.name == "no NaN / Inf")
    assert nan_criterion.status == "cannot decide"


def test_one_sample_is_never_significant(runs):
    one = copy.deepcopy(runs)
    for run in one:
        for row in run.rows:
            if row.delta_nll_vs_dense is not None:
                row.delta_nll_vs_dense, row.delta_nll_ci = -0.8, None  # a big advantage, but one sample
    a = analyze([flat_row(run, row) for run in one for row in run.rows])
    assert "(0 significant" in a.phenomenon


def test_sizes_only_within_one_family(runs):
    a, b = copy.deepcopy(runs[0]), copy.deepcopy(runs[0])
    a.model_id, a.model_family, a.model_params = "EleutherAI/pythia-6.9b", "pythia", 6.9e9
    b.model_id, b.model_family, b.model_params = "meta-llama/Llama-2-7b-hf", "llama", 7e9
    result = analyze([flat_row(run, row) for run in (a, b) for row in run.rows])
    crit = next(c for c in result.hypotheses["numerical"].criteria if "large models" in c.name)
    assert crit.status == "cannot decide" and "no family with two or more sizes" in crit.evidence


def test_an_unreadable_file_gets_one_line(tmp_path, runs):
    bad = tmp_path / "notes.json"
    bad.write_text("this is not json\n" * 300)
    good = tmp_path / "run.json"
    write_run(good, runs[0])
    proc = subprocess.run([sys.executable, "-m", "lm_eval_streaming.cli", "analyze", str(good), str(bad)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if "notes.json" in line]
    assert len(warnings) == 1 and "torn" not in proc.stderr
