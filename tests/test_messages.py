"""Messages through the real ``lm_eval`` command name only what a user can pass and echo values as given:
a method's options (not its class attributes), ``recent_size=-1`` (not ``-1.0``), and a device warning only
for a device the user asked for."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

pytestmark = pytest.mark.slow


def _lm_eval(model_dir, model_args, *extra):
    cmd = [sys.executable, "-m", "lm_eval", "--model", "streaming_hf", "--model_args",
           f"pretrained={model_dir},{model_args}", "--tasks", "streaming_ppl_500", "--limit", "1", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})


def _error(proc) -> str:
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    return proc.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("args, expected, absent", [
    ("method=window,position_shift=true", "position_shift=True does not apply to method=window: it has no options",
     ("full_attention", "min_recent", "uses_cache", "method,")),
    ("method=dense,evict_every=4", "evict_every=4 does not apply to method=dense: it has no options", ("full_attention",)),
    ("method=streaming_llm,evict_every=4", "does not apply to method=streaming_llm: it takes position_shift",
     ("min_recent", "full_attention")),
    ("method=h2o,recent_size=-1", "recent_size=-1 is too small", ("-1.0",)),
])
def test_messages_name_what_a_user_passes(tiny_model_dirs, args, expected, absent):
    line = _error(_lm_eval(tiny_model_dirs["llama"], args))
    assert expected in line and not any(a in line for a in absent), line


def test_device_warning_only_when_asked(tiny_model_dirs):
    quiet = _lm_eval(tiny_model_dirs["llama"], "method=window,recent_size=8")
    assert quiet.returncode == 0, quiet.stderr[-2000:]
    assert "is not available here" not in quiet.stderr
    if not torch.cuda.is_available():
        asked = _lm_eval(tiny_model_dirs["llama"], "method=window,recent_size=8", "--device", "cuda:0")
        assert asked.returncode == 0 and "device=cuda:0 is not available here; using cpu" in asked.stderr
