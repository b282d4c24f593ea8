"""Generation wall time, streaming_hf against lm-eval's ``hf``, at batch 1 and N, in one run.

``python3 -m lm_eval_streaming.benchmark.generation_speed`` (also ``lm-eval-streaming speed --only
generation-batch``): the same ``generate_until`` requests (short prompts cut from the task corpus,
greedy, ``until=["\\n\\n"]``) through lm-eval's ``hf`` model and through ``streaming_hf`` (dense and
streaming_llm), each model built the way lm-eval builds it; prints seconds, the ratio to ``hf`` at the
same batch size, and whether the texts equal ``hf``'s. A table, not a timed test: run it on a quiet
machine (``OMP_NUM_THREADS=1`` on a shared CPU).
"""

from __future__ import annotations

import argparse
import time

from lm_eval_streaming.options import as_int, int_list


def prompts(tokenizer, n: int) -> list[str]:
    """``n`` short prompts of 16..63 tokens from distinct windows of the task corpus."""
    from lm_eval_streaming.benchmark.samples import load_samples

    return [tokenizer.decode(window[:16 + (7 * i) % 48]) for i, window in enumerate(load_samples(tokenizer, 64, n))]


def _requests(contexts: list[str], max_gen_toks: int):
    from lm_eval.api.instance import Instance

    gen_kwargs = {"until": ["\n\n"], "do_sample": False, "max_gen_toks": max_gen_toks}
    return [Instance("generate_until", doc={}, arguments=(c, dict(gen_kwargs)), idx=i) for i, c in enumerate(contexts)]


def generation_batch_table(pretrained: str, n_prompts: int, max_gen_toks: int, batch_sizes: list[int],
                           start: int, recent: int, device: str | None = None, dtype: str = "float32",
                           repeats: int = 1) -> list[list]:
    """Rows of the table. With ``repeats`` > 1 the models run in turn, ``repeats`` rounds: seconds is the median
    round, the ratio the median of each round's ratio to ``hf`` (a shared machine drifts between rounds)."""
    import statistics

    import torch
    from lm_eval.api.registry import get_model
    from transformers import AutoTokenizer

    contexts = prompts(AutoTokenizer.from_pretrained(pretrained), n_prompts)
    models = [("hf", "hf", {}), ("streaming_hf dense", "streaming_hf", {"method": "dense"}),
              (f"streaming_hf streaming_llm {start}+{recent}", "streaming_hf",
               {"method": "streaming_llm", "start_size": start, "recent_size": recent})]
    rows, texts, seconds = [], {}, {}
    for batch in batch_sizes:
        for _ in range(repeats):
            for label, name, args in models:
                lm = get_model(name)(pretrained=pretrained, device=device or "cpu", batch_size=batch, dtype=dtype,
                                     **args)
                lm.generate_until(_requests(contexts[:1], max_gen_toks), disable_tqdm=True)  # warm-up
                start_time = time.perf_counter()
                texts.setdefault((label, batch), []).append(
                    lm.generate_until(_requests(contexts, max_gen_toks), disable_tqdm=True))
                seconds.setdefault((label, batch), []).append(time.perf_counter() - start_time)
                del lm
                torch.cuda.empty_cache() if torch.cuda.is_available() else None
        for label, _, _ in models:
            # texts of every round against hf's and batch 1's first round: the worst round counts
            same_hf = min(sum(a == b for a, b in zip(t, texts["hf", batch][0])) for t in texts[label, batch])
            same_b1 = min(sum(a == b for a, b in zip(t, texts[label, batch_sizes[0]][0])) for t in texts[label, batch])
            ratios = [t / h for t, h in zip(seconds[label, batch], seconds["hf", batch])]
            rows.append([label, batch, f"{statistics.median(seconds[label, batch]):.1f}",
                         f"{statistics.median(ratios):.2f}"
                         + (f" ({min(ratios):.2f}-{max(ratios):.2f})" if repeats > 1 else ""),
                         f"{same_hf}/{n_prompts}", f"{same_b1}/{n_prompts}"])
    return rows


HEADERS = ["model", "batch", "seconds", "x hf (same batch)", "texts = hf"]  # + "texts = batch <first>"


def add_arguments(p) -> None:
    p.add_argument("--gen_prompts", default=40, help="generation-batch: number of prompts (16-63 tokens each)")
    p.add_argument("--gen_max_tokens", default=32, help="generation-batch: max_gen_toks of every request")
    p.add_argument("--gen_batch_sizes", default="1,8", help="generation-batch: batch sizes, the first the reference")
    p.add_argument("--gen_repeats", default=1, help="generation-batch: rounds of every model in turn; the table shows "
                   "the median round and the median (lowest-highest) ratio to hf")


def check_arguments(args) -> None:
    """The generation-batch arguments, validated in place before any model loads."""
    args.gen_prompts = as_int("gen_prompts", args.gen_prompts, 1)
    args.gen_max_tokens = as_int("gen_max_tokens", args.gen_max_tokens, 1)
    args.gen_batch_sizes = int_list("gen_batch_sizes", args.gen_batch_sizes, 1)
    args.gen_repeats = as_int("gen_repeats", args.gen_repeats, 1)


def run_table(args, pretrained: str) -> None:
    from tabulate import tabulate

    check_arguments(args)
    n, max_gen, sizes, repeats = args.gen_prompts, args.gen_max_tokens, args.gen_batch_sizes, args.gen_repeats
    rows = generation_batch_table(pretrained, n, max_gen, sizes, args.start_size, args.recent_size, args.device,
                                  args.dtype, repeats)
    print(f"\ngeneration, {n} prompts of 16-63 tokens, greedy, max_gen_toks={max_gen}, until=['\\n\\n'] "
          f"(lm-eval generate_until requests), {repeats} round(s)")
    headers = HEADERS + [f"texts = batch {sizes[0]}"]
    print(tabulate(rows, headers=headers, tablefmt="github"))


def main(argv=None) -> int:
    from lm_eval_streaming.errors import run_handler

    prog = "python3 -m lm_eval_streaming.benchmark.generation_speed"
    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pretrained", default=None, help="model path or hub id (default: the embedded smollm2-135m)")
    p.add_argument("--start_size", type=int, default=4, help="streaming_llm sinks")
    p.add_argument("--recent_size", type=int, default=252, help="streaming_llm recent window")
    p.add_argument("--device", default=None, help="torch device (default cpu)")
    p.add_argument("--dtype", default="float32", help="model dtype")
    add_arguments(p)
    return run_handler(prog, _run, p.parse_args(argv))


def _run(args) -> int:
    import platform

    import torch
    import transformers

    from lm_eval_streaming import default_model

    check_arguments(args)
    pretrained = args.pretrained or str(default_model.ensure_default_model(progress=False))
    print(f"model={args.pretrained or 'smollm2-135m'} dtype={args.dtype} torch={torch.__version__} "
          f"transformers={transformers.__version__} machine={platform.machine()} threads={torch.get_num_threads()}")
    run_table(args, pretrained)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
