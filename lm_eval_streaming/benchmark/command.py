"""``lm-eval-streaming benchmark``: the seed's benchmark, dense baseline and every cache size on the same samples.

One run scores dense once per attention kernel (``--dense_attn``; default: the model's own chunked,
the model's own in one call per sample (``default@full``, the seed's plain forward) and the project's
float32 reference) and every (method, recent size[, position_shift]), all on the same distinct samples, and
prints one table: perplexity and next-token accuracy (with a confidence interval over samples and
the paired difference to the dense row through the model's own kernel), speed after warm-up, peak
memory, diagnostics, and for dense rows the measured kernel error and causality probe.
``--output`` writes the run as JSON (``records.Run``); ``analyze`` reads it.
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

from lm_eval_streaming.benchmark.args import DEFAULTS, MODEL_DEFAULT_KERNEL, check_benchmark_args, split_one_call
from lm_eval_streaming.core.loading import load_model, load_tokenizer, model_identity
from lm_eval_streaming.options import DTYPE_NAMES, StreamingArgError
from lm_eval_streaming.records import Run
from lm_eval_streaming.records.io import check_writable, write_run
from lm_eval_streaming.benchmark.samples import load_samples, sample_spec, text_prefix

__all__ = ["load_model", "load_samples", "run_benchmark", "add_parser", "run", "main"]


def _dense_kernels(model, names: list[str], n_tokens: int, chunk_size: int,
                   say=print) -> tuple[list[tuple[str, bool]], tuple[str, bool]]:
    """([(kernel, one_call)] to score dense with, the one deltas are relative to: the model's own chunked if
    listed, else the first). ``default@full`` is left out, with one line saying so, where its memory estimate
    does not fit; another ``KERNEL@full`` that does not fit is refused before any row is scored."""
    from lm_eval_streaming.core.methods import baseline_policy
    from lm_eval_streaming.core.memory import InsufficientMemory, check_memory
    from lm_eval_streaming.core.scoring import input_device

    own = model.config._attn_implementation
    kernels = []
    for name in names:
        kernel, one_call = split_one_call(name)
        setting = (own if kernel == MODEL_DEFAULT_KERNEL else kernel, one_call)
        if one_call:
            try:
                check_memory(model, baseline_policy(), n_tokens, 1, chunk_size, True, setting[0], input_device(model))
            except InsufficientMemory as e:
                if kernel != MODEL_DEFAULT_KERNEL:
                    raise
                say(f"benchmark: {name} (dense in one call) left out: {e}")
                continue
        kernels.append(setting)
    kernels = list(dict.fromkeys(kernels))
    if not kernels:
        raise StreamingArgError(f"dense_attn={','.join(names)}: no dense kernel fits in memory")
    return kernels, (own, False) if (own, False) in kernels else kernels[0]


def _cache_policies(a: dict) -> list:
    """Every (method, recent size[, position_shift]) of the run, as policies."""
    from lm_eval_streaming.core.methods import policy_for
    from lm_eval_streaming.core.policy import _REGISTRY

    out = []
    for m in a["methods"]:
        fields = _REGISTRY[m].__dataclass_fields__
        shifts = (a["position_shift"] or [None]) if "position_shift" in fields else [None]
        evicts = a["evict_every"] if "evict_every" in fields else [None]
        out += [policy_for(m, a["start_size"], r, position_shift=ps, evict_every=e)
                for r in a["recent_sizes"] for ps in shifts for e in evicts]
    return out


# The kernel checks may add at most this share of the weights' size to peak memory: no float32 copy of
# float16/bfloat16 weights (+200%); the attention error works on the same q/k/v in float32 score blocks.
CHECKS_MEMORY_SHARE = 0.4


def checks_budget(model) -> int:
    """Bytes the kernel checks may add: CHECKS_MEMORY_SHARE of the weights' size."""
    return int(CHECKS_MEMORY_SHARE * sum(p.numel() * p.element_size() for p in model.parameters()))


