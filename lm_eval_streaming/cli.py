"""lm-eval-streaming: benchmark, speed, experiment, analyze, leaderboard, recall-report, prepare-model.

Every subcommand goes through one error path: a user error (:class:`errors.UserError`, or a
named file that is missing or unreadable) ends the run with one line
``lm-eval-streaming <cmd>: error: <message>`` and exit code 2, like argparse's own errors;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .errors import user_error_types

# subcommand modules, each with add_parser(subparsers) and run(args)
COMMANDS = ("benchmark", "speed", "experiment", "analysis", "leaderboard", "recall", "default_model")

FILE_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)
# Transitional, until experiment.ConfigError, textcut's errors and recall's argument check subclass
# UserError (/work/notes/requests-C.md): a ValueError still ends a subcommand with one line.
_LEGACY = (ValueError,)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lm-eval-streaming", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        module = importlib.import_module(f"lm_eval_streaming.{name}")
        module.add_parser(sub).set_defaults(handler=module.run)
    return parser


def _message(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"{exc.filename}: {exc.strerror or exc}"
    return str(exc)


def run_handler(prog: str, handler, args) -> int:
    """``handler(args)``, with user errors turned into one line on stderr and exit code 2."""
    try:
        return handler(args) or 0
    except user_error_types() + FILE_ERRORS + _LEGACY as exc:
        print(f"{prog}: error: {_message(exc)}", file=sys.stderr)
        return 2


def main(argv=None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    return run_handler(f"lm-eval-streaming {args.command}", args.handler, args)


if __name__ == "__main__":
    sys.exit(main())
