"""The ``recall-report`` command: the recall table, stop distances, passkey rows and figure of
``streaming_recall_<D>`` / ``streaming_passkey_<D>`` results (the data and the stop rule: :mod:`.recall`)."""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict
from pathlib import Path

from lm_eval_streaming.analysis.figures import new_figure, save_figure
from lm_eval_streaming.analysis.recall import (DEFAULT_TRAINED_CONTEXT, RECALL_MIN_GAIN, STOP_RULE, select_points,
                                               describe_label, gain_lower_bound, labels, load_passkey_results,
                                               load_recall_results, practical_meaning, stop_distance)
from lm_eval_streaming.errors import UserError
from lm_eval_streaming.options import StreamingArgError


def _fmt(x, se=None, digits=2) -> str:
    if x is None:
        return "n/a"
    text = f"{x:.{digits}f}"
    if se is not None and math.isfinite(se):
        text += f" ± {se:.{digits}f}"
    return text


def table(points) -> str:
    """Markdown: recall_gain per distance and label, then the second copy's NLL / exact / top-1 accuracy."""
    pairs = labels(points)
    distances = sorted({p.distance for p in points})
    by_key = {(p.model, p.label, p.distance): p for p in points}
    multi = len({m for m, _ in pairs}) > 1
    heads = [f"{describe_label(lab)}{' ' + m if multi else ''}" for m, lab in pairs]
    sep = "|---|" + "---|" * len(pairs)
    gain = ["| D | " + " | ".join(heads) + " |", sep]
    detail = ["| D | " + " | ".join(heads) + " |", sep]
    for d in distances:
        cells = [by_key.get((m, lab, d)) for m, lab in pairs]
        gain.append(f"| {d} | " + " | ".join(
            "-" if p is None else f"{_fmt(p.recall_gain, p.recall_gain_stderr)} (n={p.n_docs})" for p in cells) + " |")
        detail.append(f"| {d} | " + " | ".join(
            "-" if p is None else f"{_fmt(p.recall_nll)} / {_fmt(p.recall_exact)} / {_fmt(p.recall_acc, digits=3)}"
            for p in cells) + " |")
    return ("recall_gain (nats per Pythia token, ± standard error over documents):\n\n" + "\n".join(gain)
            + "\n\nsecond copy: recall_nll / recall_exact / recall_acc (n/a: not reported by that model):\n\n"
            + "\n".join(detail))


def passkey_table(rows) -> str:
    """Markdown: passkey exact match per distance and label, overall and by depth."""
    if not rows:
        return ""
    lines = ["| setting | D | exact_match | " + " | ".join(f"depth {d}%" for d in sorted(
        {d for r in rows for d in r["by_depth"]})) + " | n |"]
    depths = sorted({d for r in rows for d in r["by_depth"]})
    lines.append("|---|---|---|" + "---|" * len(depths) + "---|")
    for r in sorted(rows, key=lambda r: (r["model"], r["label"] != "dense", r["label"], r["distance"])):
        cells = [_fmt(*r["by_depth"][d]) if d in r["by_depth"] else "-" for d in depths]
        lines.append(f"| {describe_label(r['label'])} | {r['distance']} | "
                     f"{_fmt(r['exact_match'], r['exact_match_stderr'])} | " + " | ".join(cells) + f" | {r['n_docs']} |")
    return "\n".join(lines)


