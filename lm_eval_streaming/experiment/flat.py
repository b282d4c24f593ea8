"""Transitional: runs as the old flat row dicts, for readers not yet on the typed record
(``analysis.py`` / ``plots.py``, being switched to :func:`lm_eval_streaming.records.load_runs`).
Delete when nothing imports ``load_results`` any more."""

from __future__ import annotations

import math
import os
from dataclasses import asdict, fields
from typing import Iterable

from ..records import Buckets, Interval, Row, Run
from ..records_io import load_runs


def _flat_value(value):
    if isinstance(value, Interval):
        return [value.low, value.high]
    if isinstance(value, Buckets):
        return {"edges": value.edges[:-1], "nll": [math.nan if v is None else v for v in value.nll],
                "count": value.count}
    return asdict(value) if hasattr(value, "__dataclass_fields__") else value


def flat_row(run: Run, row: Row) -> dict:
    base = {f.name: getattr(run, f.name) for f in fields(Run) if f.name not in ("rows", "cell")}
    flat = {f.name: _flat_value(getattr(row, f.name)) for f in fields(Row)}
    for key in ("ppl_ci", "acc_ci"):
        flat[key] = flat[key] or [math.nan, math.nan]
    if row.nll_curve is not None:
        flat["nll_curve"] = {"positions": row.nll_curve.centers(),
                             "nll": [math.nan if v is None else v for v in row.nll_curve.nll]}
    return {**(run.cell or {}), **base, **flat}


def load_results(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> list[dict]:
    """Every row of every run in ``paths`` as one flat dict (run and cell fields merged in)."""
    return [flat_row(run, row) for run in load_runs(paths) for row in run.rows]
