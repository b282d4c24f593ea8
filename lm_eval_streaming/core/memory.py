"""What a scoring run needs in memory beyond the weights, what the device has free, and the refusal when
it does not fit (before any work).

The estimate follows the forwards the sessions of ``core/scoring.py`` make, with the real document length and
batch: the KV cache (kept entries + the chunk, every layer), one layer's activations and float32 attention
scores for the tokens of one forward, and the logits of a chunk with their float32 log-softmax.
``sliding_recompute`` re-encodes one window per position: its forwards hold ``min(batch x chunk, windows per
forward)`` windows (``RECOMPUTE_TOKENS_PER_FORWARD`` tokens at most), never more windows than the documents have.
``lm-eval-streaming speed --only memory-estimate`` prints the estimate beside the measured peak per method.
"""

from __future__ import annotations

import torch

from lm_eval_streaming.core.policy import CachePolicy
from lm_eval_streaming.errors import UserError
from lm_eval_streaming.options import DEFAULT_CHUNK_SIZE

# Windows re-encoded per forward by sliding_recompute: bounds its activation memory.
RECOMPUTE_TOKENS_PER_FORWARD = 8192
# kernels that never hold a layer's [Q, K] scores at once on CPU / CUDA (fused, blocked)
FUSED_KERNELS = ("sdpa", "flash_attention_2", "flash_attention_3", "flex_attention")


class InsufficientMemory(UserError, RuntimeError):
    """The estimated memory of a run exceeds what the device has free."""


def recompute_windows_per_forward(policy: CachePolicy, n_tokens: int, batch: int, chunk_size: int) -> int:
    """Windows one sliding_recompute forward re-encodes: a chunk's windows of every document, at most as many
    as ``RECOMPUTE_TOKENS_PER_FORWARD`` tokens hold."""
    window = policy.budget + 1
    return max(1, min(batch * min(chunk_size, n_tokens), RECOMPUTE_TOKENS_PER_FORWARD // window))


def estimate_bytes(model, policy: CachePolicy, n_tokens: int, batch: int, chunk_size: int,
                   one_call: bool = False, kernel: str | None = None, device: torch.device | None = None) -> int:
    """Estimate of the memory a scoring run of ``batch`` documents of at most ``n_tokens`` tokens needs beyond
    the weights. ``one_call``: one plain forward over all ``n_tokens`` through ``kernel`` (logits of every
    position at once). ``device``: where the inputs go (default: the weights' first device)."""
    cfg = model.config.get_text_config()
    heads = cfg.num_attention_heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    param = next(model.parameters())
    elem, device = param.element_size(), device or param.device
    width = 4 * cfg.hidden_size + 3 * max(getattr(cfg, "intermediate_size", 0) or 0, cfg.hidden_size)

    def activations(tokens: int) -> int:  # one layer's hidden states, q/k/v/o and MLP of a forward
        return tokens * width * elem

    def kv(tokens: int) -> int:  # keys and values of every layer
        return 2 * cfg.num_hidden_layers * kv_heads * head_dim * elem * tokens

    def logits(rows: int) -> int:  # the model's logits, their float32 copy and log-softmax
        return rows * cfg.vocab_size * (elem + 8)

    if one_call:
        kernel = kernel or model.config._attn_implementation
        fused = kernel in FUSED_KERNELS and device.type in ("cpu", "cuda")
        # fused kernels work in query blocks; others (eager, MPS) hold [B, H, N, N] scores + probs and the mask
        q_block = min(n_tokens, DEFAULT_CHUNK_SIZE) if fused else n_tokens
        scores = 2 * batch * heads * q_block * n_tokens * 4 + (0 if fused else batch * n_tokens * n_tokens * elem)
        # the logits of every position in the model's dtype; each chunk's float32 copy and log-softmax
        return (kv(batch * n_tokens) + activations(batch * n_tokens) + scores + batch * n_tokens * cfg.vocab_size * elem
                + logits(batch * min(chunk_size, n_tokens)))
    chunk = min(chunk_size, n_tokens)
    if not policy.uses_cache:
        window = min(policy.budget + 1, n_tokens)
        rows = recompute_windows_per_forward(policy, n_tokens, batch, chunk_size)
        # the prefix pass (every position of the first window, all its logits) or one forward of windows
        prefix = activations(batch * window) + 2 * batch * heads * window * window * 4 + logits(batch * window)
        windows = activations(rows * window) + 2 * rows * heads * window * window * 4 + rows * cfg.vocab_size * elem
        return max(prefix, windows) + kv(rows * window) + logits(batch * chunk)
    kept = n_tokens if policy.recent is None else min(n_tokens, policy.budget)
    scores = 2 * batch * heads * chunk * (kept + chunk) * 4  # fp32 scores and probabilities of one layer
    return kv(batch * (kept + chunk)) + activations(batch * chunk) + scores + logits(batch * chunk)


def available_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    import psutil

    return psutil.virtual_memory().available


def check_memory(model, policy: CachePolicy, n_tokens: int, batch: int, chunk_size: int, one_call: bool = False,
                 kernel: str | None = None, device: torch.device | None = None) -> None:
    device = device or next(model.parameters()).device
    need = estimate_bytes(model, policy, n_tokens, batch, chunk_size, one_call, kernel, device)
    have = available_bytes(device)
    if need > have:
        raise InsufficientMemory(
            f"method={policy.method} over {n_tokens} tokens (batch {batch}, "
            f"{'one call (chunk_size=full)' if one_call else f'chunk_size {chunk_size}'}) needs about "
            f"{need / 2**30:.1f} GiB beyond the weights, but only {have / 2**30:.1f} GiB is free on "
            f"{device}. Use a smaller batch_size or chunk_size, shorter documents, or method=streaming_llm "
            f"(its memory does not grow with length)."
        )
