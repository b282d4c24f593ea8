"""``lm-eval-streaming speed``: the fast path's targets, measured in one run, printed as tables.

1. ``speed``: chunked streaming vs token by token (chunk_size=1) vs one dense forward over the document;
2. ``memory``: peak memory vs document length, streaming and dense;
3. ``generation``: per-token latency as the generated text grows past the cache size;
4. ``numerics``: what the kernel error and the causality probe cost next to scoring dense once;
5. ``plan``: memory that Pythia 70M / 410M / 6.9B need per dtype (computed from the shapes, no weights loaded);
6. ``eviction``: h2o, tova, knorm at evict_every E = 1, 16, 64 beside streaming_llm: ms/token and peak KV cache
   vs document length (docs/eviction.md).
"""

from __future__ import annotations

import argparse
import time

import torch

from lm_eval_streaming.core.attention import REFERENCE_KERNEL, attention_kernel
from lm_eval_streaming.benchmark.rows import _PeakRSS
from lm_eval_streaming.core.loading import load_model
from lm_eval_streaming.benchmark.samples import load_samples
from lm_eval_streaming.benchmark import generation_speed
from lm_eval_streaming.core.generation import generate
from lm_eval_streaming.core.kernel_checks import causality_probe, kernel_error
from lm_eval_streaming.options import DEFAULT_CHUNK_SIZE, DTYPE_NAMES, as_int, check_dtype, int_list, resolve_device, torch_dtype
from lm_eval_streaming.options import StreamingArgError
from lm_eval_streaming.core.methods import baseline_policy, policy_for
from lm_eval_streaming.core.scoring import Diagnostics, estimate_bytes, open_session, resolve_kernel, score_sequences


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
    """Seconds of dense scoring through the model's kernel, of the kernel error's extra reference pass,
    and of the causality probe (default positions), on one document."""
    seq = load_samples(tokenizer, tokens, 1)[0]
    dense = baseline_policy()
    t_dense, scored = _timed(lambda: score_sequences(model, [seq], dense, chunk_size))
    t_err, err = _timed(lambda: kernel_error(model, [seq], None, chunk_size, scored=scored))
    t_probe, probe = _timed(lambda: causality_probe(model, seq, None, chunk_size=chunk_size))
    kernel = model.config._attn_implementation
    return [
        [f"dense through {kernel} (scoring)", f"{t_dense:.1f}", "1.00", ""],
        [f"kernel error (reference {err.reference})", f"{t_err:.1f}", f"{t_err / t_dense:.2f}",
         f"mean |dNLL| {err.mean:.2e}, max {err.max:.2e}"],
        [f"causality probe at {probe.positions}", f"{t_probe:.1f}", f"{t_probe / t_dense:.2f}",
         f"max |dlogit| {probe.max:.2e}"],
    ]


# Pythia shapes, for timing with random weights (timings do not depend on weight values) and memory plans.
SHAPES = {
    "pythia-6.9b": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, intermediate_size=16384,
                        vocab_size=50432),
    "pythia-410m": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                        vocab_size=50304),
    "pythia-70m": dict(hidden_size=512, num_hidden_layers=6, num_attention_heads=8, intermediate_size=2048,
                       vocab_size=50304),
}


def pythia_model(shape: str, dtype: str, device):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    config = GPTNeoXConfig(rotary_pct=0.25, max_position_embeddings=2048, use_parallel_residual=True,
                           tie_word_embeddings=False, **SHAPES[shape])
    with torch.device(device):
        return GPTNeoXForCausalLM(config).to(torch_dtype(dtype)).eval()


def memory_plan_table(lengths=(2000, 5000), chunk_size: int = DEFAULT_CHUNK_SIZE, start: int = 4,
                      recent: int = 252) -> list[list]:
    """GiB of weights plus the scoring estimate (KV cache, one layer's scores, a chunk's logits) per shape and
    dtype, from meta-device models: what a Mac (unified memory) or a GPU must hold."""
    rows = []
    for shape in SHAPES:
        for dtype in ("float16", "float32"):
            model = pythia_model(shape, dtype, "meta")
            weights = sum(p.numel() * p.element_size() for p in model.parameters())
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
    for shape in SHAPES:
        for dtype in ("float16", "float32"):
            model = pythia_model(shape, dtype, "meta")
            weights = sum(p.numel() * p.element_size() for p in model.parameters())
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


