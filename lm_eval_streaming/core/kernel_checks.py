"""Measured numerics of an attention kernel, instead of thresholds on logits.

- *attention error*: every attention call of the kernel under test is also computed by the project's
  float32 reference kernel from the SAME query/key/value, in the same forward pass; per layer and
  query position, mean and max |output(kernel) - output(reference)|. No second copy of the weights:
  the reference works in query blocks, so it adds a few float32 score blocks to peak memory;
- *kernel error*: per-token |dNLL| between a kernel and the project's reference kernel with the same
  weights in the same dtype on the same tokens (``float32_reference``: with float32 weights, where
  that copy fits in memory and was asked for);
- *causality probe*: replace the tokens after position p; the logits at positions <= p must not
  change. A kernel that lets a position see the future (e.g. pytorch#195910, MPS SDPA with
  ``is_causal=True`` in float16) shows up here and nowhere else.

Both run dense attention through the same chunked scoring path that ``score_sequences`` uses.
"""

from __future__ import annotations

import copy
import sys
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from lm_eval_streaming.core.attention import REFERENCE_KERNEL, LayerView, attend, attention_kernel
from lm_eval_streaming.core.cache import LayerRule
from lm_eval_streaming.options import DEFAULT_CHUNK_SIZE, as_int
from lm_eval_streaming.core.methods import baseline_policy
from lm_eval_streaming.core.memory import available_bytes
from lm_eval_streaming.core.scoring import ScoredTokens, resolve_kernel, score_sequences
from lm_eval_streaming.core.sessions import input_device, open_session


@dataclass
class KernelError:
    """|NLL(kernel) - NLL(reference)| per token, one float32 CPU tensor per sequence."""

    abs_dnll: list[torch.Tensor]
    kernel: str
    reference: str  # e.g. "lm_eval_streaming/float32/cpu"

    @property
    def nonfinite(self) -> int:
        """Tokens where either side is NaN/Inf: the kernel failed there (never averaged away)."""
        return int(sum(int((~torch.isfinite(t)).sum()) for t in self.abs_dnll))

    @property
    def mean(self) -> float:
        values = torch.cat(self.abs_dnll).double()
        finite = values[torch.isfinite(values)]
        return float(finite.mean()) if len(finite) else float("nan")

    @property
    def max(self) -> float:
        values = torch.cat(self.abs_dnll)
        return float("inf") if self.nonfinite else float(values.max()) if len(values) else float("nan")


@dataclass
class CausalityProbe:
    """For each probed p: max |dlogit| at positions <= p when every token after p is replaced."""

    positions: list[int]
    max_abs_dlogit: list[float]
    kernel: str

    @property
    def max(self) -> float:
        return max(self.max_abs_dlogit, default=float("nan"))


@dataclass
class AttentionError:
    """|attention output of the kernel - the float32 reference's from the same q/k/v|, per layer and query
    position, over the samples, heads and head dims: ``sum_abs`` / ``count`` is the mean, ``max_abs`` the max.
    Tensors are float32 [layers, positions] on the CPU; ``nonfinite``: NaN/Inf differences (never averaged)."""

    sum_abs: torch.Tensor
    max_abs: torch.Tensor
    count: torch.Tensor
    nonfinite: int
    kernel: str
    reference: str

    @property
    def mean_by_layer(self) -> list[float]:
        return (self.sum_abs.sum(1).double() / self.count.sum(1).clamp(min=1).double()).tolist()

    @property
    def max_by_layer(self) -> list[float]:
        return self.max_abs.amax(1).tolist()

    @property
    def mean(self) -> float:
        return float(self.sum_abs.double().sum() / max(float(self.count.sum()), 1.0))

    @property
    def max(self) -> float:
        return float("inf") if self.nonfinite else float(self.max_abs.max()) if self.max_abs.numel() else float("nan")


