"""Generation with the streaming cache, batched, through transformers' own generation machinery.

Options: a ``GenerationConfig`` built as ``model.generate`` builds it (the model's ``generation_config``
updated with the request's options, validated by transformers); the logits processors and warpers
(repetition penalty, top-k/top-p/typical/min-p, min_new_tokens, bad words, ...) and the stopping
criteria (max length, max time, EOS, ``stop_strings``) are the ones ``generate`` itself builds, from
the same private builders it calls. Only the decoding loop is ours, because the cache is: ``generate``
would run the model's own cache. What the loop cannot do (beam search, assisted decoding, several
sequences per request, ...) is refused with one line naming the option.

Batching, exact for every method, every row generating from the first step where the cache allows it:
- the model's own attention (dense, the default kernel): left padding masked as ``generate`` pads;
- the project's kernel with a cache that keeps slots by count (streaming_llm, window, dense through it):
  each row at its own true positions, the padding placed right after the row's first ``sinks`` tokens, so
  the cache's first slots are every row's sinks and its last slots every row's recent tokens (padding is
  never attended); a batch with a prompt shorter than the sinks falls back to lockstep;
- caches that keep entries by score (h2o, tova, knorm) and sliding_recompute: lockstep. Every row feeds its
  own token at the same position, so no padding ever enters a live row's cache; rows with a longer prompt
  keep prefilling, one token per forward, while shorter ones generate (requests come sorted by length).
Only the logits generation uses are computed (each row's last prompt token, then the newest token), and a
row that has finished leaves the batch and its cache.
Rows with the same prompt length are in step with each other: transformers' processors and criteria,
which take one prompt length, run on them together.
Memory stays constant as the text grows: the cache never holds more than ``start_size + recent_size``
entries (except for ``dense``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
from transformers import LogitsProcessorList, StoppingCriteriaList

from lm_eval_streaming.core.attention import REFERENCE_KERNEL, attention_kernel
from lm_eval_streaming.core.cache import cache_nbytes
from lm_eval_streaming.core.policy import CachePolicy
from lm_eval_streaming.core.diagnostics import Diagnostics
from lm_eval_streaming.core.scoring import resolve_kernel
from lm_eval_streaming.core.sessions import input_device, open_session
from lm_eval_streaming.errors import UserError
from lm_eval_streaming.options import DEFAULT_CHUNK_SIZE, StreamingArgError, as_int

# Options accepted with no effect on the text: our own cache and loop replace what they tune.
NO_EFFECT = ("use_cache", "compile_config", "disable_compile", "prefill_chunk_size", "output_scores",
             "output_logits", "output_attentions", "output_hidden_states", "low_memory", "length_penalty",
             "early_stopping", "max_cache_len")
# Options that select another decoding algorithm (transformers' generation modes other than greedy/sample).
MODE_OPTIONS = ("num_beams", "num_beam_groups", "diversity_penalty", "constraints", "force_words_ids",
                "penalty_alpha", "dola_layers", "prompt_lookup_num_tokens", "assistant_early_exit", "use_mtp",
                "assistant_model")


class GenerationOptionError(StreamingArgError):
    """A generation option that transformers rejects or the streaming loop cannot honour."""


def _refused(options: dict, config) -> str | None:
    """Why the streaming loop cannot honour ``config`` (None: it can)."""
    from transformers.generation.configuration_utils import GenerationMode

    mode = config.get_generation_mode()
    if mode not in (GenerationMode.GREEDY_SEARCH, GenerationMode.SAMPLE):
        named = [f"{k}={options[k]!r}" for k in MODE_OPTIONS if k in options] or ["the model's generation_config"]
        return (f"{', '.join(named)} selects {mode.value}: streaming_hf decodes greedily or by sampling "
                f"(do_sample), one sequence per request, through its own cache")
    if (config.num_return_sequences or 1) > 1:
        return (f"num_return_sequences={config.num_return_sequences}: one sequence per request (lm-eval's hf "
                f"model cannot use more either)")
    if config.guidance_scale not in (None, 1, 1.0):
        return (f"guidance_scale={config.guidance_scale}: classifier-free guidance runs the model's own "
                f"forward and cache beside the streaming one")
    if config.return_dict_in_generate:
        return "return_dict_in_generate=True: lm-eval reads generated ids, not a generate output object"
    if config.token_healing:
        return "token_healing=True: it rewrites the prompt tokens; the streaming cache takes them as they are"
    for key in ("cache_implementation", "cache_config", "continuous_batching_config"):
        if options.get(key) is not None:
            return f"{key}={options[key]!r}: streaming_hf always runs its own cache (the method's)"
    return None


def generation_config(model, options: dict | None = None):
    """The ``GenerationConfig`` that ``model.generate(**options)`` would run, validated by transformers,
    or one line naming the option that transformers rejects or the streaming loop cannot honour."""
    options = dict(options or {})
    try:
        config, unused = model._prepare_generation_config(None, **options)
        # the processors validate their own values (e.g. temperature > 0 when sampling)
        trial = copy.deepcopy(config)
        model._prepare_special_tokens(trial, None, device=input_device(model))
        model._get_logits_processor(generation_config=trial, input_ids_seq_length=1,
                                    logits_processor=LogitsProcessorList(), device=input_device(model))
    except (ValueError, TypeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise GenerationOptionError(f"generation options {options}: {first}") from None
    unused = {k: v for k, v in unused.items() if k not in NO_EFFECT}
    if unused:
        key = next(iter(unused))
        raise GenerationOptionError(
            f"generation option {key}={unused[key]!r} is not a transformers GenerationConfig field: expected "
            f"options of transformers' GenerationConfig (e.g. do_sample, temperature, top_k, top_p, "
            f"repetition_penalty, min_new_tokens)")
    why = _refused(options, config)
    if why:
        raise GenerationOptionError(f"generation option refused: {why}")
    return config


class _Group:
    """Rows with one prompt length: in step, so transformers' processors and criteria serve them together."""

    def __init__(self, model, config, rows: list[int], prompts: torch.Tensor, device, max_gen_toks, has_default,
                 tokenizer):
        length = prompts.shape[1]
        cfg = copy.deepcopy(config)
        if max_gen_toks is not None and cfg.max_length is None:
            cfg.max_length = length + max_gen_toks  # what lm-eval's hf passes (its prompt length at batch 1)
        cfg = model._prepare_generated_length(cfg, has_default[0], has_default[1], "input_ids", length, prompts)
        try:
            model._validate_generated_length(cfg, length, has_default[0])
        except ValueError as err:
            raise UserError(f"generation: {err}") from None
        self.rows = torch.tensor(rows, device=device)
        self.length = length  # tokens known per row: prompt + generated
        self.max_length = cfg.max_length
        self.processors = model._get_logits_processor(generation_config=cfg, input_ids_seq_length=length,
                                                      encoder_input_ids=prompts, device=device,
                                                      logits_processor=LogitsProcessorList())
        try:
            self.criteria = model._get_stopping_criteria(generation_config=cfg, stopping_criteria=StoppingCriteriaList(),
                                                         tokenizer=tokenizer)
        except ValueError as err:
            raise GenerationOptionError(f"generation option stop_strings: {err}") from None
        self.unfinished = torch.ones(len(rows), dtype=torch.bool, device=device)


