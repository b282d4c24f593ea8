"""Reading and writing run records: the old flat layout, files, mixed loading.

- ``run_from_legacy_rows`` / ``run_from_legacy_entry`` read the layout before the typed record (experiment
  JSONL entries with flat rows, old ``benchmark --output`` lists of flat rows); absent fields become None.
- ``load_runs`` reads any mix of experiment JSONL and benchmark JSON files, old or new layout, with one
  warning line per file it cannot (fully) read, naming the file and why.
- ``check_writable`` / ``write_run`` for result files.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Callable, Iterable

from lm_eval_streaming.options import REFERENCE_KERNEL
from lm_eval_streaming.records.run import (_NESTED, Buckets, Interval, RecordError, Row, Run, _build,
                                          forget_stream_positions)

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------ the old flat layout
RUN_KEYS = ("model_id", "max_tokens", "num_samples", "dtype", "device", "chunk_size", "trained_context",
            "versions", "machine")


def _finite_or_none(x):
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else x


def _finite_positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def _legacy_interval(pair) -> Interval | None:
    if not pair or any(_finite_or_none(v) is None for v in pair):
        return None
    return Interval(float(pair[0]), float(pair[1]))


def _legacy_buckets(d) -> Buckets | None:
    """Old buckets: lower edges, the last one open; old curves: bucket centres, no counts."""
    if not d or not d.get("nll"):
        return None
    nll = [_finite_or_none(v) for v in d["nll"]]
    if "positions" in d:  # nll_curve: equal-width buckets given by their centres
        centres = [float(c) for c in d["positions"]]
        half = (centres[1] - centres[0]) / 2 if len(centres) > 1 else centres[0]
        return Buckets([c - half for c in centres] + [centres[-1] + half], nll, None)
    edges, count = [float(e) for e in d["edges"]], d.get("count")
    if count is not None and count[-1] == 0:  # drop the empty open-ended last bucket
        return Buckets(edges, nll[:-1], list(count[:-1]))
    return Buckets(edges + [math.inf], nll, None if count is None else list(count))


_ROW_REQUIRED = ("method", "start_size", "recent_size")


def row_from_legacy(d: dict) -> Row:
    """One old flat row (absent fields -> None: accuracy and intervals are optional, since other StreamingLLM
    implementations log NLL only; perplexity and mean NLL are one number, either suffices). Attention scores were
    observable only in the project's kernel, so a row that recorded them ran through it; otherwise its kernel is
    unknown."""
    missing = [k for k in _ROW_REQUIRED if k not in d]
    if "ppl" not in d and "nll_mean" not in d:
        missing.append("ppl or nll_mean")
    if missing:
        raise RecordError(f"not a benchmark row: missing {', '.join(missing)}")
    d = dict(d)
    if _finite_or_none(d.get("acc")) is None:
        d.pop("acc", None)
    if "nll_mean" not in d:
        d["nll_mean"] = math.log(d["ppl"]) if _finite_positive(d["ppl"]) else math.nan
    if "ppl" not in d:
        d["ppl"] = math.exp(d["nll_mean"]) if _finite_or_none(d["nll_mean"]) is not None else math.nan
    kwargs = {}
    for f in fields(Row):
        if f.name not in d:
            continue
        value, cls = d[f.name], _NESTED.get(f.name)
        if cls is Interval:
            value = _legacy_interval(value)
        elif cls is Buckets:
            value = _legacy_buckets(value)
        elif cls is not None and value is not None:
            value = _build(cls, value, f.name)
        kwargs[f.name] = value
    if "attn_implementation" not in kwargs:
        measured = _finite_or_none(d.get("max_abs_attn_score")) is not None
        kwargs["attn_implementation"] = REFERENCE_KERNEL if measured else None
    row = Row(**kwargs)
    forget_stream_positions(row, d)
    return row


def run_from_legacy_rows(rows: list[dict], **extra) -> Run:
    """Old flat rows of one run (run fields repeated in every row) -> a Run. The old deltas are
    against the run's one dense row."""
    if not rows:
        raise RecordError("no rows")
    first = rows[0]
    missing = [k for k in ("model_id", "max_tokens", "num_samples", "dtype", "device") if k not in first]
    if missing:
        raise RecordError(f"not a benchmark row: missing {', '.join(missing)}")
    run_fields = {k: first.get(k) for k in RUN_KEYS}
    run_fields["chunk_size"] = run_fields["chunk_size"] or 512  # the only value the old code used
    run_fields["versions"] = run_fields["versions"] or {}
    run = Run(**run_fields, rows=[row_from_legacy(r) for r in rows], **extra)
    dense = run.dense_rows()
    for row in run.rows:
        if row.delta_nll_vs_dense is not None and row.delta_reference is None and len(dense) == 1:
            row.delta_reference = dense[0].attn_implementation
    return run


