"""Data parallel over documents with `accelerate launch` (two CPU processes, gloo) gives the
single-process numbers."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest


def _results(out):
    files = list(out.rglob("results_*.json"))
    assert files, f"no results under {out}"
    return json.loads(files[0].read_text())["results"]["streaming_ppl_500"]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("accelerate") is None, reason="accelerate CLI not installed")
def test_accelerate_two_cpu_processes_match_one(tiny_model_dirs, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    common = ["--model", "streaming_hf", "--model_args",
              f"pretrained={tiny_model_dirs['llama']},recent_size=16,start_size=2", "--tasks", "streaming_ppl_500",
              "--limit", "4", "--device", "cpu"]
    single = subprocess.run([sys.executable, "-m", "lm_eval", *common, "--output_path", str(tmp_path / "one")],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]
    multi = subprocess.run(["accelerate", "launch", "--cpu", "--num_processes", "2", "--num_machines", "1",
                            "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "lm_eval", *common,
                            "--output_path", str(tmp_path / "two")],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert multi.returncode == 0, multi.stderr[-3000:]
    one, two = _results(tmp_path / "one"), _results(tmp_path / "two")
    for key in ("word_perplexity,none", "token_perplexity,none", "token_accuracy,none"):
        assert abs(one[key] - two[key]) <= 1e-6 * abs(one[key]), key
