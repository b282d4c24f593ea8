"""The ``conformance`` command (``benchmark/conformance.py`` holds the checks; nothing heavy loads for --help)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lm_eval_streaming.errors import UserError

DESCRIPTION = ("Conformance table: every causal-LM type of the installed transformers, built tiny, scored by every "
               "path of the project against its own forward (exact / refused / WRONG / crash). Exits 1 when any cell "
               "is WRONG or crash.")


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "conformance", help="check every causal-LM type of the installed transformers against its own forward",
        description=DESCRIPTION)
    parser.add_argument("--output", default="docs/conformance.md", help="markdown table to write")
    parser.add_argument("--types", nargs="+", help="only these model types (default: every registered one)")
    return parser


def run(args) -> int:
    from lm_eval_streaming.benchmark.conformance import Row, run_all, table
    from lm_eval_streaming.benchmark.tiny_models import causal_lm_types

    known = causal_lm_types()
    unknown = [t for t in args.types or () if t not in known]
    if unknown:
        raise UserError(f"--types {unknown[0]!r} is not a causal-LM model type of this transformers: "
                        f"expected one of {', '.join(known)}")

    def progress(row: "Row") -> None:
        state = f"not built ({row.not_built})" if row.not_built else ", ".join(
            f"{m}: {c.short()}" for m, c in row.cells.items())
        print(f"{row.model_type} ({row.seconds:.1f}s): {state}", file=sys.stderr, flush=True)

    rows = run_all(args.types, progress)
    command = "lm-eval-streaming conformance --output " + str(args.output)
    if args.types:
        command += " --types " + " ".join(args.types)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(table(rows, command), encoding="utf-8")
    bad = [f"{r.model_type} ({', '.join(r.failures)})" for r in rows if r.failures]
    print(f"{len(rows)} types -> {args.output}; WRONG or crash: {', '.join(bad) or 'none'}")
    return 1 if bad else 0