def plot(points, path, trained_context: int | None = DEFAULT_TRAINED_CONTEXT) -> Path:
    """recall_gain vs distance (log x), one line per label, with 95% t-intervals,
    each streaming cache size and the trained context as vertical lines."""
    fig, ax = new_figure()
    caches = set()
    for model, label in labels(points):
        mine = select_points(points, label, model)
        xs = [p.distance for p in mine]
        ys = [p.recall_gain for p in mine]
        errs = [(gain_lower_bound(p) if p.recall_gain_stderr is not None else p.recall_gain) for p in mine]
        yerr = [y - lo for y, lo in zip(ys, errs)]
        style = {"color": "black", "linestyle": "--"} if label == "dense" else {}
        ax.errorbar(xs, ys, yerr=yerr, marker="o", capsize=3, label=describe_label(label), **style)
        if mine[0].cache_size:
            caches.add(mine[0].cache_size)
    for c in sorted(caches):
        ax.axvline(c, color="tab:gray", linestyle=":", linewidth=1.2)
        ax.annotate(f"cache {c}", (c, 0.02), xycoords=("data", "axes fraction"), rotation=90, va="bottom",
                    ha="right", fontsize=8, color="tab:gray")
    if trained_context:
        ax.axvline(trained_context, color="tab:red", linestyle="-.", linewidth=1.2)
        ax.annotate(f"trained context {trained_context} (model tokens)", (trained_context, 0.02),
                    xycoords=("data", "axes fraction"),
                    rotation=90, va="bottom", ha="right", fontsize=8, color="tab:red")
    ax.axhline(RECALL_MIN_GAIN, color="tab:green", linewidth=0.8, alpha=0.6, label=f"recall threshold {RECALL_MIN_GAIN}")
    ax.set_xscale("log", base=2)
    ticks = sorted({p.distance for p in points})
    ax.set_xticks(ticks, [str(t) for t in ticks], fontsize=8)
    ax.minorticks_off()
    ax.set_xlabel("distance D between the two copies (Pythia tokens)")
    ax.set_ylabel("recall_gain, nats per Pythia token (95% t-interval)")
    ax.set_title("What eviction forgets: NLL(first copy) - NLL(second copy)", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower left", bbox_to_anchor=(0.25, 0.02))
    return save_figure(fig, Path(path))


def write_report(points, output, trained_context: int | None = DEFAULT_TRAINED_CONTEXT, passkey=()) -> dict:
    """``<output>/recall_results.md`` (with the passkey rows, if any), ``recall_points.json`` and
    ``recall_gain_vs_distance.png``."""
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    figure = plot(points, out / "recall_gain_vs_distance.png", trained_context)
    stops = [f"- {describe_label(lab)} ({m}): stop distance "
             f"{stop_distance(points, lab, m) or 'none (recalls at every measured distance)'}"
             for m, lab in labels(points)]
    md = ("# Recall: what eviction forgets\n\nWritten by `lm-eval-streaming recall-report`. recall_gain = "
          "NLL(first copy) - NLL(second copy); n = documents.\n\n"
          f"{table(points)}\n\n" + "\n".join(stops) + f"\n\nRule: {STOP_RULE}.\n\n"
          f"{practical_meaning(points)}\n\n![recall_gain vs distance]({figure.name})\n")
    if passkey:
        md += f"\n## Passkey (exact match, ± standard error)\n\n{passkey_table(passkey)}\n"
    (out / "recall_results.md").write_text(md, encoding="utf-8")
    (out / "recall_points.json").write_text(json.dumps([asdict(p) for p in points], indent=1) + "\n",
                                            encoding="utf-8")
    return {"markdown": out / "recall_results.md", "figure": figure}


def _configure(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("dirs", nargs="+", help="lm-eval --output_path folders or results_*.json files")
    parser.add_argument("--output", default="docs/recall", help="folder for the table, points and figure")
    parser.add_argument("--trained_context", type=int, default=DEFAULT_TRAINED_CONTEXT,
                        help="trained context drawn in the figure (default: SmolLM2-135M's 8192; 0 = none)")
    return parser


def add_parser(subparsers) -> argparse.ArgumentParser:
    return _configure(subparsers.add_parser(
        "recall-report", help="table, stop distances and figure of streaming_recall results",
        description="Read lm-eval results of the streaming_recall_<D> tasks and write recall_results.md, "
                    "recall_points.json and recall_gain_vs_distance.png."))


def run(args) -> int:
    if args.trained_context < 0:
        raise StreamingArgError(f"--trained_context={args.trained_context} is not allowed: expected an integer >= 0")
    points = load_recall_results(args.dirs)
    if not points:
        raise UserError(f"no streaming_recall_<D> results under {', '.join(args.dirs)}")
    passkey = load_passkey_results(args.dirs)
    out = write_report(points, args.output, args.trained_context or None, passkey)
    print(table(points))
    if passkey:
        print(f"\npasskey\n\n{passkey_table(passkey)}")
    print(f"\n{practical_meaning(points)}\n\n-> {out['markdown']}, {out['figure']}")
    return 0


def main(argv=None) -> int:
    from lm_eval_streaming.cli import main as cli_main

    return cli_main(["recall-report", *(sys.argv[1:] if argv is None else argv)])
