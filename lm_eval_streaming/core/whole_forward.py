"""Whole-forward dtype error: the run's forward in its dtype against a float32 shadow of the SAME forward.

The kernel checks (:mod:`.kernel_checks`) see only the attention kernel. Half-precision trouble also lives
upstream of it: rotary cos/sin computed in half precision at large positions (EleutherAI/gpt-neox#1003), a
norm or MLP that overflows in float16 (transformers#30199, #28360). This module measures the whole forward:

- the *shadow pass*: the same scoring path (``score_sequences``: the same method, chunking, kernel, device),
  but every module with weights is cast to float32 just before it runs and back to its own dtype right after
  (float16/bfloat16 -> float32 -> back is exact), so activations, rotary tables, masks, KV cache and logits are
  float32. Extra memory: one module's float32 weights (the largest: an MLP or the output layer) plus float32
  activations; no copy of the model;
- per-token |NLL(run dtype) - NLL(float32 shadow)|, by position;
- *location* (``locate``): in the shadow pass every top-level module of a kind (embedding, rotary, norm,
  attention, MLP, output head) is also run in the run's dtype on the same input cast down, and its output
  compared with the float32 output: per token ||low - float32|| / ||float32||. The first call, in execution
  order, above ``tolerance`` names the module, its kind, its layer and the first position. Attention called
  with a KV cache is not re-run (a second call would write the cache twice): its local error is measured on
  the paths without a cache (dense in one call, ``KERNEL@full``) and by the kernel checks.

Nothing here creates a float64 tensor (MPS has none).
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from lm_eval_streaming.core.scoring import ScoredTokens, resolve_kernel, score_sequences
from lm_eval_streaming.options import DEFAULT_CHUNK_SIZE

KINDS = ("embedding", "rotary", "norm", "attention", "mlp", "head", "other")
CACHE_KWARGS = ("past_key_values", "past_key_value", "layer_past", "cache")


def default_tolerance(dtype: torch.dtype) -> float:
    """Per-token relative error above which a module's output counts as diverged: 16 x the dtype's machine
    epsilon (float16 0.0156, bfloat16 0.125): a module that rounds its output once stays far below it."""
    return 16 * torch.finfo(dtype).eps


@dataclass
class ModuleError:
    """One module over the shadow pass: the largest per-token relative error of its run-dtype output."""

    name: str
    kind: str
    layer: int | None
    max_rel: float = 0.0
    first_position: int | None = None  # first position above the tolerance (None: never)
    calls: int = 0  # calls compared
    skipped: int = 0  # calls not compared (attention with a KV cache)


@dataclass
class Divergence:
    """The first module call, in execution order, whose output diverged beyond the tolerance."""

    name: str
    kind: str
    layer: int | None
    position: int
    rel_error: float


@dataclass
class WholeForwardError:
    """|NLL(run dtype) - NLL(float32 shadow)| per token (one float32 CPU tensor per sequence) and where the
    forward first diverged."""

    abs_dnll: list[torch.Tensor]
    shadow_nll: list[torch.Tensor]
    dtype: str
    device: str
    kernel: str
    tolerance: float
    modules: list[ModuleError] = field(default_factory=list)  # execution order of first call
    first_divergence: Divergence | None = None
    located: bool = False  # whether the module location ran

    @property
    def nonfinite(self) -> int:
        return int(sum(int((~torch.isfinite(t)).sum()) for t in self.abs_dnll))

    @property
    def mean(self) -> float:
        values = torch.cat(self.abs_dnll)
        finite = values[torch.isfinite(values)]
        return float(finite.sum()) / len(finite) if len(finite) else float("nan")

    @property
    def max(self) -> float:
        values = torch.cat(self.abs_dnll)
        return float("inf") if self.nonfinite else float(values.max()) if len(values) else float("nan")


def module_kind(name: str, module, head) -> str | None:
    """The kind of a module the location compares, from its class (None: not one of them)."""
    cls = type(module).__name__
    if module is head:
        return "head"
    if isinstance(module, torch.nn.Embedding):
        return "embedding"
    if cls.endswith("RotaryEmbedding"):
        return "rotary"
    if "Norm" in cls:
        return "norm"
    if "Attention" in cls:
        return "attention"
    if "MLP" in cls or name.rsplit(".", 1)[-1] in ("mlp", "feed_forward"):
        return "mlp"
    return None


_LAYER = re.compile(r"\.(\d+)(?:\.|$)")


def shadow_modules(model) -> list[tuple[str, torch.nn.Module, str, int | None]]:
    """(name, module, kind, layer) of the top-level modules of a kind, plus an ``other`` entry for each module
    holding parameters none of them covers, so every weight is cast."""
    head = model.get_output_embeddings()
    chosen, covered = [], set()
    for name, module in model.named_modules():
        if any(name.startswith(c + ".") for c in covered):
            continue
        kind = module_kind(name, module, head)
        if kind is not None:
            chosen.append((name, module, kind))
            covered.add(name)
    seen = {id(p) for _, m, _ in chosen for p in m.parameters()}
    for name, module in model.named_modules():
        own = [p for p in module.parameters(recurse=False) if id(p) not in seen]
        if own:
            chosen.append((name, module, "other"))
            seen |= {id(p) for p in module.parameters()}
    out = []
    for name, module, kind in chosen:
        m = _LAYER.search("." + name)
        out.append((name, module, kind, int(m.group(1)) if m else None))
    return out


def shadow_extra_bytes(model) -> int:
    """The float32 weights of the largest cast module: what the shadow pass holds beyond the model's weights
    (besides float32 activations)."""
    return max((sum(p.numel() * 4 for p in m.parameters() if p.dtype != torch.float32)
                for _, m, _, _ in shadow_modules(model)), default=0)


def _cast(value, dtype):
    if torch.is_tensor(value):
        return value.to(dtype) if value.is_floating_point() else value
    if isinstance(value, (tuple, list)):
        return type(value)(_cast(v, dtype) for v in value)
    return value


def _tensors(out) -> list[torch.Tensor]:
    if torch.is_tensor(out):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _tensors(o)]
    return [t for t in (getattr(out, "last_hidden_state", None), getattr(out, "logits", None)) if t is not None]


def per_token_rel(low: torch.Tensor, high: torch.Tensor, n_tokens: int) -> torch.Tensor | None:
    """||low - high|| / ||high|| per token (float32 [T], on the device) for outputs [B, T, ...] or [T, ...];
    inf where the low output is not finite and the float32 one is (overflow); None for other shapes."""
    dims = [i for i, s in enumerate(high.shape[:2]) if s == n_tokens]
    if not dims or high.shape != low.shape:
        return None
    t_dim = dims[-1]
    high32, low32 = high.float().movedim(t_dim, 0), low.float().movedim(t_dim, 0)
    high32, low32 = high32.reshape(n_tokens, -1), low32.reshape(n_tokens, -1)
    bad_low, bad_high = ~torch.isfinite(low32).all(1), ~torch.isfinite(high32).all(1)
    diff = torch.nan_to_num(low32 - high32, nan=0.0, posinf=0.0, neginf=0.0)
    norm = torch.nan_to_num(high32, nan=0.0, posinf=0.0, neginf=0.0).norm(dim=1)
    rel = diff.norm(dim=1) / norm.clamp(min=torch.finfo(torch.float32).tiny)
    return rel.masked_fill(bad_low | bad_high, float("inf"))


class _Shadow:
    """The hooks of one shadow pass: cast each module to float32 around its call and, when locating, run it in
    the low dtype first on the input cast down and compare."""

    def __init__(self, model, low: torch.dtype, locate: bool, tolerance: float):
        self.low, self.locate, self.tol = low, locate, tolerance
        self.entries = shadow_modules(model)
        self.errors: dict[str, ModuleError] = {}
        self.first: Divergence | None = None
        self.offset = 0  # position of the current chunk's first token
        self.next = 0
        self._saved: dict[int, list] = {}
        self._pending: dict[int, list] = {}

    def start_sequence(self) -> None:
        self.offset = self.next = 0

    def _upcast(self, module) -> None:
        saved = []
        for p in module.parameters():
            if p.is_floating_point() and p.dtype != torch.float32:
                saved.append((p, p.dtype))
                p.data = p.data.float()
        self._saved[id(module)] = saved

    def _restore(self, module) -> None:
        for p, dtype in self._saved.pop(id(module), []):
            p.data = p.data.to(dtype)

    def hooks(self, name, module, kind, layer):
        def pre(mod, args, kwargs):
            if kind == "embedding" and args and torch.is_tensor(args[0]):  # a new chunk of the stream
                self.offset, self.next = self.next, self.next + args[0].shape[-1]
            low_out = None
            if self.locate:
                cached = any(kwargs.get(k) is not None for k in CACHE_KWARGS)
                err = self.errors.setdefault(name, ModuleError(name, kind, layer))
                if kind == "attention" and cached:
                    err.skipped += 1
                else:
                    with torch.no_grad():
                        low_out = mod.forward(*_cast(args, self.low), **{k: _cast(v, self.low)
                                                                        for k, v in kwargs.items()})
            self._pending[id(mod)] = [low_out]
            self._upcast(mod)

        def post(mod, args, kwargs, out):
            self._restore(mod)
            low_out = self._pending.pop(id(mod), [None])[0]
            if low_out is None:
                return
            self._compare(self.errors[name], _tensors(low_out), _tensors(out))

        return (module.register_forward_pre_hook(pre, with_kwargs=True),
                module.register_forward_hook(post, with_kwargs=True))

    def _compare(self, err: ModuleError, lows, highs) -> None:
        n_tokens = self.next - self.offset
        rels = [r for lo, hi in zip(lows, highs) if (r := per_token_rel(lo, hi, n_tokens)) is not None]
        if not rels:
            err.skipped += 1
            return
        rel = torch.stack(rels).amax(0)
        err.calls += 1
        worst = float(rel.max())
        err.max_rel = max(err.max_rel, worst)
        above = rel > self.tol
        if bool(above.any()):
            first = self.offset + int(above.nonzero()[0, 0])
            if err.first_position is None or first < err.first_position:
                err.first_position = first
            if self.first is None:
                self.first = Divergence(err.name, err.kind, err.layer, first, float(rel[first - self.offset]))


@contextmanager
def float32_shadow(model, locate: bool = True, tolerance: float | None = None):
    """While inside, the model computes in float32 module by module (weights cast just in time, restored after
    each module); yields the :class:`_Shadow` collecting the location."""
    low = next(model.parameters()).dtype
    shadow = _Shadow(model, low, locate, default_tolerance(low) if tolerance is None else tolerance)
    handles = [h for entry in shadow.entries for h in shadow.hooks(*entry)]
    try:
        yield shadow
    finally:
        for h in handles:
            h.remove()
        for _, module, _, _ in shadow.entries:  # after an error inside a module
            shadow._restore(module)


@torch.no_grad()
def whole_forward_error(model, sequences: list[list[int]], policy, chunk_size: int = DEFAULT_CHUNK_SIZE,
                        attn_implementation: str | None = None, one_call: bool = False,
                        scored: list[ScoredTokens] | None = None, locate: bool = True,
                        tolerance: float | None = None) -> WholeForwardError:
    """Per-token |dNLL| of ``policy`` scored in the model's dtype (``scored``: the row's own NLLs on the same
    sequences, else scored here) against the float32 shadow of the same path, and where it first diverged."""
    kernel = resolve_kernel(model, policy, attn_implementation)
    if scored is None:
        scored = score_sequences(model, sequences, policy, chunk_size, attn_implementation=kernel, one_call=one_call)
    shadow_nll = []
    with float32_shadow(model, locate, tolerance) as shadow:
        for seq in sequences:
            shadow.start_sequence()
            shadow_nll += [s.nll for s in score_sequences(model, [seq], policy, chunk_size,
                                                          attn_implementation=kernel, one_call=one_call)]
    if [len(s.nll) for s in scored] != [len(n) for n in shadow_nll]:
        raise ValueError("the run and its shadow were scored on different sequences")
    diffs = [(s.nll - n).abs() for s, n in zip(scored, shadow_nll)]
    modules = list(shadow.errors.values())
    device = next(model.parameters()).device.type
    return WholeForwardError(diffs, shadow_nll, str(shadow.low).replace("torch.", ""), device, kernel,
                             shadow.tol, modules, shadow.first, locate)
