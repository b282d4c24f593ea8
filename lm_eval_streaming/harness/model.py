"""The lm-eval adapter: ``--model streaming_hf``.

A subclass of lm-eval's HF model, so every HF option keeps working; only the
three request types are routed through the streaming scoring loop.
"""

from __future__ import annotations

import logging
import os
import warnings

import torch
from lm_eval.models.huggingface import HFLM
from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs, postprocess_generated_text
from tqdm import tqdm

from lm_eval_streaming import default_model
from lm_eval_streaming.core.architectures import check_supported
from lm_eval_streaming.core.attention import REFERENCE_KERNEL, check_attention_name
from lm_eval_streaming.errors import install_excepthook
from lm_eval_streaming.core.generation import generate_batch, generation_config
from lm_eval_streaming.core.loading import canonical_model_id, check_model_id, files_digest
from lm_eval_streaming.options import (DEFAULT_CHUNK_SIZE, DEFAULT_RECENT_SIZE, DEFAULT_START_SIZE, FULL_CHUNK, as_int,
                                       resolve_device)
from lm_eval_streaming.options import StreamingArgError
from lm_eval_streaming.core.methods import policy_for
from lm_eval_streaming.harness.scores import CONTEXT_BUCKETS, RollingResult, context_bucket
from lm_eval_streaming.harness.use_cache import CACHE_NEUTRAL_ARGS, guard_cache, tokenizer_digest
from lm_eval_streaming.core.diagnostics import Diagnostics
from lm_eval_streaming.core.memory import available_bytes, estimate_bytes
from lm_eval_streaming.core.scoring import ScoredTokens, check_kernel, resolve_kernel, score_sequences
from lm_eval_streaming.core.sessions import check_one_call, input_device

logger = logging.getLogger(__name__)
install_excepthook()


OWN_ARGS = ("method", "start_size", "recent_size", "chunk_size", "attn_implementation", "evict_every",
            "position_shift")


def _check_unknown_args(kwargs: dict) -> None:
    """Unknown keys go to from_pretrained (as with `hf`), unless they look like a typo of ours."""
    import difflib
    import inspect

    known = set(inspect.signature(HFLM.__init__).parameters)
    for key in kwargs:
        close = difflib.get_close_matches(key, OWN_ARGS, n=1, cutoff=0.6)
        if key not in known and close:
            raise StreamingArgError(
                f"unknown model arg {key!r}: did you mean {close[0]!r}? streaming_hf's own args are "
                f"{', '.join(OWN_ARGS)}; other keys go to lm-eval's hf model and from_pretrained"
            )


def _check_local_checkpoint(pretrained: str, tokenizer) -> None:
    """Name the problem with a local path before lm-eval / transformers fail deeper down (the checks that
    benchmark and experiment run too; with tokenizer= given, the checkpoint needs no tokenizer files)."""
    if tokenizer is None or not os.path.isdir(os.path.expanduser(pretrained)):
        check_model_id(pretrained, arg="pretrained")  # a hub id passes; a missing path is refused
    from lm_eval_streaming.core.loading import check_hub_access

    check_hub_access(pretrained, arg="pretrained")  # an unreachable hub fails in seconds, not after a minute


