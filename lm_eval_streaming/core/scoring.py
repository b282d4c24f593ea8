"""The scoring loop: tokens -> chunks -> a session (``sessions.py``) per batch of streams -> NLLs."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lm_eval_streaming.core.attention import REFERENCE_KERNEL, attention_kernel
from lm_eval_streaming.core.diagnostics import Diagnostics
from lm_eval_streaming.core.policy import CachePolicy
from lm_eval_streaming.core.memory import check_memory
from lm_eval_streaming.core.sessions import check_one_call, input_device, open_session
from lm_eval_streaming.options import DEFAULT_CHUNK_SIZE, StreamingArgError, as_int


def check_kernel(policy: CachePolicy, attn_implementation: str | None) -> None:
    if not policy.full_attention and attn_implementation not in (None, REFERENCE_KERNEL):
        raise StreamingArgError(
            f"attn_implementation={attn_implementation!r} with method={policy.method}: the streaming methods "
            f"run the project's kernel ({REFERENCE_KERNEL}); other kernels are for method=dense only")


def resolve_kernel(model, policy: CachePolicy, attn_implementation: str | None) -> str:
    """The attention implementation a run uses: streaming methods need the project's kernel;
    full attention uses the requested one, by default the model's own (what a plain forward computes)."""
    check_kernel(policy, attn_implementation)
    if not policy.full_attention:
        return REFERENCE_KERNEL
    return attn_implementation or model.config._attn_implementation


def check_scoring(model, policy: CachePolicy, attn_implementation: str | None = None, one_call: bool = False,
                  tokens: int = 2, batch: int = 1, chunk_size: int = DEFAULT_CHUNK_SIZE) -> str:
    """Everything :func:`score_sequences` refuses for ``batch`` sequences of ``tokens`` tokens (kernel, one call,
    memory, the model's support of the method and the rotary probe), without scoring: a caller with several
    rows checks them all before the first is scored. Returns the kernel."""
    kernel = _check_inputs(model, policy, attn_implementation, one_call, tokens, batch, chunk_size)
    open_session(model, policy, None, kernel, one_call)  # support and rotary probe: what opening refuses
    return kernel


def _check_inputs(model, policy, attn_implementation, one_call, tokens, batch, chunk_size) -> str:
    kernel = resolve_kernel(model, policy, attn_implementation)
    check_one_call(policy, one_call)
    check_memory(model, policy, tokens, batch, chunk_size, one_call, kernel, input_device(model))
    return kernel


@dataclass
class ScoredTokens:
    """Per-token results for one sequence: token i+1 predicted from tokens 0..i (CPU tensors)."""

    nll: torch.Tensor  # float32 [T - 1]: sum it in float64 on the CPU afterwards
    correct: torch.Tensor  # bool [T - 1]

    @property
    def positions(self) -> torch.Tensor:
        """Position of each predicted token in the stream."""
        return torch.arange(1, len(self.nll) + 1)


@torch.no_grad()
def score_sequences(model, sequences: list[list[int]], policy: CachePolicy,
                    chunk_size: int = DEFAULT_CHUNK_SIZE, diagnostics: Diagnostics | None = None,
                    progress=None, attn_implementation: str | None = None,
                    one_call: bool = False) -> list[ScoredTokens]:
    """Score every token after the first of each sequence, as one stream per sequence.

    ``one_call`` (dense only): the whole batch in one plain forward, no cache (``model(input_ids)``);
    ``chunk_size`` then only bounds the log-softmax work per step.

    Sequences are right-padded into one batch: padding comes after the real
    tokens, so causal attention keeps it from touching them (exact for every method).
    ``progress`` is called with the number of positions done after each chunk.
    Nothing here creates a float64 tensor (MPS has none).
    """
    chunk_size = as_int("chunk_size", chunk_size, 1)
    if not sequences:
        return []
    lengths = [len(s) for s in sequences]
    if min(lengths) < 2:
        raise ValueError(f"each sequence needs at least 2 tokens to score one; got lengths {lengths}")
    total = max(lengths)
    kernel = _check_inputs(model, policy, attn_implementation, one_call, total, len(sequences), chunk_size)
    ids = torch.zeros(len(sequences), total, dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = torch.as_tensor(seq, dtype=torch.long)
    nll = torch.full((len(sequences), total - 1), float("nan"), dtype=torch.float32)
    correct = torch.zeros(len(sequences), total - 1, dtype=torch.bool)
    written = 0
    with attention_kernel(model, kernel):
        session = open_session(model, policy, diagnostics, kernel, one_call)
        every = session.feed(ids) if one_call else None  # [B, total, V]: the last position predicts nothing
        for start in range(0, total - 1, chunk_size):
            end = min(start + chunk_size, total - 1)
            logits = every[:, start:end] if one_call else session.feed(ids[:, start:end])
            targets = ids[:, start + 1 : end + 1].to(logits.device)
            logprobs = torch.log_softmax(logits.float(), dim=-1)
            nll[:, start:end] = -logprobs.gather(-1, targets[..., None]).squeeze(-1).cpu()
            correct[:, start:end] = (logits.argmax(-1) == targets).cpu()
            written = end
            if diagnostics is not None:
                diagnostics.observe_logits(logits)
            if progress is not None:
                progress(end - start)
    if written != total - 1:  # never hand back a position that was not scored
        raise RuntimeError(f"scored {written} of {total - 1} positions")
    return [ScoredTokens(nll[row, : n - 1], correct[row, : n - 1]) for row, n in enumerate(lengths)]