@torch.no_grad()
def generate_batch(model, contexts: Sequence[Sequence[int]], policy: CachePolicy, options: dict | None = None, *,
                   max_gen_toks: int | None = None, decode: Callable[[list[int]], str] | None = None,
                   stop: Sequence[str] = (), chunk_size: int = DEFAULT_CHUNK_SIZE,
                   diagnostics: Diagnostics | None = None, attn_implementation: str | None = None, tokenizer=None,
                   generator: torch.Generator | None = None,
                   on_token: Callable[[int, int], None] | None = None) -> list[list[int]]:
    """Continue every context of the batch; returns each row's generated ids as ``generate`` leaves them
    (an EOS that ended a row included).

    ``options``: keyword options of ``model.generate`` (``do_sample``, ``top_k``, ``repetition_penalty``,
    ``max_new_tokens``, ...). ``max_gen_toks``: lm-eval's budget; each row's ``max_length`` is then its
    own prompt length + ``max_gen_toks`` (unless ``options`` set ``max_length``). ``stop``: strings that end
    a row once ``decode`` of its generated ids contains one (lm-eval's ``until``; the caller cuts the text
    there). Sampling draws from ``generator`` (default: torch's global generator, as ``generate`` does).
    """
    if not contexts or any(len(c) == 0 for c in contexts):
        raise ValueError("generation needs non-empty contexts (at least a BOS/EOT token each)")
    if stop and decode is None:
        raise ValueError("stop strings need a decode function")
    chunk_size = as_int("chunk_size", chunk_size, 1)
    config = generation_config(model, options)
    device = input_device(model)
    model._prepare_special_tokens(config, None, device=device)  # None: no padding to warn about
    options = options or {}
    has_default = (options.get("max_length") is None and max_gen_toks is None
                   and model.generation_config.max_length is None,
                   options.get("min_length") is None and model.generation_config.min_length is None)
    if max_gen_toks is not None and options.get("max_length") is None:
        config.max_length = None  # set per prompt length in _Group
    pad = config._pad_token_tensor
    pad = int(pad) if pad is not None else 0

    by_length: dict[int, list[int]] = {}
    for row, ctx in enumerate(contexts):
        by_length.setdefault(len(ctx), []).append(row)
    groups = [_Group(model, config, rows, torch.tensor([list(contexts[r]) for r in rows], device=device), device,
                     max_gen_toks, has_default, tokenizer) for _, rows in sorted(by_length.items())]
    ids = torch.full((len(contexts), max(g.max_length for g in groups) + 1), pad, dtype=torch.long, device=device)
    for row, ctx in enumerate(contexts):
        ids[row, :len(ctx)] = torch.as_tensor(list(ctx), dtype=torch.long)
    out: list[list[int]] = [[] for _ in contexts]
    kernel = resolve_kernel(model, policy, attn_implementation)

    def step(group: _Group, logits: torch.Tensor) -> None:
        _step(group, ids, logits, config.do_sample, pad, generator, out, decode, stop, on_token)

    lengths = [len(c) for c in contexts]
    with attention_kernel(model, kernel):
        if kernel != REFERENCE_KERNEL:  # the model's own attention (dense): it takes a padding mask
            _padded(_ModelFeed(model, diagnostics), groups, ids, lengths, 0, chunk_size, pad, step)
            return out
        session = open_session(model, policy, diagnostics, kernel)
        # a row shorter than the sinks would generate sinks after its padding: lockstep keeps them in place
        if getattr(session, "rows_at_own_positions", False) and min(lengths) >= policy.sinks:
            _padded(session, groups, ids, lengths, policy.sinks, chunk_size, pad, step)
        else:
            _lockstep(session, groups, ids, chunk_size, step)
    return out


