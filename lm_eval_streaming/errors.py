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
