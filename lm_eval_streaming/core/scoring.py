"""The scoring loop: tokens -> chunks -> model forward with the streaming cache -> NLLs.

A *session* holds one stream's state (the cache and the next position) and turns
a chunk of token ids into logits; ``score_sequences`` drives sessions over whole
documents, and generation (``generation.py``) drives them one token at a time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from lm_eval_streaming.core.architectures import num_layers, rotary_inv_freq
from lm_eval_streaming.core.attention import REFERENCE_KERNEL, ChunkContext, ScoreStats, attention_kernel, numerics
from lm_eval_streaming.core.cache import StreamingCache, cache_nbytes, retain_slots
from lm_eval_streaming.core.eviction import EvictingCache, ScoredPolicy, chunk_mask, pieces
from lm_eval_streaming.core.memory import RECOMPUTE_TOKENS_PER_FORWARD, check_memory
from lm_eval_streaming.options import DEFAULT_CHUNK_SIZE, StreamingArgError, as_int
from lm_eval_streaming.core.policy import CachePolicy
from lm_eval_streaming.core.methods import baseline_policy


@dataclass
class Diagnostics:
    """Numerics and memory seen while scoring: what separates extrapolation from numerics.

    Attention scores are observable only inside the project's kernel; with another
    kernel (sdpa, eager, ...) they are reported as None: not measured, never 0.
    """

    nan_logits: int = 0
    inf_logits: int = 0
    max_abs_logit: float = 0.0
    # largest query-key position difference attention scored: the position the rotary embedding encodes
    # (StreamingLLM's shift keeps it at most start_size + recent_size however long the stream)
    max_position: int = -1
    max_stream_position: int = -1  # largest true position in the stream (the stream length - 1)
    peak_kv_bytes: int = 0
    scores: ScoreStats = field(default_factory=ScoreStats)
    scores_measured: bool = False

    def observe_logits(self, logits: torch.Tensor) -> None:
        max_abs, n_nan, n_inf = numerics(logits)
        self.max_abs_logit = max(self.max_abs_logit, max_abs)
        self.nan_logits += n_nan
        self.inf_logits += n_inf

    def as_dict(self) -> dict:
        return {
            "nan_logits": self.nan_logits,
            "inf_logits": self.inf_logits,
            "max_abs_logit": self.max_abs_logit,
            "max_abs_attn_score": self.scores.max_abs_score if self.scores_measured else None,
            "nonfinite_attn_scores": self.scores.nonfinite_scores if self.scores_measured else None,
            "max_position": self.max_position,
            "max_stream_position": self.max_stream_position,
            "peak_kv_bytes": self.peak_kv_bytes,
        }


def input_device(model) -> torch.device:
    """Where input ids must go: the embedding's device, or its execution device when accelerate
    offloads it (``parallelize=True``: ``model.device`` can then be ``meta`` or another layer's)."""
    embeddings = model.get_input_embeddings()
    hook = getattr(embeddings, "_hf_hook", None)
    device = getattr(hook, "execution_device", None)
    if device is not None:
        return torch.device(device)
    return embeddings.weight.device


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


def _forward(model, ids, positions, ctx=None, cache=None, keep=None):
    """``keep``: whose logits are computed (transformers' ``logits_to_keep``: 1 the last slot, a tensor those
    chunk slots); None: every slot."""
    kwargs = {} if keep is None else {"logits_to_keep": keep}
    if ctx is not None:
        kwargs["streaming"] = ctx
    out = model(input_ids=ids, position_ids=positions, cache=cache, use_cache=cache is not None, **kwargs)
    return out.logits


class CachedSession:
    """streaming_llm, window and dense through the project's kernel: one pass per chunk over cache + chunk."""

    rows_at_own_positions = True  # feed_rows: its cache keeps slots by count, whatever the positions

    def __init__(self, model, policy: CachePolicy, diagnostics: Diagnostics | None = None):
        self.model, self.policy, self.diag = model, policy, diagnostics
        self.device = input_device(model)
        self.cache = StreamingCache(policy, num_layers(model))
        self.inv_freq = rotary_inv_freq(model) if policy.needs_rotary else None
        self.pos = 0
        self.slot_pos = self.slot_valid = None  # [B, slots] per-row positions and validity (feed_rows only)
        if diagnostics is not None:
            diagnostics.scores_measured = True

    def feed(self, ids: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """ids [B, C] -> logits [B, C, V] for the next C positions of the stream ([B, 1, V]: ``last_only``)."""
        batch, n = ids.shape
        q_pos = torch.arange(self.pos, self.pos + n)
        sinks, recent = self.policy.retained(self.pos)
        k_pos = torch.cat([torch.arange(sinks), torch.arange(self.pos - recent, self.pos), q_pos])
        stats = self.diag.scores if self.diag is not None else None
        ctx = ChunkContext.build(self.policy, q_pos, k_pos, self.inv_freq, stats)
        distance = _largest_distance(ctx, self.policy, q_pos, k_pos) if self.diag is not None else None
        positions = q_pos.to(self.device)[None].expand(batch, -1)
        logits = _forward(self.model, ids.to(self.device), positions, ctx.to(self.device), cache=self.cache,
                          keep=1 if last_only else None)
        self.pos += n
        _observe_cache(self.diag, self.pos, self.cache.nbytes(), distance)
        return logits

    def feed_rows(self, ids: torch.Tensor, positions: torch.Tensor, valid: torch.Tensor,
                  keep: torch.Tensor | None = None) -> torch.Tensor:
        """Rows at their own positions: ids/positions/valid [B, C]; slots where ``valid`` is False are padding
        (never attended; their logits are meaningless). Logits [B, C, V], or [B, len(keep), V] for the chunk
        slots ``keep``. The cache keeps slots as ``feed`` does (the first
        ``sinks`` and the last ``recent``), so a row's sinks must sit in its first slots and its padding
        right after them: then every row keeps exactly what it keeps alone (generation's padded batches)."""
        batch, n = ids.shape
        q_pos, q_valid = positions.cpu(), valid.cpu().bool()
        if self.slot_pos is None:
            self.slot_pos = torch.zeros((batch, 0), dtype=torch.long)
            self.slot_valid = torch.zeros((batch, 0), dtype=torch.bool)
        k_pos, k_valid = torch.cat([self.slot_pos, q_pos], dim=1), torch.cat([self.slot_valid, q_valid], dim=1)
        stats = self.diag.scores if self.diag is not None else None
        ctx = ChunkContext.build_rows(self.policy, q_pos, k_pos, q_valid, k_valid, self.inv_freq, stats)
        distance = _largest_distance(ctx, self.policy, q_pos, k_pos) if self.diag is not None else None
        logits = _forward(self.model, ids.to(self.device), q_pos.to(self.device), ctx.to(self.device),
                          cache=self.cache, keep=None if keep is None else keep.to(self.device))
        self.pos += n
        sinks, recent = self.policy.retained(self.pos)  # what SinkWindowLayer keeps, slot for slot
        self.slot_pos, self.slot_valid = (retain_slots(t, sinks, recent, 1) for t in (k_pos, k_valid))
        _observe_cache(self.diag, int(q_pos[q_valid].max()) + 1, self.cache.nbytes(), distance)
        return logits

    def select_rows(self, rows: torch.Tensor) -> None:
        """Keep only these rows of the batch (finished ones leave: their cache entries are dropped)."""
        self.cache.batch_select_indices(rows.to(self.device))
        if self.slot_pos is not None:
            self.slot_pos, self.slot_valid = self.slot_pos[rows.cpu()], self.slot_valid[rows.cpu()]


def _largest_distance(ctx: ChunkContext, policy: CachePolicy, q_pos: torch.Tensor, k_pos: torch.Tensor) -> int:
    """Largest query-key position difference the chunk's attention scores (``ctx.blocked`` still on the CPU):
    a key's true distance; a sink's from the query's shifted position when the policy shifts it."""
    dist = q_pos[..., :, None] - k_pos[..., None, :]  # [Q, K], or [B, Q, K] for rows at their own positions
    n = ctx.n_sink_keys
    if n:
        dist[..., :n] = policy.sink_query_position(q_pos)[..., :, None] - k_pos[..., None, :n]
    return int(dist.masked_fill(ctx.blocked.view(dist.shape), -1).max())


class ModelKernelSession:
    """Dense through the model's own attention (sdpa, eager, flash, ...) with an ordinary transformers
    cache, chunk by chunk: what a plain forward computes, with bounded activation memory."""

    def __init__(self, model, policy: CachePolicy, diagnostics: Diagnostics | None = None):
        from transformers import DynamicCache

        self.model, self.diag = model, diagnostics
        self.device = input_device(model)
        self.cache = DynamicCache(config=model.config)
        self.pos = 0

    def feed(self, ids: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        batch, n = ids.shape
        positions = torch.arange(self.pos, self.pos + n, device=self.device)[None].expand(batch, -1)
        logits = _forward(self.model, ids.to(self.device), positions, cache=self.cache,
                          keep=1 if last_only else None)
        self.pos += n
        _observe_cache(self.diag, self.pos, cache_nbytes(self.cache))
        return logits


class OneCallSession:
    """Dense as a plain forward computes it (the seed's baseline): the whole sequence in ONE model call,
    no cache, no position ids, the model's own kernel and mask path: exactly ``model(input_ids)``."""

    def __init__(self, model, policy: CachePolicy, diagnostics: Diagnostics | None = None,
                 kernel: str | None = None):
        self.model, self.policy, self.diag = model, policy, diagnostics
        self.device = input_device(model)
        self.reference = kernel == REFERENCE_KERNEL  # the project's kernel needs its (dense) context
        self.keep = None  # positions whose logits are computed (transformers' logits_to_keep); None: all
        self.used = False
        if diagnostics is not None and self.reference:
            diagnostics.scores_measured = True

    def feed(self, ids: torch.Tensor) -> torch.Tensor:
        if self.used:
            raise RuntimeError("a one-call session scores one whole sequence: it takes one feed")
        self.used = True
        kwargs = {}
        if self.reference:
            pos = torch.arange(ids.shape[1])
            stats = self.diag.scores if self.diag is not None else None
            kwargs["streaming"] = ChunkContext.build(self.policy, pos, pos, None, stats).to(self.device)
        if self.keep is not None:
            kwargs["logits_to_keep"] = self.keep.to(self.device)
        logits = self.model(input_ids=ids.to(self.device), use_cache=False, **kwargs).logits
        _observe_cache(self.diag, ids.shape[1], 0)
        return logits


def _observe_cache(diag: Diagnostics | None, pos: int, kv_bytes: int, distance: int | None = None) -> None:
    """After ``pos`` tokens of the stream; ``distance``: the largest query-key distance scored (None: the
    keys sit at their true positions and the first is kept, so it is ``pos - 1``)."""
    if diag is not None:
        diag.max_stream_position = max(diag.max_stream_position, pos - 1)
        diag.max_position = max(diag.max_position, pos - 1 if distance is None else distance)
        diag.peak_kv_bytes = max(diag.peak_kv_bytes, kv_bytes)


class RecomputeSession:
    """sliding_recompute: every position re-encodes its window from scratch (no cache)."""

    def __init__(self, model, policy: CachePolicy, diagnostics: Diagnostics | None = None):
        self.model, self.policy, self.diag = model, policy, diagnostics
        self.device = input_device(model)
        self.window = policy.budget + 1  # past tokens + the current one
        self.dense = baseline_policy()
        self.history = None  # [B, <= window - 1 + C] most recent tokens
        self.pos = 0
        if diagnostics is not None:
            diagnostics.scores_measured = True

    def feed(self, ids: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        ids = ids.to(self.device)
        hist = ids if self.history is None else torch.cat([self.history, ids], dim=1)
        hist_start = self.pos - (hist.shape[1] - ids.shape[1])  # true position of hist[:, 0]
        out = []
        first, end = self.pos, self.pos + ids.shape[1]
        if last_only:
            first = end - 1  # the last position's window (or prefix) alone
        # Positions < window see the whole prefix: one dense pass over it is exact.
        if first < self.window:
            stop = min(end, self.window)
            prefix = hist[:, : stop - hist_start]
            pos = torch.arange(prefix.shape[1])
            ctx = self._dense_ctx(pos)
            logits = _forward(self.model, prefix, pos.to(self.device)[None].expand(prefix.shape[0], -1), ctx,
                              keep=1 if last_only else None)
            out.append(logits if last_only else logits[:, first - hist_start:])
            first = stop
        if first < end:
            windows = hist.unfold(1, self.window, 1)[:, first - self.window + 1 - hist_start:]  # [B, n, W]
            batch, n, w = windows.shape
            rows = windows.reshape(batch * n, w)
            pos = torch.arange(w)
            ctx = self._dense_ctx(pos)
            step = max(1, RECOMPUTE_TOKENS_PER_FORWARD // w)
            last = [
                _forward(self.model, rows[i:i + step], pos.to(self.device)[None].expand(len(rows[i:i + step]), -1),
                         ctx, keep=1)
                for i in range(0, len(rows), step)
            ]
            out.append(torch.cat(last, dim=0).reshape(batch, n, -1))
        self.pos = end
        self.history = hist[:, -(self.window - 1):] if self.window > 1 else hist[:, :0]
        if self.diag is not None:
            self.diag.max_position = max(self.diag.max_position, min(self.pos, self.window) - 1)
            self.diag.max_stream_position = max(self.diag.max_stream_position, self.pos - 1)
        return torch.cat(out, dim=1)

    def select_rows(self, rows: torch.Tensor) -> None:
        if self.history is not None:
            self.history = self.history[rows.to(self.device)]

    def _dense_ctx(self, pos):
        stats = self.diag.scores if self.diag is not None else None
        return ChunkContext.build(self.dense, pos, pos, None, stats).to(self.device)


class EvictingSession(CachedSession):
    """h2o, tova, knorm (``core/eviction.py``): each chunk split at the pruning boundaries (every
    ``evict_every`` tokens), one pass per piece over the kept entries + the piece, then a pruning."""

    rows_at_own_positions = False  # its cache keeps entries by score, one layout for the batch

    def __init__(self, model, policy: ScoredPolicy, diagnostics: Diagnostics | None = None):
        super().__init__(model, policy, diagnostics)
        self.cache = EvictingCache(policy, num_layers(model), self.inv_freq)

    def feed(self, ids: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        batch, n = ids.shape
        stats = self.diag.scores if self.diag is not None else None
        observe = self.cache.observe if self.policy.observes else None
        out = []
        for a, b in pieces(self.policy, self.pos, n):
            kept = self.cache.n_kept
            ctx = ChunkContext(blocked=chunk_mask(kept, b - a), stats=stats, observe=observe)
            positions = torch.arange(self.pos, self.pos + b - a, device=self.device)[None].expand(batch, -1)
            out.append(_forward(self.model, ids[:, a:b].to(self.device), positions, ctx.to(self.device),
                                cache=self.cache, keep=1 if last_only else None))
            self.pos += b - a
            # with the shift the kept keys sit at slots 0..kept-1 before the piece; without it at their true
            # positions (pos - 1 bounds the distance: exact when the first token is kept)
            distance = kept + b - a - 1 if self.policy.position_shift else None
            _observe_cache(self.diag, self.pos, self.cache.nbytes(), distance)  # before pruning: the peak
            if self.pos % self.policy.evict_every == 0:
                self.cache.prune()
        if last_only:
            return out[-1]
        return out[0] if len(out) == 1 else torch.cat(out, dim=1)


def check_one_call(policy: CachePolicy, one_call: bool) -> None:
    if one_call and not policy.full_attention:
        raise StreamingArgError(f"chunk_size=full (one model call per sample) with method={policy.method}: "
                                "it is the dense baseline as a plain forward computes it; use it with method=dense")


def open_session(model, policy: CachePolicy, diagnostics: Diagnostics | None = None, kernel: str = REFERENCE_KERNEL,
                 one_call: bool = False):
    """A session for ``policy``; the caller holds ``attention_kernel(model, kernel)`` while feeding it.
    ``one_call``: dense in one plain forward over the whole sequence (feed it once)."""
    check_one_call(policy, one_call)
    if one_call:
        return OneCallSession(model, policy, diagnostics, kernel)
    if kernel != REFERENCE_KERNEL:
        return ModelKernelSession(model, policy, diagnostics)
    if isinstance(policy, ScoredPolicy):
        return EvictingSession(model, policy, diagnostics)
    cls = CachedSession if policy.uses_cache else RecomputeSession
    return cls(model, policy, diagnostics)


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
    kernel = resolve_kernel(model, policy, attn_implementation)
    check_one_call(policy, one_call)
    total = max(lengths)
    check_memory(model, policy, total, len(sequences), chunk_size, one_call, kernel, input_device(model))
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
