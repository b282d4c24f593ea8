"""User mistakes get one clear line, not a traceback, when they end a command-line run."""

from __future__ import annotations

import sys


def user_error_types() -> tuple[type, ...]:
    from .architectures import UnsupportedArchitecture
    from .default_model import DefaultModelUnavailable
    from .policy import StreamingArgError
    from .scoring import InsufficientMemory

    return (StreamingArgError, UnsupportedArchitecture, InsufficientMemory, DefaultModelUnavailable)


def install_excepthook() -> None:
    """Print our user-facing errors without a traceback (Python API callers still get the exception)."""
    previous = sys.excepthook
    if getattr(previous, "_lm_eval_streaming", False):
        return
    types = user_error_types()

    def hook(exc_type, exc, tb):
        if issubclass(exc_type, types):
            print(f"lm_eval_streaming: error: {exc}", file=sys.stderr)
            return
        previous(exc_type, exc, tb)

    hook._lm_eval_streaming = True
    sys.excepthook = hook
