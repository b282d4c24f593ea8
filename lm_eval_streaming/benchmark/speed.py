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

from lm_eval_streaming.benchmark import generation_speed
from lm_eval_streaming.benchmark.shapes import SHAPES
from lm_eval_streaming.options import DEFAULT_CHUNK_SIZE, DTYPE_NAMES, as_int, check_dtype, int_list
from lm_eval_streaming.options import StreamingArgError


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
    generation_speed.check_arguments(args)
    if args.steady_tokens >= args.tokens:
        raise StreamingArgError(f"steady_tokens={args.steady_tokens} must be smaller than tokens={args.tokens}")


def run(args) -> int:
    import platform

    import torch
    import transformers
    from tabulate import tabulate

    from lm_eval_streaming.benchmark.speed_tables import (checks_plan_headers, checks_plan_table, eviction_table,
                                                         generation_table, memory_plan_table, memory_table,
                                                         numerics_table, random_model, speed_table)
    from lm_eval_streaming.core.loading import load_model

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
