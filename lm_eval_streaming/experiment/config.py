"""Experiment configs: validation, the grid crossed into cells, and cell keys.

A config (YAML, see ``configs/``) names an experiment, fixes some arguments of
:func:`lm_eval_streaming.benchmark.command.run_benchmark` and lists others under ``grid``; the grid's
lists are crossed into *cells*, each one ``run_benchmark`` call::

    name: offline_length
    description: why and what
    model_id: smollm2-135m
    methods: [streaming_llm, window]
    recent_sizes: [252]
    num_samples: 2
    grid:
      max_tokens: [2000, 5000, 10000, 12000]

Parameters (top level or under ``grid``, not both): ``model_id``, ``methods`` (dense is always
scored), ``max_tokens`` (>= 2), ``recent_sizes``, ``num_samples``, ``num_warmup``, ``start_size``,
``chunk_size``, ``dtype``, ``device``, ``dense_attn`` (attention implementations dense is scored
with; ``default`` = the model's own), ``kernel_error`` / ``causality_probe`` (true/false). Under
``grid`` a list-valued parameter takes a list of values, each a scalar or a list.

Everything is validated with the benchmark's own checks before any model is loaded (errors name
the file and the field). A cell is stored with every default filled in and is keyed by all of it
plus the sample-building and record versions, so a changed default never passes an old cell as done.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from pathlib import Path
from typing import Any

from lm_eval_streaming.benchmark.args import (DEFAULTS, check_bool, check_benchmark_args, check_dense_attn, check_methods,
                                              check_position_shift)
from ..errors import UserError
from lm_eval_streaming.core.loading import check_model_id, files_digest
from ..options import StreamingArgError, as_int, check_device_name, check_dtype, int_list

META_KEYS = ("name", "description", "grid")
PARAMS = tuple(DEFAULTS)
REQUIRED_PARAMS = ("model_id", "methods", "max_tokens")
INT_MINIMUM = {"max_tokens": 2, "num_samples": 1, "num_warmup": 0, "start_size": 0, "chunk_size": 1}


class ConfigError(UserError, ValueError):
    """A config file is invalid; the message names the file and the field."""


def _err(path, field: str, problem: str, allowed: str | None = None) -> ConfigError:
    return ConfigError(f"{path}: field '{field}': {problem}" + (f"; allowed: {allowed}" if allowed else ""))


def _check_methods(value) -> list[str]:
    if value == "dense" or (isinstance(value, list) and "dense" in value):
        raise StreamingArgError("'dense' is always scored as the baseline and must not be listed "
                                "(dense_attn chooses its attention kernels)")
    methods = check_methods(value if isinstance(value, list) else [value])
    if not methods:
        raise StreamingArgError(f"methods={value!r} is empty: expected a list of cache methods")
    return methods


_CHECKS = {
    "model_id": check_model_id,
    "methods": _check_methods,
    "recent_sizes": lambda v: int_list("recent_sizes", [v] if isinstance(v, int) else v, 1),
    "dtype": check_dtype,
    "device": check_device_name,
    "dense_attn": lambda v: check_dense_attn([v] if isinstance(v, str) else v),
    "kernel_error": lambda v: check_bool("kernel_error", v),
    "causality_probe": lambda v: check_bool("causality_probe", v),
    "position_shift": check_position_shift,
    "evict_every": lambda v: int_list("evict_every", [v] if isinstance(v, int) else v, 1),
    **{k: (lambda v, k=k, m=m: as_int(k, v, m)) for k, m in INT_MINIMUM.items()},
}


def _check_value(path, field: str, key: str, value):
    """One parameter value in canonical form, or a ConfigError naming the file and field."""
    if key in ("recent_sizes", "methods", "dense_attn", "evict_every") and not isinstance(value, (list, str, int)):
        raise _err(path, field, f"{value!r} is not a list")
    try:
        return _CHECKS[key](value)
    except StreamingArgError as e:
        raise _err(path, field, str(e)) from None


def validate_config(raw: Any, path: str | os.PathLike = "<config>") -> dict:
    """Check a parsed config; returns ``{name, description, fixed, grid, path}`` (canonical values)."""
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
    fixed = {k: _check_value(path, k, k, raw[k]) for k in PARAMS if k in raw}
    grid_raw = raw.get("grid") or {}
    if not isinstance(grid_raw, dict):
        raise _err(path, "grid", f"{grid_raw!r} is not a mapping", "a mapping of parameter -> list of values")
    grid = {}
    for key, values in grid_raw.items():
        field = f"grid.{key}"
        if key not in PARAMS:
            raise _err(path, field, "unknown grid key", ", ".join(PARAMS))
        if key in fixed:
            raise _err(path, field, f"'{key}' is set both at the top level and in the grid", "each parameter in one place")
        if not isinstance(values, list) or not values:
            raise _err(path, field, f"{values!r} is not a non-empty list", "a non-empty list of values")
        canon = []
        for v in values:
            cv = _check_value(path, field, key, v)
            if cv in canon:
                raise _err(path, field, f"value {v!r} is listed twice", "distinct values")
            canon.append(cv)
        grid[key] = canon
    for key in REQUIRED_PARAMS:
        if key not in fixed and key not in grid:
            raise _err(path, key, "missing (neither at the top level nor in grid)",
                       {"model_id": "a model id", "methods": "a list of cache methods",
                        "max_tokens": "an integer >= 2"}[key])
    config = {"name": name.strip(), "description": description.strip(), "fixed": fixed, "grid": grid,
              "path": str(path)}
    for cell in expand_cells(config):  # cross-field checks (cache sizes per method), as the benchmark does them
        try:
            check_benchmark_args(**cell)
        except StreamingArgError as e:
            where = next((f"grid.{k}" for k in ("recent_sizes", "start_size") if k in grid), "recent_sizes")
            raise _err(path, where, f"{e} (cell {cell_label(cell)})") from None
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
    """The grid crossed into cells (grid keys in file order), every default filled in; a cell without a
    device gets the best one here (results differ by device, so the key must say which)."""
    from ..options import best_device

    keys = list(config["grid"])
    cells = []
    for combo in itertools.product(*(config["grid"][k] for k in keys)):
        cell = {**DEFAULTS, **config["fixed"], **dict(zip(keys, combo))}
        if cell["device"] is None:
            cell["device"] = best_device()
        cells.append({k: cell[k] for k in PARAMS})
    return cells


def cell_key(cell: dict) -> str:
    """Stable key of a cell: sha256 of its canonical JSON with the sample and record versions, the tokens its
    model's tokenizer puts before each sample (when there are any: Gemma's <bos>) and, for a local model
    directory, a digest of its files (new weights at the same path are another model), 16 hex digits."""
    from lm_eval_streaming.records import SCHEMA
    from lm_eval_streaming.benchmark.samples import SAMPLES_VERSION, model_prefix

    model = os.path.expanduser(str(cell.get("model_id") or ""))
    local = {"_model_files": files_digest(model)} if model and os.path.isdir(model) else {}
    prefix = model_prefix(cell["model_id"]) if cell.get("model_id") else ()
    if prefix:
        local["_prefix"] = list(prefix)
    canon = json.dumps({**cell, **local, "_samples": SAMPLES_VERSION, "_record": SCHEMA}, sort_keys=True,
                       separators=(",", ":"))
    return hashlib.sha256(canon.encode()).hexdigest()[:16]


def cell_label(cell: dict, keys=None) -> str:
    parts = []
    for k in keys or PARAMS:
        if k in cell:
            v = cell[k]
            parts.append(f"{k}={','.join(map(str, v)) if isinstance(v, list) else v}")
    return " ".join(parts)
