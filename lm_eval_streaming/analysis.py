"""Which hypothesis do the experiment results support?

``lm-eval-streaming analyze RESULTS.jsonl... [--output REPORT.md] [--figures DIR]``

Reads result files written by ``lm-eval-streaming experiment`` (one row per
dense baseline / method / recent size, see :func:`lm_eval_streaming.experiment.load_results`)
and checks the three hypotheses for "StreamingLLM beats dense attention" against
the judgement rules, each criterion with the numbers it rests on:

* **compression improves prediction**: the advantage on every model size, every
  device/dtype, at short (within the trained context) and long lengths, with an
  interior optimum over cache sizes;
* **numerical problem of the baseline**: non-finite or huge logits / attention
  scores in the dense diagnostics (required), the advantage only in large
  models, growing with length, a bigger cache approaching dense (possibly absent
  on CUDA: reported, not required);
* **position extrapolation**: dense NLL jumps past 1.0x the trained context
  relative to streaming (required), streaming stays flat there, no advantage
  within the trained context, window-only (no sinks) degrades, dtype and device
  change little, no non-finite values.

Each criterion passes, fails or cannot be decided from the data (for instance a
single model size); a hypothesis is *supported* when its key criterion passes
and none fails, *ruled out* when any fails, and *undecided* otherwise.

"Advantage" is ΔNLL = NLL(streaming) - NLL(dense) (nats/token, paired on the same
samples, ``delta_nll_vs_dense`` and its CI): significant when the CI excludes 0,
absent when the point estimate is >= 0. Differences below ``--tolerance`` (0.05
nats by default) count as "no change".
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .report import render_report  # noqa: F401  (re-exported)
from .verdict import analyze  # noqa: F401
from .verdict_base import (FAIL, HUGE_ATTN_SCORE, HUGE_LOGIT, HW_TOLERANCE, OPEN, PASS, REF_RECENT,  # noqa: F401
                           RULED_OUT, SUPPORTED, TOLERANCE, UNDECIDED, Analysis, Criterion, Hypothesis, model_params)


# ------------------------------------------------------------------ CLI
def _configure(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("results", nargs="+",
                        help="result files: experiment JSONL and/or `benchmark --output` JSON, mixed")
    parser.add_argument("--output", "-o", default="-", help="report (markdown); default: stdout")
    parser.add_argument("--figures", default=None, metavar="DIR", help="write PNG figures into DIR and link them")
    parser.add_argument("--recall", nargs="+", default=None, metavar="DIR",
                        help="lm-eval --output_path folders of the streaming_recall tasks: the practical meaning "
                             "cites the measured distances at which each method stops recalling")
    parser.add_argument("--tolerance", type=float, default=TOLERANCE,
                        help=f"NLL differences below this (nats/token) count as no change (default {TOLERANCE})")
    parser.set_defaults(func=run)
    return parser


def add_parser(subparsers) -> argparse.ArgumentParser:
    return _configure(subparsers.add_parser(
        "analyze", help="decide between the hypotheses from experiment results; write a report",
        description="Evaluate the judgement rules (compression / numerics / position extrapolation) on result "
                    "JSONL files and write a markdown report with the conclusion template."))


def run(args) -> int:
    from lm_eval_streaming.errors import UserError
    from lm_eval_streaming.experiment.flat import flat_row
    from lm_eval_streaming.records import load_runs

    missing = [p for p in args.results if not Path(p).is_file()]
    if missing:
        raise UserError(f"result file(s) not found: {', '.join(missing)}")
    # benchmark --output JSON and experiment JSONL, mixed; one line per file that cannot be read
    runs = load_runs(args.results, warn=lambda msg: print(f"lm-eval-streaming analyze: warning: {msg}",
                                                          file=sys.stderr))
    rows = [flat_row(run, row) for run in runs for row in run.rows]
    if not rows:
        raise UserError(f"no scored runs in {', '.join(args.results)}")
    recall_points = []
    if args.recall:
        from lm_eval_streaming.recall import load_recall_results

        recall_points = load_recall_results(args.recall)
    a = analyze(rows, tolerance=args.tolerance, recall_points=recall_points)
    links = []
    if args.figures:
        from lm_eval_streaming.plots import make_figures

        figs = make_figures(a.rows, args.figures)
        a.figures = [str(p) for p in figs]
        base = Path(args.output).resolve().parent if args.output != "-" else Path.cwd()
        links = [os.path.relpath(Path(p).resolve(), base) for p in figs]
    text = render_report(a, sources=args.results, figure_links=links)
    if args.output == "-":
        print(text)
    else:
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")
        print(f"report -> {out}" + (f" ({len(links)} figures in {args.figures})" if args.figures else ""))
        for k, h in a.hypotheses.items():
            print(f"  {h.label}: {h.verdict}")
    return 0


def main(argv=None) -> int:
    from .cli import main as cli_main  # the one error path

    return cli_main(["analyze", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
