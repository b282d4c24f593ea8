#!/usr/bin/env python
"""Benchmark a Pythia-shaped model with random weights on a device (no download): dense through the model's
kernel chunked and in one call and through the project's reference, streaming_llm 4+252, the kernel checks,
and the whole-forward float32 shadow on every row. Used by scripts/device_check.sh.

    python scripts/device_benchmark.py --shape pythia-6.9b --device cuda --dtype float16 --tokens 2000 \
        --output out/benchmark.json
"""

import argparse
import sys

from lm_eval_streaming.benchmark.shapes import SHAPES
from lm_eval_streaming.options import DTYPE_NAMES


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", choices=list(SHAPES), default="pythia-6.9b")
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", choices=list(DTYPE_NAMES), default="float16")
    p.add_argument("--tokens", type=int, default=2000)
    p.add_argument("--num_samples", type=int, default=1)
    p.add_argument("--output", required=True)
    args = p.parse_args(argv)

    from lm_eval_streaming.benchmark.command import run_benchmark
    from lm_eval_streaming.benchmark.speed_tables import random_model
    from lm_eval_streaming.benchmark.table import format_table
    from lm_eval_streaming.records.io import check_writable, write_run

    check_writable(args.output)
    model, tokenizer = random_model(args.shape, args.dtype, args.device)
    run = run_benchmark(model_id=f"{args.shape}-random", max_tokens=args.tokens, num_samples=args.num_samples,
                        num_warmup=1, dtype=args.dtype, device=args.device, model=model, tokenizer=tokenizer,
                        dense_attn="default,default@full,lm_eval_streaming", whole_forward="all", progress=False)
    print(format_table(run))
    write_run(args.output, run)
    print(f"run written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
