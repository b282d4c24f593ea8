"""Sessions: one stream's state (the cache and the next position) turning a chunk of token ids into logits.

``scoring.score_sequences`` drives them over whole documents, ``generation`` one token at a time. The cache
owns what it holds and answers what each layer's queries see (``cache.py``, ``eviction.py``); a session tells
it where the next chunk sits and ``serve``s it to the project's kernel for the duration of the model call.
"""

from __future__ import annotations

import torch

from lm_eval_streaming.core.architectures import UnsupportedArchitecture, check_kernel_supported, check_supported
from lm_eval_streaming.core.attention import REFERENCE_KERNEL, Serving, serve
from lm_eval_streaming.core.cache import LayerRule, StreamingCache, cache_nbytes
from lm_eval_streaming.core.diagnostics import Diagnostics
from lm_eval_streaming.core.eviction import EvictingCache, ScoredPolicy, chunk_mask, pieces
from lm_eval_streaming.core.layers import layer_specs
from lm_eval_streaming.core.memory import RECOMPUTE_TOKENS_PER_FORWARD
from lm_eval_streaming.core.methods import baseline_policy
from lm_eval_streaming.core.policy import CachePolicy
from lm_eval_streaming.core.rotary_probe import shift_mismatch
from lm_eval_streaming.options import StreamingArgError



def input_device(model) -> torch.device:
    """Where input ids must go: the embedding's device, or its execution device when accelerate
    offloads it (``parallelize=True``: ``model.device`` can then be ``meta`` or another layer's)."""
    embeddings = model.get_input_embeddings()
    hook = getattr(embeddings, "_hf_hook", None)
    device = getattr(hook, "execution_device", None)
    if device is not None:
        return torch.device(device)
    return embeddings.weight.device


def _forward(model, ids, positions, serving: Serving | None = None, cache=None, keep=None):
    """``keep``: whose logits are computed (transformers' ``logits_to_keep``: 1 the last slot, a tensor those
    chunk slots); None: every slot. ``serving``: the layer views of the project's kernel for this call."""
    kwargs = {} if keep is None else {"logits_to_keep": keep}
    if positions is not None:
        kwargs["position_ids"] = positions
    if serving is None:
        return model(input_ids=ids, cache=cache, use_cache=cache is not None, **kwargs).logits
    with serve(serving):
        return model(input_ids=ids, cache=cache, use_cache=cache is not None, **kwargs).logits


def _specs(model, policy: CachePolicy):
    """The model's layers, checked for what the policy needs of them."""
    check_kernel_supported(model.config)
    specs = layer_specs(model)
    if policy.needs_rotary:
        shifted = [i for i, s in enumerate(specs) if not LayerRule(policy, s.window).own]
        missing = [i for i in shifted if specs[i].inv_freq is None]
        why = (f"layer {missing[0]} of {type(model).__name__} has no rotary embedding the project can find"
               if missing else shift_mismatch(model, specs, shifted))
        if why:
            raise UnsupportedArchitecture(f"method={policy.method} shifts positions, but {why}; position_shift=false "
                                          "or method=window keep every key at its true position and work")
    return specs


def _stats(diag: Diagnostics | None):
    return None if diag is None else diag.scores


