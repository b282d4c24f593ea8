"""Experiment grids: ``lm-eval-streaming experiment CONFIG [--output results.jsonl] [--dry-run]``.

A config (YAML, see ``configs/``) names an experiment, fixes some parameters of
:func:`lm_eval_streaming.benchmark.run_benchmark` and lists others under ``grid``;
the grid's lists are crossed (cartesian product) into *cells*, and each cell is
one ``run_benchmark`` call (the dense baseline plus every method and recent size
of the cell, all on the same samples)::

    name: offline_length
    description: why and what
    model_id: smollm2-135m
    methods: [streaming_llm, window]
    start_size: 4
    recent_sizes: [252]
    num_samples: 2
    grid:
      max_tokens: [2000, 5000, 10000, 12000]

Parameters (top level or under ``grid``, not both): ``model_id`` (str),
``methods`` (list of method names; ``dense`` is always scored as the baseline),
``max_tokens`` (int), ``recent_sizes`` (list of int), ``num_samples``,
``num_warmup``, ``start_size``, ``chunk_size`` (int), ``dtype`` (float32 |
bfloat16 | float16), ``device`` (cpu | cuda | cuda:N | mps). Under ``grid`` a
list-valued parameter takes a list of values, each a scalar (one cell per value,
e.g. ``recent_sizes: [124, 252]`` gives two cells) or a list.

The whole config, every cell included, is validated before any model is loaded;
errors name the file, the field and what is allowed.

Results: each finished cell is appended to the JSONL output as one line
``{"experiment", "cell_key", "cell", "rows", "finished_at"}`` under a file lock,
written in one piece, flushed and fsynced. A re-run skips cells already in the
file, so a killed run loses at most the cell in progress; a torn last line (a
kill in the middle of a write) is ignored on read and cut off before the next
append.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import logging
import os
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable

logger = logging.getLogger(__name__)

DTYPES = ("float32", "bfloat16", "float16")
DEVICES_HELP = "cpu, cuda, cuda:N (N >= 0) or mps"
META_KEYS = ("name", "description", "grid")
LIST_PARAMS = ("methods", "recent_sizes")
# name -> (kind, minimum) for the scalar integer parameters
INT_PARAMS = {"max_tokens": 1, "num_samples": 1, "num_warmup": 0, "start_size": 0, "chunk_size": 1}
PARAMS = ("model_id", "methods", "max_tokens", "recent_sizes", "num_samples", "num_warmup",
          "start_size", "dtype", "device", "chunk_size")
REQUIRED_PARAMS = ("model_id", "methods", "max_tokens")


class ConfigError(ValueError):
    """A config file is invalid; the message names the file and the field."""


def _err(path, field: str, problem: str, allowed: str) -> ConfigError:
    return ConfigError(f"{path}: field '{field}': {problem}; allowed: {allowed}")


def _methods_allowed() -> tuple[str, ...]:
    from lm_eval_streaming.policy import METHODS

    return tuple(m for m in METHODS if m != "dense")


# ----------------------------------------------------------------- validation
def _check_int(path, field, value, minimum) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _err(path, field, f"{value!r} ({type(value).__name__}) is not an integer",
                   f"an integer >= {minimum}")
    if value < minimum:
        raise _err(path, field, f"{value} is too small", f"an integer >= {minimum}")
    return value


def _check_value(path, field: str, value):
    """Validate one parameter value; returns its canonical form."""
    if field == "model_id":
        if not isinstance(value, str) or not value.strip():
            raise _err(path, field, f"{value!r} is not a non-empty string",
                       "a Hugging Face model id, a local checkpoint directory or smollm2-135m")
        return value.strip()
    if field in INT_PARAMS:
        return _check_int(path, field, value, INT_PARAMS[field])
    if field == "methods":
        allowed = _methods_allowed()
        allowed_txt = f"a list of method names from {', '.join(allowed)} (dense is always scored as the baseline)"
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise _err(path, field, f"{value!r} is not a list", allowed_txt)
        out = []
        for m in value:
            if not isinstance(m, str) or m not in allowed:
                problem = ("'dense' is always scored as the baseline and must not be listed" if m == "dense"
                           else f"unknown method {m!r}")
                raise _err(path, field, problem, allowed_txt)
            if m not in out:
                out.append(m)
        return out
    if field == "recent_sizes":
        if isinstance(value, int) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, list) or not value:
            raise _err(path, field, f"{value!r} is not a non-empty list", "a list of integers >= 1")
        return [_check_int(path, field, v, 1) for v in value]
    if field == "dtype":
        if value not in DTYPES:
            raise _err(path, field, f"unknown dtype {value!r}", ", ".join(DTYPES))
        return value
    if field == "device":
        ok = isinstance(value, str) and (
            value in ("cpu", "cuda", "mps")
            or (value.startswith("cuda:") and value[5:].isdigit())
        )
        if not ok:
            raise _err(path, field, f"unknown device {value!r}", DEVICES_HELP)
        return value
    raise _err(path, field, "unknown key", ", ".join(META_KEYS + PARAMS))  # pragma: no cover


def _check_cell(path, cell: dict, where: str) -> None:
    """Cross-field checks of one cell: the cache policy of every method and size."""
    from lm_eval_streaming.policy import StreamingArgError, policy_for

    for m in cell["methods"]:
        for r in cell.get("recent_sizes", [252]):
            try:
                policy_for(m, cell.get("start_size", 4), r)
            except StreamingArgError as e:
                raise _err(path, "recent_sizes" if "recent" in str(e) else "start_size",
                           f"{e} ({where})", "sizes the cache policy accepts") from None


def validate_config(raw: Any, path: str | os.PathLike = "<config>") -> dict:
    """Check a parsed config; returns ``{name, description, fixed, grid}`` (canonical values)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the config must be a YAML mapping, got {type(raw).__name__}")
    for key in raw:
        if key not in META_KEYS and key not in PARAMS:
            raise _err(path, str(key), "unknown key", ", ".join(META_KEYS + PARAMS))
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip():
        raise _err(path, "name", "missing or not a non-empty string" if name is None else f"{name!r} is not a string",
                   "a non-empty string naming the experiment")
    if any(c in name for c in "/\\\n"):
        raise _err(path, "name", f"{name!r} contains a path separator or newline", "a plain name")
    description = raw.get("description", "")
    if not isinstance(description, str):
        raise _err(path, "description", f"{description!r} is not a string", "a string")
    fixed = {k: _check_value(path, k, raw[k]) for k in PARAMS if k in raw}
    grid_raw = raw.get("grid") or {}
    if not isinstance(grid_raw, dict):
        raise _err(path, "grid", f"{grid_raw!r} is not a mapping", "a mapping of parameter -> list of values")
    grid = {}
    for key, values in grid_raw.items():
        field = f"grid.{key}"
        if key not in PARAMS:
            raise _err(path, field, "unknown grid key", ", ".join(PARAMS))
        if key in fixed:
            raise _err(path, field, f"'{key}' is set both at the top level and in the grid",
                       "each parameter in one place")
        if not isinstance(values, list) or not values:
            raise _err(path, field, f"{values!r} is not a non-empty list", "a non-empty list of values")
        canon = []
        for v in values:
            try:
                cv = _check_value(path, key, v)
            except ConfigError as e:
                raise ConfigError(str(e).replace(f"field '{key}'", f"field '{field}'", 1)) from None
            if cv in canon:
                raise _err(path, field, f"value {v!r} is listed twice", "distinct values")
            canon.append(cv)
        grid[key] = canon
    for key in REQUIRED_PARAMS:
        if key not in fixed and key not in grid:
            raise _err(path, key, "missing (neither at the top level nor in grid)",
                       {"model_id": "a model id", "methods": f"a list from {', '.join(_methods_allowed())}",
                        "max_tokens": "an integer >= 1"}[key])
    config = {"name": name.strip(), "description": description.strip(), "fixed": fixed, "grid": grid,
              "path": str(path)}
    for cell in expand_cells(config):
        _check_cell(path, cell, "cell " + cell_label(cell))
    return config