def _lockstep(session, groups: list[_Group], ids: torch.Tensor, chunk_size: int, step) -> None:
    """Every row feeds its own token at the same position (one set of positions for the batch: the caches
    that keep entries by score, sliding_recompute); a group steps when the feed reaches the end of what it
    knows. Only the last position's logits are computed; a finished row leaves the batch and its cache."""
    batch, device = ids.shape[0], ids.device
    live, pos = list(groups), 0
    rows = _Rows(groups, batch, device)
    while live:
        end = min(min(g.length for g in live), pos + chunk_size)
        logits = rows.spread(session.feed(ids[rows.active, pos:end], last_only=True)[:, -1])
        pos = end
        for group in [g for g in live if g.length == end]:
            step(group, logits)
        live = [g for g in live if bool(g.unfinished.any())]
        if live:
            rows.drop_finished(session.select_rows)


class _Rows:
    """Which rows of the batch are still fed: finished rows leave the batch and the cache."""

    def __init__(self, groups: list[_Group], batch: int, device):
        self.groups, self.batch = groups, batch
        self.active = torch.arange(batch, device=device)
        self.alive = torch.ones(batch, dtype=torch.bool, device=device)

    def spread(self, fed: torch.Tensor) -> torch.Tensor:
        """The active rows' logits in a batch-wide tensor (finished rows: zeros, never used)."""
        logits = fed.new_zeros((self.batch, fed.shape[-1]))
        logits[self.active] = fed
        return logits

    def drop_finished(self, select: Callable[[torch.Tensor], None]) -> None:
        for group in self.groups:
            self.alive[group.rows] = group.unfinished
        keep = self.alive[self.active]
        if not bool(keep.all()):
            kept = keep.nonzero().squeeze(1)
            self.active = self.active[kept]
            select(kept)


class _ModelFeed:
    """The model's own attention with a padding mask, as ``generate`` pads (a DynamicCache), through the
    interface of ``CachedSession.feed_rows`` / ``select_rows``."""

    def __init__(self, model, diagnostics: Diagnostics | None):
        from transformers import DynamicCache

        self.model, self.diag = model, diagnostics
        self.cache, self.mask = DynamicCache(config=model.config), None

    def feed_rows(self, tokens, positions, valid, keep) -> torch.Tensor:
        valid = valid.long()
        self.mask = valid if self.mask is None else torch.cat([self.mask, valid], dim=1)
        logits = self.model(input_ids=tokens, attention_mask=self.mask, position_ids=positions, cache=self.cache,
                            use_cache=True, logits_to_keep=keep).logits
        if self.diag is not None:
            self.diag.max_position = max(self.diag.max_position, int(positions.max()))
            self.diag.peak_kv_bytes = max(self.diag.peak_kv_bytes, cache_nbytes(self.cache))
        return logits

    def select_rows(self, kept: torch.Tensor) -> None:
        self.mask = self.mask[kept]
        self.cache.batch_select_indices(kept)


