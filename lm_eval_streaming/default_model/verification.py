"""Checksums: the manifest (size and sha256 of every file) written with a checkpoint and checked before every use."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

from . import names
from .progress import timed

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = 1
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(1 << 23)
        view = memoryview(buf)
        while n := f.readinto(buf):
            digest.update(view[:n])
    return digest.hexdigest()


def fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def fsync_dir(path: Path) -> None:
    if os.name != "posix":  # directories cannot be opened for fsync on Windows
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _files_under(directory: Path) -> list[str]:
    return sorted(
        p.relative_to(directory).as_posix()
        for p in directory.rglob("*")
        if p.is_file() and p.name != MANIFEST_NAME
    )


def verify_checkpoint(directory: str | os.PathLike, model: str = names.DEFAULT_MODEL_NAME) -> str | None:
    """``None`` when ``directory`` holds a complete checkpoint of ``model`` whose files match its
    manifest (size and sha256 of every file), else a sentence saying what is wrong."""
    directory = Path(directory)
    expected = names.spec(model).conversion_version
    if not directory.is_dir():
        return f"{directory} does not exist"
    manifest_path = directory / MANIFEST_NAME
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        files = manifest["files"]
        if manifest.get("format") != MANIFEST_FORMAT:
            return f"manifest format {manifest.get('format')!r}, expected {MANIFEST_FORMAT}"
        if manifest.get("model") != names.spec(model).name:
            return f"the manifest is of model {manifest.get('model')!r}, expected {names.spec(model).name!r}"
        if manifest.get("conversion_version") != expected:
            return f"conversion version {manifest.get('conversion_version')!r}, expected {expected}"
        entries = [(str(name), int(e["size"]), str(e["sha256"])) for name, e in files.items()]
    except FileNotFoundError:
        return f"{manifest_path} is missing"
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        return f"{manifest_path} is unreadable ({type(exc).__name__}: {exc})"
    missing = [name for name in REQUIRED_FILES if name not in files]
    if missing:
        return f"manifest lists no {', '.join(missing)}"
    # Sizes first: a truncated file fails without hashing anything.
    for name, size, _ in entries:
        path = directory / name
        if Path(name).is_absolute() or ".." in Path(name).parts:
            return f"manifest names a file outside the checkpoint: {name!r}"
        try:
            actual = path.stat().st_size
        except OSError:
            return f"{name} is missing"
        if actual != size:
            return f"{name} has {actual} bytes, the manifest says {size}"
    for name, _, sha in entries:
        try:
            actual_sha = sha256_file(directory / name)
        except OSError as exc:
            return f"{name} is unreadable ({exc})"
        if actual_sha != sha:
            return f"{name} has sha256 {actual_sha}, the manifest says {sha}"
    return None


def write_manifest(directory: Path, source, progress: bool, model: str = names.DEFAULT_MODEL_NAME) -> dict:
    """Fsync every file of ``directory`` and record its size and sha256 (``source``: a discovery.GgufSource)."""
    import torch
    import transformers

    files_ = _files_under(directory)
    total = sum((directory / n).stat().st_size for n in files_)
    with timed(f"hashing {len(files_)} files ({total / 1e6:.0f} MB)", progress):
        files = {}
        for name in files_:
            path = directory / name
            fsync_file(path)
            files[name] = {"size": path.stat().st_size, "sha256": sha256_file(path)}
    manifest = {
        "format": MANIFEST_FORMAT,
        "model": names.spec(model).name,
        "conversion_version": names.spec(model).conversion_version,
        "source": {"origin": source.origin, "file": source.path.name, "sha256": source.sha256},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "files": files,
    }
    path = directory / MANIFEST_NAME
    with open(path, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    fsync_dir(directory)
    return manifest