def load_config(path: str | os.PathLike) -> dict:
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: config file not found")
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from None
    return validate_config(raw, p)


# ---------------------------------------------------------------------- cells
def expand_cells(config: dict) -> list[dict]:
    """The grid crossed into cells, in a stable order (grid keys in file order)."""
    keys = list(config["grid"])
    cells = []
    for combo in itertools.product(*(config["grid"][k] for k in keys)):
        cell = dict(config["fixed"])
        cell.update(zip(keys, combo))
        cells.append({k: cell[k] for k in PARAMS if k in cell})
    return cells


def cell_key(cell: dict) -> str:
    """Stable key of a cell: sha256 of its canonical JSON, 16 hex digits."""
    canon = json.dumps(cell, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canon.encode()).hexdigest()[:16]


def cell_label(cell: dict) -> str:
    parts = []
    for k in PARAMS:
        if k in cell:
            v = cell[k]
            parts.append(f"{k}={','.join(map(str, v)) if isinstance(v, list) else v}")
    return " ".join(parts)


# -------------------------------------------------------------------- storage
def _read_lines(path: Path) -> tuple[list[dict], int, bool]:
    """(entries, byte offset of the end of the last complete line, torn?)."""
    if not path.exists():
        return [], 0, False
    data = path.read_bytes()
    entries, good_end, torn = [], 0, False
    pos = 0
    while pos < len(data):
        nl = data.find(b"\n", pos)
        if nl < 0:  # no newline: a write that was cut short
            torn = bool(data[pos:].strip())
            break
        line = data[pos:nl]
        pos = nl + 1
        good_end = pos
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            logger.warning("%s: ignoring a line that is not JSON (byte %d)", path, pos - len(line) - 1)
            continue
        if isinstance(entry, dict) and "cell_key" in entry and isinstance(entry.get("rows"), list):
            entries.append(entry)
    if torn:
        logger.warning("%s: ignoring a torn last line (%d bytes, from an interrupted write)",
                       path, len(data) - good_end)
    return entries, good_end, torn