def _reference_for_kernel_error(model, samples, chunk_size, rows_scored):
    """The reference-kernel NLLs for the kernel error: float32 weights where that copy fits in the checks'
    budget (a float32 model: no copy), else the same weights in the model's dtype; reused from the run's own
    dense[reference] row when that row has those weights."""
    from lm_eval_streaming.core.attention import REFERENCE_KERNEL
    from lm_eval_streaming.core.kernel_checks import _dtype_name, float32_copy_fits, reference_scores
    from lm_eval_streaming.core.sessions import input_device

    budget = checks_budget(model)
    ref_label = f"dense[{REFERENCE_KERNEL}]"
    if ref_label in rows_scored and (_dtype_name(model) == "float32" or not float32_copy_fits(model, budget)):
        return rows_scored[ref_label], f"{REFERENCE_KERNEL}/{_dtype_name(model)}/{input_device(model).type}"
    return reference_scores(model, samples, chunk_size, budget=budget)


# --whole_forward: which rows get the float32 shadow (auto: the dense rows unless the model is float32, whose
# shadow is the run itself)
WHOLE_FORWARD = ("auto", "dense", "all", "none")


def check_whole_forward(value) -> str:
    if value not in WHOLE_FORWARD:
        raise StreamingArgError(f"whole_forward={value!r} is unknown: expected one of {', '.join(WHOLE_FORWARD)}")
    return value


def _shadowed(row, mode: str, dtype: str) -> bool:
    if mode == "auto":
        return row.is_dense and dtype != "float32"
    return mode == "all" or (mode == "dense" and row.is_dense)


