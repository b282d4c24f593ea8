"""Before the positional shift re-rotates a model's queries, check on the model itself that it can.

The shift assumes each layer rotates queries and keys by ``position x inv_freq`` in the convention
``layers.py`` read (rotate-half or interleaved pairs, on the first ``rot_dim`` dims). Families differ (the
rotary part at the end of the head in multi-head latent attention, a family-specific pairing, absolute
positions mixed in), so the assumption is measured, not trusted: the model runs a few tokens twice, at
positions p and p + delta, through a probe attention that records each layer's queries and keys; every
layer that would be shifted must map the first onto the second by the project's re-rotation. Otherwise the
run stops with one line naming the layer, before anything is scored.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface

from lm_eval_streaming.core.attention import attention_kernel, rerotate, sink_rotation

PROBE_KERNEL = "lm_eval_streaming_rotary_probe"
_TOKENS, _START, _DELTA = 6, 3, 11
_RECORD: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}


def _probe_attention(module, query, key, value, attention_mask, scaling=None, **kwargs):
    """Record the rotated queries and keys; return each position's own values. Attention over rotated keys
    would carry the positions' rounding (bfloat16) into every later layer's inputs, and a deep layer's
    queries would then differ by more than their rotation; a position-free output keeps every layer's
    inputs identical in both runs unless the model itself mixes positions in elsewhere."""
    _RECORD[module.layer_idx] = (query.detach().float(), key.detach().float())
    out = value.repeat_interleave(query.shape[1] // value.shape[1], 1)
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(PROBE_KERNEL, _probe_attention)


def _record(model, positions: torch.Tensor) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    _RECORD.clear()
    device = model.get_input_embeddings().weight.device
    ids = torch.arange(1, _TOKENS + 1, device=device)[None] % model.config.get_text_config().vocab_size
    with torch.no_grad(), attention_kernel(model, PROBE_KERNEL):
        model(input_ids=ids, position_ids=positions.to(device)[None], use_cache=False)
    return dict(_RECORD)


def shift_mismatch(model, specs, layers: list[int]) -> str | None:
    """Why the positional shift would not reproduce ``model``'s own rotation on ``layers`` (None: it does)."""
    done = getattr(model, "_lm_eval_streaming_shift_checked", None)
    key = tuple(layers)
    if done is not None and key in done:
        return done[key]
    base = torch.arange(_START, _START + _TOKENS)
    try:
        first, second = _record(model, base), _record(model, base + _DELTA)
    except Exception as exc:  # noqa: BLE001  (a family that cannot run the probe cannot be checked)
        why = f"the rotary probe could not run ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})"
    else:
        why, dtype = None, next(model.parameters()).dtype
        for i in layers:
            if i not in first or i not in second:
                why = f"layer {i} does not call its attention through transformers' AttentionInterface"
                break
            spec = specs[i]
            cos, sin = sink_rotation(torch.tensor([_DELTA]), spec.inv_freq, spec.interleaved)
            for name, a, b in zip(("queries", "keys"), first[i], second[i]):
                if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
                    why = (f"layer {i}'s {name} are not finite (NaN/Inf) in {str(dtype).replace('torch.', '')} even on six tokens, so the "
                           f"shift cannot be checked; a wider dtype (float32, bfloat16) is needed")
                    break
                moved = rerotate(a, cos.to(a.device), sin.to(a.device), spec.interleaved)
                scale = float(b.abs().amax()) or 1.0
                err = float((moved - b).abs().amax()) / scale
                tol = 1e-4 if a.dtype == torch.float32 and dtype == torch.float32 else 3e-2
                if not err <= tol:
                    why = (f"layer {i}'s {name} at position +{_DELTA} are not its {name} re-rotated by the project "
                           f"(relative difference {err:.2g}): its rotary convention is not the one the shift assumes")
                    break
            if why:
                break
    if done is None:
        done = {}
        object.__setattr__(model, "_lm_eval_streaming_shift_checked", done)
    done[key] = why
    return why
