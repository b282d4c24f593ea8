"""``lm-eval-streaming doctor``: a broken kernel and a half-precision rotary are flagged (injected here),
sound kernels pass, the known-defect table decides by version, ``--help`` needs no torch."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from transformers import AttentionInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from lm_eval_streaming.doctor import probes
from lm_eval_streaming.doctor.command import diagnose
from lm_eval_streaming.doctor.defects import KNOWN_DEFECTS, defect_status


def _plain(query, key, value, scaling, see_ahead=0, noise=0.0):
    """Attention written here: a key is visible when k <= q + see_ahead; ``noise`` perturbs late rows."""
    scores = (query.float() @ key.float().transpose(2, 3)) * scaling
    n = scores.shape[-1]
    q_pos, k_pos = torch.arange(n)[:, None], torch.arange(n)[None, :]
    probs = torch.softmax(scores.masked_fill(k_pos > q_pos + see_ahead, float("-inf")), -1)
    if noise:
        probs = probs * (1 + noise * torch.rand(probs.shape, generator=torch.Generator().manual_seed(0)) * q_pos / n)
        probs = probs / probs.sum(-1, keepdim=True)
    return (probs @ value.float()).to(value.dtype).transpose(1, 2).contiguous(), None


def leaky(module, query, key, value, attention_mask, scaling=None, **kwargs):
    return _plain(query, key, value, scaling, see_ahead=1)  # each query also sees the next key


def imprecise(module, query, key, value, attention_mask, scaling=None, **kwargs):
    return _plain(query, key, value, scaling, noise=0.2)


@pytest.fixture
def broken_kernels():
    AttentionInterface.register("doctor_leaky", leaky)
    AttentionInterface.register("doctor_imprecise", imprecise)
    yield
    for name in ("doctor_leaky", "doctor_imprecise"):
        AttentionInterface._global_mapping.pop(name, None)
        ALL_ATTENTION_FUNCTIONS._local_mapping.pop(name, None)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_broken_kernels_flagged_sound_ones_pass(broken_kernels, dtype):
    rec = diagnose("cpu", dtype, "pythia-70m", [128, 512], 1,
                   kernels=["doctor_leaky", "doctor_imprecise", "sdpa", "eager", "lm_eval_streaming"], say=lambda _: 0)
    verdicts = {(r["kernel"], r["length"]): r["verdict"] for r in rec["kernels"]}
    assert all(verdicts[("doctor_leaky", n)] == "BROKEN: causal leak" for n in (128, 512))
    assert all(verdicts[("doctor_imprecise", n)] == "BROKEN: imprecise" for n in (128, 512))
    sound = [r for r in rec["kernels"] if not r["kernel"].startswith("doctor_")]
    assert len(sound) == 2 * 4 and all(r["verdict"] == "ok" for r in sound), sound  # sdpa twice: is_causal, mask
    assert rec["causal_leak"] and rec["leaking_kernels"] == ["doctor_leaky (is_causal)"]
    assert rec["summary"] == f"CPU {dtype} on this machine: causal leak found (doctor_leaky (is_causal))"


def test_sound_machine_says_not_found(tmp_path):
    out = tmp_path / "doctor.json"
    proc = subprocess.run([sys.executable, "-m", "lm_eval_streaming.cli", "doctor", "--dtype", "float16",
                           "--shape", "pythia-70m", "--lengths", "64,256", "--output", out],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rec = json.loads(out.read_text())
    assert rec["summary"] == "CPU float16 on this machine: causal leak not found"
    assert rec["summary"] in proc.stdout and not rec["causal_leak"] and not rec["rotary_broken"]
    assert {r["kernel"] for r in rec["kernels"]} >= {"sdpa", "eager", "lm_eval_streaming"}


def test_half_precision_rotary_flagged():
    """gpt-neox#1003: angles in float16 are wrong once positions pass 2048 (and earlier for the fast dims);
    transformers' rotary (angles in float32, cast at the end) passes at every position."""
    rotaries = {"half": probes.half_precision_rotary, "transformers": probes.hf_rotary}
    rec = diagnose("cpu", "float16", "pythia-70m", [3000], 1, kernels=["sdpa"], rotaries=rotaries,
                   say=lambda _: 0)
    rows = {r["implementation"]: r for r in rec["rotary"]}
    assert rows["transformers"]["verdict"] == "ok"
    assert rows["half"]["verdict"].startswith("BROKEN") and 0 < rows["half"]["first_bad_position"] < 3000
    assert rec["rotary_broken"] == ["half"]
    rec32 = diagnose("cpu", "float32", "pythia-70m", [3000], 1, kernels=["sdpa"], rotaries=rotaries, say=lambda _: 0)
    assert not rec32["rotary_broken"]  # the same code in float32 is sound


def test_activations_have_a_sink_that_takes_attention():
    q, k, v = probes.activations(1024, 2, 64)
    assert float(k[0, :, 0].norm(dim=-1).min()) > 3 * float(k[0, :, 1:].norm(dim=-1).mean())
    logits = q @ k.transpose(-1, -2) / 8
    probs = torch.softmax(logits.masked_fill(torch.ones(1024, 1024, dtype=torch.bool).triu(1), float("-inf")), -1)
    share = probs[..., 0].mean()
    assert 0.2 < share < 0.95  # a sink, not the only key attended


@pytest.mark.parametrize("device,dtype,torch_version,expected", [
    ("mps", "float16", "2.12.1", "AFFECTED by version"),
    ("mps", "bfloat16", "2.13.0", "fixed"),
    ("mps", "float32", "2.12.1", "n/a"),
    ("cuda", "float16", "2.12.1", "n/a"),
])
def test_known_defect_by_version(device, dtype, torch_version, expected):
    leak = next(d for d in KNOWN_DEFECTS if d.ref == "pytorch#195910")
    assert defect_status(leak, device, dtype, {"torch": torch_version}).startswith(expected)


def test_help_imports_no_torch():
    code = ("import sys\nfrom lm_eval_streaming.cli import main\ntry:\n    main(['doctor', '--help'])\n"
            "except SystemExit:\n    pass\nprint('TORCH' if 'torch' in sys.modules else 'NO TORCH')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip().endswith("NO TORCH"), proc.stdout[-500:] + proc.stderr[-500:]
