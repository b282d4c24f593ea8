"""lm-eval-streaming: benchmark, speed, experiment, analyze, plot, leaderboard, recall-report, prepare-model,
conformance, doctor.

Every subcommand goes through one error path: a user error (:class:`errors.UserError`, or a
named file that is missing or unreadable) ends the run with one line
``lm-eval-streaming <cmd>: error: <message>`` and exit code 2, like argparse's own errors;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import re
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
    "conformance": "benchmark.conformance_command",
    "doctor": "doctor.command",
}


_ROLE = re.compile(r":(?:mod|func|class|meth|attr|data|obj|exc|ref|doc):`~?([^`]+)`")
_CODE = re.compile(r"``([^`]+)``|`([^`\n]+)`")


def plain(text: str) -> str:
    """Help text without reST / markdown markup (``x``, `x`, :mod:`x` -> x)."""
    return _CODE.sub(lambda m: m.group(1) or m.group(2), _ROLE.sub(r"\1", text or ""))


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Plain text; descriptions keep their lines; every option's default stated once: appended as
    "(default: X)" unless its help already names one (flags and options without a default get none);
    an option shows its one spelling (the other is accepted as an alias)."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if (not action.option_strings or default is None or default is argparse.SUPPRESS
                or isinstance(default, bool) or "default" in text.lower()):
            return text
        return f"{text} (default: %(default)s)" if text else "(default: %(default)s)"

    def _expand_help(self, action):
        return plain(super()._expand_help(action))

    def _format_text(self, text):
        return super()._format_text(plain(text))

    def _format_action_invocation(self, action):
        aliases = getattr(action, "spelling_aliases", ())
        if aliases:
            action = copy.copy(action)
            action.option_strings = [o for o in action.option_strings if o not in aliases]
        return super()._format_action_invocation(action)


def _spellings(name: str) -> tuple[str, str]:
    """(shown, alias) of a long option: ``--max_tokens`` shown and ``--max-tokens`` accepted, or the reverse
    for an option declared with dashes (one style in the help, lm-eval's underscores; both spellings work)."""
    body = name[2:]
    return f"--{body.replace('-', '_')}", f"--{body.replace('_', '-')}"


class Parser(argparse.ArgumentParser):
    """argparse with the project's help style (:class:`HelpFormatter`, also for every subcommand: argparse
    creates subparsers of the parent's class) and both spellings of every long option."""

    def __init__(self, *args, **kwargs):
        kwargs["formatter_class"] = HelpFormatter  # one style, whatever a subcommand asks for
        super().__init__(*args, **kwargs)

    def add_argument(self, *names, **kwargs):
        if not names or not all(n.startswith("-") for n in names):
            return super().add_argument(*names, **kwargs)
        shown, aliases = [], []
        for n in names:
            if n.startswith("--") and ("_" in n[2:] or "-" in n[2:]):
                canonical, alias = _spellings(n)
                shown.append(canonical)
                aliases += [a for a in {n, alias} - {canonical} if a not in self._option_string_actions]
            else:
                shown.append(n)
        if "dest" not in kwargs and any(n.startswith("--") for n in names):
            kwargs["dest"] = next(n for n in names if n.startswith("--"))[2:].replace("-", "_")
        action = super().add_argument(*dict.fromkeys(shown + aliases), **kwargs)
        action.spelling_aliases = tuple(a for a in aliases if a not in shown)
        return action


def _requested(argv: list[str]) -> str | None:
    """The subcommand named in ``argv``, if it is one of ours."""
    name = next((a for a in argv if not a.startswith("-")), None)
    return name if name in COMMANDS else None


def _summary(name: str) -> str | None:
    """The ``help=`` a command's module gives its subparser, read from its source: the command list needs
    no import (some commands import torch)."""
    import ast
    import importlib.util

    spec = importlib.util.find_spec(f"lm_eval_streaming.{COMMANDS[name]}")
    try:
        tree = ast.parse(open(spec.origin, encoding="utf-8").read())
    except (OSError, SyntaxError, TypeError):
        return None
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_parser" and node.args
                and isinstance(node.args[0], ast.Constant) and node.args[0].value == name):
            for kw in node.keywords:
                if kw.arg == "help" and isinstance(kw.value, ast.Constant):
                    return kw.value.value
    return None


def build_parser(names=tuple(COMMANDS), listing_only: bool = False) -> argparse.ArgumentParser:
    """The CLI's parser with the subcommands ``names``; ``listing_only``: each subcommand only named with its
    one-line help (what ``lm-eval-streaming --help`` and an unknown command need), nothing imported."""
    parser = Parser(prog="lm-eval-streaming", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in names:
        if listing_only:
            sub.add_parser(name, help=_summary(name))
            continue
        module = importlib.import_module(f"lm_eval_streaming.{COMMANDS[name]}")
        module.add_parser(sub).set_defaults(handler=module.run)
    return parser


def _subparsers(parser: argparse.ArgumentParser):
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # Import only the named subcommand's module (some import torch); none for --help or a typo.
    name = _requested(argv)
    parser = build_parser((name,)) if name else build_parser(listing_only=True)
    args, extra = parser.parse_known_args(argv)
    if extra:  # reported by the subcommand's parser, so the message names the subcommand like every other
        _subparsers(parser).choices[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    return run_handler(f"lm-eval-streaming {args.command}", args.handler, args)


if __name__ == "__main__":
    sys.exit(main())
