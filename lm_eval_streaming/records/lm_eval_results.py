"""lm-eval's own results files (``--output_path``): where they are, and their numeric metrics.

Read by the leaderboard, the recall report and analyze.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path


def run_metrics(data: dict) -> dict[str, dict[str, float]]:
    """{task: {metric: value}} with numeric values only; the ``none`` filter is dropped from names."""
    out = {}
    for task, metrics in (data.get("results") or {}).items():
        if not isinstance(metrics, dict):
            continue
        clean = {}
        for key, value in metrics.items():
            if key == "alias" or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            metric, _, filt = key.partition(",")
            name = metric if filt in ("", "none") else f"{metric}[{filt}]"
            clean[name] = float(value)
        if clean:
            out[task] = clean
    return out


def _timestamp(path: Path) -> str:
    stem = path.stem
    return stem[len("results_"):] if stem.startswith("results_") else stem


def find_result_files(root, exclude=None) -> list[Path]:
    root = Path(root)
    files = [root] if root.is_file() else sorted(root.rglob("results_*.json"))
    if exclude is not None:
        ex = Path(exclude).resolve()
        files = [f for f in files if ex not in f.resolve().parents]
    return files


def task_samples(results: Path, task: str) -> list[dict] | None:
    """The per-document samples lm-eval wrote with these results (``--log_samples``: same folder and time stamp)."""
    path = results.with_name(f"samples_{task}_{_timestamp(results)}.jsonl")
    if not path.is_file():
        return None
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def documents(data: dict, task: str, results: Path, samples: list[dict] | None = None) -> str | None:
    """Which of the task's documents the run scored: None for all of them; for a subset (``--limit``,
    ``--samples``) ``"2 of 10 docs, ids 1a2b3c4d"``: which ones by ``first`` (``--limit``), a digest of the logged
    document ids and hashes, or, when lm-eval logged no samples, the results file itself (a subset that
    cannot be told apart from another is never merged with one)."""
    counts = (data.get("n-samples") or {}).get(task) or {}
    total, scored = counts.get("original"), counts.get("effective")
    if not isinstance(total, int) or not isinstance(scored, int) or scored >= total:
        return None
    if (data.get("config") or {}).get("limit") is not None:
        return f"first {scored} of {total} docs"
    samples = task_samples(results, task) if samples is None else samples
    if samples is None:
        return f"{scored} of {total} docs, ids not logged ({results.name})"
    ids = sorted((s.get("doc_id"), s.get("doc_hash")) for s in samples)
    return f"{scored} of {total} docs, ids {hashlib.sha256(repr(ids).encode()).hexdigest()[:8]}"
