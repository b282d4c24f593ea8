"""Loading a model for ``benchmark`` / ``experiment`` / ``speed``, with its identity for the record.

``check_model_id`` runs before any work (also in ``experiment --dry-run``); it needs no torch.
"""

from __future__ import annotations

import functools
import os
import re

from lm_eval_streaming.options import StreamingArgError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
MODEL_ID_ALLOWED = ("a Hugging Face hub id (org/name), a local checkpoint directory, or an embedded model "
                    "(smollm2-135m, gemma-3-270m)")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def canonical_model_id(model_id) -> str:
    """One checkpoint, one name: a local directory by its resolved path (``/x/m``, ``/x/m/``, ``/x/../x/m``
    and a symlink to it are one model), an embedded model's aliases by its name, a hub id as given."""
    from lm_eval_streaming import default_model

    embedded = default_model.lookup(model_id)
    if embedded is not None:
        return embedded.name
    path = os.path.expanduser(str(model_id))
    return os.path.realpath(path) if os.path.isdir(path) else str(model_id)


def files_digest(directory: str, sample: int = 1 << 20) -> str:
    """Digest of a checkpoint directory's files: names, sizes and the first and last ``sample`` bytes of each
    (all of a small file), so changed weights, config or tokenizer at one path are another model, without
    reading gigabytes."""
    import hashlib

    h = hashlib.sha256()
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        if name.startswith(".") or not os.path.isfile(path):
            continue
        size = os.path.getsize(path)
        h.update(f"{name}\0{size}\0".encode())
        with open(path, "rb") as f:
            h.update(f.read(sample))
            if size > 2 * sample:
                f.seek(size - sample)
                h.update(f.read(sample))
            elif size > sample:
                h.update(f.read())
    return h.hexdigest()[:16]


def check_model_id(model_id, arg: str = "model_id") -> str:
    """The model id in canonical form (:func:`canonical_model_id`), or a one-line error: a local path that
    does not exist, a directory that is not a checkpoint with a tokenizer, or a string that is neither a
    path nor a hub id."""
    from lm_eval_streaming import default_model

    if default_model.lookup(model_id) is not None:
        return canonical_model_id(model_id)
    if not isinstance(model_id, str) or not model_id.strip():
        raise StreamingArgError(f"{arg}={model_id!r} is not allowed: expected {MODEL_ID_ALLOWED}")
    path = os.path.expanduser(model_id)
    if os.path.isdir(path):
        if not os.path.exists(os.path.join(path, "config.json")):
            raise StreamingArgError(f"{arg}={model_id!r} is a directory without config.json: expected {MODEL_ID_ALLOWED}")
        if not any(os.path.exists(os.path.join(path, f)) for f in TOKENIZER_FILES):
            raise StreamingArgError(f"{arg}={model_id!r} has no tokenizer files ({', '.join(TOKENIZER_FILES)})")
        return canonical_model_id(model_id)
    if os.path.exists(path) or not _HUB_ID.match(model_id):
        raise StreamingArgError(f"{arg}={model_id!r}: no such checkpoint directory: expected {MODEL_ID_ALLOWED}")
    return model_id


HUB_PROBE_TIMEOUT_S = 3.0


def _is_hub_id(model_id) -> bool:
    from lm_eval_streaming import default_model

    return (isinstance(model_id, str) and default_model.lookup(model_id) is None
            and not os.path.isdir(os.path.expanduser(model_id)) and bool(_HUB_ID.match(model_id)))


def check_hub_access(model_id, arg: str = "model_id", revision: str | None = None) -> None:
    """Before a hub id is loaded: when the hub cannot be reached, fail in seconds (huggingface_hub retries for
    about a minute) unless the model is in the local cache, which is then used offline (HF_HUB_OFFLINE=1 for this
    process, one line on stderr). Nothing to do for a local path, the embedded model, or HF_HUB_OFFLINE set."""
    if not _is_hub_id(model_id):
        return
    import socket
    import sys
    from urllib.parse import urlsplit

    import huggingface_hub
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return  # transformers reads the local cache only and says so itself
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return  # the hub is reached through a proxy: a direct connection says nothing
    url = urlsplit(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)),
                                 timeout=HUB_PROBE_TIMEOUT_S).close()
        return
    except OSError as exc:
        reason = f"{type(exc).__name__}: {exc}"
    cached = huggingface_hub.try_to_load_from_cache(model_id, "config.json", revision=revision)
    if isinstance(cached, str):
        os.environ["HF_HUB_OFFLINE"] = "1"
        constants.HF_HUB_OFFLINE = True
        print(f"lm_eval_streaming: {constants.ENDPOINT} cannot be reached ({reason}); {model_id} is loaded from the "
              f"local cache (HF_HUB_OFFLINE=1)", file=sys.stderr)
        return
    raise StreamingArgError(
        f"{arg}={model_id!r}: the Hugging Face hub ({constants.ENDPOINT}) cannot be reached ({reason}) and the model "
        f"is not in the local cache. Offline, set HF_HUB_OFFLINE=1 and name a local checkpoint directory, or use "
        f"the embedded default model smollm2-135m (what runs when no model is named)")


def model_family(model_id: str) -> str:
    """The name without org and size: ``EleutherAI/pythia-6.9b-deduped`` -> ``pythia``,
    ``smollm2-135m`` -> ``smollm2``. Sizes are compared only within one family (and one trained context)."""
    name = os.path.basename(os.path.normpath(model_id)).lower()
    return re.split(r"[-_](\d+(\.\d+)?[mbk])(\b|[-_])", name)[0] or name


@functools.lru_cache(maxsize=None)
def model_path(model_id: str | None) -> str:
    """Where from_pretrained loads from (an embedded model is converted once, then verified)."""
    from lm_eval_streaming import default_model

    return default_model.resolve(model_id) or model_id


def _load_error(model_id, e: OSError) -> StreamingArgError:
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return StreamingArgError(f"model_id={model_id!r} cannot be loaded: {first}")


def load_tokenizer(model_id: str | None):
    from transformers import AutoTokenizer

    model_id = check_model_id(model_id)
    check_hub_access(model_id)
    try:
        return AutoTokenizer.from_pretrained(model_path(model_id))
    except OSError as e:
        raise _load_error(model_id, e) from None


def load_model(model_id: str | None, dtype: str = "float32", device: str | None = None, method: str = "dense",
               tokenizer=None, methods=()):
    """(model, tokenizer); the embedded default model offline. The architecture is checked against every
    method from the config, before the weights load. The device falls back with a warning when the
    requested one is not here (as on the lm_eval path)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from lm_eval_streaming.core.architectures import check_supported
    from lm_eval_streaming.options import check_dtype, resolve_device, torch_dtype
    from lm_eval_streaming.core.methods import policy_for

    check_dtype(dtype)
    model_id = check_model_id(model_id)
    check_hub_access(model_id)
    device = resolve_device(device)
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(model_id)
    try:
        config = AutoConfig.from_pretrained(model_path(model_id))
        for m in dict.fromkeys([method, *methods]):
            check_supported(config, policy_for(m))
        model = AutoModelForCausalLM.from_pretrained(model_path(model_id), dtype=torch_dtype(dtype))
    except OSError as e:
        raise _load_error(model_id, e) from None
    return model.to(device).eval(), tokenizer


def model_identity(model, model_id: str) -> dict:
    """Run fields naming the model: revision (hub commit if known), family, parameter count."""
    return {
        "model_revision": getattr(model.config, "_commit_hash", None),
        "model_family": model_family(model_id),
        "model_params": float(sum(p.numel() for p in model.parameters())),
    }