def read_entries(path: str | os.PathLike) -> list[dict]:
    """Complete cell entries of one JSONL file (a torn last line is ignored)."""
    return _read_lines(Path(path))[0]


def finished_keys(path: str | os.PathLike, experiment: str) -> set[str]:
    return {e["cell_key"] for e in read_entries(path) if e.get("experiment") == experiment}


def _lock(path: Path):
    from filelock import FileLock

    return FileLock(str(path) + ".lock")


def append_entry(path: str | os.PathLike, entry: dict) -> None:
    """Append one entry as one full line, atomically with respect to other writers and kills."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(entry, sort_keys=False, allow_nan=True, default=_json_default) + "\n").encode()
    with _lock(path):
        _, good_end, torn = _read_lines(path)
        if torn:  # cut the torn tail so the new line starts on a line of its own
            with open(path, "r+b") as f:
                f.truncate(good_end)
                f.flush()
                os.fsync(f.fileno())
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            view = memoryview(line)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            os.fsync(fd)
        finally:
            os.close(fd)


def _json_default(obj):
    try:
        import numpy as np

        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, np.ndarray):
            return obj.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(obj, (set, tuple)):
        return list(obj)
    return str(obj)


def load_results(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> list[dict]:
    """Rows of one or more result files, each with its cell's parameters merged in.

    A row is ``{**cell, **record, "experiment", "cell_key", "finished_at", "source"}``:
    the record's own fields win over the cell's (the cell has list-valued
    ``methods``/``recent_sizes``, the record its own ``method``/``recent_size``). A
    cell present twice (same experiment and key) counts once, the last one.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    by_cell: dict[tuple, tuple[dict, str]] = {}
    for p in paths:
        for entry in read_entries(p):
            by_cell[(entry.get("experiment"), entry["cell_key"])] = (entry, str(p))
    rows = []
    for (experiment, key), (entry, source) in by_cell.items():
        for record in entry["rows"]:
            row = dict(entry.get("cell") or {})
            row.update(record)
            row.update(experiment=experiment, cell_key=key, finished_at=entry.get("finished_at"), source=source)
            rows.append(row)
    return rows


# --------------------------------------------------------------------- runner
def _get_run_benchmark() -> Callable[..., list[dict]]:
    """The lead's ``run_benchmark``, wrapped so that consecutive cells of one model (same id, dtype,
    device, methods) share one loaded model instead of loading it again for every cell."""
    import inspect

    from lm_eval_streaming import benchmark

    run_benchmark = benchmark.run_benchmark
    load_model = getattr(benchmark, "load_model", None)
    try:
        params = inspect.signature(run_benchmark).parameters
    except (TypeError, ValueError):  # pragma: no cover
        params = {}
    if load_model is None or "model" not in params or "tokenizer" not in params:
        return run_benchmark
    loaded: dict[tuple, tuple] = {}

    def bench(**cell):
        key = (cell["model_id"], cell.get("dtype", "float32"), cell.get("device"), tuple(cell["methods"]))
        if key not in loaded:
            loaded.clear()  # one model in memory at a time
            _free_memory()
            loaded[key] = load_model(cell["model_id"], cell.get("dtype", "float32"), cell.get("device"),
                                     method=cell["methods"][0] if cell["methods"] else "dense")
        model, tokenizer = loaded[key]
        return run_benchmark(**cell, model=model, tokenizer=tokenizer)

    return bench


def _free_memory() -> None:
    import gc

    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def device_available(device: str) -> bool:
    if device == "cpu":
        return True
    import torch

    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            return False
        index = int(device[5:]) if ":" in device else 0
        return index < torch.cuda.device_count()
    if device == "mps":
        mps = getattr(torch.backends, "mps", None)
        return bool(mps is not None and mps.is_available())
    return False


def default_output(config: dict) -> Path:
    return Path("results") / f"{config['name']}.jsonl"


def _parse_where(items: list[str] | None, config: dict) -> dict[str, str]:
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
        values = value if isinstance(value, list) else [value]
        if v not in [str(x) for x in values]:
            return False
    return True