def _padded(session, groups: list[_Group], ids: torch.Tensor, lengths: list[int], sinks: int, chunk_size: int,
            pad: int, step) -> None:
    """Every row generates from the first step, at its own positions: the prompts padded to one width, the
    padding right after each row's first ``sinks`` tokens (at the front when 0, as ``generate`` pads), so a
    cache that keeps its first slots keeps each row's sinks; the prompt in chunks, logits only at each row's
    last prompt token. A row that has finished leaves the batch (``generate`` would keep feeding it padding).
    ``session.feed_rows(tokens, positions, valid, keep)``: logits [B, len(keep), V] at the chunk slots ``keep``."""
    batch, width, device = len(lengths), max(lengths), ids.device
    prompt = torch.full((batch, width), pad, dtype=torch.long, device=device)
    positions = torch.zeros((batch, width), dtype=torch.long, device=device)
    valid = torch.zeros((batch, width), dtype=torch.bool, device=device)
    last = torch.empty(batch, dtype=torch.long, device=device)  # slot of each row's last prompt token
    for row, n in enumerate(lengths):
        head = min(sinks, n)
        slots = torch.cat([torch.arange(head), torch.arange(width - n + head, width)]).to(device)
        prompt[row, slots], positions[row, slots] = ids[row, :n], torch.arange(n, device=device)
        valid[row, slots] = True
        last[row] = slots[-1]
    logits = None
    for start in range(0, width, chunk_size):
        end = min(start + chunk_size, width)
        here = (last >= start) & (last < end)
        keep = torch.unique(last[here]) - start if bool(here.any()) else torch.tensor([end - start - 1], device=device)
        out = session.feed_rows(prompt[:, start:end], positions[:, start:end], valid[:, start:end], keep)
        if logits is None:
            logits = out.new_zeros((batch, out.shape[-1]))
        rows = here.nonzero().squeeze(1)
        logits[rows] = out[rows, torch.searchsorted(keep, last[rows] - start)]
    live, rows = list(groups), _Rows(groups, batch, device)
    newest = torch.empty(batch, dtype=torch.long, device=device)
    first_slot = torch.tensor([0], device=device)  # the one slot of a decoding step
    while True:
        for group in live:
            step(group, logits)
        live = [g for g in live if bool(g.unfinished.any())]
        if not live:
            return
        rows.drop_finished(session.select_rows)
        for group in groups:  # each row's newest token is at its true position length - 1
            newest[group.rows] = group.length - 1
        pos = newest[rows.active][:, None]
        tokens = ids[rows.active, newest[rows.active]][:, None]
        fed = session.feed_rows(tokens, pos, torch.ones_like(tokens, dtype=torch.bool), first_slot)
        logits = rows.spread(fed[:, 0])


def _step(group: _Group, ids, logits, do_sample, pad, generator, out, decode, stop, on_token) -> None:
    """One generation step of one group, as transformers' sampling loop takes it."""
    end = group.length
    scores = group.processors(ids[group.rows, :end], logits[group.rows].float())
    if do_sample:
        tokens = torch.multinomial(torch.softmax(scores, dim=-1), 1, generator=generator).squeeze(1)
    else:
        tokens = scores.argmax(dim=-1)
    tokens = torch.where(group.unfinished, tokens, torch.full_like(tokens, pad))  # finished rows get padding
    ids[group.rows, end] = tokens
    done = group.criteria(ids[group.rows, :end + 1], scores)
    for i, (row, token, alive) in enumerate(zip(group.rows.tolist(), tokens.tolist(), group.unfinished.tolist())):
        if not alive:
            continue
        out[row].append(token)
        if on_token is not None:
            on_token(row, token)
        if stop and not done[i]:
            text = decode(out[row])
            done[i] = any(s and s in text for s in stop)
    group.unfinished &= ~done
    group.length += 1


def generate(model, context: list[int], policy: CachePolicy, max_new_tokens: int,
             decode: Callable[[list[int]], str], stop: list[str] = (), eos_token_id: int | None = None,
             chunk_size: int = DEFAULT_CHUNK_SIZE, temperature: float = 0.0, top_p: float = 1.0,
             generator: torch.Generator | None = None, diagnostics: Diagnostics | None = None,
             on_token: Callable[[int], None] | None = None, attn_implementation: str | None = None) -> list[int]:
    """One context, greedy (temperature 0) or sampled; stops at ``max_new_tokens``, the EOS id (not
    returned), or when the decoded text contains a stop string."""
    options = {"max_new_tokens": max_new_tokens, "eos_token_id": eos_token_id, "pad_token_id": 0,
               "do_sample": temperature > 0}
    if temperature > 0:
        options.update(temperature=temperature, top_p=top_p, top_k=0)  # the whole (nucleus) distribution
    out = generate_batch(model, [context], policy, options, decode=decode, stop=stop, chunk_size=chunk_size,
                         diagnostics=diagnostics, attn_implementation=attn_implementation, generator=generator,
                         on_token=None if on_token is None else (lambda _row, token: on_token(token)))[0]
    if out and eos_token_id is not None and out[-1] == eos_token_id:
        out.pop()
    return out
