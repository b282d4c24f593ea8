"""scripts/device_check.sh: one folder of results; without a GPU or MPS the device steps are skipped and say so;
with FORCE=1 and a small shape the same steps run on the CPU and write what the docs describe."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "device_check.sh"


def run_script(out: Path, **env) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), str(out)], capture_output=True, text=True, timeout=1500,
                          env={**os.environ, "DEVICE": "cpu", "SKIP_TESTS": "1", **env})


def test_device_steps_skipped_on_cpu(tmp_path):
    proc = run_script(tmp_path / "out")
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = (tmp_path / "out" / "summary.txt").read_text().splitlines()
    assert summary[0].startswith("env: ok")
    assert summary[1:] == ["tests: skipped (SKIP_TESTS=1)", *(f"{s}: skipped (no GPU or MPS here)"
                                                             for s in ("doctor", "benchmark", "speed"))]
    assert "device cpu dtype float16 shape pythia-6.9b" in (tmp_path / "out" / "env.txt").read_text()


@pytest.mark.slow
def test_device_steps_run_when_forced(tmp_path):
    out = tmp_path / "out"
    proc = run_script(out, FORCE="1", SHAPE="pythia-70m", TOKENS="64", LENGTHS="64,128", LIMIT_SCALE="8")
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = (out / "summary.txt").read_text()
    for step in ("doctor", "benchmark", "speed"):
        assert f"{step}: ok" in summary, summary
    doctor = json.loads((out / "doctor.json").read_text())
    assert doctor["summary"] == "CPU float16 on this machine: causal leak not found"
    from lm_eval_streaming.records import load_runs

    run = load_runs([out / "benchmark.json"])[0]
    assert run.dtype == "float16" and all(r.whole_forward is not None for r in run.rows)
    assert "whole-forward error (float32 shadow, located)" in (out / "speed.txt").read_text()
