"""Progress lines on stderr, and the stage hook tests use to kill or fail a conversion midway."""

from __future__ import annotations

import contextlib
import sys
import time
from typing import Callable, Iterator

# Called with the name of each conversion stage ("lock_acquired", "source_located", "loaded",
# "weights_written", "checked", "manifest_written", "before_replace", "done").
_STAGE_HOOK: Callable[[str], None] | None = None


def log(msg: str, progress: bool = True) -> None:
    if progress:
        print(f"[lm-eval-streaming] {msg}", file=sys.stderr, flush=True)


def warn(msg: str) -> None:
    print(f"[lm-eval-streaming] WARNING: {msg}", file=sys.stderr, flush=True)


def stage(name: str) -> None:
    if _STAGE_HOOK is not None:
        _STAGE_HOOK(name)


@contextlib.contextmanager
def timed(what: str, progress: bool) -> Iterator[None]:
    log(f"{what} ...", progress)
    start = time.perf_counter()
    yield
    log(f"{what}: done in {time.perf_counter() - start:.1f} s", progress)
