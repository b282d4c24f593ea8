"""Compare lm-eval runs: ``lm-eval-streaming leaderboard DIR [--output OUTDIR]``.

Reads every ``results_*.json`` that lm-eval (``--output_path``) wrote under DIR,
and writes into OUTDIR (default ``leaderboard``):

* ``comparison.md`` and ``comparison.csv``: one row per setting, one column per ``task/metric``;
* ``results/<model_name>/results_<timestamp>.json``: one Open LLM
  Leaderboard-style file per run, ``{"config": {"model_name", "model_dtype",
  "model_sha", ...}, "results": {task: {metric: value}}}``.

A setting is everything that can change a number (:mod:`lm_eval_streaming.records.identity`): the model's
resolved path or hub id, revision and sha, the method, its cache sizes and options (defaults filled),
chunk size, attention kernel, dtype, device, ``--limit``, prompt, ``--gen_kwargs``, seeds and other model
args, and per task its few-shot count, version and config. Runs of one setting are merged into one row (a later run of a
task replaces the earlier one); runs of different settings never are: a run whose task was scored
with another few-shot count or task config than the row's starts another row. A results file read
twice (the same folder given twice, or a copy) counts once. ``model_name`` is a display name (``smollm2-135m__streaming_llm-s4-r252``,
``...__dense``, ``...__hf-windowed`` for lm-eval's own ``hf`` model, which scores long
documents in windows of the trained context), lengthened only where two settings would
otherwise share it (``a/tiny-neox__dense`` and ``b/tiny-neox__dense``, ``...-float16``).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import math
import re
import sys
from pathlib import Path

from lm_eval_streaming.errors import UserError
from lm_eval_streaming.records.identity import (KEY_FIELDS, display_names, parse_model_args,  # noqa: F401  (API)
                                                run_identity, task_setting)
from lm_eval_streaming.records.lm_eval_results import _timestamp, documents, find_result_files, run_metrics

logger = logging.getLogger(__name__)

# Identity columns of a row, then the metric columns.
ID_COLUMNS = ("model", "method", "start_size", "recent_size", "policy_options", "dtype", "model_name", "model_id",
              "revision", "model_sha", "attn_implementation", "chunk_size", "device", "limit", "prompt", "gen_kwargs",
              "seeds", "num_fewshot", "task_config", "documents", "extra_args")
# Shown in comparison.md only when they differ between rows.
VARYING_COLUMNS = ("policy_options", "model_id", "revision", "model_sha", "attn_implementation", "chunk_size",
                   "device", "limit", "prompt", "gen_kwargs", "seeds", "num_fewshot", "task_config", "documents",
                   "extra_args")
TASK_FIELDS = ("num_fewshot", "task_config", "documents")  # per task (task_setting, documents), summed up per row


def load_runs(roots, exclude=None) -> list[dict]:
    """Every lm-eval run under ``roots``: identity, metrics, source and timestamp; oldest first.
    ``model`` / ``model_name`` are display names, unique per identity among these runs."""
    if isinstance(roots, (str, Path)):
        roots = [roots]
    runs, seen = [], {}
    for root in roots:
        for path in find_result_files(root, exclude):
            try:
                text = path.read_text(encoding="utf-8")
                data = json.loads(text)
            except (OSError, json.JSONDecodeError) as e:
                logger.warning("skipping %s: %s", path, e)
                continue
            digest = hashlib.sha256(text.encode()).hexdigest()
            if digest in seen:  # the same results read twice (a folder given twice, a copy): counted once
                if seen[digest] != str(path.resolve()):
                    logger.warning("%s: the same results as %s, counted once", path, seen[digest])
                continue
            seen[digest] = str(path.resolve())
            if not isinstance(data, dict) or not isinstance(data.get("results"), dict):
                continue
            config = data.get("config") or {}
            if "model_name" in config and "model_args" not in config:  # a leaderboard file written here
                continue
            metrics = run_metrics(data)
            if not metrics:
                continue
            try:
                ident = run_identity(data)
            except ValueError as e:
                raise UserError(f"{path}: {e}") from None
            runs.append({**ident, "metrics": metrics, "source": str(path), "timestamp": _timestamp(path),
                         "date": data.get("date"),
                         "tasks": {t: (task_setting(data, t), documents(data, t, path)) for t in metrics}})
    runs.sort(key=lambda r: (_num(r.get("date")), r["timestamp"], r["source"]))
    _split_task_settings(runs)
    names = display_names(runs, KEY_FIELDS + TASK_FIELDS)
    for run in runs:
        run["model"], run["model_name"] = names[run["key"]]
    return runs


def _split_task_settings(runs: list[dict]) -> None:
    """Runs of one setting share a row unless a task they both scored differs in few-shot count, version,
    config or documents (a ``--limit`` / ``--samples`` subset is never merged into the full run): then the later
    run starts (or joins) another row. Each run's key gains its row's task settings, and ``num_fewshot`` /
    ``task_config`` / ``documents`` say them (one value when all tasks of the row agree; ``all`` documents)."""
    rows: dict[tuple, list[dict]] = {}
    member = []
    for run in runs:  # oldest first
        variants = rows.setdefault(run["key"], [])
        row = next((v for v in variants if all(v.get(t, s) == s for t, s in run["tasks"].items())), None)
        if row is None:
            row = {}
            variants.append(row)
        row.update(run["tasks"])
        member.append(row)
    for run, row in zip(runs, member):
        settings = sorted(row.items())
        docs = {d or "all" for _, (_, d) in settings}
        run["documents"] = (next(iter(docs)) if len(docs) == 1
                            else ",".join(f"{t}={d or 'all'}" for t, (_, d) in settings))
        settings = [(t, s) for t, (s, _) in settings]
        shots = {s.split(" ")[0] for _, s in settings}
        configs = {" ".join(s.split(" ")[1:]) for _, s in settings}
        run["num_fewshot"] = (next(iter(shots)).replace("-shot", "") if len(shots) == 1
                              else ",".join(f"{t}={s.split(' ')[0].replace('-shot', '')}" for t, s in settings))
        run["task_config"] = (next(iter(configs)) if len(configs) == 1
                              else ",".join(f"{t}={' '.join(s.split(' ')[1:])}" for t, s in settings))
        run["key"] = run["key"] + (tuple(sorted(row.items())),) if len(rows[run["key"]]) > 1 else run["key"]


def _num(x) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return -math.inf


def comparison(runs: list[dict]) -> tuple[list[str], list[dict]]:
    """(metric columns, rows): runs of one setting (same identity key) merged; where two runs of one
    setting have the same task/metric, the newest wins (a re-run)."""
    merged: dict[tuple, dict] = {}
    for run in runs:
        row = merged.setdefault(run["key"], {k: run[k] for k in ID_COLUMNS})
        for task, metrics in run["metrics"].items():
            for metric, value in metrics.items():
                row[f"{task}/{metric}"] = value
    columns = sorted({c for row in merged.values() for c in row if c not in ID_COLUMNS})
    main = [c for c in columns if not c.endswith("_stderr")]
    ordered = []
    for c in main:
        ordered.append(c)
        if f"{c}_stderr" in columns:
            ordered.append(f"{c}_stderr")
    ordered += [c for c in columns if c not in ordered]
    rows = sorted(merged.values(), key=lambda r: (r["model"], r["method"] != "dense", r["method"],
                                                  r["start_size"] or 0, r["recent_size"] or 0, r["model_name"]))
    return ordered, rows


def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.4f}" if abs(value) < 1e4 else f"{value:.4g}"
    return str(value)


def write_csv(path: Path, columns: list[str], rows: list[dict]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(list(ID_COLUMNS) + columns)
        for row in rows:
            w.writerow([("" if row.get(c) is None else row.get(c)) for c in ID_COLUMNS]
                       + [("" if row.get(c) is None else repr(row[c]) if isinstance(row[c], float) else row[c])
                          for c in columns])


def render_markdown(columns: list[str], rows: list[dict]) -> str:
    shown = [c for c in columns if not c.endswith("_stderr") or c[: -len("_stderr")] not in columns]
    extra = [c for c in VARYING_COLUMNS if len({str(r.get(c)) for r in rows}) > 1]
    head = ["model", "method", "start", "recent", "dtype"] + extra + shown
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row["model"], row["method"], _fmt(row["start_size"]), _fmt(row["recent_size"]), row["dtype"] or ""]
        cells += [_fmt(row.get(c)) for c in extra]
        for c in shown:
            v = row.get(c)
            se = row.get(f"{c}_stderr")
            cells.append("" if v is None else _fmt(v) + (f" ± {_fmt(se)}" if isinstance(se, float) else ""))
        lines.append("| " + " | ".join(str(x) for x in cells) + " |")
    return "\n".join(lines) + "\n"


def _task_order(task: str):
    """Natural order, so streaming_ppl_2000 comes before streaming_ppl_10000."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", task)]


