"""streaming_hf answers lm-eval requests as lm-eval's own `hf` does, and never hands one setting's
cached numbers to another (issue: no silent wrong results)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from lm_eval.api.instance import Instance
from lm_eval.models.huggingface import HFLM

from lm_eval_streaming.harness.model import StreamingHFLM

TEXT = "the king and the queen walk to the old castle by the river where a cold wind blows over the hills "


def _ll(context, continuation, i=0):
    return Instance("loglikelihood", {}, (context, continuation), i)


@pytest.fixture(scope="module")
def lms(tiny_model_dirs):
    path = str(tiny_model_dirs["gpt_neox"])
    return (HFLM(pretrained=path, device="cpu"),
            StreamingHFLM(pretrained=path, device="cpu", method="streaming_llm", recent_size=252))


def test_empty_and_merged_continuations_score_as_hf(lms):
    hf, ours = lms
    tok = hf.tokenizer
    # "m" + "at" encodes as one token " mat": lm-eval's split leaves no continuation token.
    assert len(tok(" The cat sat on the mat")["input_ids"]) == len(tok(" The cat sat on the m")["input_ids"])
    empty = [_ll("The cat sat on the m", "at", 0), _ll(TEXT.strip(), "", 1)]
    scored = [_ll(TEXT, " castle", 2), _ll("The cat sat on the", " mat", 3), _ll("The cat sat on the m", "ats", 4)]
    # No continuation token: the log-probability of nothing is log 1 = 0, greedy (hf 0.4.13 asserts here;
    # with assertions off it returns the same). It used to score the whole sequence (-30 and worse).
    assert ours.loglikelihood(empty + scored)[:2] == [(0.0, True), (0.0, True)]
    want, got = hf.loglikelihood(scored), ours.loglikelihood(empty + scored)[2:]
    for (w_ll, w_greedy), (g_ll, g_greedy) in zip(want, got):
        assert g_ll == pytest.approx(w_ll, abs=1e-4) and g_greedy == w_greedy
    # Each answer carries its continuation's token counts; check them against a plain forward.
    import torch

    for req, (g_ll, _) in zip(scored, got):
        ctx, cont = hf._encode_pair(*req.args)
        ids = torch.tensor([ctx + cont])
        logits = hf.model(input_ids=ids).logits[0, len(ctx) - 1:-1]
        assert g_ll.n_tokens == len(cont)
        assert g_ll.n_correct == int((logits.argmax(-1) == torch.tensor(cont)).sum())


def test_parallelize_with_offloaded_layers_runs_as_hf(tiny_model_dirs, tmp_path):
    """accelerate offloads every layer to disk (meta tensors); inputs go to the execution device."""
    path = str(tiny_model_dirs["llama"])
    kwargs = dict(pretrained=path, parallelize=True, max_cpu_memory="1MB", offload_folder=str(tmp_path), device="cpu")
    req = [Instance("loglikelihood_rolling", {}, (TEXT * 3,), 0)]
    want = HFLM(**kwargs).loglikelihood_rolling(req)
    model = StreamingHFLM(method="dense", **kwargs)
    assert str(model.model.device) == "meta"  # the case that used to crash
    got = model.loglikelihood_rolling(req)
    assert float(got[0]) == pytest.approx(float(want[0]), abs=1e-3)


def test_batch_size_auto_batches_and_gives_the_same_numbers(tiny_model_dirs):
    path = str(tiny_model_dirs["gpt_neox"])
    one = StreamingHFLM(pretrained=path, device="cpu", recent_size=16, start_size=2, chunk_size=8)
    auto = StreamingHFLM(pretrained=path, device="cpu", recent_size=16, start_size=2, chunk_size=8,
                         batch_size="auto:4")
    docs = [TEXT * (k + 1) for k in range(5)]
    seqs = [auto.tok_encode(d) for d in docs]
    assert auto._batch_for(seqs) > 1 and one._batch_for(seqs) == 1
    reqs = [Instance("loglikelihood_rolling", {}, (d,), i) for i, d in enumerate(docs)]
    for a, b in zip(one.loglikelihood_rolling(reqs), auto.loglikelihood_rolling(reqs)):
        assert float(b) == pytest.approx(float(a), abs=1e-3)


def test_bad_batch_size_is_refused_before_loading():
    from lm_eval_streaming.options import StreamingArgError

    with pytest.raises(StreamingArgError, match="batch_size='big'"):
        StreamingHFLM(pretrained="/nonexistent/never/loaded", batch_size="big")


@pytest.mark.slow
def test_use_cache_never_returns_another_settings_numbers(tiny_model_dirs, tmp_path):
    """The real CLI: a --use_cache filled by method=dense is refused for streaming_llm (it would
    return the dense numbers), and reused for the same setting."""
    task_dir = tmp_path / "tasks"
    task_dir.mkdir()
    data = task_dir / "d.jsonl"
    data.write_text("".join(json.dumps({"text": TEXT * (2 + i)}) + "\n" for i in range(3)))
    (task_dir / "tiny_roll.yaml").write_text(
        "task: tiny_roll\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: " + str(data) +
        "\ntest_split: test\noutput_type: loglikelihood_rolling\ndoc_to_text: ''\ndoc_to_target: '{{text}}'\n"
        "metric_list:\n  - metric: word_perplexity\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    cache = tmp_path / "cache" / "c"

    def run(margs, out):
        return subprocess.run(
            [sys.executable, "-m", "lm_eval", "--model", "streaming_hf", "--model_args",
             f"pretrained={tiny_model_dirs['gpt_neox']},{margs}", "--tasks", "tiny_roll", "--include_path",
             str(task_dir), "--use_cache", str(cache), "--device", "cpu", "--output_path", str(tmp_path / out)],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)

    first = run("method=dense", "a")
    assert first.returncode == 0, first.stderr[-2000:]
    other = run("method=streaming_llm,recent_size=16", "b")
    assert other.returncode != 0
    assert "--use_cache" in other.stderr and "method=dense" in other.stderr and "Traceback" not in other.stderr
    assert not list((tmp_path / "b").rglob("results_*.json"))
    again = run("method=dense", "c")
    assert again.returncode == 0, again.stderr[-2000:]
    assert "Requests remaining: 0" in again.stderr + again.stdout
