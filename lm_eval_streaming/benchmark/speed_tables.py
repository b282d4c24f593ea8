"""The tables of ``lm-eval-streaming speed`` (the command and its arguments: :mod:`.speed`)."""

from __future__ import annotations

import time

import torch

from lm_eval_streaming.core.attention import REFERENCE_KERNEL, attention_kernel
from lm_eval_streaming.benchmark.rows import _PeakRSS
from lm_eval_streaming.benchmark.samples import load_samples
from lm_eval_streaming.benchmark.shapes import SHAPES
from lm_eval_streaming.core.generation import generate
from lm_eval_streaming.core.kernel_checks import causality_probe, kernel_error
from lm_eval_streaming.core.whole_forward import whole_forward_error
from lm_eval_streaming.options import DEFAULT_CHUNK_SIZE, resolve_device, torch_dtype
from lm_eval_streaming.core.methods import baseline_policy, policy_for
from lm_eval_streaming.core.diagnostics import Diagnostics
from lm_eval_streaming.core.memory import estimate_bytes
from lm_eval_streaming.core.scoring import resolve_kernel, score_sequences
from lm_eval_streaming.core.sessions import open_session


def _timed(fn):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start, out


@torch.no_grad()
def token_by_token_ms(model, seq, policy, n_steady: int) -> float:
    """ms per token of chunk_size=1 once the cache is full (its per-token cost is then constant)."""
    kernel = resolve_kernel(model, policy, None)
    with attention_kernel(model, kernel):
        session = open_session(model, policy, kernel=kernel)
        fill = min(len(seq) - n_steady, policy.budget + 1)
        ids = torch.tensor([seq])
        session.feed(ids[:, :fill])
        elapsed, _ = _timed(lambda: [session.feed(ids[:, i:i + 1]) for i in range(fill, fill + n_steady)])
    return 1000 * elapsed / n_steady


def speed_table(model, tokenizer, tokens: int, chunk_size: int, start: int, recent: int, n_steady: int,
                full: bool) -> list[list]:
    seq = load_samples(tokenizer, tokens, 1)[0]
    policy = policy_for("streaming_llm", start, recent)
    score_sequences(model, [seq[:chunk_size + 1]], policy, chunk_size)  # warm-up
    t_chunk, _ = _timed(lambda: score_sequences(model, [seq], policy, chunk_size))
    if full:
        t_one, _ = _timed(lambda: score_sequences(model, [seq], policy, 1))
        one_label = "measured"
    else:
        t_one = token_by_token_ms(model, seq, policy, n_steady) * (tokens - 1) / 1000
        one_label = f"{n_steady} steady-state tokens x {tokens - 1}"
    with attention_kernel(model, "sdpa"):
        t_dense, _ = _timed(lambda: model(input_ids=torch.tensor([seq[:-1]], device=model.device)))
    t_dense_chunked, _ = _timed(lambda: score_sequences(model, [seq], baseline_policy(), chunk_size,
                                                        attn_implementation=REFERENCE_KERNEL))
    return [
        [f"streaming_llm chunk_size={chunk_size}", f"{t_chunk:.1f}", f"{1000 * t_chunk / tokens:.2f}", "1.00",
         "measured"],
        ["streaming_llm chunk_size=1", f"{t_one:.1f}", f"{1000 * t_one / tokens:.2f}", f"{t_one / t_chunk:.1f}",
         one_label],
        ["dense, one plain HF forward (sdpa)", f"{t_dense:.1f}", f"{1000 * t_dense / tokens:.2f}",
         f"{t_dense / t_chunk:.2f}", "measured"],
        [f"dense chunked, chunk_size={chunk_size}", f"{t_dense_chunked:.1f}",
         f"{1000 * t_dense_chunked / tokens:.2f}", f"{t_dense_chunked / t_chunk:.2f}", "measured"],
    ]


