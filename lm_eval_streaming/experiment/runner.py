"""The experiment runner and its CLI: ``lm-eval-streaming experiment CONFIG [--output results.jsonl] [--dry-run]``.

Runs every unfinished cell of a config (see :mod:`.config`) through ``benchmark.run_benchmark`` and
appends each finished run to the output (see :mod:`.store`). Before any work: the config, every
cell and the model ids are validated, and the output is checked to be writable. Several runners on
one output split the grid (each claims a cell before computing it). A killed run loses at most the
cell in progress; re-running skips finished cells.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from lm_eval_streaming.records import Run
from lm_eval_streaming.records.io import run_from_legacy_rows
from . import store
from .config import PARAMS, ConfigError, cell_key, cell_label, expand_cells, load_config


def _get_run_benchmark(progress: bool = True) -> Callable[..., Run]:
    """``benchmark.run_benchmark``, wrapped so that consecutive cells of one model (same id, dtype,
    device) share one loaded model instead of loading it again for every cell; ``progress``: its bar of
    scored tokens under the bar of cells."""
    from lm_eval_streaming.benchmark import command as benchmark

    loaded: dict[tuple, tuple] = {}

    def bench(**cell):
        key = (cell["model_id"], cell["dtype"], cell["device"])
        if key not in loaded:
            loaded.clear()  # one model in memory at a time
            _free_memory()
            loaded[key] = benchmark.load_model(cell["model_id"], cell["dtype"], cell["device"],
                                               methods=cell["methods"])
        model, tokenizer = loaded[key]
        return benchmark.run_benchmark(**cell, model=model, tokenizer=tokenizer, progress=progress)

    return bench


def _free_memory() -> None:
    import gc

    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def default_output(config: dict) -> Path:
    return Path("results") / f"{config['name']}.jsonl"


def parse_where(items: list[str] | None) -> dict[str, str]:
    where = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--where {item!r}: expected KEY=VALUE")
        k, v = item.split("=", 1)
        if k not in PARAMS:
            raise ConfigError(f"--where {item!r}: unknown key {k!r}; allowed: {', '.join(PARAMS)}")
        where[k] = v
    return where


def _matches(cell: dict, where: dict[str, str]) -> bool:
    for k, v in where.items():
        value = cell.get(k)
        if v not in [str(x) for x in (value if isinstance(value, list) else [value])]:
            return False
    return True


def _as_run(result, cell: dict) -> Run:
    """A Run; a list of old flat rows (fake benchmarks in older tests) is converted."""
    if isinstance(result, Run):
        return result
    return run_from_legacy_rows(list(result))


class _Heartbeat:
    """Refreshes this runner's claim while a cell computes, so other hosts do not take it over."""

    def __init__(self, output, key):
        self.output, self.key, self._stop = output, key, threading.Event()

    def __enter__(self):
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(store.HEARTBEAT_S):
            store.heartbeat(self.output, self.key)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def run_experiment(config: dict, output: str | os.PathLike | None = None, *,
                   run_benchmark: Callable[..., Run] | None = None, dry_run: bool = False,
                   where: dict[str, str] | None = None, keep_going: bool = False,
                   skip_unavailable: bool = True, progress: bool = True, log=print) -> dict:
    """Run every unfinished cell of ``config`` not claimed by another live runner; returns a summary
    ``{"done", "skipped_finished", "skipped_unavailable", "claimed_elsewhere", "failed", "pending", "output"}``.

    KeyboardInterrupt/SystemExit propagate (the cell's claim is released): finished cells are on disk.
    """
    from ..options import device_available

    output = Path(output) if output else default_output(config)
    cells = [c for c in expand_cells(config) if _matches(c, where or {})]
    done_keys = store.finished_keys(output, config["name"])
    summary = {"output": str(output), "done": [], "skipped_finished": [], "skipped_unavailable": [],
               "claimed_elsewhere": [], "failed": [], "pending": []}
    todo = []
    for cell in cells:
        key = cell_key(cell)
        if key in done_keys:
            summary["skipped_finished"].append(key)
        elif skip_unavailable and not device_available(cell["device"]):
            summary["skipped_unavailable"].append(key)
            log(f"skip (device {cell['device']} not available here): {cell_label(cell)}")
        else:
            todo.append((key, cell))
    # cells of one model/dtype/device run back to back, so a loaded model is reused
    first_seen: dict[tuple, int] = {}
    for _, cell in todo:
        first_seen.setdefault((cell["model_id"], cell["dtype"], cell["device"]), len(first_seen))
    todo.sort(key=lambda kc: first_seen[(kc[1]["model_id"], kc[1]["dtype"], kc[1]["device"])])
    log(f"experiment {config['name']}: {len(cells)} cells, {len(summary['skipped_finished'])} already in "
        f"{output}, {len(todo)} to run")
    if dry_run:
        for key, cell in todo:
            log(f"  pending {key}: {cell_label(cell)}")
        summary["pending"] = [k for k, _ in todo]
        return summary
    if not todo:
        return summary
    store.check_writable(output)
    bench = run_benchmark or _get_run_benchmark(progress)
    from tqdm import tqdm

    bar = tqdm(total=len(todo), desc=config["name"], unit="cell", disable=not progress, file=sys.stderr)
    remaining = list(todo)
    while True:
        picked, held = store.claim_next(output, config["name"], remaining)
        if picked is None:
            summary["claimed_elsewhere"] = sorted(held)
            for key, claim in held.items():
                log(f"cell {key} is being computed by pid {claim.get('pid')} on {claim.get('host')}")
            break
        key, cell = picked
        remaining = [kc for kc in remaining if kc[0] != key]
        bar.set_postfix_str(cell_label(cell, config["grid"]) or "single cell")
        try:
            with _Heartbeat(output, key):
                run = _as_run(bench(**cell), cell)
        except BaseException as e:
            store.release(output, key)
            if not isinstance(e, Exception):
                raise
            summary["failed"].append(key)
            log(f"cell failed ({type(e).__name__}: {e}): {cell_label(cell)}")
            if not keep_going:
                bar.close()
                raise
            continue
        run.experiment, run.cell_key, run.cell = config["name"], key, cell
        run.finished_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
        store.append_run(output, run)
        summary["done"].append(key)
        bar.update(1)
    bar.close()
    return summary


