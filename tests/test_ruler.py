"""lm-eval's RULER synthetic tasks through streaming_hf on the embedded default model, offline.

lm-eval reads the model args outside the model: RULER sizes its documents with the tokenizer it finds
there, and the results are named after ``pretrained``. The references are lm-eval's own functions
(RULER's tokenizer resolution, the tracker's model name) and lm-eval's ``hf`` model.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lm_eval_streaming import default_model
from lm_eval_streaming.harness.run_args import default_model_args

SENTENCE = "Some special magic numbers are hidden within the following text: 7 294 016."


def _ruler_tokenizer(model_args, metadata):
    """The tokenizer RULER would load from what lm-eval hands the task (model args | metadata)."""
    from lm_eval.tasks.ruler.common_utils import get_tokenizer, resolve_tokenizer_name
    from lm_eval.utils import simple_parse_args_string

    args = simple_parse_args_string(model_args) if isinstance(model_args, str) else dict(model_args)
    return get_tokenizer(resolve_tokenizer_name(args | (metadata or {})))


@pytest.mark.parametrize("model_args", ["method=dense", "", "pretrained=smollm2-135m,method=window",
                                        {"method": "dense"}, {"pretrained": "default"}])
def test_default_model_gets_its_tokenizer_and_name(model_args):
    from lm_eval.loggers.evaluation_tracker import GeneralConfigTracker
    from transformers import AutoTokenizer

    new_args, metadata = default_model_args("streaming_hf", model_args, {"max_seq_lengths": [512]})
    assert metadata["max_seq_lengths"] == [512]  # the user's metadata is kept
    ours = AutoTokenizer.from_pretrained(default_model.ensure_default_model(progress=False))
    tok = _ruler_tokenizer(new_args, metadata)
    assert tok(SENTENCE).input_ids == ours(SENTENCE).input_ids
    assert tok.get_vocab() == ours.get_vocab()
    assert GeneralConfigTracker._get_model_name(new_args) == "smollm2-135m"
    assert type(new_args) is type(model_args)


def test_other_models_and_explicit_tokenizers_are_left_alone(tmp_path):
    assert default_model_args("hf", "pretrained=gpt2", None) == ("pretrained=gpt2", None)
    assert default_model_args("streaming_hf", "pretrained=/some/path", {"a": 1}) == ("pretrained=/some/path", {"a": 1})
    args, meta = default_model_args("streaming_hf", "method=dense,tokenizer=/tok", None)
    assert "tokenizer" not in meta and "tokenizer=/tok" in args
    args, meta = default_model_args("streaming_hf", "method=dense", {"tokenizer": "/mine"})
    assert meta["tokenizer"] == "/mine"


def test_ruler_import_never_downloads_nltk_data(tmp_path):
    """RULER's prepare_niah downloads punkt_tab at import when it is missing: not through the plugin."""
    code = (
        "import nltk, sys\n"
        "calls = []\n"
        "import nltk.downloader\n"
        "nltk.downloader.Downloader.download = lambda self, *a, **k: calls.append(a) or False\n"
        "import lm_eval.tasks.ruler.prepare_niah\n"
        "print('calls', len(calls), nltk.download.__module__)\n"
    )
    env = {**os.environ, "NLTK_DATA": str(tmp_path)}  # an empty nltk data dir: punkt_tab is missing
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "calls 0 nltk.downloader" in out.stdout  # never called, and nltk.download is restored
    assert "punkt_tab" in out.stderr and "not downloaded" in out.stderr


def _lm_eval(model, model_args, out, tmp_path, length=512, limit=2, tasks="niah_single_1"):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "lm_eval", "--model", model, "--model_args", model_args, "--tasks", tasks,
           "--metadata", json.dumps({"max_seq_lengths": [length]}), "--limit", str(limit),
           "--output_path", str(out), "--log_samples"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _samples(out: Path, task: str):
    files = sorted(out.rglob(f"samples_{task}_*.jsonl"))
    assert len(files) == 1, files
    return [json.loads(line) for line in files[0].read_text().splitlines()]


@pytest.mark.slow
def test_dense_generates_what_hf_generates_on_ruler(tmp_path):
    """niah_single_1 at 512 tokens, 2 documents: streaming_hf method=dense on the default model (no
    pretrained=) against lm-eval's hf on the same checkpoint; the same documents, the same generations."""
    checkpoint = default_model.ensure_default_model(progress=False)
    _lm_eval("streaming_hf", "method=dense", tmp_path / "ours", tmp_path)
    _lm_eval("hf", f"pretrained={checkpoint}", tmp_path / "hf", tmp_path)
    ours, theirs = _samples(tmp_path / "ours", "niah_single_1"), _samples(tmp_path / "hf", "niah_single_1")
    assert len(ours) == len(theirs) == 2
    for a, b in zip(ours, theirs):
        assert a["doc_hash"] == b["doc_hash"]  # RULER built the same documents with the same tokenizer
        assert a["resps"] == b["resps"]
        assert a["resps"][0][0].strip()  # something was generated
    # The run of the default model is named after it (folder and model_name), not a random id.
    results = sorted((tmp_path / "ours").glob("*/results_*.json"))
    assert [r.parent.name for r in results] == ["smollm2-135m"]
    assert json.loads(results[0].read_text())["model_name"] == "smollm2-135m"
