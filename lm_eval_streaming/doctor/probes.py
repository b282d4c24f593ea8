"""The doctor's measurements on synthetic tensors (no weights): each attention kernel's causality and error
against the project's float32 reference (:func:`core.kernel_checks.reference_attention`) on the same q/k/v,
and the rotary tables' precision, at the lengths asked, in the asked dtype on the asked device.

Activations are shaped like the model's heads (``--shape``: head_dim, rotary dims) and realistic where it
matters: query-key logits spread over a few units, one sink key (position 0) with a large norm aligned with
the queries so it takes much of every row's attention, a small sink value. Nothing on the device is float64.
"""

from __future__ import annotations

import types
from dataclasses import asdict, dataclass

import torch

from lm_eval_streaming.core.kernel_checks import reference_attention

SINK_NORM = 4.0  # the sink key's norm over a typical key's (its logit is then about 10, others about 0 +- 1.5)


@dataclass
class KernelResult:
    kernel: str
    path: str  # how it was called: "is_causal" (no mask), "mask" (an explicit causal mask), "context"
    length: int
    causal_max_abs: float | None  # max |d output| at positions <= p when keys/values after p change
    rel_error_max: float | None  # max over positions of ||out - ref|| / ||ref||
    rel_error_late: float | None  # the same over the last quarter of positions
    error: str | None = None  # the kernel failed: its message

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class RotaryResult:
    implementation: str
    max_position: int
    rel_error_max: float  # max over positions of ||cos,sin - exact|| / ||exact||
    first_bad_position: int | None  # first position above the tolerance

    def as_dict(self) -> dict:
        return asdict(self)


def activations(length: int, heads: int, head_dim: int, seed: int = 0):
    """q, k, v [1, heads, length, head_dim] float32 on the CPU: logits q.k/sqrt(d) with std about 1.5, a sink key
    at position 0 with a norm SINK_NORM x a typical key's, aligned with the queries' shared component (logits
    about 10 +- 6: from a few percent to nearly all of a row's attention), and a small sink value."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(1, heads, length, head_dim, generator=g)
    k = torch.randn(1, heads, length, head_dim, generator=g)
    v = torch.randn(1, heads, length, head_dim, generator=g)
    direction = torch.randn(1, heads, 1, head_dim, generator=g)
    unit = direction / direction.norm(dim=-1, keepdim=True)
    q = 1.5 * q + 2.5 * unit  # a shared component so one key can attract every query
    k[:, :, 0] = (SINK_NORM * head_dim ** 0.5 * unit)[:, :, 0]
    v[:, :, 0] *= 0.05
    return q, k, v


def _module(kernel: str):
    """What transformers' attention functions read from the attention module."""
    return types.SimpleNamespace(is_causal=True, layer_idx=0, num_key_value_groups=1, training=False,
                                 config=types.SimpleNamespace(_attn_implementation=kernel))


def _causal_mask(n: int, dtype, device) -> torch.Tensor:
    """[1, 1, n, n]: bool (True = may attend), else additive (the dtype's minimum where blocked)."""
    blocked = torch.ones(n, n, dtype=torch.bool, device=device).triu(1)
    if dtype == torch.bool:
        return ~blocked[None, None]
    return torch.zeros(n, n, dtype=dtype, device=device).masked_fill(blocked, torch.finfo(dtype).min)[None, None]


def _causal_block_mask(n: int, device):
    from torch.nn.attention.flex_attention import create_block_mask

    return create_block_mask(lambda b, h, q, k: k <= q, None, None, n, n, device=device)