class CachedSession:
    """streaming_llm, window and dense through the project's kernel: one pass per chunk over cache + chunk."""

    cache_class = StreamingCache

    def __init__(self, model, policy: CachePolicy, diagnostics: Diagnostics | None = None):
        self.model, self.policy, self.diag = model, policy, diagnostics
        self.device = input_device(model)
        self.cache = self.cache_class(policy, _specs(model, policy))
        self.pos = 0
        if diagnostics is not None:
            diagnostics.scores_measured = True

    @property
    def rows_at_own_positions(self) -> bool:
        """``feed_rows`` keeps each row exactly as alone (the cache keeps slots by count from both ends)."""
        return self.cache.rows_at_own_positions

    def _serving(self) -> Serving:
        return Serving(self.cache.view, _stats(self.diag))

    def feed(self, ids: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """ids [B, C] -> logits [B, C, V] for the next C positions of the stream ([B, 1, V]: ``last_only``)."""
        batch, n = ids.shape
        q_pos = torch.arange(self.pos, self.pos + n)
        distance = self.cache.begin(q_pos, measure=self.diag is not None)
        positions = q_pos.to(self.device)[None].expand(batch, -1)
        logits = _forward(self.model, ids.to(self.device), positions, self._serving(), self.cache,
                          keep=1 if last_only else None)
        self.pos += n
        if self.diag is not None:
            self.diag.observe_cache(self.pos, self.cache.nbytes(), distance)
        return logits

    def feed_rows(self, ids: torch.Tensor, positions: torch.Tensor, valid: torch.Tensor,
                  keep: torch.Tensor | None = None) -> torch.Tensor:
        """Rows at their own positions: ids/positions/valid [B, C]; slots where ``valid`` is False are padding
        (never attended; their logits are meaningless). Logits [B, C, V], or [B, len(keep), V] for the chunk
        slots ``keep``. The cache keeps slots as ``feed`` does (the first ``sinks`` and the last ``recent``), so a
        row's sinks must sit in its first slots and its padding right after them: then every row keeps exactly
        what it keeps alone (generation's padded batches; only where ``rows_at_own_positions``)."""
        q_pos, q_valid = positions.cpu(), valid.cpu().bool()
        distance = self.cache.begin(q_pos, q_valid, measure=self.diag is not None)
        logits = _forward(self.model, ids.to(self.device), q_pos.to(self.device), self._serving(), self.cache,
                          keep=None if keep is None else keep.to(self.device))
        self.pos += ids.shape[1]
        if self.diag is not None:
            self.diag.observe_cache(int(q_pos[q_valid].max()) + 1, self.cache.nbytes(), distance)
        return logits

    def select_rows(self, rows: torch.Tensor) -> None:
        """Keep only these rows of the batch (finished ones leave: their cache entries are dropped)."""
        self.cache.select_rows(rows.to(self.device))


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
        if self.diag is not None:
            self.diag.observe_cache(self.pos, cache_nbytes(self.cache))
        return logits


def _dense_views(model, specs, n: int, diag: Diagnostics | None) -> Serving:
    """Layer views of dense attention (each layer's own window) over positions 0..n-1, without a cache."""
    views = StreamingCache(baseline_policy(), specs)
    views.begin(torch.arange(n))
    return Serving(views.view, _stats(diag))


class OneCallSession:
    """Dense as a plain forward computes it (the seed's baseline): the whole sequence in ONE model call,
    no cache, no position ids, the model's own kernel and mask path: exactly ``model(input_ids)``."""

    def __init__(self, model, policy: CachePolicy, diagnostics: Diagnostics | None = None,
                 kernel: str | None = None):
        self.model, self.policy, self.diag = model, policy, diagnostics
        self.device = input_device(model)
        self.specs = _specs(model, policy) if kernel == REFERENCE_KERNEL else None  # the project's kernel
        self.keep = None  # positions whose logits are computed (transformers' logits_to_keep); None: all
        self.used = False
        if diagnostics is not None and self.specs is not None:
            diagnostics.scores_measured = True

    def feed(self, ids: torch.Tensor) -> torch.Tensor:
        if self.used:
            raise RuntimeError("a one-call session scores one whole sequence: it takes one feed")
        self.used = True
        serving = None if self.specs is None else _dense_views(self.model, self.specs, ids.shape[1], self.diag)
        keep = None if self.keep is None else self.keep.to(self.device)
        logits = _forward(self.model, ids.to(self.device), None, serving, keep=keep)
        if self.diag is not None:
            self.diag.observe_cache(ids.shape[1], 0)
        return logits


class RecomputeSession:
    """sliding_recompute: every position re-encodes its window from scratch (no cache)."""

    def __init__(self, model, policy: CachePolicy, diagnostics: Diagnostics | None = None):
        self.model, self.policy, self.diag = model, policy, diagnostics
        self.device = input_device(model)
        self.specs = _specs(model, policy)
        self.window = policy.budget + 1  # past tokens + the current one
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
            pos = torch.arange(prefix.shape[1]).to(self.device)[None].expand(prefix.shape[0], -1)
            logits = _forward(self.model, prefix, pos, _dense_views(self.model, self.specs, prefix.shape[1], self.diag),
                              keep=1 if last_only else None)
            out.append(logits if last_only else logits[:, first - hist_start:])
            first = stop
        if first < end:
            windows = hist.unfold(1, self.window, 1)[:, first - self.window + 1 - hist_start:]  # [B, n, W]
            batch, n, w = windows.shape
            rows = windows.reshape(batch * n, w)
            serving = _dense_views(self.model, self.specs, w, self.diag)
            pos = torch.arange(w).to(self.device)[None]
            step = max(1, RECOMPUTE_TOKENS_PER_FORWARD // w)
            last = [_forward(self.model, rows[i:i + step], pos.expand(len(rows[i:i + step]), -1), serving, keep=1)
                    for i in range(0, len(rows), step)]
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


class EvictingSession(CachedSession):
    """h2o, tova, knorm (``core/eviction.py``): each chunk split at the pruning boundaries (every
    ``evict_every`` tokens), one pass per piece over the kept entries + the piece, then a pruning."""

    rows_at_own_positions = False  # its cache keeps entries by score, one layout for the batch
    cache_class = EvictingCache

    def feed(self, ids: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        batch, n = ids.shape
        observe = self.cache.observe if self.policy.observes else None
        out = []
        for a, b in pieces(self.policy, self.pos, n):
            kept = self.cache.n_kept
            serving = Serving(self.cache.views(chunk_mask(kept, b - a)), _stats(self.diag), observe)
            positions = torch.arange(self.pos, self.pos + b - a, device=self.device)[None].expand(batch, -1)
            out.append(_forward(self.model, ids[:, a:b].to(self.device), positions, serving, self.cache,
                                keep=1 if last_only else None))
            self.pos += b - a
            # with the shift the kept keys sit at slots 0..kept-1 before the piece; without it at their true
            # positions (pos - 1 bounds the distance: exact when the first token is kept)
            distance = kept + b - a - 1 if self.policy.position_shift else None
            if self.diag is not None:
                self.diag.observe_cache(self.pos, self.cache.nbytes(), distance)  # before pruning: the peak
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
    check_supported(model.config, policy, kernel, one_call)
    if one_call:
        return OneCallSession(model, policy, diagnostics, kernel)
    if kernel != REFERENCE_KERNEL:
        return ModelKernelSession(model, policy, diagnostics)
    if isinstance(policy, ScoredPolicy):
        return EvictingSession(model, policy, diagnostics)
    cls = CachedSession if policy.uses_cache else RecomputeSession
    return cls(model, policy, diagnostics)