# ------------------------------------------------------------------------ CLI
def _configure(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("config", help="experiment config (YAML), e.g. configs/offline_length.yaml")
    parser.add_argument("--output", "-o", default=None,
                        help="results JSONL to append to (default: results/<name>.jsonl); finished cells are "
                             "skipped, and several runners on one output split the grid")
    parser.add_argument("--dry-run", action="store_true", help="validate the config and list the cells; load no model")
    parser.add_argument("--where", action="append", metavar="KEY=VALUE",
                        help="run only cells whose KEY has VALUE (repeatable), e.g. --where device=cuda")
    parser.add_argument("--keep-going", action="store_true",
                        help="on a failed cell, report it and go on with the others (default: stop)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def add_parser(subparsers) -> argparse.ArgumentParser:
    return _configure(subparsers.add_parser(
        "experiment", help="run an experiment grid from a YAML config (resumable, shareable by several runners)",
        description="Run an experiment grid (configs/*.yaml): one run_benchmark call per cell, appended to a "
                    "JSONL; re-running skips finished cells."))


def run(args) -> int:
    config = load_config(args.config)
    where = parse_where(args.where)
    if not args.dry_run:
        store.check_writable(Path(args.output) if args.output else default_output(config))
    summary = run_experiment(config, args.output, dry_run=args.dry_run, where=where,
                             keep_going=args.keep_going, progress=not args.no_progress)
    if not args.dry_run:
        print(f"{len(summary['done'])} cells run, {len(summary['skipped_finished'])} already done, "
              f"{len(summary['claimed_elsewhere'])} being run by another runner, "
              f"{len(summary['skipped_unavailable'])} skipped (device not available), "
              f"{len(summary['failed'])} failed -> {summary['output']}")
    return 1 if summary["failed"] else 0


def main(argv=None) -> int:
    """``python -m lm_eval_streaming.experiment``: the same command and error path as ``lm-eval-streaming experiment``."""
    from ..cli import main as cli_main

    return cli_main(["experiment", *(sys.argv[1:] if argv is None else argv)])