def kernel_calls(names: list[str]) -> dict[tuple[str, str], object]:
    """(kernel, path) -> fn(q, k, v, scaling) -> out [B, Q, H, D] for every named attention implementation: sdpa
    both without a mask (its ``is_causal`` path, where pytorch#195910 leaks) and with an explicit mask; eager
    with the additive mask transformers builds; flex with a causal block mask; the project's kernel with its dense
    chunk context; any other registered kernel (flash, one registered by a test) as transformers calls it for a
    causal prompt: without a mask, ``module.is_causal`` set."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    from lm_eval_streaming.core.attention import REFERENCE_KERNEL, LayerView, Serving, serve, sink_window_attention
    from lm_eval_streaming.core.cache import LayerRule
    from lm_eval_streaming.core.methods import baseline_policy
    from transformers.models.llama.modeling_llama import eager_attention_forward

    calls = {}
    for name in names:
        module = _module(name)
        if name == "eager":
            calls[(name, "mask")] = lambda q, k, v, s, m=module: eager_attention_forward(
                m, q, k, v, _causal_mask(q.shape[2], q.dtype, q.device), scaling=s)[0]
        elif name == REFERENCE_KERNEL:
            def project(q, k, v, s, m=module):
                pos = torch.arange(q.shape[2])
                view = LayerView((~LayerRule(baseline_policy()).visible(pos, pos)).to(q.device))
                with serve(Serving(lambda layer, window: view)):
                    return sink_window_attention(m, q, k, v, None, s)[0]
            calls[(name, "context")] = project
        elif name == "flex_attention":
            calls[(name, "block_mask")] = lambda q, k, v, s, m=module: ALL_ATTENTION_FUNCTIONS[name](
                m, q, k, v, _causal_block_mask(q.shape[2], q.device), scaling=s)[0]
        else:
            fn = ALL_ATTENTION_FUNCTIONS[name]
            calls[(name, "is_causal")] = lambda q, k, v, s, f=fn, m=module: f(m, q, k, v, None, scaling=s)[0]
            if name == "sdpa":
                calls[(name, "mask")] = lambda q, k, v, s, f=fn, m=module: f(
                    m, q, k, v, _causal_mask(q.shape[2], torch.bool, q.device), scaling=s)[0]
    return calls


def _rel_per_position(out: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """||out - ref|| / ||ref|| per query position (float32 [Q] on the CPU); inf where out is not finite."""
    out, ref = out.float().flatten(2), ref.float().flatten(2)  # [B, Q, H*D]
    bad = ~torch.isfinite(out).all(-1).all(0)
    diff = torch.nan_to_num(out - ref, nan=0.0, posinf=0.0, neginf=0.0).norm(dim=-1).amax(0)
    rel = diff / ref.norm(dim=-1).amin(0).clamp(min=torch.finfo(torch.float32).tiny)
    return rel.masked_fill(bad, float("inf")).cpu()


def probe_positions(length: int) -> list[int]:
    """The middle: every query up to it is compared (one more kernel call per length)."""
    return [length // 2]


@torch.no_grad()
def check_kernel(fn, kernel: str, path: str, q, k, v, ref: torch.Tensor, seed: int = 1) -> KernelResult:
    """``fn`` on q/k/v (already in the dtype, on the device): relative error against ``ref`` and the causality
    probe (the keys after p replaced by the sink's key, which every query attends to, their values by large
    random ones: outputs at positions <= p must not move)."""
    n, scaling = q.shape[2], q.shape[-1] ** -0.5
    try:
        out = fn(q, k, v, scaling)
        rel = _rel_per_position(out, ref)
        worst = 0.0
        g = torch.Generator().manual_seed(seed)
        for p in probe_positions(n):
            k2, v2 = k.clone(), v.clone()
            k2[:, :, p + 1:] = k[:, :, :1]  # the sink's key: a future key every query would attend to
            v2[:, :, p + 1:] = (4 * torch.randn(v2[:, :, p + 1:].shape, generator=g)).to(v.dtype).to(v.device)
            moved = (fn(q, k2, v2, scaling)[:, : p + 1].float() - out[:, : p + 1].float()).abs().amax()
            worst = float("nan") if moved != moved else max(worst, float(moved))
    except Exception as e:  # a kernel that cannot run here is reported, not fatal
        return KernelResult(kernel, path, n, None, None, None, f"{type(e).__name__}: {str(e).splitlines()[0][:160]}")
    return KernelResult(kernel, path, n, worst, float(rel.max()), float(rel[3 * n // 4:].max()))


def reference_output(q, k, v) -> torch.Tensor:
    """The float32 reference on the same (rounded) q/k/v, on the same device."""
    module = _module("reference")
    return reference_attention(module, q.float(), k.float(), v.float(), q.shape[-1] ** -0.5)


def hf_rotary(rot_dim: int, base: float = 10000.0):
    """transformers' GPT-NeoX rotary embedding (Pythia's) for ``rot_dim`` rotary dims: fn(x, positions)->cos, sin."""
    from transformers import GPTNeoXConfig
    from transformers.models.gpt_neox.modeling_gpt_neox import GPTNeoXRotaryEmbedding

    cfg = GPTNeoXConfig(hidden_size=rot_dim, num_attention_heads=1, rotary_pct=1.0,
                        rope_parameters={"rope_type": "default", "rope_theta": base})
    return GPTNeoXRotaryEmbedding(cfg)


def half_precision_rotary(rot_dim: int, base: float = 10000.0):
    """EleutherAI/gpt-neox#1003 as written before its fix: angles and cos/sin in the activations' dtype."""
    inv_freq = 1.0 / (base ** (torch.arange(0, rot_dim, 2, dtype=torch.float32) / rot_dim))

    def rotary(x, position_ids):
        angles = position_ids[:, :, None].to(x.dtype) * inv_freq.to(x.device, x.dtype)[None, None, :]
        emb = torch.cat([angles, angles], dim=-1)
        return emb.cos(), emb.sin()

    return rotary


ROTARY_IMPLEMENTATIONS = {"transformers GPTNeoXRotaryEmbedding": hf_rotary}


@torch.no_grad()
def check_rotary(name: str, rotary, rot_dim: int, max_position: int, dtype, device, tolerance: float,
                 base: float = 10000.0) -> RotaryResult:
    """cos/sin of ``rotary`` in ``dtype`` on ``device`` at positions 0..max_position-1 against the exact values
    (angles in float64 on the CPU: the reference never runs on the device)."""
    if isinstance(rotary, torch.nn.Module):
        rotary = rotary.to(device)
    positions = torch.arange(max_position, device=device)[None]
    x = torch.zeros(1, 1, rot_dim, dtype=dtype, device=device)
    cos, sin = rotary(x, positions)
    got = torch.cat([cos.reshape(max_position, -1), sin.reshape(max_position, -1)], -1).float().cpu()
    inv = 1.0 / (base ** (torch.arange(0, rot_dim, 2, dtype=torch.float64) / rot_dim))
    angles = torch.arange(max_position, dtype=torch.float64)[:, None] * inv[None]
    emb = torch.cat([angles, angles], -1)
    exact = torch.cat([emb.cos(), emb.sin()], -1).float()
    rel = (got - exact).norm(dim=-1) / exact.norm(dim=-1)
    rel = rel.masked_fill(~torch.isfinite(got).all(-1), float("inf"))
    above = (rel > tolerance).nonzero()
    return RotaryResult(name, max_position, float(rel.max()), int(above[0, 0]) if len(above) else None)