class _AttentionPairs:
    """Accumulates |kernel - reference| per (layer, query position)."""

    def __init__(self, n_layers: int):
        self.n_layers = n_layers
        self.sum = torch.zeros(n_layers, 0)
        self.max = torch.zeros(n_layers, 0)
        self.count = torch.zeros(n_layers, 0)
        self.nonfinite = 0

    def add(self, layer: int, start: int, diff: torch.Tensor) -> None:
        """diff [B, Q, H, D] float32 for queries at positions start..start+Q-1."""
        end = start + diff.shape[1]
        if end > self.sum.shape[1]:
            grow = lambda t: torch.cat([t, torch.zeros(self.n_layers, end - t.shape[1])], dim=1)  # noqa: E731
            self.sum, self.max, self.count = grow(self.sum), grow(self.max), grow(self.count)
        bad = ~torch.isfinite(diff)
        n_bad = int(bad.sum())
        if n_bad:
            self.nonfinite += n_bad
            diff = diff.masked_fill(bad, 0)
        per_pos = diff.transpose(0, 1).reshape(diff.shape[1], -1)  # [Q, B*H*D]
        self.sum[layer, start:end] += per_pos.sum(1).cpu()
        self.max[layer, start:end] = torch.maximum(self.max[layer, start:end], per_pos.amax(1).cpu())
        self.count[layer, start:end] += per_pos.shape[1] - bad.transpose(0, 1).reshape(per_pos.shape).sum(1).cpu()


REFERENCE_BLOCK_SCORES = 1 << 22  # the reference holds at most this many float32 scores at once (16 MiB)


