"""``lm-eval-streaming``: benchmark, speed, experiment, analyze, leaderboard, prepare-model."""

from __future__ import annotations

import argparse
import importlib
import sys

from .policy import StreamingArgError

# subcommand modules, each with add_parser(subparsers) and run(args)
COMMANDS = ("benchmark", "speed", "experiment", "analysis", "leaderboard", "recall")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lm-eval-streaming", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        module = importlib.import_module(f"lm_eval_streaming.{name}")
        module.add_parser(sub).set_defaults(handler=module.run)
    prep = sub.add_parser("prepare-model", help="convert the embedded default model once (offline)",
                          add_help=False)
    prep.set_defaults(handler=None)
    return parser


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["prepare-model"]:
        from . import default_model

        return default_model.main(argv[1:], prog="lm-eval-streaming prepare-model")
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args) or 0
    except (StreamingArgError, ValueError, FileNotFoundError, RuntimeError, KeyError) as exc:
        print(f"lm-eval-streaming {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
