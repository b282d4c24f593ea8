"""Compare lm-eval runs: ``lm-eval-streaming leaderboard DIR [--output OUTDIR]``.

Reads every ``results_*.json`` that lm-eval (``--output_path``) wrote under DIR,
and writes into OUTDIR (default ``leaderboard``):

* ``comparison.md`` and ``comparison.csv``: one row per model x method x
  start/recent size (x dtype), one column per ``task/metric``;
* ``results/<model_name>/results_<timestamp>.json``: one Open LLM
  Leaderboard-style file per run, ``{"config": {"model_name", "model_dtype",
  "model_sha", ...}, "results": {task: {metric: value}}}``.

The method and cache sizes are part of ``model_name``
(``smollm2-135m__streaming_llm-s4-r252``, ``...__dense``, ``...__window-s4-r252``,
``...__hf-windowed`` for lm-eval's own ``hf`` model, which scores long documents in
windows of the trained context), so runs of one model with different methods do
not overwrite each other. The streaming arguments come from ``config.model_args``
(a ``k=v,k=v`` string or a dict), then from the ``streaming_*`` fields the
``streaming_hf`` model adds to ``config``; when absent: method streaming_llm,
start 4, recent 252.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import re
import sys
from pathlib import Path

logger = logging.getLogger(__name__)

DEFAULTS = {"method": "streaming_llm", "start_size": 4, "recent_size": 252}
HF_MODELS = ("hf", "hf-auto", "huggingface")
STREAMING_MODEL = "streaming_hf"
ID_COLUMNS = ("model", "method", "start_size", "recent_size", "dtype", "model_name")


def parse_model_args(model_args) -> dict:
    """``"pretrained=x,method=dense"`` or a dict -> dict (string values kept)."""
    if model_args is None:
        return {}
    if isinstance(model_args, dict):
        return dict(model_args)
    out = {}
    for part in str(model_args).split(","):
        if "=" in part:
            k, v = part.split("=", 1)
            out[k.strip()] = v.strip()
    return out


def _as_int(value, default: int) -> int:
    if value is None or value == "":
        return default
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return default


def _short_model(pretrained) -> str:
    """Model id for names: hub ids kept, local paths by their last component, default-model aliases unified."""
    try:
        from lm_eval_streaming.default_model import ALIASES, DEFAULT_MODEL_NAME
    except Exception:  # pragma: no cover - keeps the reader usable without the package's heavy deps
        ALIASES, DEFAULT_MODEL_NAME = frozenset({"smollm2-135m", "smollm2", "default"}), "smollm2-135m"
    if pretrained is None or str(pretrained).strip() == "":
        return DEFAULT_MODEL_NAME
    text = str(pretrained).strip().rstrip("/")
    if text.lower() in ALIASES:
        return DEFAULT_MODEL_NAME
    local = text.startswith(("/", "./", "../", "~")) or Path(text).is_dir() or text.count("/") > 1
    name = Path(text).name if local else text
    if re.fullmatch(rf"{re.escape(DEFAULT_MODEL_NAME)}-conv\d+(-[0-9a-f]+)?", name):
        return DEFAULT_MODEL_NAME
    return name


def _dtype(config: dict, args: dict) -> str:
    raw = config.get("model_dtype") or args.get("dtype") or ""
    raw = str(raw)
    return raw[len("torch."):] if raw.startswith("torch.") else raw


def run_identity(data: dict) -> dict:
    """model / method / start_size / recent_size / dtype / model_name / sha of one lm-eval results JSON."""
    config = data.get("config") or {}
    args = parse_model_args(config.get("model_args"))
    lm_model = str(config.get("model") or "")
    model = _short_model(args.get("pretrained"))
    if lm_model in HF_MODELS:
        method, start, recent, suffix = "hf (windowed)", None, None, "hf-windowed"
    elif lm_model == STREAMING_MODEL or not lm_model:
        method = str(args.get("method") or config.get("streaming_method") or DEFAULTS["method"])
        if method == "dense":
            start = recent = None
            suffix = "dense"
        else:
            start = _as_int(args.get("start_size", config.get("streaming_start_size")), DEFAULTS["start_size"])
            recent = _as_int(args.get("recent_size", config.get("streaming_recent_size")), DEFAULTS["recent_size"])
            suffix = f"{method}-s{start}-r{recent}"
    else:
        method, start, recent, suffix = lm_model, None, None, re.sub(r"[^A-Za-z0-9._-]+", "-", lm_model)
    return {"model": model, "method": method, "start_size": start, "recent_size": recent,
            "dtype": _dtype(config, args), "model_name": f"{model}__{suffix}",
            "model_sha": str(config.get("model_sha") or ""), "lm_eval_model": lm_model,
            "model_args": config.get("model_args")}


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


def load_runs(roots, exclude=None) -> list[dict]:
    """Every lm-eval run under ``roots``: identity, metrics, source and timestamp; oldest first."""
    if isinstance(roots, (str, Path)):
        roots = [roots]
    runs = []
    for root in roots:
        for path in find_result_files(root, exclude):
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as e:
                logger.warning("skipping %s: %s", path, e)
                continue
            if not isinstance(data, dict) or not isinstance(data.get("results"), dict):
                continue
            config = data.get("config") or {}
            if "model_name" in config and "model_args" not in config:  # a leaderboard file written here
                continue
            metrics = run_metrics(data)
            if not metrics:
                continue
            runs.append({**run_identity(data), "metrics": metrics, "source": str(path),
                         "timestamp": _timestamp(path), "date": data.get("date")})
    runs.sort(key=lambda r: (_num(r.get("date")), r["timestamp"], r["source"]))
    return runs


def _num(x) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return -math.inf


def comparison(runs: list[dict]) -> tuple[list[str], list[dict]]:
    """(metric columns, rows): runs of one model_name and dtype merged, the newest value winning."""
    merged: dict[tuple, dict] = {}
    for run in runs:
        key = (run["model_name"], run["dtype"])
        row = merged.setdefault(key, {k: run[k] for k in ID_COLUMNS})
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
                                                  r["start_size"] or 0, r["recent_size"] or 0, r["dtype"]))
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
    head = ["model", "method", "start", "recent", "dtype"] + shown
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row["model"], row["method"], _fmt(row["start_size"]), _fmt(row["recent_size"]), row["dtype"] or ""]
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
                "base_model": run["model"],
                "method": run["method"],
                "start_size": run["start_size"],
                "recent_size": run["recent_size"],
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
        print(f"error: not found: {', '.join(missing)}", file=sys.stderr)
        return 2
    out = build(args.dirs, args.output)
    if not out["runs"]:
        print(f"error: no lm-eval results_*.json with results under {', '.join(args.dirs)}", file=sys.stderr)
        return 1
    print(f"{len(out['runs'])} runs, {len(out['rows'])} rows -> {out['markdown']}, {out['csv']}, "
          f"{len(out['files'])} leaderboard files in {Path(args.output) / 'results'}")
    for metric in args.pivot:
        print(f"\n{metric}\n\n{pivot(out['rows'], metric)}")
    return 0


def main(argv=None) -> int:
    return run(_configure(argparse.ArgumentParser(prog="lm-eval-streaming leaderboard")).parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
