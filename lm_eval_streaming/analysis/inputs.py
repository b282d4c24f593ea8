"""The results that ``analyze`` and ``plot`` read: checked before any work, then loaded as typed runs.

Files of ``benchmark`` / ``experiment`` and lm-eval ``--output_path`` folders (or their ``results_*.json``) of
``streaming_hf`` perplexity runs (:mod:`lm_eval_streaming.records.lm_eval_runs`; lm-eval's own rolling perplexity
tasks: :mod:`lm_eval_streaming.records.lm_eval_rolling`), mixed."""

from __future__ import annotations

import sys
from pathlib import Path

from lm_eval_streaming.errors import UserError
from lm_eval_streaming.records import load_runs
from lm_eval_streaming.records.lm_eval_rolling import load_rolling_runs
from lm_eval_streaming.records.lm_eval_runs import is_lm_eval_output, load_lm_eval_runs


def check_result_files(paths) -> None:
    missing = [str(p) for p in paths if not (Path(p).is_file() or Path(p).is_dir())]
    if missing:
        raise UserError(f"result file(s) or folder(s) not found: {', '.join(missing)}")


def check_figures_dir(path) -> None:
    if path and Path(path).exists() and not Path(path).is_dir():
        raise UserError(f"--figures={str(path)!r} is a file, not a directory")


DOCTOR_SCHEMA = "lm_eval_streaming.doctor/"  # ``doctor --output`` files (any version of the layout)


def doctor_record(path) -> dict | None:
    """The record of a ``doctor --output`` file, None for any other file."""
    import json

    p = Path(path)
    if not p.is_file() or p.suffix != ".json":
        return None
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and str(data.get("schema", "")).startswith(DOCTOR_SCHEMA) else None


def doctor_section(records: list[dict]) -> str:
    """The report's lines for doctor files: "<DEVICE> <dtype> on this machine: causal leak found / not found",
    the imprecise kernels, the rotary and the known defects that apply, before any model ran."""
    lines = ["", "## Device checks before any model ran (doctor)", ""]
    for r in records:
        extra = []
        if r.get("imprecise_kernels"):
            extra.append("imprecise kernels: " + ", ".join(r["imprecise_kernels"]))
        if r.get("rotary_broken"):
            extra.append("rotary wrong in " + r["dtype"] + ": " + ", ".join(r["rotary_broken"]))
        extra += [f"{d['ref']}: {d['status']}" for d in r.get("known_defects", []) if d.get("status") != "n/a"]
        versions = r.get("versions", {})
        lines.append(f"- {r['summary']} (torch {versions.get('torch')}, {versions.get('device')}; lengths "
                     f"{', '.join(map(str, r.get('lengths', [])))})" + ("; " + "; ".join(extra) if extra else ""))
    return "\n".join(lines) + "\n"


def read_results(paths, command: str) -> list:
    """The runs in ``paths`` (one warning line per file that cannot be read); a UserError when there are none."""
    def warn(msg):
        print(f"lm-eval-streaming {command}: warning: {msg}", file=sys.stderr)

    lm_eval = [p for p in paths if is_lm_eval_output(p)]
    other = [p for p in paths if not is_lm_eval_output(p) and doctor_record(p) is None]
    runs = load_runs(other, warn=warn) + load_lm_eval_runs(lm_eval, warn) + load_rolling_runs(lm_eval, warn)
    if not runs:
        raise UserError(f"no scored runs in {', '.join(map(str, paths))}")
    return runs
