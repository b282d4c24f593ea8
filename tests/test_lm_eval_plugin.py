"""streaming_hf through the real lm-eval: CLI from outside the repo, Python API, task shapes, bad args."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lm_eval_streaming.options import StreamingArgError

WORDS = ("the king and the queen walk to the old castle by the river where a cold wind blows "
         "over the hills and the people sing of the summer that will come again").split()


def _sentence(i, n=12):
    return " ".join(WORDS[(i * 7 + k * 3) % len(WORDS)] for k in range(n))


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    """Tiny local tasks shaped like lm-eval's wikitext, hellaswag and lambada/gsm8k."""
    root = tmp_path_factory.mktemp("tasks")
    data = root / "data.jsonl"
    with data.open("w") as fh:
        for i in range(4):
            fh.write(json.dumps({
                "text": " ".join(_sentence(i + k) for k in range(6)),
                "ctx": _sentence(i, 8),
                "endings": [_sentence(i + 1, 3), _sentence(i + 2, 3), _sentence(i + 3, 3)],
                "label": i % 3,
                "question": _sentence(i, 6),
                "answer": WORDS[i],
            }) + "\n")
    common = {"dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(data)}}, "test_split": "test"}
    tasks = {
        "tiny_rolling": {"output_type": "loglikelihood_rolling", "doc_to_text": "", "doc_to_target": "{{text}}",
                         "metric_list": [{"metric": m} for m in ("word_perplexity", "byte_perplexity",
                                                                  "bits_per_byte")]},
        "tiny_mc": {"output_type": "multiple_choice", "doc_to_text": "{{ctx}}", "doc_to_target": "{{label}}",
                    "doc_to_choice": "{{endings}}", "metric_list": [{"metric": "acc"}, {"metric": "acc_norm"}]},
        "tiny_gen": {"output_type": "generate_until", "doc_to_text": "Question: {{question}}\nAnswer:",
                     "doc_to_target": "{{answer}}",
                     "generation_kwargs": {"until": ["\n\n", "Question:"], "do_sample": False, "max_gen_toks": 12},
                     "metric_list": [{"metric": "exact_match"}]},
    }
    for name, cfg in tasks.items():
        (root / f"{name}.yaml").write_text(yaml.safe_dump({"task": name, **common, **cfg}))
    return root


def _yaml_ok(task_dir):
    from lm_eval.tasks import TaskManager

    tm = TaskManager(include_path=str(task_dir))
    assert {"tiny_rolling", "tiny_mc", "tiny_gen"} <= set(tm.all_tasks)


@pytest.mark.slow
def test_tasks_fixture_is_valid(task_dir):
    _yaml_ok(task_dir)


@pytest.mark.slow
def test_cli_from_outside_repo(tiny_model_dirs, task_dir, tmp_path):
    """The installed `lm_eval` command resolves streaming_hf (and hf) with no include path for the model."""
    out = tmp_path / "results"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)
    for model, args in (("streaming_hf", "recent_size=8,start_size=2,chunk_size=16"), ("hf", "")):
        margs = f"pretrained={tiny_model_dirs['gpt_neox']}" + (f",{args}" if args else "")
        proc = subprocess.run(
            [sys.executable, "-m", "lm_eval", "--model", model, "--model_args", margs, "--tasks", "tiny_rolling",
             "--include_path", str(task_dir), "--output_path", str(out / model), "--device", "cpu"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        files = list((out / model).rglob("results_*.json"))
        assert files, f"no results JSON for {model}"
        res = json.loads(files[0].read_text())["results"]["tiny_rolling"]
        assert res["word_perplexity,none"] > 1


def _evaluate(model, model_args, tasks, task_dir):
    import lm_eval
    from lm_eval.tasks import TaskManager

    return lm_eval.simple_evaluate(model=model, model_args=model_args, tasks=tasks,
                                   task_manager=TaskManager(include_path=str(task_dir)), log_samples=True)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["gpt_neox", "llama"])
def test_same_answers_as_hf_when_cache_is_larger_than_prompt(tiny_model_dirs, task_dir, arch):
    path = tiny_model_dirs[arch]
    ref = _evaluate("hf", f"pretrained={path},device=cpu", ["tiny_mc", "tiny_gen"], task_dir)
    got = _evaluate("streaming_hf", f"pretrained={path},device=cpu,recent_size=200,chunk_size=8",
                    ["tiny_mc", "tiny_gen"], task_dir)
    for task in ("tiny_mc", "tiny_gen"):
        ref_resps = [s["filtered_resps"] for s in ref["samples"][task]]
        got_resps = [s["filtered_resps"] for s in got["samples"][task]]
        if task == "tiny_mc":
            for r, g in zip(ref_resps, got_resps):
                assert [x[1] for x in r] == [x[1] for x in g]
                assert all(abs(float(a[0]) - float(b[0])) < 1e-3 for a, b in zip(r, g))
        else:
            assert ref_resps == got_resps
            assert any(r[0] for r in got_resps), "the tiny model generated nothing: the test proves nothing"


@pytest.mark.slow
def test_rolling_streaming_differs_from_dense_when_cache_is_small(tiny_model_dirs, task_dir):
    path = tiny_model_dirs["llama"]
    dense = _evaluate("streaming_hf", f"pretrained={path},device=cpu,method=dense", ["tiny_rolling"], task_dir)
    big = _evaluate("streaming_hf", f"pretrained={path},device=cpu,recent_size=500", ["tiny_rolling"], task_dir)
    small = _evaluate("streaming_hf", f"pretrained={path},device=cpu,start_size=1,recent_size=4",
                      ["tiny_rolling"], task_dir)
    key = "word_perplexity,none"
    d, b, s = (r["results"]["tiny_rolling"][key] for r in (dense, big, small))
    assert abs(d - b) < 1e-6 * d
    assert abs(d - s) > 1e-3 * d


@pytest.mark.parametrize("args,fragment", [
    ("recent_size=-1", "recent_size=-1"),
    ("recent_size=2.5", "recent_size=2.5"),
    ("start_size=abc", "start_size='abc'"),
    ("method=sinks", "method='sinks'"),
    ("chunk_size=0", "chunk_size=0"),
    ("method=streaming_llm,recent_size=0", "recent_size=0"),
])
def test_bad_model_args_fail_before_loading(args, fragment):
    from lm_eval.api.registry import get_model

    cls = get_model("streaming_hf")
    from lm_eval.utils import simple_parse_args_string

    kwargs = simple_parse_args_string(args)
    with pytest.raises(StreamingArgError) as err:
        cls(pretrained="/nonexistent/model/should/not/be/loaded", **kwargs)
    assert fragment in str(err.value)
    assert "expected" in str(err.value)


def test_integral_floats_are_accepted():
    from lm_eval_streaming.options import as_int
    from lm_eval_streaming.core.methods import policy_for

    assert policy_for("streaming_llm", 4.0, 1e3).recent_size == 1000
    assert as_int("chunk_size", "256") == 256


def test_builtin_models_still_registered():
    from lm_eval.api.registry import get_model, model_registry
    from lm_eval.models import MODEL_MAPPING

    get_model("hf")
    assert set(MODEL_MAPPING) <= set(model_registry.keys())  # all built-ins (lazy placeholders)
    assert get_model("dummy").__name__ == "DummyLM"
    assert get_model("streaming_hf").__name__ == "StreamingHFLM"