def _check_architecture(pretrained: str, policy, kwargs: dict, kernel: str | None, one_call: bool) -> None:
    """Refuse an unsupported architecture from its config, before the weights are loaded."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(pretrained, revision=kwargs.get("revision") or "main",
                                            trust_remote_code=bool(kwargs.get("trust_remote_code", False)))
    except (OSError, ValueError):
        return  # lm-eval's own loading reports it
    check_supported(config, policy, kernel, one_call)


def _drop_local_revision(pretrained: str, kwargs: dict) -> None:
    """transformers ignores ``revision`` for a local directory: say so, and leave it out of the identity."""
    revision = kwargs.get("revision")
    if revision not in (None, "", "main") and os.path.isdir(os.path.expanduser(pretrained)):
        logger.warning("revision=%s is ignored: pretrained=%s is a local directory (transformers loads its files "
                       "as they are); the run is recorded without a revision", revision, pretrained)
        kwargs.pop("revision")


def _check_batch_size(batch_size) -> None:
    """lm-eval passes ``--batch_size`` through: an int, ``auto`` or ``auto:N`` (N is hf's re-detection
    schedule; the memory estimate here is recomputed for every batch of requests anyway)."""
    text = str(batch_size)
    if text == "auto" or (text.startswith("auto:") and text[5:].replace(".", "", 1).isdigit()):
        return
    as_int("batch_size", batch_size, 1)


# Registered as ``streaming_hf`` by its public name ``lm_eval_streaming.model:StreamingHFLM`` (the start-up hook
# and the ``lm_eval.models`` entry point), which lm-eval resolves to this class on first use.
class StreamingHFLM(HFLM):
    """HF causal LM scored with a StreamingLLM cache (or a baseline: dense, window, sliding_recompute)."""

    def __init__(self, pretrained: str | None = None, method: str = "streaming_llm", start_size=DEFAULT_START_SIZE,
                 recent_size=DEFAULT_RECENT_SIZE, chunk_size=DEFAULT_CHUNK_SIZE, device: str | None = None,
                 attn_implementation: str | None = None, evict_every=None, position_shift=None, **kwargs):
        # Validate everything before any model is loaded.
        _check_unknown_args(kwargs)
        # evict_every / position_shift: options of the methods that take them (None: the method's default)
        self.policy = policy_for(str(method), start_size, recent_size, evict_every=evict_every,
                                 position_shift=position_shift)
        # chunk_size=full (method=dense): each document in one plain forward, no cache (the seed's baseline);
        # self.chunk_size then bounds the log-softmax steps and a generation prompt's chunks
        self.one_call = isinstance(chunk_size, str) and chunk_size.strip().lower() == FULL_CHUNK
        check_one_call(self.policy, self.one_call)
        self.chunk_size = DEFAULT_CHUNK_SIZE if self.one_call else as_int("chunk_size", chunk_size, 1)
        _check_batch_size(kwargs.get("batch_size", 1))
        check_kernel(self.policy, attn_implementation)
        check_attention_name(attn_implementation)
        pretrained = default_model.resolve(pretrained) or pretrained  # an embedded model's name: its checkpoint
        _check_local_checkpoint(pretrained, kwargs.get("tokenizer"))
        _drop_local_revision(pretrained, kwargs)
        self._result_args = {k: v for k, v in kwargs.items() if k not in CACHE_NEUTRAL_ARGS}
        self._tokenizer_arg = kwargs.get("tokenizer")
        _check_architecture(pretrained, self.policy, kwargs, attn_implementation, self.one_call)
        if attn_implementation not in (None, REFERENCE_KERNEL):
            kwargs["attn_implementation"] = attn_implementation  # loaded as hf would load it
        super().__init__(pretrained=pretrained, device=resolve_device(device), **kwargs)
        check_supported(self.config, self.policy, attn_implementation, self.one_call)
        # The kernel each request runs: dense defaults to the model's own (what a plain forward computes).
        self.kernel = resolve_kernel(self.model, self.policy, attn_implementation)
        self.pretrained_id = pretrained
        self.trained_context = getattr(self.config, "max_position_embeddings", None)
        self.diagnostics = Diagnostics()
        self._warned_positions = False

    @property
    def recorded_chunk_size(self):
        """``"full"`` for one plain forward per document, else the chunk size."""
        return FULL_CHUNK if self.one_call else self.chunk_size

    # ---------------------------------------------------------------- helpers
    def _batch_for(self, sequences: list[list[int]]) -> int:
        """Documents per forward: the user's batch size, or with ``auto`` the most that the memory
        estimate fits into half of what is free (at most ``max_batch_size``)."""
        bs = str(self.batch_size)
        if not bs.startswith("auto"):
            return max(1, int(bs))
        longest = max(len(s) for s in sequences)
        free = available_bytes(input_device(self.model)) // 2
        batch = 1
        while batch < min(len(sequences), self.max_batch_size) and \
                estimate_bytes(self.model, self.policy, longest, 2 * batch, self.chunk_size, self.one_call,
                               self.kernel, input_device(self.model)) <= free:
            batch *= 2
        batch = min(batch, len(sequences), self.max_batch_size)
        logger.info("batch_size=%s: %d documents per forward (%d tokens, memory estimate)", bs, batch, longest)
        return batch

    def set_cache_hook(self, cache_hook) -> None:
        """lm-eval's ``--use_cache`` keys results by request only; refuse a cache filled under another
        model, method, cache size, kernel or dtype, so one setting's numbers never come back as another's."""
        super().set_cache_hook(cache_hook)
        db = getattr(cache_hook, "dbdict", None)
        if db is not None:
            guard_cache(db, self.cache_fingerprint())

    def cache_fingerprint(self) -> str:
        """Everything that changes a result, as one line: the model (resolved path or hub id, revision and
        sha, a digest of its files where it is a directory), the tokenizer (source and content), dtype,
        device, the cache policy with all its options, chunk size, kernel, prefix token, and every other
        model arg given (max_gen_toks, add_bos_token, think_end_token, ...)."""
        import dataclasses

        dtype = str(next(self.model.parameters()).dtype).replace("torch.", "")
        sha = getattr(self.model.config, "_commit_hash", None)
        local = os.path.isdir(self.pretrained_id)
        tok = self._tokenizer_arg
        tok_source = canonical_model_id(tok) if isinstance(tok, str) else type(tok).__name__ if tok else "model's"
        policy = ",".join(f"{f.name}={getattr(self.policy, f.name)}" for f in dataclasses.fields(self.policy))
        others = ",".join(f"{k}={v}" for k, v in sorted(self._result_args.items()))
        return (f"model={canonical_model_id(self.pretrained_id)} "
                + (f"files={files_digest(self.pretrained_id)} " if local else f"revision={self.revision} ")
                + f"sha={sha} tokenizer={tok_source} tokenizer_content={tokenizer_digest(self.tokenizer)} "
                f"dtype={dtype} device={input_device(self.model)} method={self.policy.method} {policy} "
                f"chunk_size={self.recorded_chunk_size} attn_implementation={self.kernel} "
                f"prefix_token_id={self.prefix_token_id} add_bos_token={self.add_bos_token} "
                f"max_gen_toks={self.max_gen_toks} args={others or '-'}")

    def _check_positions(self, longest: int) -> None:
        if self._warned_positions or not self.policy.full_attention or not self.trained_context:
            return
        if longest > self.trained_context:
            self._warned_positions = True
            warnings.warn(
                f"method=dense runs full causal attention over {longest} tokens, past the model's "
                f"max_position_embeddings={self.trained_context}: positions beyond it were never seen in "
                f"training (this is the seed's baseline; lm-eval's `hf` model cuts documents into "
                f"{self.trained_context}-token windows instead).",
                stacklevel=2,
            )

    def _score(self, sequences: list[list[int]], desc: str, disable_tqdm: bool) -> list[ScoredTokens]:
        """Score sequences in batches of similar length, keeping the input order."""
        if not sequences:
            return []
        order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i]))
        results: list[ScoredTokens | None] = [None] * len(sequences)
        total = sum(len(s) - 1 for s in sequences)
        with tqdm(total=total, desc=desc, unit="tok", disable=disable_tqdm or self.rank != 0) as bar:
            step = self._batch_for(sequences)
            for i in range(0, len(order), step):
                idx = order[i:i + step]
                batch = [sequences[j] for j in idx]
                self._check_positions(max(len(s) for s in batch))
                done = [0]

                def progress(n, batch=batch, done=done):
                    # Count real tokens only: padding rows finish early.
                    new = sum(min(len(s) - 1, done[0] + n) - min(len(s) - 1, done[0]) for s in batch)
                    done[0] += n
                    bar.update(new)

                for j, scored in zip(idx, score_sequences(self.model, batch, self.policy, self.chunk_size,
                                                          self.diagnostics, progress, self.kernel,
                                                          one_call=self.one_call)):
                    results[j] = scored
        return results

    @staticmethod
    def _continuation_result(nll, correct) -> RollingResult:
        """The continuation's log-likelihood (a float, as lm-eval expects) carrying its token counts,
        so tasks can report per-token accuracy (``recall_acc``) where `hf` gives only the sum."""
        nll = nll.double()
        finite = torch.isfinite(nll)
        return RollingResult(-float(nll.sum()), n_tokens=len(nll), n_correct=int(correct.sum()),
                             nll_sum=float(nll[finite].sum()), n_nonfinite=int((~finite).sum()))

    def _rolling_result(self, scored: ScoredTokens) -> RollingResult:
        nll, correct = scored.nll.double(), scored.correct  # exact sums on the CPU
        finite = torch.isfinite(nll)
        buckets: dict[str, list] = {name: [0.0, 0] for name in CONTEXT_BUCKETS}
        for pos, value, ok in zip(scored.positions.tolist(), nll.tolist(), finite.tolist()):
            bucket = context_bucket(pos, self.trained_context)
            if ok and bucket is not None:
                entry = buckets[bucket]
                entry[0] += value
                entry[1] += 1
        return RollingResult(
            -float(nll.sum()),  # NaN if any token is non-finite: never silently averaged away
            n_tokens=len(nll),
            n_correct=int(correct.sum()),
            nll_sum=float(nll[finite].sum()),
            n_nonfinite=int((~finite).sum()),
            bucket_nll={k: tuple(v) for k, v in buckets.items() if v[1]},
            trained_context=self.trained_context,
        )

    # ---------------------------------------------------------------- lm-eval requests
    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Each document is ONE stream (lm-eval's HF class cuts it into max_length windows)."""
        sequences = [[self.prefix_token_id] + self.tok_encode(req.args[0]) for req in requests]
        scorable = [i for i, seq in enumerate(sequences) if len(seq) > 1]  # an empty document has no token
        scored = dict(zip(scorable, self._score([sequences[i] for i in scorable],
                                                f"streaming_hf {self.policy.describe()}", disable_tqdm)))
        results = []
        for i, req in enumerate(requests):
            result = self._rolling_result(scored[i]) if i in scored else RollingResult(0.0, n_tokens=0)
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, result)
            results.append(result)
        return results

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs=None):
        """Context + continuation through the streaming cache (encoded by lm-eval exactly as for ``hf``).
        An empty continuation (e.g. one whose tokens merged into the context) scores 0.0 and greedy, as ``hf``."""
        sequences = [list(ctx) + list(cont) for _, ctx, cont in requests]
        scorable = [i for i, (_, _, cont) in enumerate(requests) if len(cont)]
        scored = dict(zip(scorable, self._score([sequences[i] for i in scorable], "streaming_hf loglikelihood",
                                                disable_tqdm)))
        results = []
        for i, (key, _, cont) in enumerate(requests):
            n = len(cont)
            s = scored.get(i)
            answer = (0.0, True) if s is None else (self._continuation_result(s.nll[-n:], s.correct[-n:]),
                                                     bool(s.correct[-n:].all()))
            if key is not None:
                self.cache_hook.add_partial("loglikelihood", key, answer)
            results.append(answer)
        return results

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """As lm-eval's ``hf``: requests grouped by gen_kwargs, longest first, ``--batch_size`` per forward
        (lockstep, exact for every method: core/generation.py), the options ``hf`` passes to
        ``model.generate`` through transformers' own processors and criteria; every request's options are
        checked before anything is generated."""
        from lm_eval.models.utils import Collator

        eos = self.tok_decode(self.eot_token_id, skip_special_tokens=False)
        tokens = {}

        def encode(context: str) -> list[int]:
            if context not in tokens:
                tokens[context] = self.tok_encode(context) or [self.prefix_token_id]
            return tokens[context]

        plans = {}
        for req in requests:  # refuse a bad option before generating anything
            key = repr(req.args[1])
            if key not in plans:
                plans[key] = self._generation_plan(req.args[1], eos)
                generation_config(self.model, plans[key][0])
        re_ords = Collator([req.args for req in requests], sort_fn=lambda r: (-len(encode(r[0])), r[0]),
                           group_by="gen_kwargs", group_fn=lambda r: r[1])
        step = self._batch_for([encode(req.args[0]) for req in requests]) if requests else 1
        results = []
        with tqdm(total=len(requests), desc=f"streaming_hf generate_until {self.policy.describe()}",
                  disable=disable_tqdm or self.rank != 0) as bar:
            for chunk in re_ords.get_batched(n=step):
                contexts, all_kwargs = zip(*chunk)
                options, until, max_gen_toks = plans[repr(all_kwargs[0])]
                batch = [encode(c) for c in contexts]
                self._check_positions(max(len(t) for t in batch) + max_gen_toks)
                outs = generate_batch(self.model, batch, self.policy, options, max_gen_toks=max_gen_toks,
                                      decode=self.tokenizer.decode, stop=until, chunk_size=self.chunk_size,
                                      diagnostics=self.diagnostics, attn_implementation=self.kernel,
                                      tokenizer=self.tokenizer)
                for out, context, gen_kwargs in zip(outs, contexts, all_kwargs):
                    text = self._generated_text(out, until)
                    self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
                    results.append(text)
                bar.update(len(chunk))
        return re_ords.get_original(results)

    def _generation_plan(self, gen_kwargs: dict, eos: str) -> tuple[dict, list[str], int]:
        """(model.generate options, stop strings, max_gen_toks) exactly as lm-eval's hf derives them
        (normalize_gen_kwargs, then HFLM._model_generate's temperature rule and pad id)."""
        kwargs = normalize_gen_kwargs(gen_kwargs, self.max_gen_toks)
        until = handle_stop_sequences(kwargs.pop("until", None), eos=eos)
        max_gen_toks = int(kwargs.pop("max_gen_toks"))
        kwargs["temperature"] = kwargs.get("temperature", 0.0)
        if kwargs["temperature"] == 0.0 and kwargs.get("do_sample") is None:
            kwargs["do_sample"] = False
        if kwargs.get("do_sample") is False and kwargs["temperature"] == 0.0:
            kwargs.pop("temperature")
        kwargs["pad_token_id"] = self.tokenizer.pad_token_id
        return kwargs, until, max_gen_toks

    def _generated_text(self, out: list[int], until: list[str]) -> str:
        """Decoded and cut as lm-eval's hf does (thinking tokens, then the stop strings)."""
        think = self.think_end_token
        if isinstance(think, int) and think in out:
            out = out[len(out) - out[::-1].index(think):]
        text = self.tok_decode(out)
        if isinstance(think, int):
            text = text.lstrip()
        return postprocess_generated_text(text, until, think if isinstance(think, str) else None)

    def get_model_info(self) -> dict:
        info = super().get_model_info()
        info.update(
            streaming_method=self.policy.method,
            streaming_start_size=self.policy.start_size,
            streaming_recent_size=self.policy.recent_size,
            streaming_evict_every=getattr(self.policy, "evict_every", None),
            streaming_position_shift=getattr(self.policy, "position_shift", None),
            streaming_chunk_size=self.recorded_chunk_size,
            streaming_attn_implementation=self.kernel,
            # What actually ran (lm-eval records the requested device and the pretrained string as given).
            streaming_pretrained=canonical_model_id(self.pretrained_id),
            streaming_device=str(input_device(self.model)),
            streaming_diagnostics=self.diagnostics.as_dict(),
        )
        return info