def pivot(rows: list[dict], metric: str) -> str:
    """Markdown table: one row per task, one column per run, cells ``metric ± stderr``."""
    tasks = sorted({c.split("/", 1)[0] for r in rows for c in r if c.endswith(f"/{metric}")}, key=_task_order)
    head = ["task"] + [r["model_name"] for r in rows]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for task in tasks:
        cells = []
        for r in rows:
            value, err = r.get(f"{task}/{metric}"), r.get(f"{task}/{metric}_stderr")
            cells.append("" if value is None else _fmt(value) + ("" if err is None else f" ± {_fmt(err)}"))
        lines.append(f"| {task} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _safe_part(part: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", part).strip("._") or "_"


def write_leaderboard_files(outdir: Path, runs: list[dict]) -> list[Path]:
    written = []
    for run in runs:
        folder = outdir / "results"
        for part in run["model_name"].split("/"):
            folder = folder / _safe_part(part)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"results_{_safe_part(run['timestamp'])}.json"
        n = 2
        while path in written:
            path = folder / f"results_{_safe_part(run['timestamp'])}_{n}.json"
            n += 1
        dtype = run["dtype"]
        doc = {
            "config": {
                "model_name": run["model_name"],
                "model_dtype": f"torch.{dtype}" if dtype and not dtype.startswith("torch.") else dtype,
                "model_sha": run["model_sha"],
                "base_model": run["model_id"],
                "model_revision": run["revision"],
                "method": run["method"],
                "start_size": run["start_size"],
                "recent_size": run["recent_size"],
                "policy_options": run["policy_options"],
                "chunk_size": run["chunk_size"],
                "attn_implementation": run["attn_implementation"],
                "device": run["device"],
                "limit": run["limit"],
                "prompt": run["prompt"],
                "gen_kwargs": run["gen_kwargs"],
                "seeds": run["seeds"],
                "num_fewshot": run["num_fewshot"],
                "task_config": run["task_config"],
                "documents": run["documents"],
                "lm_eval_model": run["lm_eval_model"],
                "lm_eval_model_args": run["model_args"],
                "source": run["source"],
            },
            "results": run["metrics"],
        }
        path.write_text(json.dumps(doc, indent=2, default=str) + "\n", encoding="utf-8")
        written.append(path)
    return written