def memory_table(model, tokenizer, lengths, chunk_size, start, recent, dense_max=None) -> list[list]:
    rows = []
    for policy in (policy_for("streaming_llm", start, recent), baseline_policy()):
        for n in lengths:
            if policy.full_attention and dense_max and n > dense_max:
                continue
            seq = load_samples(tokenizer, n, 1)[0]
            diag = Diagnostics()
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
            with _PeakRSS() as rss:
                base = rss.peak
                elapsed, _ = _timed(lambda: score_sequences(model, [seq], policy, chunk_size, diag))
            cuda = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
            rows.append([policy.method, n, f"{diag.peak_kv_bytes / 2**20:.1f}", f"{(rss.peak - base) / 2**20:.0f}",
                         "" if cuda is None else f"{cuda:.0f}", f"{elapsed:.1f}"])
    return rows


EVICTION_METHODS = ("streaming_llm", "h2o", "tova", "knorm")


def eviction_table(model, tokenizer, lengths, chunk_size, start, recent, evict_every=(1, 16, 64)) -> list[list]:
    """Per (method, E): ms/token on the longest document and the peak KV cache at every length (flat once the
    document is longer than the cache: at most start + recent + E entries)."""
    docs = {n: load_samples(tokenizer, n, 1)[0] for n in lengths}
    longest = max(lengths)
    rows = []
    for method in EVICTION_METHODS:
        for every in evict_every if method != "streaming_llm" else (None,):
            policy = policy_for(method, start, recent, evict_every=every)
            score_sequences(model, [docs[min(lengths)][:chunk_size + 1]], policy, chunk_size)  # warm-up
            peaks, ms = [], None
            for n in lengths:
                diag = Diagnostics()
                elapsed, _ = _timed(lambda: score_sequences(model, [docs[n]], policy, chunk_size, diag))
                peaks.append(f"{diag.peak_kv_bytes / 2**20:.2f}")
                if n == longest:
                    ms = 1000 * elapsed / (n - 1)
            rows.append([method, "" if every is None else every, f"{ms:.2f}", *peaks])
    return rows


@torch.no_grad()
def generation_table(model, tokenizer, new_tokens: int, block: int, start: int, recent: int) -> list[list]:
    prompt = load_samples(tokenizer, 64, 1)[0]
    stamps = []
    generate(model, prompt, policy_for("streaming_llm", start, recent), new_tokens, tokenizer.decode,
             eos_token_id=None, on_token=lambda _: stamps.append(time.perf_counter()))
    rows = []
    for i in range(block, len(stamps), block):
        ms = 1000 * (stamps[i] - stamps[i - block]) / block
        rows.append([f"{i - block + 1}-{i}", len(prompt) + i, f"{ms:.2f}"])
    return rows


def numerics_table(model, tokenizer, tokens: int, chunk_size: int) -> list[list]:
    """Seconds of dense scoring through the model's kernel, of the kernel error's extra reference pass, of the
    causality probe (default positions) and of the whole-forward float32 shadow (with and without the module
    location), on one document."""
    seq = load_samples(tokenizer, tokens, 1)[0]
    dense = baseline_policy()
    t_dense, scored = _timed(lambda: score_sequences(model, [seq], dense, chunk_size))
    t_err, err = _timed(lambda: kernel_error(model, [seq], None, chunk_size, scored=scored))
    t_probe, probe = _timed(lambda: causality_probe(model, seq, None, chunk_size=chunk_size))
    kernel = model.config._attn_implementation
    shadow = []
    for locate in (False, True):  # the float32 shadow alone, and with the module location
        t_wf, wf = _timed(lambda: whole_forward_error(model, [seq], dense, chunk_size, scored=scored, locate=locate))
        where = "" if not locate else f"; first off: {wf.first_divergence.name}" if wf.first_divergence else \
            "; no module off"
        shadow.append([f"whole-forward error (float32 shadow{', located' if locate else ''})", f"{t_wf:.1f}",
                       f"{t_wf / t_dense:.2f}", f"mean |dNLL| {wf.mean:.2e}, max {wf.max:.2e}{where}"])
    return [
        [f"dense through {kernel} (scoring)", f"{t_dense:.1f}", "1.00", ""],
        [f"kernel error (reference {err.reference})", f"{t_err:.1f}", f"{t_err / t_dense:.2f}",
         f"mean |dNLL| {err.mean:.2e}, max {err.max:.2e}"],
        [f"causality probe at {probe.positions}", f"{t_probe:.1f}", f"{t_probe / t_dense:.2f}",
         f"max |dlogit| {probe.max:.2e}"],
        *shadow,
    ]


