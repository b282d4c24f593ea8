"""streaming_hf's generate_until against lm-eval's own ``hf`` model on the same tiny checkpoint and requests:
the options ``hf`` passes to ``model.generate`` give the same text, and ``--batch_size 8`` the same text as 1."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

WORDS = ("the king and the queen walk to the old castle by the river where a cold wind blows "
         "over the hills and the people sing of the summer that will come again").split()
# Prompts of different lengths (batches mix lengths), shaped like lm-eval's generation tasks.
CONTEXTS = [f"Question: {' '.join(WORDS[(i * 7 + k * 3) % len(WORDS)] for k in range(2 + (5 * i) % 13))}\nAnswer:"
            for i in range(12)]
GREEDY = {"until": ["\n\n", "Question:"], "do_sample": False, "max_gen_toks": 14}


def _requests(gen_kwargs: dict):
    from lm_eval.api.instance import Instance

    return [Instance("generate_until", doc={}, arguments=(c, dict(gen_kwargs)), idx=0) for c in CONTEXTS]


def _model(name: str, path, batch_size=1, **args):
    from lm_eval.api.registry import get_model

    return get_model(name)(pretrained=str(path), device="cpu", batch_size=batch_size, **args)


def _generate(model, gen_kwargs: dict, seed: int = 1234) -> list[str]:
    import torch

    torch.manual_seed(seed)  # lm-eval seeds torch once before running the requests
    return model.generate_until(_requests(gen_kwargs), disable_tqdm=True)


@pytest.fixture(scope="module")
def models(tiny_model_dirs):
    path = tiny_model_dirs["llama"]
    return {
        "hf": _model("hf", path),
        "dense": _model("streaming_hf", path, method="dense"),
        "big": _model("streaming_hf", path, recent_size=200, chunk_size=8),  # cache larger than every text
        "small": _model("streaming_hf", path, start_size=2, recent_size=6, chunk_size=4),
    }


@pytest.mark.slow
def test_top_k_1_sampling_equals_hf_greedy(models):
    ref = _generate(models["hf"], GREEDY)
    assert any(ref), "the tiny model generated nothing: the test proves nothing"
    sampled = {**GREEDY, "do_sample": True, "temperature": 1.0, "top_k": 1}
    for name in ("dense", "big"):
        assert _generate(models[name], sampled) == ref, name
    # the same request without top_k=1 samples (hf's default top_k=50): not greedy, so the check above can fail
    assert _generate(models["dense"], {**sampled, "top_k": 0}) != ref


@pytest.mark.slow
@pytest.mark.parametrize("extra", [{"repetition_penalty": 1.3}, {"no_repeat_ngram_size": 1},
                                   {"min_new_tokens": 6}])
def test_hf_generation_options_give_hf_text(models, extra):
    if "min_new_tokens" in extra:
        # make EOS the token most greedy texts start with: without min_new_tokens they end at once
        tok = models["hf"].tokenizer
        firsts = [tok.encode(text)[0] for text in _generate(models["hf"], GREEDY) if text]
        extra = {**extra, "eos_token_id": max(set(firsts), key=firsts.count)}
    options = {**GREEDY, **extra}
    ref = _generate(models["hf"], options)
    without = {k: v for k, v in options.items() if k not in ("repetition_penalty", "no_repeat_ngram_size",
                                                             "min_new_tokens")}
    assert ref != _generate(models["hf"], without), "the option changed nothing: the test proves nothing"
    for name in ("dense", "big"):
        assert _generate(models[name], options) == ref, name


@pytest.mark.slow
def test_seeded_sampling_equals_hf_at_batch_1(models):
    options = {**GREEDY, "do_sample": True, "temperature": 0.8, "top_p": 0.9}
    assert _generate(models["dense"], options) == _generate(models["hf"], options)


@pytest.mark.slow
def test_batch_8_equals_batch_1(tiny_model_dirs, models):
    path = tiny_model_dirs["llama"]
    options = {**GREEDY, "repetition_penalty": 1.2}
    for name, args in (("dense", {"method": "dense"}), ("small", {"start_size": 2, "recent_size": 6, "chunk_size": 4}),
                       ("big", {"recent_size": 200, "chunk_size": 8})):
        batched = _model("streaming_hf", path, batch_size=8, **args)
        assert _generate(batched, options) == _generate(models[name], options), name
    hf8 = _model("hf", path, batch_size=8)
    big8 = _model("streaming_hf", path, batch_size=8, recent_size=200, chunk_size=8)
    assert _generate(big8, GREEDY) == _generate(hf8, GREEDY)  # streaming, cache >= text, at batch 8 = hf


@pytest.mark.slow
def test_a_refused_option_fails_in_one_line_before_generating(tiny_model_dirs, tmp_path):
    """lm_eval --gen_kwargs num_beams=2: one line naming the option (no traceback)."""
    import json

    import yaml

    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"q": c, "a": "x"}) + "\n" for c in CONTEXTS[:2]))
    (tmp_path / "gen.yaml").write_text(yaml.safe_dump({
        "task": "tiny_gen_refuse", "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(data)}},
        "test_split": "test", "output_type": "generate_until", "doc_to_text": "{{q}}", "doc_to_target": "{{a}}",
        "generation_kwargs": GREEDY, "metric_list": [{"metric": "exact_match"}]}))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "lm_eval", "--model", "streaming_hf", "--model_args",
         f"pretrained={tiny_model_dirs['llama']}", "--device", "cpu", "--tasks", "tiny_gen_refuse",
         "--include_path", str(tmp_path), "--gen_kwargs", "num_beams=2"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "num_beams=2" in errors[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
