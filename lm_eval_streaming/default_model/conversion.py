"""GGUF -> float32 safetensors checkpoint, checked against the GGUF-loaded model.

Weights are stored only as safetensors (exactly the dequantized values; the tied ``lm_head`` is
stored once, as ``model.embed_tokens.weight``). Every conversion reloads what it wrote and checks
that the state dict, the tokenizer's ids and the logits equal those of the GGUF-loaded model exactly.
"""

from __future__ import annotations

import contextlib
import copy
import os
import stat
from pathlib import Path
from typing import Iterator

from .discovery import GgufSource
from .progress import stage, timed

# Text used to check a conversion (tokenizer ids and logits must match exactly).
_CHECK_TEXT = "The quick brown fox jumps over the lazy dog. <|im_start|>user\nHello, world! 1234"


class ConversionError(RuntimeError):
    """The converted checkpoint does not reproduce the GGUF-loaded model."""


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


def _check_reload(model, tokenizer, out_dir: Path) -> None:
    """Raise ConversionError unless ``out_dir`` reloads to the same tokenizer ids, weights and logits."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

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


def convert(source: GgufSource, out_dir: Path, progress: bool) -> None:
    """Dequantize ``source`` into ``out_dir`` (config, tokenizer, model.safetensors) and check the result."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src_dir, src_name = str(source.path.parent), source.path.name
    with _quiet_transformers(progress), torch.inference_mode():
        with timed("reading the tokenizer from the GGUF", progress):
            tokenizer = AutoTokenizer.from_pretrained(src_dir, gguf_file=src_name, local_files_only=True)
        with timed("dequantizing the GGUF weights", progress):
            model = AutoModelForCausalLM.from_pretrained(
                src_dir, gguf_file=src_name, local_files_only=True, dtype=torch.float32
            )
            model.eval()
        stage("loaded")

        config = _clean_config(model)
        state = _storable_state_dict(model)
        nbytes = sum(t.numel() * t.element_size() for t in state.values())
        config.save_pretrained(out_dir)
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(out_dir)
        tokenizer.model_max_length = getattr(config, "max_position_embeddings", tokenizer.model_max_length)
        tokenizer.save_pretrained(out_dir)
        with timed(f"writing model.safetensors ({nbytes / 1e6:.0f} MB, {len(state)} tensors)", progress):
            save_file(state, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
        # safetensors creates the file 0600; give it the mode (umask) the other files got.
        os.chmod(out_dir / "model.safetensors", stat.S_IMODE((out_dir / "config.json").stat().st_mode))
        del state
        stage("weights_written")

        with timed("checking the checkpoint against the GGUF-loaded model", progress):
            _check_reload(model, tokenizer, out_dir)
        stage("checked")
