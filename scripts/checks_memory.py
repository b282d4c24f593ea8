"""What the kernel checks add to peak memory: one loaded model (the default SmolLM2-135M in float16 on the CPU),
a benchmark of its dense rows with the checks off, then on; the peak RSS of each (sampled in a thread) and the
difference as a share of the weights' size (issue 16's target: at most 40%).

    OMP_NUM_THREADS=1 python3 scripts/checks_memory.py [MAX_TOKENS] [DTYPE]
"""

import sys

from lm_eval_streaming.benchmark.command import run_benchmark
from lm_eval_streaming.benchmark.rows import _PeakRSS
from lm_eval_streaming.core.loading import load_model, load_tokenizer


def main() -> None:
    tokens = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    dtype = sys.argv[2] if len(sys.argv) > 2 else "float16"
    tok = load_tokenizer("smollm2-135m")
    model, _ = load_model("smollm2-135m", dtype, "cpu", methods=["streaming_llm"], tokenizer=tok)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    kw = dict(model=model, tokenizer=tok, methods=[], max_tokens=tokens, num_samples=1, num_warmup=0, dtype=dtype,
              device="cpu", progress=False)
    with _PeakRSS() as off:  # the weights are loaded before both
        run_benchmark(**kw, kernel_error=False, causality_probe=False)
    with _PeakRSS() as on:
        run = run_benchmark(**kw)
    added = on.peak - off.peak
    print(f"{dtype} weights {weights / 2**20:.1f} MiB, {tokens} tokens; peak RSS checks off {off.peak / 2**20:.1f} MiB, "
          f"on {on.peak / 2**20:.1f} MiB; added {added / 2**20:+.1f} MiB = {added / weights:+.0%} of the weights; "
          f"rows {', '.join(r.label() for r in run.rows)}; kernel error reference "
          f"{run.rows[0].kernel_error.reference}")


if __name__ == "__main__":
    main()