def run_benchmark(model_id: str | None = None, methods=("streaming_llm",), max_tokens: int = 2000,
                  recent_sizes=(252,), num_samples: int = 5, num_warmup: int = 2, start_size: int = 4,
                  dtype: str = "float32", device: str | None = None, chunk_size: int = 512,
                  dense_attn=None, kernel_error: bool = True, causality_probe: bool = True,
                  model=None, tokenizer=None, progress: bool = True, position_shift=None, evict_every=None,
                  whole_forward: str = "auto") -> Run:
    """Dense through every listed kernel + every (method, recent size), on the same samples: one Run.

    Every argument is validated before any work; the samples are built (or refused) before the weights
    load. ``model`` / ``tokenizer``: an already loaded model (the experiment runner reuses one).
    ``whole_forward``: which rows are also run as a float32 shadow (:data:`WHOLE_FORWARD`)."""
    # torch-heavy, so imported here: ``benchmark --help`` needs no torch
    from lm_eval_streaming.benchmark.rows import causality_stats, kernel_error_stats, score_row, whole_forward_stats
    from lm_eval_streaming.core.scoring import check_scoring
    from lm_eval_streaming.records.metrics import set_deltas

    import torch
    import transformers
    from tqdm import tqdm

    from lm_eval_streaming import __version__
    from lm_eval_streaming.core.methods import baseline_policy

    a = check_benchmark_args(model_id=model_id, methods=list(methods), max_tokens=max_tokens,
                             recent_sizes=list(recent_sizes), num_samples=num_samples, num_warmup=num_warmup,
                             start_size=start_size, dtype=dtype, device=device, chunk_size=chunk_size,
                             dense_attn=dense_attn, kernel_error=kernel_error, causality_probe=causality_probe,
                             position_shift=position_shift, evict_every=evict_every)
    whole_forward = check_whole_forward(whole_forward)
    if tokenizer is None:
        tokenizer = load_tokenizer(a["model_id"])
    samples = load_samples(tokenizer, a["max_tokens"], a["num_samples"])
    if model is None:
        model, _ = load_model(a["model_id"], a["dtype"], a["device"], methods=a["methods"], tokenizer=tokenizer)
    trained_context = getattr(model.config, "max_position_embeddings", None)
    say = lambda line: print(line, file=sys.stderr)  # noqa: E731
    kernels, delta_kernel = _dense_kernels(model, a["dense_attn"], a["max_tokens"], a["chunk_size"], say)
    settings = [(baseline_policy(), k, one_call) for k, one_call in kernels]
    settings += [(policy, None, False) for policy in _cache_policies(a)]
    for policy, kernel, one_call in settings:  # a row that would be refused stops the run before any is scored
        check_scoring(model, policy, kernel, one_call, a["max_tokens"], 1, a["chunk_size"])
    rows, dense_scored, reference = [], {}, None
    model_dtype = str(next(model.parameters()).dtype).replace("torch.", "")
    per_row = sum(len(s) - 1 for s in samples)
    bar = tqdm(total=len(settings) * per_row, desc="benchmark rows", unit="tok", disable=not progress,
               file=sys.stderr, leave=False)
    for policy, kernel, one_call in settings:
        bar.set_postfix_str(policy.describe() if kernel is None else f"dense {kernel}{'@full' if one_call else ''}")
        row, scored = score_row(model, samples, policy, a["chunk_size"], a["num_warmup"], trained_context, kernel,
                                one_call, bar.update)
        if policy.full_attention:
            dense_scored[row.label()] = scored
        if _shadowed(row, whole_forward, model_dtype):
            row.whole_forward = whole_forward_stats(model, samples, row, scored, policy, a["chunk_size"])
        rows.append(row)
    bar.close()
    base = next(r for r in rows if r.is_dense and (r.attn_implementation, r.one_call) == delta_kernel)
    for row in rows:
        if row is not base:
            set_deltas(row, base)
    dense_rows = [r for r in rows if r.is_dense]
    steps = len(dense_rows) * (len(samples) * a["kernel_error"] + a["causality_probe"])
    with tqdm(total=steps, desc="kernel checks", disable=not progress or not steps, file=sys.stderr) as bar:
        for row in dense_rows:
            bar.set_postfix_str(row.label())
            if a["kernel_error"]:
                reference = reference or _reference_for_kernel_error(model, samples, a["chunk_size"], dense_scored)
                row.kernel_error = kernel_error_stats(model, samples, row, dense_scored[row.label()],
                                                      reference, a["chunk_size"], trained_context, bar.update)
            if a["causality_probe"]:
                row.causality = causality_stats(model, samples, row, a["chunk_size"])
                bar.update(1)
    return Run(
        model_id=a["model_id"], max_tokens=a["max_tokens"], num_samples=a["num_samples"],
        dtype=str(next(model.parameters()).dtype).replace("torch.", ""), device=model.device.type,
        chunk_size=a["chunk_size"], rows=rows, trained_context=trained_context, num_warmup=a["num_warmup"],
        sample_spec=sample_spec(text_prefix(tokenizer)), **model_identity(model, a["model_id"]),
        versions={"torch": torch.__version__, "transformers": transformers.__version__,
                  "lm_eval_streaming": __version__},
        machine=f"{platform.machine()} {platform.processor() or ''} {torch.get_num_threads()} threads".strip(),
    )