def add_parser(subparsers):
    p = subparsers.add_parser("speed", help="fast-path targets: speed, memory vs length, generation latency",
                              description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model_id", default="smollm2-135m",
                   help="hub id, local checkpoint directory, or smollm2-135m (the embedded default model)")
    p.add_argument("--shape", choices=list(SHAPES), default=None,
                   help="time a model of this shape with random weights instead of --model_id (e.g. on CUDA, float16)")
    p.add_argument("--tokens", type=int, default=5000, help="document length for the speed table")
    p.add_argument("--chunk_size", type=int, default=DEFAULT_CHUNK_SIZE, help="tokens per forward pass")
    p.add_argument("--start_size", type=int, default=4, help="attention sinks of the streaming cache")
    p.add_argument("--recent_size", type=int, default=252, help="recent tokens of the streaming cache")
    p.add_argument("--steady_tokens", type=int, default=200,
                   help="chunk_size=1 is timed on this many tokens after the cache is full, then scaled")
    p.add_argument("--full", action="store_true", help="time chunk_size=1 over the whole document (slow)")
    p.add_argument("--memory_lengths", default="1000,2000,5000,10000,20000",
                   help="memory table: comma list of document lengths")
    p.add_argument("--dense_max_tokens", type=int, default=None,
                   help="skip dense in the memory table above this length (its time grows quadratically)")
    p.add_argument("--eviction_lengths", default="300,1200",
                   help="eviction section: document lengths (ms/token timed on the longest; E=1 runs one "
                        "forward per token, so keep them short on a CPU)")
    p.add_argument("--eviction_every", default="1,16,64", help="eviction section: the evict_every values")
    p.add_argument("--gen_tokens", type=int, default=768, help="generation table: tokens generated")
    p.add_argument("--gen_block", type=int, default=128,
                   help="generation table: per-token latency reported per block of this many tokens")
    p.add_argument("--dtype", default="float32", choices=list(DTYPE_NAMES), help="model dtype")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N or mps (default: the best available)")
    p.add_argument("--skip", default="", help=f"comma list of sections to skip: {', '.join(SECTIONS)}")
    p.add_argument("--only", default=None,
                   help="comma list of sections to run (default: all but plan, eviction and generation-batch, "
                        "which are slow on a CPU)")
    generation_speed.add_arguments(p)
    return p


SECTIONS = ("speed", "memory", "generation", "numerics", "plan", "eviction", "generation-batch")
SLOW_SECTIONS = ("plan", "eviction", "generation-batch")  # run only when named in --only


def _sections(args) -> list[str]:
    chosen = args.only.split(",") if args.only else [s for s in SECTIONS if s not in SLOW_SECTIONS]
    chosen = [s.strip() for s in chosen if s.strip() and s.strip() not in args.skip.split(",")]
    unknown = [s for s in chosen + [x for x in args.skip.split(",") if x] if s not in SECTIONS]
    if unknown:
        raise StreamingArgError(f"section {unknown[0]!r} is unknown: expected some of {', '.join(SECTIONS)}")
    return chosen


def _validate(args) -> None:
    """Every numeric argument, before any model is loaded."""
    for name, minimum in (("tokens", 2), ("chunk_size", 1), ("start_size", 0), ("recent_size", 1),
                          ("steady_tokens", 1), ("gen_tokens", 1), ("gen_block", 1)):
        setattr(args, name, as_int(name, getattr(args, name), minimum))
    args.memory_lengths = int_list("memory_lengths", args.memory_lengths, 2)
    args.eviction_lengths = int_list("eviction_lengths", args.eviction_lengths, 2)
    args.eviction_every = int_list("eviction_every", args.eviction_every, 1)
    args.dense_max_tokens = as_int("dense_max_tokens", args.dense_max_tokens, 1, allow_none=True)
    check_dtype(args.dtype)
    if args.steady_tokens >= args.tokens:
        raise StreamingArgError(f"steady_tokens={args.steady_tokens} must be smaller than tokens={args.tokens}")