def run_from_legacy_entry(entry: dict, source: str | None = None) -> Run:
    """One line of an old experiment JSONL: {"experiment", "cell_key", "cell", "rows", "finished_at"}."""
    cell = entry.get("cell")
    run = run_from_legacy_rows(entry["rows"], experiment=entry.get("experiment"), cell_key=entry.get("cell_key"),
                               cell=cell, finished_at=entry.get("finished_at"), source=source)
    if isinstance(cell, dict):
        run.num_warmup = cell.get("num_warmup")
    return run


def from_json_value(value, source: str | None = None) -> list[Run]:
    """Runs in one parsed JSON value: a new-layout run, an old experiment entry, or an old benchmark list."""
    if isinstance(value, dict) and "schema" in value:
        return [Run.from_dict(value, source)]
    if isinstance(value, dict) and "cell_key" in value and isinstance(value.get("rows"), list):
        return [run_from_legacy_entry(value, source)]
    if isinstance(value, list) and value and all(isinstance(r, dict) for r in value):
        return [run_from_legacy_rows(value, source=source)]
    raise RecordError("not a benchmark run or experiment entry")


# ------------------------------------------------------------------ files
class OutputNotWritable(RecordError):
    """A results file cannot be written (checked before any work)."""


def check_writable(path: str | os.PathLike) -> None:
    """Fail before any work, naming the path, when results cannot be written there (parents are created)."""
    path = Path(path)
    blocking = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise OutputNotWritable(f"output={str(path)!r} is not writable: {blocking} is a file, not a directory")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            with open(path, "ab"):
                pass
        else:
            probe = path.with_name(f".{path.name}.{os.getpid()}.probe")
            probe.touch()
            probe.unlink()
    except OSError as e:
        raise OutputNotWritable(f"output={str(path)!r} is not writable: {e.strerror or e}") from None


def write_run(path: str | os.PathLike, run: Run) -> None:
    """One run as a JSON file (``benchmark --output``), replaced atomically."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(run.to_dict(), indent=1), encoding="utf-8")
    tmp.replace(path)


def _read_file(path: Path) -> tuple[list[Run], str | None]:
    """(runs, problem) of one file; problem is one line or None."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return [], "file not found"
    except (OSError, UnicodeDecodeError) as e:
        return [], f"cannot read: {e}"
    if not text.strip():
        return [], "empty file"
    try:
        whole = json.loads(text)
    except json.JSONDecodeError:
        whole = MISSING
    if whole is not MISSING:  # one JSON document: a benchmark --output file, or a one-line JSONL
        try:
            return from_json_value(whole, str(path)), None
        except (RecordError, KeyError, TypeError) as e:
            return [], f"JSON, but not a benchmark or experiment result ({e})"
    runs, bad, first_bad, torn = [], 0, None, False
    lines = text.split("\n")
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
            runs += from_json_value(value, str(path))
        except json.JSONDecodeError as e:
            if number == len(lines):  # no newline after it: a write cut short
                torn = True
                continue
            bad, first_bad = bad + 1, first_bad or f"line {number}: {e.msg}"
        except (RecordError, KeyError, TypeError) as e:
            bad, first_bad = bad + 1, first_bad or f"line {number}: {e}"
    if not runs and (bad or torn):
        return [], f"neither JSON nor JSON lines of results ({bad + torn} unreadable lines, {first_bad or 'torn'})"
    problems = []
    if bad:
        problems.append(f"{bad} unreadable line(s) skipped (first: {first_bad})")
    if torn:
        problems.append("an incomplete last line (interrupted write) skipped")
    return runs, "; ".join(problems) or None


def load_runs(paths: str | os.PathLike | Iterable[str | os.PathLike],
              warn: Callable[[str], None] | None = None) -> list[Run]:
    """Every run in the given files (experiment JSONL and benchmark --output JSON, old or new layout,
    mixed). A file that cannot be read (fully) gets one ``warn`` line naming it and why. An experiment
    cell present twice (same experiment and cell key) counts once: the last one. The same run read twice
    (a file given twice, or a copy: equal content) counts once. A local model is named by its resolved
    path (:func:`~lm_eval_streaming.records.identity.model_id`), so one checkpoint is one model."""
    import hashlib

    from lm_eval_streaming.records.identity import model_id

    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    warn = warn or logger.warning
    runs, seen, contents = [], {}, {}
    for p in paths:
        found, problem = _read_file(Path(p))
        if problem:
            warn(f"{p}: {problem}")
        for run in found:
            digest = hashlib.sha256(json.dumps(run.to_dict(), sort_keys=True).encode()).hexdigest()
            if digest in contents:
                if contents[digest] != str(Path(p).resolve()):
                    warn(f"{p}: a run identical to one in {contents[digest]}: counted once")
                continue
            contents[digest] = str(Path(p).resolve())
            run.model_id = model_id(run.model_id)
            if run.cell_key is not None:
                key = (run.experiment, run.cell_key)
                if key in seen:
                    runs[seen[key]] = None
                seen[key] = len(runs)
            runs.append(run)
    return [r for r in runs if r is not None]