# ---------------------------------------------------------------- CLI
def _number(text: str):
    """An integer as typed, else the text: options.as_int validates and names the value either way."""
    try:
        return int(text)
    except ValueError:
        return text


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("benchmark", help="dense vs streaming methods on the same samples: one table",
                              description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    d = DEFAULTS
    p.add_argument("--model_id", default=d["model_id"],
                   help="HF model id or path; the default is the embedded SmolLM2-135M (offline)")
    p.add_argument("--method", default=",".join(d["methods"]),
                   help="comma list of cache methods besides the dense baseline (streaming_llm, window, ...)")
    p.add_argument("--max_tokens", type=_number, default=d["max_tokens"], help="tokens per sample (>= 2)")
    p.add_argument("--recent_sizes", default=",".join(map(str, d["recent_sizes"])),
                   help="comma list of recent window sizes")
    p.add_argument("--start_size", type=_number, default=d["start_size"], help="attention sinks")
    p.add_argument("--num_samples", type=_number, default=d["num_samples"],
                   help="distinct samples (disjoint windows of the task documents), the same for every row")
    p.add_argument("--num_warmup", type=_number, default=d["num_warmup"],
                   help="untimed forward passes of one chunk (first sample) before each row is timed, so one-time "
                        "costs (allocation, kernel selection) are not counted; they are not scored")
    p.add_argument("--chunk_size", type=_number, default=d["chunk_size"], help="tokens per forward pass (>= 1)")
    p.add_argument("--dtype", default=d["dtype"], help=f"one of {', '.join(DTYPE_NAMES)}")
    p.add_argument("--device", default=None,
                   help="cpu, cuda, cuda:N, mps (default: the best available; an unavailable one falls back "
                        "with a warning)")
    p.add_argument("--dense_attn", default=",".join(d["dense_attn"]),
                   help="comma list of attention implementations to score dense with, each optionally KERNEL@full = "
                        "one plain forward per sample, no cache, the model's own mask path (the seed's baseline; "
                        "default@full is left out where its memory estimate does not fit) (default = the model's "
                        "own, lm_eval_streaming = the project's float32 reference, sdpa, eager, ...); deltas are "
                        "relative to the model's own kernel when listed, else to the first")
    p.add_argument("--position_shift", default=None,
                   help="streaming_llm rows: true = the positional shift (StreamingLLM), false = the same kept tokens "
                        "at their true distances (kvpress's StreamingLLMPress), true,false = both (the ablation); "
                        "h2o/tova/knorm: true = kept keys re-rotated to their cache slots (default: each method's "
                        "own: streaming_llm true, h2o/tova/knorm false)")
    p.add_argument("--evict_every", default=",".join(map(str, d["evict_every"])),
                   help="h2o, tova, knorm: prune the cache after every E tokens (comma list: one row per E; "
                        "1 = the papers' one token per step; docs/eviction.md)")
    p.add_argument("--no_kernel_error", action="store_true",
                   help="skip the kernel error of dense rows (|dNLL| vs the float32 reference kernel)")
    p.add_argument("--no_causality_probe", action="store_true",
                   help="skip the causality probe of dense rows (run on the first sample)")
    p.add_argument("--whole_forward", default="auto", choices=WHOLE_FORWARD,
                   help="rows also run as a float32 shadow of the same forward (per-token |dNLL| of the dtype and "
                        "the first module that diverges; docs/numerics.md): auto = the dense rows unless the model "
                        "is float32")
    p.add_argument("--output", default=None, help="write the run as JSON here (read by analyze)")
    return p


def run(args) -> int:
    from lm_eval_streaming.benchmark.table import format_table

    kwargs = dict(model_id=args.model_id, methods=args.method, max_tokens=args.max_tokens,
                  recent_sizes=args.recent_sizes, num_samples=args.num_samples, num_warmup=args.num_warmup,
                  start_size=args.start_size, dtype=args.dtype, device=args.device, chunk_size=args.chunk_size,
                  dense_attn=args.dense_attn, kernel_error=not args.no_kernel_error,
                  causality_probe=not args.no_causality_probe, position_shift=args.position_shift,
                  evict_every=args.evict_every)
    a = check_benchmark_args(**kwargs)
    a["whole_forward"] = check_whole_forward(args.whole_forward)
    out = Path(args.output) if args.output else None
    if out is not None:
        check_writable(out)
    result = run_benchmark(**a)
    print(format_table(result))
    if out is not None:
        write_run(out, result)
        print(f"run written to {out}")
    return 0


def main(argv=None) -> int:
    """``python scripts/benchmark.py ...``: the same command and error handling as ``lm-eval-streaming benchmark``."""
    from lm_eval_streaming.cli import main as cli_main

    return cli_main(["benchmark", *(sys.argv[1:] if argv is None else argv)])
