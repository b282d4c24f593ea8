"""The ``analyze`` command: which hypothesis do the results support?

``lm-eval-streaming analyze RESULTS... [--output REPORT.md] [--figures DIR] [--recall DIR...]``

Reads experiment JSONL and ``benchmark --output`` JSON files and lm-eval output folders (the project's tasks and
lm-eval's rolling perplexity tasks), mixed, old layouts included
(:func:`lm_eval_streaming.records.load_runs`; a file it cannot read gets one warning line naming it), judges the
three hypotheses for "StreamingLLM beats dense attention" (:func:`lm_eval_streaming.analysis.verdict.analyze`: compression
helps, numerical problem of the dense baseline, position extrapolation; one module per hypothesis) and writes the
markdown report (:mod:`lm_eval_streaming.analysis.report`) with the figures (:mod:`lm_eval_streaming.analysis.figures`). Every argument
is checked before any work.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

from lm_eval_streaming.errors import UserError
from lm_eval_streaming.analysis.base import TOLERANCE
from lm_eval_streaming.analysis.inputs import (check_figures_dir, check_result_files, doctor_record, doctor_section,
                                               read_results)


def _configure(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("results", nargs="+",
                        help="result files and folders, mixed: experiment JSONL, `benchmark --output` JSON, lm-eval "
                             "--output_path folders of streaming_hf perplexity runs: the streaming_ppl tasks or "
                             "lm-eval's loglikelihood_rolling tasks (with --log_samples: paired by document)")
    parser.add_argument("--output", "-o", default="-", help="report (markdown); default: stdout")
    parser.add_argument("--figures", default=None, metavar="DIR", help="write PNG figures into DIR and link them")
    parser.add_argument("--recall", nargs="+", default=None, metavar="PATH",
                        help="lm-eval --output_path folders (or results files) of the streaming_recall tasks: the "
                             "practical meaning cites the measured distances at which each method stops recalling")
    parser.add_argument("--tolerance", type=float, default=TOLERANCE,
                        help=f"NLL differences below this (nats/token) count as no change (default {TOLERANCE})")
    parser.set_defaults(func=run)
    return parser


def add_parser(subparsers) -> argparse.ArgumentParser:
    return _configure(subparsers.add_parser(
        "analyze", help="decide between the hypotheses from experiment results; write a report",
        description="Evaluate the judgement rules (compression / numerics / position extrapolation) on result "
                    "files and write a markdown report with the conclusion template."))


def _check(args) -> None:
    """Every argument, before any work."""
    from lm_eval_streaming.records import check_writable

    check_result_files(args.results)
    if not (math.isfinite(args.tolerance) and args.tolerance > 0):
        raise UserError(f"--tolerance={args.tolerance} is not allowed: expected a number > 0 (nats/token)")
    if args.output != "-":
        check_writable(args.output)
    check_figures_dir(args.figures)


def run(args) -> int:
    from lm_eval_streaming.analysis.families import critical_text
    from lm_eval_streaming.analysis.report import render_report
    from lm_eval_streaming.analysis.verdict import analyze

    _check(args)
    recall_points = []
    if args.recall:
        from lm_eval_streaming.analysis.recall import load_recall_results

        recall_points = load_recall_results(args.recall)  # a missing path: FileNotFoundError, one line
        if not recall_points:
            raise UserError(f"--recall: no streaming_recall results under {', '.join(args.recall)}")
    a = analyze(read_results(args.results, "analyze"), tolerance=args.tolerance, recall_points=recall_points)
    links = []
    if args.figures:
        from lm_eval_streaming.analysis.figures import make_figures

        figs = make_figures(a.runs, args.figures, a.tolerance)
        a.figures = [str(p) for p in figs]
        base = Path(args.output).resolve().parent if args.output != "-" else Path.cwd()
        links = [os.path.relpath(Path(p).resolve(), base) for p in figs]
    text = render_report(a, sources=args.results, figure_links=links)
    doctors = [r for r in map(doctor_record, args.results) if r is not None]
    if doctors:
        text = text.rstrip("\n") + "\n" + doctor_section(doctors)
        for r in doctors:
            print(f"  {r['summary']}", file=sys.stderr if args.output == "-" else sys.stdout)
    if args.output == "-":
        print(text)
        return 0
    out = Path(args.output)
    out.write_text(text, encoding="utf-8")
    print(f"report -> {out}" + (f" ({len(links)} figures in {args.figures})" if args.figures else ""))
    for h in a.hypotheses.values():
        print(f"  {h.label}: {h.verdict}" + (f" ({h.where or h.scope})" if h.scope else ""))
    if a.families:  # judged family by family: each one's critical point, as a multiple of its own context
        for label, fa in a.families.items():
            print(f"  {label}: {critical_text(fa)}")
        return 0
    cp = a.critical_main
    print("  critical point: " + (f"{cp.text()}; per sample: {cp.spread()}" if cp else "not reached"))
    return 0


def main(argv=None) -> int:
    from lm_eval_streaming.cli import main as cli_main  # the one error path

    return cli_main(["analyze", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