def build(roots, outdir) -> dict:
    outdir = Path(outdir)
    runs = load_runs(roots, exclude=outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    columns, rows = comparison(runs)
    md = outdir / "comparison.md"
    md.write_text(render_markdown(columns, rows), encoding="utf-8")
    csv_path = outdir / "comparison.csv"
    write_csv(csv_path, columns, rows)
    files = write_leaderboard_files(outdir, runs)
    return {"runs": runs, "columns": columns, "rows": rows, "markdown": md, "csv": csv_path, "files": files}


# ------------------------------------------------------------------ CLI
def _configure(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("dirs", nargs="+", metavar="DIR",
                        help="lm-eval --output_path directory (searched for **/results_*.json)")
    parser.add_argument("--output", "-o", default="leaderboard", metavar="OUTDIR",
                        help="where to write comparison.md/.csv and results/<model_name>/results_*.json "
                             "(default: leaderboard)")
    parser.add_argument("--pivot", action="append", default=[], metavar="METRIC",
                        help="also print METRIC as a tasks x runs markdown table (repeatable), e.g. token_perplexity")
    parser.set_defaults(func=run)
    return parser


def add_parser(subparsers) -> argparse.ArgumentParser:
    return _configure(subparsers.add_parser(
        "leaderboard", help="compare lm-eval runs (methods x cache sizes) and write leaderboard files",
        description="Read lm-eval results_*.json files and write a comparison table (markdown, CSV) and one "
                    "Open LLM Leaderboard-style results file per run."))


def run(args) -> int:
    missing = [d for d in args.dirs if not Path(d).exists()]
    if missing:
        raise UserError(f"not found: {', '.join(missing)}")
    out = build(args.dirs, args.output)
    if not out["runs"]:
        raise UserError(f"no lm-eval results_*.json with results under {', '.join(args.dirs)}")
    print(f"{len(out['runs'])} runs, {len(out['rows'])} rows -> {out['markdown']}, {out['csv']}, "
          f"{len(out['files'])} leaderboard files in {Path(args.output) / 'results'}")
    for metric in args.pivot:
        print(f"\n{metric}\n\n{pivot(out['rows'], metric)}")
    return 0


def main(argv=None) -> int:
    from lm_eval_streaming.cli import main as cli_main

    return cli_main(["leaderboard", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
