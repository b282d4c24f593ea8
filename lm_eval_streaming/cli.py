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

from .errors import UserError

# subcommand modules, each with add_parser(subparsers) and run(args)
COMMANDS = ("benchmark", "speed", "experiment", "analysis", "plots", "leaderboard", "recall", "default_model")
# subcommand names that are not their module's name
MODULE_OF = {"analyze": "analysis", "plot": "plots", "recall-report": "recall", "prepare-model": "default_model"}

FILE_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


def _requested_module(argv: list[str]) -> str | None:
    """The module of the subcommand named in ``argv``, if it is one of ours."""
    name = next((a for a in argv if not a.startswith("-")), None)
    if name is None:
        return None
    module = MODULE_OF.get(name, name.replace("-", "_"))
    return module if module in COMMANDS else None


def build_parser(modules=COMMANDS) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lm-eval-streaming", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in modules:
        module = importlib.import_module(f"lm_eval_streaming.{name}")
        module.add_parser(sub).set_defaults(handler=module.run)
    return parser


def _subparsers(parser: argparse.ArgumentParser):
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))


def _message(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"{exc.filename}: {exc.strerror or exc}"
    return str(exc)


def run_handler(prog: str, handler, args) -> int:
    """``handler(args)``, with user errors turned into one line on stderr and exit code 2."""
    try:
        return handler(args) or 0
    except (UserError, *FILE_ERRORS) as exc:
        print(f"{prog}: error: {_message(exc)}", file=sys.stderr)
        return 2


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # Import only the named subcommand's module (some import torch); all of them for --help or a typo.
    module = _requested_module(argv)
    parser = build_parser((module,) if module else COMMANDS)
    args, extra = parser.parse_known_args(argv)
    if extra:  # reported by the subcommand's parser, so the message names the subcommand like every other
        _subparsers(parser).choices[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    return run_handler(f"lm-eval-streaming {args.command}", args.handler, args)


if __name__ == "__main__":
    sys.exit(main())