def reference_attention(module, query, key, value, scaling, max_scores: int = REFERENCE_BLOCK_SCORES,
                        sliding_window: int | None = None, softcap: float | None = None,
                        s_aux: torch.Tensor | None = None) -> torch.Tensor:
    """The project's kernel in float32 on these q [B, H, Q, D] / k, v [B, Hkv, K, D] (dense causal, the queries
    being the last Q positions of the K keys; the layer's own ``sliding_window``, ``softcap`` and learned sinks
    ``s_aux`` as the model passes them), in query blocks of at most ``max_scores`` scores."""
    rule = LayerRule(baseline_policy(), sliding_window)
    n_q, n_k = query.shape[2], key.shape[2]
    offset = n_k - n_q
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    s_aux = None if s_aux is None else s_aux.float()
    block = max(1, max_scores // (query.shape[0] * query.shape[1] * n_k))
    outs = []
    for s in range(0, n_q, block):
        e = min(s + block, n_q)
        q_pos, k_pos = torch.arange(offset + s, offset + e), torch.arange(offset + e)  # later keys are masked anyway
        view = LayerView((~rule.visible(q_pos, k_pos)).to(query.device))
        outs.append(attend(query[:, :, s:e].float(), key[:, :, : offset + e].float(), value[:, :, : offset + e].float(),
                           view, scaling, softcap, s_aux))
    return torch.cat(outs, dim=1)  # [B, Q, H, D]


@contextmanager
def paired_with_reference(kernel: str, pairs: _AttentionPairs):
    """While inside: every call of attention implementation ``kernel`` (as the model looks it up, so its own
    mask path and arguments are unchanged) also runs :func:`reference_attention` on the same q/k/v and
    records the difference. Installed in transformers' attention registry, removed on exit."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS as registry

    if kernel == REFERENCE_KERNEL:
        raise ValueError(f"{REFERENCE_KERNEL} is the reference itself")
    local = registry._local_mapping
    had, saved = kernel in local, local.get(kernel)
    original = registry.get(kernel) if kernel in registry else None  # None: the model's own eager function

    def attention(module, query, key, value, attention_mask, *args, **kwargs):
        fn = original or sys.modules[type(module).__module__].eager_attention_forward
        out, weights = fn(module, query, key, value, attention_mask, *args, **kwargs)
        scaling = kwargs.get("scaling", args[0] if args else None)
        with torch.no_grad():
            ref = reference_attention(module, query.detach(), key.detach(), value.detach(), scaling,
                                      sliding_window=kwargs.get("sliding_window"), softcap=kwargs.get("softcap"),
                                      s_aux=kwargs.get("s_aux"))
            pairs.add(module.layer_idx, key.shape[2] - query.shape[2], (out.detach().float() - ref).abs())
        return out, weights

    registry[kernel] = attention
    try:
        yield pairs
    finally:
        if had:
            local[kernel] = saved
        else:
            del registry[kernel]


@torch.no_grad()
def attention_error(model, sequences: list[list[int]], attn_implementation: str | None,
                    chunk_size: int = DEFAULT_CHUNK_SIZE, one_call: bool = False,
                    progress=None) -> tuple[AttentionError, list[ScoredTokens]]:
    """Dense through the kernel (chunked, or ``one_call``), every attention call paired with the float32
    reference from the same q/k/v. Also returns the pass's own scores (the kernel's NLLs)."""
    from lm_eval_streaming.core.architectures import num_layers

    dense = baseline_policy()
    kernel = resolve_kernel(model, dense, attn_implementation)
    pairs = _AttentionPairs(num_layers(model))
    scored = []
    with paired_with_reference(kernel, pairs):
        for seq in sequences:
            scored += score_sequences(model, [seq], dense, chunk_size, attn_implementation=kernel, one_call=one_call)
            if progress is not None:
                progress(1)
    ref = f"{REFERENCE_KERNEL}/float32 on the same q/k/v/{input_device(model).type}"
    return AttentionError(pairs.sum, pairs.max, pairs.count, pairs.nonfinite, kernel, ref), scored


def _dtype_name(model) -> str:
    return str(next(model.parameters()).dtype).replace("torch.", "")


def float32_reference(model):
    """The model itself when it is float32, else a float32 copy on the same device (a second copy of the
    weights: only where :func:`float32_copy_fits` says so)."""
    if next(model.parameters()).dtype == torch.float32:
        return model
    return copy.deepcopy(model).float()


def float32_copy_bytes(model) -> int:
    """Extra memory of :func:`float32_reference`: the weights again, in float32 (0 for a float32 model)."""
    if next(model.parameters()).dtype == torch.float32:
        return 0
    return sum(p.numel() for p in model.parameters()) * 4


def checks_extra_bytes(model, n_tokens: int, batch: int = 1, chunk_size: int = DEFAULT_CHUNK_SIZE) -> int:
    """Upper estimate of what the kernel checks hold beyond what scoring a dense row needs: the causality
    probe's second stream (a KV cache of ``n_tokens`` and a chunk's logits) plus the attention error's float32
    reference on one layer's q/k/v (a [B, H, block, K] float32 block of scores and probabilities, k/v in
    float32, outputs and differences). No copy of the weights."""
    cfg = model.config.get_text_config()
    heads = cfg.num_attention_heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    elem = next(model.parameters()).element_size()
    probe = 2 * cfg.num_hidden_layers * batch * kv_heads * head_dim * elem * n_tokens  # the second stream's cache
    probe += batch * min(chunk_size, n_tokens) * cfg.vocab_size * elem + 3 * PROBE_SLICE * cfg.vocab_size * 4
    reference = 3 * min(REFERENCE_BLOCK_SCORES, batch * heads * n_tokens * n_tokens) * 4  # scores, probs, mask
    reference += 2 * batch * kv_heads * n_tokens * head_dim * 4 + 4 * batch * heads * n_tokens * head_dim * 4
    return probe + reference


def float32_copy_fits(model, budget: int | None = None) -> bool:
    """Whether the float32 copy fits: within ``budget`` bytes when given (the benchmark allows its checks
    40% of the weights' size, so a float16/bfloat16 model is compared with the same weights), else in the
    memory free on the model's device."""
    need = float32_copy_bytes(model)
    return need <= (available_bytes(input_device(model)) if budget is None else budget)


def reference_scores(model, sequences: list[list[int]], chunk_size: int = DEFAULT_CHUNK_SIZE,
                     reference_model=None, budget: int | None = None) -> tuple[list[ScoredTokens], str]:
    """Dense NLLs through the reference kernel, and a description of that reference (kernel/dtype/device).
    The weights: ``reference_model`` if given, else a float32 copy where :func:`float32_copy_fits` (``budget``),
    else the model's own weights in their dtype (the description says which)."""
    if reference_model is not None:
        ref = reference_model
    else:
        ref = float32_reference(model) if float32_copy_fits(model, budget) else model
    scored = score_sequences(ref, sequences, baseline_policy(), chunk_size, attn_implementation=REFERENCE_KERNEL)
    return scored, f"{REFERENCE_KERNEL}/{_dtype_name(ref)}/{input_device(ref).type}"


def kernel_error(model, sequences: list[list[int]], attn_implementation: str | None,
                 chunk_size: int = DEFAULT_CHUNK_SIZE, reference_model=None,
                 scored: list[ScoredTokens] | None = None,
                 reference: tuple[list[ScoredTokens], str] | None = None) -> KernelError:
    """Per-token |dNLL| of dense through ``attn_implementation`` (None: the model's own) against the
    reference. ``scored`` / ``reference`` reuse NLLs already computed on the same sequences."""
    dense = baseline_policy()
    kernel = resolve_kernel(model, dense, attn_implementation)
    if scored is None:
        scored = score_sequences(model, sequences, dense, chunk_size, attn_implementation=kernel)
    ref_scored, ref_name = reference or reference_scores(model, sequences, chunk_size, reference_model)
    if [len(s.nll) for s in scored] != [len(r.nll) for r in ref_scored]:
        raise ValueError("kernel and reference were scored on different sequences")
    diffs = [(s.nll - r.nll).abs() for s, r in zip(scored, ref_scored)]
    return KernelError(diffs, kernel, ref_name)


PROBE_SLICE = 64  # positions whose logits the probe compares at once (bounds its float32 temporaries)


def _max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| over [B, T, V] logits in float32, PROBE_SLICE positions at a time; NaN if any is NaN."""
    worst = 0.0
    for s in range(0, a.shape[1], PROBE_SLICE):
        d = float((a[:, s:s + PROBE_SLICE].float() - b[:, s:s + PROBE_SLICE].float()).abs().amax())
        if d != d:
            return d
        worst = max(worst, d)
    return worst


def _one_call_logits(model, ids: torch.Tensor, kernel: str, upto: int) -> torch.Tensor:
    """The logits at positions 0..upto-1 of one plain forward over all of ``ids`` (the same attention calls as
    ``model(input_ids)``; only the positions the probe compares go through the output layer)."""
    session = open_session(model, baseline_policy(), kernel=kernel, one_call=True)
    session.keep = torch.arange(upto)
    return session.feed(ids)


def default_probe_positions(length: int, chunk_size: int, count: int = 4) -> list[int]:
    """Inside the first chunk (no cache: where sdpa takes its ``is_causal`` path) and spread over the rest."""
    if length < 3:
        return []
    points = {min(chunk_size, length - 1) // 2}
    points |= {int(length * k / count) for k in range(1, count)}
    return sorted(p for p in points if 0 <= p < length - 1)


@torch.no_grad()
def causality_probe(model, sequence: list[int], attn_implementation: str | None = None,
                    positions: list[int] | None = None, chunk_size: int = DEFAULT_CHUNK_SIZE,
                    seed: int = 0, one_call: bool = False) -> CausalityProbe:
    """Dense through ``attn_implementation``: for each p, run the sequence and a copy whose tokens after p
    are random, chunk by chunk as scoring does (``one_call``: each in one plain forward, the seed's path),
    and compare the logits at positions <= p."""
    chunk_size = as_int("chunk_size", chunk_size, 1)
    dense = baseline_policy()
    kernel = resolve_kernel(model, dense, attn_implementation)
    if positions is None:
        positions = default_probe_positions(len(sequence), chunk_size)
    bad = [p for p in positions if not 0 <= p < len(sequence) - 1]
    if bad:
        raise ValueError(f"probe positions {bad} out of range: expected 0 <= p < {len(sequence) - 1}")
    vocab = model.get_output_embeddings().weight.shape[0]
    generator = torch.Generator().manual_seed(seed)
    original = torch.as_tensor(sequence, dtype=torch.long)[None]
    results = []
    with attention_kernel(model, kernel):
        for p in positions:
            altered = original.clone()
            altered[0, p + 1:] = torch.randint(0, vocab, (len(sequence) - p - 1,), generator=generator)
            if one_call:  # the whole altered sequence in the call: a leak from the future reaches positions <= p
                la = _one_call_logits(model, original, kernel, p + 1)
                results.append(_max_abs_diff(la, _one_call_logits(model, altered, kernel, p + 1)))
                continue
            a = open_session(model, dense, kernel=kernel)
            b = open_session(model, dense, kernel=kernel)
            worst = 0.0
            for start in range(0, p + 1, chunk_size):  # later chunks hold only positions > p
                end = min(start + chunk_size, len(sequence))
                la, lb = a.feed(original[:, start:end]), b.feed(altered[:, start:end])
                seen = p + 1 - start  # positions start..p of this chunk
                diff = _max_abs_diff(la[:, :seen], lb[:, :seen])
                worst = diff if diff != diff else max(worst, diff)  # NaN stays NaN: never "causal"
                if worst != worst:
                    break
            results.append(worst)
    return CausalityProbe(list(positions), results, kernel)
