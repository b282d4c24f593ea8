"""Measured numerics of an attention kernel, instead of thresholds on logits.

- *kernel error*: per-token |dNLL| between a kernel in the model's dtype and device and the
  project's reference kernel in float32 on the same tokens (what the kernel and dtype cost);
- *causality probe*: replace the tokens after position p; the logits at positions <= p must not
  change. A kernel that lets a position see the future (e.g. pytorch#195910, MPS SDPA with
  ``is_causal=True`` in float16) shows up here and nowhere else.

Both run dense attention through the same chunked scoring path that ``score_sequences`` uses.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from lm_eval_streaming.core.attention import REFERENCE_KERNEL, attention_kernel
from lm_eval_streaming.options import DEFAULT_CHUNK_SIZE, as_int
from lm_eval_streaming.core.methods import baseline_policy
from lm_eval_streaming.core.scoring import ScoredTokens, input_device, open_session, resolve_kernel, score_sequences


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


def _dtype_name(model) -> str:
    return str(next(model.parameters()).dtype).replace("torch.", "")


def float32_reference(model):
    """The model itself when it is float32, else a float32 copy on the same device."""
    if next(model.parameters()).dtype == torch.float32:
        return model
    return copy.deepcopy(model).float()


def reference_scores(model, sequences: list[list[int]], chunk_size: int = DEFAULT_CHUNK_SIZE,
                     reference_model=None) -> tuple[list[ScoredTokens], str]:
    """Dense NLLs through the reference kernel in float32, and a description of that reference."""
    ref = reference_model if reference_model is not None else float32_reference(model)
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
            a = open_session(model, dense, kernel=kernel, one_call=one_call)
            b = open_session(model, dense, kernel=kernel, one_call=one_call)
            worst = 0.0
            step = len(sequence) if one_call else chunk_size
            for start in range(0, p + 1, step):  # later chunks hold only positions > p
                end = min(start + step, len(sequence))
                la, lb = a.feed(original[:, start:end]), b.feed(altered[:, start:end])
                seen = p + 1 - start  # positions start..p of this chunk
                diff = float((la[:, :seen].float() - lb[:, :seen].float()).abs().amax())
                worst = diff if diff != diff else max(worst, diff)  # NaN stays NaN: never "causal"
                if worst != worst:
                    break
            results.append(worst)
    return CausalityProbe(list(positions), results, kernel)
