"""The numerics verdict uses the whole-forward error beside the kernel error and the probe (a float16 defect
outside the kernel is found and named), and analyze reports a doctor file's line before any model ran."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from synthetic_runs import clean_numerics, make_run

from lm_eval_streaming.analysis.verdict import analyze
from lm_eval_streaming.records import write_run
from lm_eval_streaming.records.run import ModuleDivergence, WholeForwardStats

ROTARY = ModuleDivergence("gpt_neox.rotary_emb", "rotary", None, 1857, 0.8)


def _runs(whole_forward):
    def numerics(args, kernel):
        out = clean_numerics(args, kernel)  # kernel error and probe clean: the defect is outside the kernel
        out["whole_forward"] = whole_forward(kernel)
        return out

    nll = lambda model, method, recent, kernel, pos, args: 4.0 if method == "dense" else 3.1  # noqa: E731
    return [make_run("pythia-410m", nll, max_tokens=4000, trained_context=2048, dtype="float16",
                     dense_kernels=("sdpa", "lm_eval_streaming"), methods=("streaming_llm",), numerics=numerics)]


def _stats(mean, divergence=None):
    return WholeForwardStats("float32 shadow/sdpa/cpu", "float16", mean, 10 * mean, 0, located=True,
                             first_divergence=divergence)


def _key(a):
    return next(c for c in a.hypotheses["numerical"].criteria if c.key)


@pytest.mark.parametrize("mean,broken", [(0.6, True), (1e-3, False)])  # limit: half the 0.9 advantage
def test_whole_forward_error_decides_and_names_the_module(mean, broken):
    a = analyze(_runs(lambda kernel: _stats(mean, ROTARY if broken else None)))
    key = _key(a)
    assert (key.status == "pass") == broken
    assert ("supported for cpu/float16" in a.hypotheses["numerical"].scope) == broken
    assert "whole-forward error mean |ΔNLL|" in key.evidence
    assert ("first off: rotary gpt_neox.rotary_emb at position 1857" in key.evidence) == broken
    cells = [j.cells["whole forward"] for j in a.kernels]
    assert all(c.startswith(f"mean {mean:.2g}") for c in cells)


def test_unmeasured_whole_forward_is_said_and_changes_nothing():
    a = analyze(_runs(lambda kernel: None))
    assert _key(a).status == "fail"  # kernel error and probe clean, as before the whole-forward error existed
    assert all(j.cells["whole forward"] == "not measured" for j in a.kernels)


def test_analyze_reports_the_doctor_line(tmp_path):
    run = tmp_path / "run.json"
    write_run(run, _runs(lambda kernel: None)[0])
    doctor = tmp_path / "doctor.json"
    record = {"schema": "lm_eval_streaming.doctor/1", "device": "mps", "dtype": "float16", "lengths": [512, 8192],
              "summary": "MPS float16 on this machine: causal leak found (sdpa (is_causal))",
              "versions": {"torch": "2.12.1", "device": "Apple arm64"}, "imprecise_kernels": [], "rotary_broken": [],
              "known_defects": [{"ref": "pytorch#195910", "status": "AFFECTED by version (torch 2.12.1 < 2.13.0)"},
                                {"ref": "x", "status": "n/a"}]}
    doctor.write_text(json.dumps(record))
    out = tmp_path / "report.md"
    proc = subprocess.run([sys.executable, "-m", "lm_eval_streaming.cli", "analyze", run, doctor, "--output", out],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = out.read_text()
    assert "## Device checks before any model ran (doctor)" in report
    assert "- MPS float16 on this machine: causal leak found (sdpa (is_causal)) (torch 2.12.1" in report
    assert "pytorch#195910: AFFECTED by version" in report and "x: n/a" not in report
    assert "MPS float16 on this machine: causal leak found" in proc.stdout
