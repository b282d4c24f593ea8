#!/usr/bin/env python
"""The scoring memory estimate (core/memory.py) beside the measured peak, per method, in one run.

Each (model, method) is scored in a fresh process (so no earlier allocation hides its peak): ``batch`` documents
of ``tokens`` random token ids through ``score_sequences`` (what lm-eval's streaming_hf and benchmark call),
resident memory sampled in a thread. Printed per row: the estimate beyond the weights, the measured increase of
the peak RSS over the RSS just before scoring (weights loaded), their ratio, and the same as whole-process peaks
(RSS before + estimate vs the measured peak).

    python3 scripts/memory_estimate.py                    # tiny Llama (SmolLM2's vocabulary) and smollm2-135m
    python3 scripts/memory_estimate.py --models tiny --tokens 500 --batch 4 --recent 252
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

METHODS = ("dense", "dense@full", "streaming_llm", "window", "sliding_recompute", "h2o", "tova", "knorm")


def _model(name: str):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    if name == "tiny":  # 2 layers, SmolLM2's vocabulary: the logits weigh as much as in the default model
        torch.manual_seed(0)
        cfg = AutoConfig.for_model("llama", vocab_size=49152, hidden_size=64, intermediate_size=128,
                                   num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                   max_position_embeddings=8192)
        return AutoModelForCausalLM.from_config(cfg).eval()
    from lm_eval_streaming.core.loading import load_model

    return load_model(name, "float32", "cpu")[0]


def measure(model_name: str, method: str, tokens: int, batch: int, start: int, recent: int, chunk: int) -> dict:
    import random

    import psutil
    import torch

    from lm_eval_streaming.benchmark.rows import _PeakRSS
    from lm_eval_streaming.core.memory import estimate_bytes
    from lm_eval_streaming.core.methods import policy_for
    from lm_eval_streaming.core.scoring import input_device, resolve_kernel, score_sequences

    torch.set_num_threads(1)
    model = _model(model_name)
    one_call = method.endswith("@full")
    policy = policy_for(method.removesuffix("@full"), start, recent)
    rng = random.Random(0)
    docs = [[rng.randrange(model.config.vocab_size) for _ in range(tokens)] for _ in range(batch)]
    kernel = resolve_kernel(model, policy, None)
    estimate = estimate_bytes(model, policy, tokens, batch, chunk, one_call, kernel, input_device(model))
    before = psutil.Process().memory_info().rss
    with _PeakRSS(interval=0.005) as rss:
        score_sequences(model, docs, policy, chunk_size=chunk, one_call=one_call)
    return {"model": model_name, "method": method, "estimate": estimate, "before": before, "peak": rss.peak}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="tiny,smollm2-135m", help="comma list: tiny and/or model ids")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--tokens", type=int, default=500, help="tokens per document")
    p.add_argument("--batch", type=int, default=4, help="documents per forward")
    p.add_argument("--start", type=int, default=4)
    p.add_argument("--recent", type=int, default=252)
    p.add_argument("--chunk", type=int, default=512, help="chunk_size")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # a child: model,method
    a = p.parse_args(argv)
    if a.one:
        model, method = a.one.split(",")
        print(json.dumps(measure(model, method, a.tokens, a.batch, a.start, a.recent, a.chunk)))
        return 0
    from tabulate import tabulate

    rows = []
    for model in a.models.split(","):
        for method in a.methods.split(","):
            out = subprocess.run([sys.executable, __file__, "--one", f"{model},{method}", "--tokens", str(a.tokens),
                                  "--batch", str(a.batch), "--start", str(a.start), "--recent", str(a.recent),
                                  "--chunk", str(a.chunk)], capture_output=True, text=True)
            if out.returncode:
                print(out.stderr[-2000:], file=sys.stderr)
                return out.returncode
            r = json.loads(out.stdout.strip().splitlines()[-1])
            grew = r["peak"] - r["before"]
            rows.append([model, method, f"{r['estimate'] / 2**20:.0f}", f"{grew / 2**20:.0f}",
                         f"{r['estimate'] / max(grew, 1):.2f}", f"{(r['before'] + r['estimate']) / 2**20:.0f}",
                         f"{r['peak'] / 2**20:.0f}", f"{(r['before'] + r['estimate']) / r['peak']:.2f}"])
            print(" | ".join(rows[-1]), file=sys.stderr, flush=True)
    print(f"{a.batch} documents x {a.tokens} tokens, start {a.start} + recent {a.recent}, chunk_size {a.chunk}, "
          "float32, CPU; MiB")
    print(tabulate(rows, headers=["model", "method", "estimate", "measured (peak - before)", "ratio",
                                  "before + estimate", "measured peak", "ratio"], tablefmt="github"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
