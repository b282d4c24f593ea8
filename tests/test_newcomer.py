"""What a newcomer meets first: an unreachable hub, --help, option spellings."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from lm_eval_streaming.options import StreamingArgError

UNREACHABLE = "http://127.0.0.1:9"  # the discard port: connection refused at once, whatever the network


def _unreachable(monkeypatch, cache):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", UNREACHABLE)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


def test_unreachable_hub_fails_in_seconds_naming_the_way_out(monkeypatch, tmp_path):
    from lm_eval_streaming.core.loading import check_hub_access

    _unreachable(monkeypatch, tmp_path)
    start = time.perf_counter()
    with pytest.raises(StreamingArgError) as err:
        check_hub_access("EleutherAI/pythia-6.9b")
    assert time.perf_counter() - start < 5
    msg = str(err.value)
    assert "EleutherAI/pythia-6.9b" in msg and "HF_HUB_OFFLINE=1" in msg and "smollm2-135m" in msg


def test_unreachable_hub_with_the_model_cached_loads_it_offline(monkeypatch, tmp_path, tiny_model_dirs):
    """A hub id in the local cache (the hub's own layout) is loaded from there, offline, without waiting."""
    import shutil

    from huggingface_hub import constants

    from lm_eval_streaming.core.loading import load_tokenizer

    snapshot = tmp_path / "models--org--tiny" / "snapshots" / ("a" * 40)
    shutil.copytree(tiny_model_dirs["llama"], snapshot)
    (tmp_path / "models--org--tiny" / "refs").mkdir()
    (tmp_path / "models--org--tiny" / "refs" / "main").write_text("a" * 40)
    _unreachable(monkeypatch, tmp_path)
    monkeypatch.setattr(os, "environ", dict(os.environ))  # the offline switch stays inside this test
    start = time.perf_counter()
    tok = load_tokenizer("org/tiny")
    assert time.perf_counter() - start < 10
    assert constants.HF_HUB_OFFLINE and os.environ["HF_HUB_OFFLINE"] == "1"
    assert tok("the king").input_ids == load_tokenizer(str(snapshot))("the king").input_ids


def test_benchmark_with_an_unreachable_hub_id_exits_2_in_seconds(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(HF_ENDPOINT=UNREACHABLE, HF_HUB_CACHE=str(tmp_path))
    out = subprocess.run([sys.executable, "-m", "lm_eval_streaming.cli", "benchmark", "--model_id",
                          "EleutherAI/pythia-6.9b"], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 2, out.stderr
    assert "HF_HUB_OFFLINE=1" in out.stderr and "smollm2-135m" in out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1
