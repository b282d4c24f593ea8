"""Generation with the streaming cache: chunked prefill, then one token per step.

Memory stays constant as the text grows: the cache never holds more than
``start_size + recent_size`` entries (except for ``dense``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from lm_eval_streaming.core.attention import attention_kernel
from lm_eval_streaming.options import DEFAULT_CHUNK_SIZE, as_int
from lm_eval_streaming.core.policy import CachePolicy
from lm_eval_streaming.core.scoring import Diagnostics, open_session, resolve_kernel


@torch.no_grad()
def generate(model, context: list[int], policy: CachePolicy, max_new_tokens: int,
             decode: Callable[[list[int]], str], stop: list[str] = (), eos_token_id: int | None = None,
             chunk_size: int = DEFAULT_CHUNK_SIZE, temperature: float = 0.0, top_p: float = 1.0,
             generator: torch.Generator | None = None, diagnostics: Diagnostics | None = None,
             on_token: Callable[[int], None] | None = None, attn_implementation: str | None = None) -> list[int]:
    """Greedy (temperature 0) or sampled continuation of ``context``; stops at
    ``max_new_tokens``, the EOS id, or when the decoded text contains a stop string."""
    if not context:
        raise ValueError("generation needs a non-empty context (at least a BOS/EOT token)")
    chunk_size = as_int("chunk_size", chunk_size, 1)
    kernel = resolve_kernel(model, policy, attn_implementation)
    with attention_kernel(model, kernel):
        return _generate(open_session(model, policy, diagnostics, kernel), context, max_new_tokens, decode, stop,
                         eos_token_id, chunk_size, temperature, top_p, generator, on_token)


def _generate(session, context, max_new_tokens, decode, stop, eos_token_id, chunk_size, temperature, top_p,
              generator, on_token) -> list[int]:
    ids = torch.as_tensor(context, dtype=torch.long)[None]
    for start in range(0, ids.shape[1], chunk_size):
        logits = session.feed(ids[:, start:start + chunk_size])
    out: list[int] = []
    for _ in range(max_new_tokens):
        token = _pick(logits[0, -1].float(), temperature, top_p, generator)
        if token == eos_token_id:
            break
        out.append(token)
        if on_token is not None:
            on_token(token)
        if stop and any(s and s in decode(out) for s in stop):
            break
        logits = session.feed(torch.tensor([[token]]))
    return out


def _pick(logits: torch.Tensor, temperature: float, top_p: float, generator) -> int:
    if temperature <= 0:
        return int(logits.argmax())
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        drop = sorted_probs.cumsum(0) - sorted_probs > top_p
        sorted_probs[drop] = 0
        probs = torch.zeros_like(probs).scatter(0, order, sorted_probs)
    return int(torch.multinomial(probs.cpu(), 1, generator=generator))
