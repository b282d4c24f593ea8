"""lm-eval's own results files (``--output_path``): where they are, and their numeric metrics.

Read by the leaderboard, the recall report and analyze.
"""

from __future__ import annotations

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
