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


def read_results(paths, command: str) -> list:
    """The runs in ``paths`` (one warning line per file that cannot be read); a UserError when there are none."""
    def warn(msg):
        print(f"lm-eval-streaming {command}: warning: {msg}", file=sys.stderr)

    lm_eval = [p for p in paths if is_lm_eval_output(p)]
    runs = (load_runs([p for p in paths if not is_lm_eval_output(p)], warn=warn) + load_lm_eval_runs(lm_eval, warn)
            + load_rolling_runs(lm_eval, warn))
    if not runs:
        raise UserError(f"no scored runs in {', '.join(map(str, paths))}")
    return runs