def pythia_model(shape: str, dtype: str, device):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    config = GPTNeoXConfig(rotary_pct=0.25, max_position_embeddings=2048, use_parallel_residual=True,
                           tie_word_embeddings=False, **SHAPES[shape])
    with torch.device(device):
        return GPTNeoXForCausalLM(config).to(torch_dtype(dtype)).eval()


def _meta_models():
    """(shape, dtype, meta-device model, weight bytes) for every Pythia shape in float16 and float32."""
    for shape in SHAPES:
        for dtype in ("float16", "float32"):
            model = pythia_model(shape, dtype, "meta")
            yield shape, dtype, model, sum(p.numel() * p.element_size() for p in model.parameters())


def memory_plan_table(lengths=(2000, 5000), chunk_size: int = DEFAULT_CHUNK_SIZE, start: int = 4,
                      recent: int = 252) -> list[list]:
    """GiB of weights plus the scoring estimate (KV cache, one layer's scores, a chunk's logits) per shape and
    dtype, from meta-device models: what a Mac (unified memory) or a GPU must hold."""
    rows = []
    for shape, dtype, model, weights in _meta_models():
        row = [shape, dtype, f"{weights / 2**30:.2f}"]
        for n in lengths:
            for policy in (baseline_policy(), policy_for("streaming_llm", start, recent)):
                row.append(f"{(weights + estimate_bytes(model, policy, n, 1, chunk_size)) / 2**30:.2f}")
        rows.append(row)
    return rows


def checks_plan_table(lengths=(2000, 5000), chunk_size: int = DEFAULT_CHUNK_SIZE) -> list[list]:
    """Per shape and dtype: GiB of dense in one call (``@full``, the seed's plain forward, through sdpa) and what
    the kernel checks add (GiB and share of the weights) per length; last, what they added before (a float32 copy
    of the weights)."""
    from lm_eval_streaming.core.kernel_checks import checks_extra_bytes, float32_copy_bytes

    rows = []
    for shape, dtype, model, weights in _meta_models():
        row = [shape, dtype, f"{weights / 2**30:.2f}"]
        for n in lengths:
            full = estimate_bytes(model, baseline_policy(), n, 1, chunk_size, one_call=True, kernel="sdpa")
            checks = checks_extra_bytes(model, n, 1, chunk_size)
            row += [f"{(weights + full) / 2**30:.2f}", f"+{checks / 2**30:.2f} ({checks / weights:.0%})"]
        copy = float32_copy_bytes(model)
        rows.append(row + [f"+{copy / 2**30:.2f} ({copy / weights:.0%})"])
    return rows


def checks_plan_headers(lengths) -> list[str]:
    heads = ["model", "dtype", "weights"]
    for n in lengths:
        heads += [f"dense@full {n} tok", f"kernel checks add {n} tok"]
    return heads + ["float32 copy (checks before)"]


def random_model(shape: str, dtype: str, device: str | None):
    """A Pythia-shaped GPT-NeoX with random weights, built directly on the device."""
    from lm_eval_streaming import default_model

    model = pythia_model(shape, dtype, resolve_device(device))
    from transformers import AutoTokenizer

    # Any tokenizer whose ids fit the vocabulary: the text only sets realistic lengths.
    tokenizer = AutoTokenizer.from_pretrained(default_model.ensure_default_model(progress=False))
    return model, tokenizer