def _model_key(cell: dict) -> tuple:
    return (cell.get("model_id"), cell.get("dtype"), cell.get("device"), tuple(cell.get("methods", ())))


def run_experiment(config: dict, output: str | os.PathLike | None = None, *,
                   run_benchmark: Callable[..., list[dict]] | None = None, dry_run: bool = False,
                   where: dict[str, str] | None = None, keep_going: bool = False,
                   skip_unavailable: bool = True, progress: bool = True, log=print) -> dict:
    """Run every unfinished cell of ``config``; returns a summary
    ``{"done", "skipped_finished", "skipped_unavailable", "failed", "pending", "output"}``.

    KeyboardInterrupt/SystemExit propagate: finished cells are already on disk.
    """
    output = Path(output) if output else default_output(config)
    cells = [c for c in expand_cells(config) if _matches(c, where or {})]
    done_keys = finished_keys(output, config["name"])
    summary = {"output": str(output), "done": [], "skipped_finished": [], "skipped_unavailable": [],
               "failed": [], "pending": []}
    todo = []
    for cell in cells:
        key = cell_key(cell)
        if key in done_keys:
            summary["skipped_finished"].append(key)
        elif skip_unavailable and not dry_run and cell.get("device") and not device_available(cell["device"]):
            summary["skipped_unavailable"].append(key)
            log(f"skip (device {cell.get('device')} not available here): {cell_label(cell)}")
        else:
            todo.append((key, cell))
    # cells of one model/dtype/device run back to back, so a loaded model is reused
    first_seen: dict[tuple, int] = {}
    for _, cell in todo:
        first_seen.setdefault(_model_key(cell), len(first_seen))
    todo.sort(key=lambda kc: first_seen[_model_key(kc[1])])
    log(f"experiment {config['name']}: {len(cells)} cells, {len(summary['skipped_finished'])} already in "
        f"{output}, {len(todo)} to run")
    if dry_run:
        for key, cell in todo:
            log(f"  pending {key}: {cell_label(cell)}")
        summary["pending"] = [k for k, _ in todo]
        return summary
    if not todo:
        return summary
    bench = run_benchmark or _get_run_benchmark()
    from tqdm import tqdm

    bar = tqdm(todo, desc=config["name"], unit="cell", disable=not progress, file=sys.stderr)
    for key, cell in bar:
        bar.set_postfix_str(cell_label({k: cell[k] for k in config["grid"] if k in cell}) or "single cell")
        try:
            rows = bench(**cell)
        except Exception as e:  # noqa: BLE001 - reported and optionally skipped
            summary["failed"].append(key)
            log(f"cell failed ({type(e).__name__}: {e}): {cell_label(cell)}")
            if not keep_going:
                bar.close()
                raise
            continue
        entry = {"experiment": config["name"], "cell_key": key, "cell": cell, "rows": list(rows),
                 "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        append_entry(output, entry)
        summary["done"].append(key)
    bar.close()
    return summary


# ------------------------------------------------------------------------ CLI
def _configure(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("config", help="experiment config (YAML), e.g. configs/offline_length.yaml")
    parser.add_argument("--output", "-o", default=None,
                        help="results JSONL to append to (default: results/<name>.jsonl); finished cells are skipped")
    parser.add_argument("--dry-run", action="store_true", help="validate the config and list the cells; load no model")
    parser.add_argument("--where", action="append", metavar="KEY=VALUE",
                        help="run only cells whose KEY has VALUE (repeatable), e.g. --where device=cuda")
    parser.add_argument("--keep-going", action="store_true",
                        help="on a failed cell, report it and go on with the others (default: stop)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)
    return parser


def add_parser(subparsers) -> argparse.ArgumentParser:
    return _configure(subparsers.add_parser(
        "experiment", help="run an experiment grid from a YAML config (resumable)",
        description="Run an experiment grid (configs/*.yaml): one run_benchmark call per cell, appended to a "
                    "JSONL; re-running skips finished cells."))


def run(args) -> int:
    try:
        config = load_config(args.config)
        where = _parse_where(args.where, config)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    summary = run_experiment(config, args.output, dry_run=args.dry_run, where=where,
                             keep_going=args.keep_going, progress=not args.no_progress)
    if not args.dry_run:
        print(f"{len(summary['done'])} cells run, {len(summary['skipped_finished'])} already done, "
              f"{len(summary['skipped_unavailable'])} skipped (device not available), "
              f"{len(summary['failed'])} failed -> {summary['output']}")
    return 1 if summary["failed"] else 0


def main(argv=None) -> int:
    parser = _configure(argparse.ArgumentParser(prog="lm-eval-streaming experiment"))
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
