"""Token-by-token references for the streaming methods on many Hugging Face families (tests/test_families.py).

Shares no code with ``lm_eval_streaming``. The UNCHANGED model runs with eager attention, one token at a time,
always at its true position ``t``; before each token every layer's cache is rebuilt from our own record of
(true position, key, value) per layer: the entries the method keeps for that layer, each key re-rotated so
that its distance to the query is the one the method gives it (only StreamingLLM's shifted sinks move), and
an explicit all-zero 4D mask per layer type, so transformers' own causal / sliding masks play no part.
Rotary attention depends only on query-key distances, so feeding the query at ``t`` and a sink at
``t - d`` is the same as mit-han-lab's compact slots (query at slot ``len(cache)``).

Semantics for models with sliding layers (window ``W``: a query at ``t`` sees keys ``t - W < k <= t``,
transformers' ``sliding_window_overlay``): a layer whose own ``W <= start_size + recent_size`` keeps its own
window at true positions (the model's layer, unchanged); every other layer (global layers, sliding layers with
a larger window) gets the method: streaming_llm the first ``start_size`` and the last ``recent_size`` tokens
(sinks at the shifted distance, or their true one without the shift), window the last ``start + recent``;
a sliding layer never sees a key at a distance of ``W`` or more (only the no-shift sinks can be that far).
"""

from __future__ import annotations

import torch
from transformers import DynamicCache

INTERLEAVED = ("gptj", "cohere", "cohere2", "glm", "ernie4_5", "helium")  # rotary on pairs (2i, 2i+1) instead of rotate-half


def layer_windows(config) -> list[int | None]:
    """Each layer's own sliding window, None for a global layer."""
    n, window = config.num_hidden_layers, getattr(config, "sliding_window", None)
    types = getattr(config, "layer_types", None)
    if types:
        return [window if kind == "sliding_attention" else None for kind in types]
    return [window if window and getattr(config, "use_sliding_window", True) else None] * n


def layer_inv_freq(model, layer: int) -> tuple[torch.Tensor, bool]:
    """(inverse frequencies of the layer's rotary embedding, interleaved?) read from the model's buffers."""
    config = model.config
    if config.model_type == "gptj":  # sin/cos table built from these frequencies (create_sinusoidal_positions)
        dim = config.rotary_dim
        return 1.0 / (10000 ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)), True
    rotary = model.model.rotary_emb
    kind = (getattr(config, "layer_types", None) or [None] * config.num_hidden_layers)[layer]
    inv = getattr(rotary, f"{kind}_inv_freq", None) if kind else None
    if inv is None:
        inv = rotary.inv_freq
    # a YaRN attention scaling is already in the stored keys: moving them is a pure rotation
    return inv.double(), config.model_type in INTERLEAVED


def rotate(keys: torch.Tensor, inv_freq: torch.Tensor, interleaved: bool, delta) -> torch.Tensor:
    """Keys [..., n, D] moved by ``delta`` positions (a number or a tensor [n]) on their rotary dims."""
    rot = 2 * len(inv_freq)
    delta = torch.as_tensor(delta, dtype=torch.float64).reshape(-1, 1)
    ang = delta * inv_freq  # [n or 1, rot / 2]
    cos, sin = ang.cos(), ang.sin()
    x = keys.double()
    if interleaved:
        a, b = x[..., 0:rot:2], x[..., 1:rot:2]
    else:
        a, b = x[..., : rot // 2], x[..., rot // 2: rot]
    new_a, new_b = a * cos - b * sin, b * cos + a * sin
    if interleaved:
        moved = torch.stack([new_a, new_b], dim=-1).flatten(-2)
    else:
        moved = torch.cat([new_a, new_b], dim=-1)
    return torch.cat([moved, x[..., rot:]], dim=-1).to(keys.dtype)


def kept(t: int, window: int | None, method: str | None, sinks: int, recent: int, shift: bool):
    """[(true position, distance to the query at t)] a layer sees besides the query itself."""
    budget = sinks + recent
    if window is not None and (method is None or window <= budget):
        return [(k, t - k) for k in range(max(0, t - window + 1), t)]
    if method is None or t <= budget:
        return [(k, t - k) for k in range(t)]
    if method == "window":
        return [(k, t - k) for k in range(t - budget, t)]
    assert method == "streaming_llm", method
    head = [(i, budget - i if shift else t - i) for i in range(sinks)]
    seen = head + [(k, t - k) for k in range(t - recent, t)]
    # a sliding layer never sees a key at a distance its own window never showed it (the no-shift sinks)
    return seen if window is None else [(k, d) for k, d in seen if d < window]


@torch.no_grad()
def reference_nll(model, ids, method: str | None, sinks: int = 0, recent: int = 0, shift: bool = True):
    """Per-token NLL of ids[1:] (float64). ``method`` None: every layer its own attention (the model itself)."""
    model.set_attn_implementation("eager")
    config = model.config
    windows = layer_windows(config)
    rotary = [layer_inv_freq(model, i) for i in range(config.num_hidden_layers)] if shift else None
    types = getattr(config, "layer_types", None) or ["full_attention"] * config.num_hidden_layers
    keys, values = [[] for _ in windows], [[] for _ in windows]  # per layer: token t's key/value at position t
    nll = []
    for t in range(len(ids) - 1):
        cache, lengths = DynamicCache(), {}
        for layer, window in enumerate(windows):
            entries = kept(t, window, method, sinks, recent, shift)
            lengths.setdefault(types[layer], set()).add(len(entries) + 1)
            if not entries:
                continue
            pos = torch.tensor([k for k, _ in entries])
            k = torch.cat([keys[layer][i] for i in pos.tolist()], dim=-2)
            v = torch.cat([values[layer][i] for i in pos.tolist()], dim=-2)
            move = (t - torch.tensor([d for _, d in entries])) - pos  # to position t - distance
            if bool(move.any()):
                k = rotate(k, *rotary[layer], move)
            cache.update(k, v, layer)
        assert all(len(n) == 1 for n in lengths.values()), lengths
        masks = {kind: torch.zeros(1, 1, 1, n.pop(), dtype=model.dtype) for kind, n in lengths.items()}
        mask = next(iter(masks.values())) if len({m.shape[-1] for m in masks.values()}) == 1 else masks
        out = model(input_ids=torch.tensor([[ids[t]]]), position_ids=torch.tensor([[t]]), attention_mask=mask,
                    cache=cache, use_cache=True)
        for layer in range(len(windows)):
            keys[layer].append(cache.layers[layer].keys[..., -1:, :].clone())
            values[layer].append(cache.layers[layer].values[..., -1:, :].clone())
        nll.append(-torch.log_softmax(out.logits[0, -1].double(), -1)[ids[t + 1]])
    return torch.stack(nll)


@torch.no_grad()
def plain_nll(model, ids):
    """The model's own forward over the whole sequence (eager)."""
    model.set_attn_implementation("eager")
    logits = model(input_ids=torch.tensor([ids])).logits[0].double()
    return -torch.log_softmax(logits[:-1], -1).gather(-1, torch.tensor(ids[1:])[:, None]).squeeze(-1)
