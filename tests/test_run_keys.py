"""analyze and leaderboard on real lm-eval output folders (streaming_hf, --log_samples, a tiny Llama): a row per
method with every option (position_shift, evict_every), dense ``chunk_size=full`` as ``@full`` paired with the cache
methods, a subset of documents (--limit, --samples) a run / row of its own, and every row naming its own file.

The expected numbers are each folder's own samples file, read here (mean of the documents' token NLL sums)."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lm_eval_cli import ppl_run

pytestmark = pytest.mark.slow

SL = "method=streaming_llm,start_size=4,recent_size=28"
H2O = "method=h2o,start_size=4,recent_size=28"
RUNS = {  # folder: (model args, extra lm_eval args, --limit)
    "sl": (SL, (), 2), "ns": (SL + ",position_shift=false", (), 2), "d": ("method=dense", (), 2),
    "full": ("method=dense,chunk_size=full", (), 2),
    "h1": (H2O + ",evict_every=1", (), 2), "h16": (H2O + ",evict_every=16", (), 2),
    "all": ("method=dense", (), None),  # every document of the task (10)
    "sub": ("method=dense", ("--samples", '{"streaming_ppl_500":[0,1]}'), None),
    "sub2": (SL, ("--samples", '{"streaming_ppl_500":[2]}'), None),
}


@pytest.fixture(scope="module")
def folders(tiny_model_dirs, tmp_path_factory):
    root = tmp_path_factory.mktemp("lm_eval_runs")
    for name, (args, extra, limit) in RUNS.items():
        ppl_run(root / name, tiny_model_dirs["llama"], args, *extra, limit=limit)
    return root


def _ppl(folder: Path) -> float:
    """Token perplexity from the folder's own samples file: exp(sum of NLL sums / sum of tokens)."""
    (path,) = folder.rglob("samples_*.jsonl")
    items = [json.loads(line)["token_perplexity"] for line in path.read_text().splitlines() if line.strip()]
    return math.exp(sum(s for s, _ in items) / sum(n for _, n in items))


def _cli(*args):
    proc = subprocess.run([sys.executable, "-m", "lm_eval_streaming.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc


def _table(report: str) -> dict[str, list[list[str]]]:
    """The report's Data table: {method label: [cells of each row with that label]}."""
    head = next(i for i, ln in enumerate(report.splitlines()) if ln.startswith("| run | samples |"))
    out = {}
    for line in report.splitlines()[head + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        out.setdefault(cells[6], []).append(cells)
    return out


def test_analyze_keeps_options_apart_and_pairs_full_dense(folders):
    names = ["sl", "ns", "d", "full", "h1", "h16"]
    report = _cli("analyze", *(folders / n for n in names)).stdout
    rows = _table(report)
    # one row per method option, each with its own folder's perplexity and its own file
    expect = {"streaming_llm 4+28": "sl", "streaming_llm noshift 4+28": "ns", "dense[sdpa]": "d",
              "dense[sdpa@full]": "full", "h2o E1 4+28": "h1", "h2o E16 4+28": "h16"}
    assert set(rows) == set(expect)
    for label, name in expect.items():
        (cells,) = rows[label]
        assert float(cells[8]) == pytest.approx(_ppl(folders / name), rel=1e-5), label
        assert cells[0].startswith(f"{name}/"), (label, cells[0])
    # @full is paired with the cache methods: a ΔNLL against the chunked dense (same documents)
    assert rows["dense[sdpa@full]"][0][10] and rows["dense[sdpa@full]"][0][12] == "sdpa"
    assert rows["streaming_llm noshift 4+28"][0][10]
    assert "the ablation was not run" not in report
    assert "(6 result files: 1 run, 6 rows)" in report


def test_analyze_never_merges_or_pairs_subsets(folders):
    proc = _cli("analyze", *(folders / n for n in ("all", "sub", "sub2")))
    rows = _table(proc.stdout)
    dense = {cells[1]: cells for cells in rows["dense[sdpa]"]}
    assert set(dense) == {"10", "2 (subset 2 of 10 docs, ids " + dense_ids(dense) + ")"}
    assert float(dense["10"][8]) == pytest.approx(_ppl(folders / "all"), rel=1e-5)
    sub = next(c for k, c in dense.items() if k != "10")
    assert float(sub[8]) == pytest.approx(_ppl(folders / "sub"), rel=1e-5)
    (sl,) = rows["streaming_llm 4+28"]  # one document, not among the dense subset's: never paired with one
    assert sl[1].startswith("1 (subset 1 of 10 docs") and sl[10] == "" and sl[12] == ""
    assert "(3 result files: 3 runs, 3 rows)" in proc.stdout
    assert "scored by every setting" not in proc.stderr


def dense_ids(dense: dict) -> str:
    key = next(k for k in dense if k != "10")
    return re.search(r"ids (\w+)\)", key).group(1)


def test_leaderboard_never_merges_a_subset_into_the_full_run(folders, tmp_path):
    _cli("leaderboard", folders / "all", folders / "sub", "-o", tmp_path)
    import csv

    with open(tmp_path / "comparison.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2
    by_docs = {r["documents"]: float(r["streaming_ppl_500/token_perplexity"]) for r in rows}
    assert by_docs.pop("all") == pytest.approx(_ppl(folders / "all"), rel=1e-5)
    ((docs, ppl),) = by_docs.items()
    assert docs.startswith("2 of 10 docs") and ppl == pytest.approx(_ppl(folders / "sub"), rel=1e-5)
    assert len({r["model_name"] for r in rows}) == 2


def test_leaderboard_keeps_method_options_apart(folders, tmp_path):
    _cli("leaderboard", *(folders / n for n in ("sl", "ns", "h1", "h16")), "-o", tmp_path)
    import csv

    with open(tmp_path / "comparison.csv", newline="") as f:
        rows = {r["policy_options"]: float(r["streaming_ppl_500/token_perplexity"]) for r in csv.DictReader(f)}
    assert rows == {"position_shift=True": pytest.approx(_ppl(folders / "sl"), rel=1e-5),
                    "position_shift=False": pytest.approx(_ppl(folders / "ns"), rel=1e-5),
                    "evict_every=1,position_shift=False": pytest.approx(_ppl(folders / "h1"), rel=1e-5),
                    "evict_every=16,position_shift=False": pytest.approx(_ppl(folders / "h16"), rel=1e-5)}