def run(args) -> int:
    import platform

    import transformers
    from tabulate import tabulate

    _validate(args)
    sections = _sections(args)
    if "plan" in sections:
        lengths = (2000, 5000)
        print("\nmemory plan (GiB, computed from the shapes: weights + KV cache + one layer's scores + a chunk's "
              f"logits; chunk_size={args.chunk_size})")
        heads = ["model", "dtype", "weights"] + [f"{m} {n} tok" for n in lengths
                                                 for m in ("dense", f"streaming {args.start_size}+{args.recent_size}")]
        print(tabulate(memory_plan_table(lengths, args.chunk_size, args.start_size, args.recent_size), headers=heads,
                       tablefmt="github"))
        print("\nmemory plan, dense in one call (@full, sdpa) and the kernel checks (GiB, computed from the shapes; "
              "the checks make no copy of the weights)")
        print(tabulate(checks_plan_table(lengths, args.chunk_size), headers=checks_plan_headers(lengths),
                       tablefmt="github"))
        if sections == ["plan"]:
            return 0
    if "generation-batch" in sections:  # lm-eval's hf and streaming_hf load the checkpoint themselves
        from lm_eval_streaming import default_model

        pretrained = str(default_model.ensure_default_model(progress=False)) \
            if default_model.is_default(args.model_id) else args.model_id
        generation_speed.run_table(args, pretrained)
        sections = [s for s in sections if s != "generation-batch"]
        if not sections:
            return 0
    if args.shape:
        model, tokenizer = random_model(args.shape, args.dtype, args.device)
        args.model_id = f"{args.shape} (random weights)"
    else:
        model, tokenizer = load_model(args.model_id, args.dtype, args.device, method="streaming_llm")
    skip = {s for s in SECTIONS if s not in sections}
    print(f"model={args.model_id} dtype={args.dtype} device={model.device} torch={torch.__version__} "
          f"transformers={transformers.__version__} machine={platform.machine()} threads={torch.get_num_threads()}")
    if "speed" not in skip:
        rows = speed_table(model, tokenizer, args.tokens, args.chunk_size, args.start_size, args.recent_size,
                           args.steady_tokens, args.full)
        print(f"\n{args.tokens}-token document, start_size={args.start_size}, recent_size={args.recent_size}")
        print(tabulate(rows, headers=["run", "seconds", "ms/token", "x chunked time", "how"], tablefmt="github"))
    if "memory" not in skip:
        rows = memory_table(model, tokenizer, args.memory_lengths, args.chunk_size, args.start_size, args.recent_size,
                            args.dense_max_tokens)
        print("\npeak memory vs document length")
        print(tabulate(rows, headers=["method", "tokens", "KV cache MiB", "RSS increase MiB", "CUDA max MiB",
                                      "seconds"], tablefmt="github"))
    if "generation" not in skip:
        rows = generation_table(model, tokenizer, args.gen_tokens, args.gen_block, args.start_size,
                                args.recent_size)
        print(f"\ngeneration latency, cache {args.start_size}+{args.recent_size}")
        print(tabulate(rows, headers=["generated tokens", "stream length at end", "ms/token"],
                       tablefmt="github"))
    if "numerics" not in skip:
        rows = numerics_table(model, tokenizer, args.tokens, args.chunk_size)
        print(f"\ncost of the measured numerics, {args.tokens}-token document, dense")
        print(tabulate(rows, headers=["run", "seconds", "x dense scoring", "result"], tablefmt="github"))
    if "eviction" not in skip:
        rows = eviction_table(model, tokenizer, args.eviction_lengths, args.chunk_size, args.start_size,
                              args.recent_size, args.eviction_every)
        print(f"\nscore-based eviction beside streaming_llm, cache {args.start_size}+{args.recent_size}, "
              f"chunk_size={args.chunk_size}: ms/token on {max(args.eviction_lengths)} tokens, peak KV cache")
        print(tabulate(rows, headers=["method", "evict_every", "ms/token",
                                      *[f"KV MiB at {n} tok" for n in args.eviction_lengths]], tablefmt="github"))
    return 0
