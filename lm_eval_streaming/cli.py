"""lm-eval-streaming: benchmark, speed, experiment, analyze, plot, leaderboard, recall-report, prepare-model.

Every subcommand goes through one error path: a user error (:class:`errors.UserError`, or a
named file that is missing or unreadable) ends the run with one line
``lm-eval-streaming <cmd>: error: <message>`` and exit code 2, like argparse's own errors;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from lm_eval_streaming.errors import run_handler

# subcommand name -> its module (each with add_parser(subparsers) and run(args)); imported only when named
COMMANDS = {
    "benchmark": "benchmark.command",
    "speed": "benchmark.speed",
    "experiment": "experiment.runner",
    "analyze": "analysis.command",
    "plot": "analysis.figures",
    "leaderboard": "leaderboard.command",
    "recall-report": "analysis.recall_report",
    "prepare-model": "default_model.cli",
}


def _requested(argv: list[str]) -> str | None:
    """The subcommand named in ``argv``, if it is one of ours."""
    name = next((a for a in argv if not a.startswith("-")), None)
    return name if name in COMMANDS else None


def build_parser(names=tuple(COMMANDS)) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lm-eval-streaming", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in names:
        module = importlib.import_module(f"lm_eval_streaming.{COMMANDS[name]}")
        module.add_parser(sub).set_defaults(handler=module.run)
    return parser


def _subparsers(parser: argparse.ArgumentParser):
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # Import only the named subcommand's module (some import torch); all of them for --help or a typo.
    name = _requested(argv)
    parser = build_parser((name,) if name else tuple(COMMANDS))
    args, extra = parser.parse_known_args(argv)
    if extra:  # reported by the subcommand's parser, so the message names the subcommand like every other
        _subparsers(parser).choices[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    return run_handler(f"lm-eval-streaming {args.command}", args.handler, args)


if __name__ == "__main__":
    sys.exit(main())
