"""The result files that ``analyze`` and ``plot`` read: checked before any work, then loaded as typed runs."""

from __future__ import annotations

import sys
from pathlib import Path

from lm_eval_streaming.errors import UserError
from lm_eval_streaming.records import load_runs


def check_result_files(paths) -> None:
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        raise UserError(f"result file(s) not found: {', '.join(missing)}")


def check_figures_dir(path) -> None:
    if path and Path(path).exists() and not Path(path).is_dir():
        raise UserError(f"--figures={str(path)!r} is a file, not a directory")


def read_results(paths, command: str) -> list:
    """The runs in ``paths`` (one warning line per file that cannot be read); a UserError when there are none."""
    runs = load_runs(paths, warn=lambda msg: print(f"lm-eval-streaming {command}: warning: {msg}", file=sys.stderr))
    if not runs:
        raise UserError(f"no scored runs in {', '.join(map(str, paths))}")
    return runs
