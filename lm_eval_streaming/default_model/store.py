"""The checkpoint in the cache directory: built atomically under a file lock, verified before every use.

* Atomic: a conversion is written into a temporary directory inside the cache directory, a
  manifest with the sha256 of every file is added, everything is fsynced and the directory is
  ``os.replace``-d into place. A killed conversion leaves only a temporary directory, which is
  never used and is removed by the next conversion.
* Concurrency: a :class:`filelock.FileLock` serialises conversions; a second process waits and
  then uses the first one's result.
* Verified before use: every call checks the size and sha256 of every file against the manifest
  (about 0.7 s for the 540 MB of weights). A checkpoint that fails is reported and rebuilt.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import time
from pathlib import Path
from typing import Callable, Iterator

from . import names
from .conversion import convert
from .discovery import GgufSource, explicit_source, locate_source, requested_gguf
from .progress import log, stage, warn
from .verification import fsync_dir, verify_checkpoint, write_manifest


def _remove_tree(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)


def _clean_stale(root: Path, name: str, progress: bool) -> None:
    """Remove leftovers of killed conversions; only called while holding the lock."""
    for prefix in (f".{name}.tmp-", f".{name}.trash-"):
        for stale in root.glob(prefix + "*"):
            log(f"removing leftover {stale.name} of an interrupted conversion", progress)
            _remove_tree(stale)


@contextlib.contextmanager
def _locked(lock_path: Path, progress: bool, what: str) -> Iterator[None]:
    from filelock import FileLock, Timeout

    lock = FileLock(str(lock_path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log(f"another process is preparing the {what}; waiting for it ({lock_path})", progress)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def _build(final: Path, source_for: Callable[[Path], GgufSource], progress: bool, model: str) -> None:
    """Convert into a temp dir next to ``final`` and move it into place. Holds the lock."""
    root, name = final.parent, final.name
    token = f"{os.getpid()}-{secrets.token_hex(4)}"
    tmp = root / f".{name}.tmp-{token}"
    scratch = root / f".{name}.tmp-{token}-src"
    try:
        source = source_for(scratch)
        stage("source_located")
        log(f"converting {source.path.name} ({source.origin}) into {final}", progress)
        os.mkdir(tmp)
        convert(source, tmp, progress)
        write_manifest(tmp, source, progress, model)
        stage("manifest_written")
        if final.exists() or final.is_symlink():
            trash = root / f".{name}.trash-{token}"
            os.replace(final, trash)
            _remove_tree(trash)
        stage("before_replace")
        os.replace(tmp, final)
        fsync_dir(root)
    finally:
        _remove_tree(scratch)
        if tmp.exists():
            _remove_tree(tmp)


def ensure_default_model(
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
    *,
    gguf: str | os.PathLike | None = None,
    force: bool = False,
) -> Path:
    """Return a directory holding a verified safetensors checkpoint of the default model
    (:func:`ensure_model` of ``smollm2-135m``)."""
    return ensure_model(names.DEFAULT_MODEL_NAME, cache_dir, progress, gguf=gguf, force=force)


def resolve(pretrained) -> str | None:
    """The verified checkpoint directory when ``pretrained`` names an embedded model (``None``: the default
    one), converted once if needed; None for anything else (a path or hub id, loaded as it is)."""
    entry = names.lookup(pretrained)
    return None if entry is None else str(ensure_model(entry.name))


def ensure_model(
    model: str = names.DEFAULT_MODEL_NAME,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
    *,
    gguf: str | os.PathLike | None = None,
    force: bool = False,
) -> Path:
    """Return a directory holding a verified safetensors checkpoint of the embedded ``model``.

    Converts it from the GGUF (see :mod:`.discovery` for where that is looked for) the first
    time, and whenever the cached checkpoint fails verification. ``gguf`` overrides the
    model's env var; ``force`` rebuilds even a valid checkpoint. Raises
    :class:`DefaultModelUnavailable` when no GGUF can be found.
    """
    model = names.spec(model).name
    what = "default model" if model == names.DEFAULT_MODEL_NAME else "model"
    root = names.cache_root(cache_dir)
    root.mkdir(parents=True, exist_ok=True)

    explicit = requested_gguf(gguf, model)
    if explicit is not None:
        fixed = explicit_source(explicit, root, progress, model)
        name = names.checkpoint_name(fixed.sha256, model)

        def source_for(scratch: Path) -> GgufSource:
            return fixed
    else:
        name = names.checkpoint_name(model=model)

        def source_for(scratch: Path) -> GgufSource:
            return locate_source(root, scratch, progress, model)

    final = root / name
    if not force:
        start = time.perf_counter()
        problem = verify_checkpoint(final, model)
        if problem is None:
            log(f"{what} {model}: {final} (checksums verified in "
                f"{time.perf_counter() - start:.1f} s)", progress)
            return final
        if final.exists():
            warn(f"the cached {what} failed verification: {problem}; rebuilding it")
        else:
            log(f"no converted {what} {model} in {root} yet; converting it once", progress)

    with _locked(root / f".{name}.lock", progress, what):
        stage("lock_acquired")
        if not force:
            problem = verify_checkpoint(final, model)
            if problem is None:  # another process finished it while we waited
                log(f"using the checkpoint another process just converted: {final}", progress)
                return final
        _clean_stale(root, name, progress)
        start = time.perf_counter()
        _build(final, source_for, progress, model)
        log(f"{what} {model} ready in {time.perf_counter() - start:.1f} s: {final}", progress)
        stage("done")
    return final
