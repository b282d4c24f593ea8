"""User mistakes get one clear line, not a traceback, when they end a command-line run.

:class:`UserError` is the base of every error caused by the user's input or environment (a bad
argument, a missing file, a model the plugin cannot run, too little memory); the modules that
detect them define subclasses. This module imports nothing from the package, so any module can
use it.
"""

from __future__ import annotations

import sys


class UserError(Exception):
    """The user's input or environment does not allow the run; the message says what and what is allowed."""


def install_excepthook() -> None:
    """Print our user-facing errors without a traceback (Python API callers still get the exception)."""
    previous = sys.excepthook
    if getattr(previous, "_lm_eval_streaming", False):
        return

    def hook(exc_type, exc, tb):
        if issubclass(exc_type, UserError):
            print(f"lm_eval_streaming: error: {exc}", file=sys.stderr)
            return
        previous(exc_type, exc, tb)

    hook._lm_eval_streaming = True
    sys.excepthook = hook


FILE_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


def _message(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"{exc.filename}: {exc.strerror or exc}"
    return str(exc)


def run_handler(prog: str, handler, args) -> int:
    """``handler(args)``, with user errors (and a named file that is missing or unreadable) turned into one line
    ``<prog>: error: <message>`` on stderr and exit code 2; anything else is a bug and keeps its traceback."""
    try:
        return handler(args) or 0
    except (UserError, *FILE_ERRORS) as exc:
        print(f"{prog}: error: {_message(exc)}", file=sys.stderr)
        return 2
