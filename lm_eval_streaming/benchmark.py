"""``lm-eval-streaming benchmark``: the seed's benchmark, dense baseline and every cache size on the same samples.

One run prints one table: perplexity and next-token accuracy (with a confidence
interval over samples and the paired difference to dense), speed after warm-up,
peak memory, and the diagnostics that separate position extrapolation from numerics.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import threading
import time
from pathlib import Path

import torch

from .policy import METHODS, StreamingArgError, as_int, policy_for
from .scoring import DEFAULT_CHUNK_SIZE, Diagnostics, score_sequences

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
ABS_EDGES = [0, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768]
REL_EDGES = [0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0]
CURVE_BINS = 50


# ---------------------------------------------------------------- loading
def load_model(model_id: str | None, dtype: str = "float32", device: str | None = None, method: str = "dense"):
    """(model, tokenizer) routed through the streaming attention; the default model offline."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from . import default_model
    from .architectures import check_supported

    if dtype not in DTYPES:
        raise StreamingArgError(f"dtype={dtype!r} is unknown: expected one of {', '.join(DTYPES)}")
    path = str(default_model.ensure_default_model()) if default_model.is_default(model_id) else model_id
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[dtype]).to(device).eval()
    check_supported(model.config, policy_for(method))
    return model, tokenizer


def load_samples(tokenizer, max_tokens: int, num_samples: int) -> list[list[int]]:
    """``num_samples`` token sequences of exactly ``max_tokens`` tokens from the task documents
    (real long English text); a document shorter than that is continued with the next ones."""
    from ._hook import tasks_dir

    data = Path(tasks_dir()) / "streaming_ppl" / "data"
    files = sorted(data.glob("streaming_ppl_*.jsonl"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))
    if not files:
        raise FileNotFoundError(f"no task data under {data}")
    docs = [json.loads(line)["text"] for line in files[-1].read_text().splitlines() if line.strip()]
    encoded = [tokenizer(d, add_special_tokens=False, verbose=False)["input_ids"] for d in docs]
    samples = []
    for i in range(num_samples):
        seq: list[int] = []
        j = i
        while len(seq) < max_tokens:
            seq += encoded[j % len(encoded)]
            j += 1
            if j - i > len(encoded) * 50:
                raise ValueError(f"cannot build {max_tokens} tokens from the task data")
        samples.append(seq[:max_tokens])
    if num_samples > len(encoded):
        print(f"note: {num_samples} samples requested, {len(encoded)} distinct documents: samples repeat text")
    return samples


# ---------------------------------------------------------------- statistics
def _t_interval(values: list[float], level: float = 0.95) -> tuple[float, float, float]:
    """(mean, lo, hi): Student-t interval over independent samples (NaN bounds for one sample)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, math.nan, math.nan
    from scipy.stats import t

    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = t.ppf(0.5 + level / 2, n - 1) * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def _bucketed(positions: torch.Tensor, nll: torch.Tensor, edges: list[float]) -> dict:
    finite = torch.isfinite(nll)
    out_nll, out_count = [], []
    for i, lo in enumerate(edges):
        hi = edges[i + 1] if i + 1 < len(edges) else math.inf
        sel = (positions >= lo) & (positions < hi) & finite
        count = int(sel.sum())
        out_nll.append(float(nll[sel].mean()) if count else math.nan)
        out_count.append(count)
    return {"edges": edges, "nll": out_nll, "count": out_count}


class _PeakRSS:
    """Samples this process's resident memory in a thread: the peak while a row runs."""

    def __init__(self, interval: float = 0.02):
        import psutil

        self.proc, self.interval, self.peak = psutil.Process(), interval, 0
        self._stop = threading.Event()

    def __enter__(self):
        self.peak = self.proc.memory_info().rss
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)


# ---------------------------------------------------------------- one row
def _score_row(model, samples, policy, chunk_size, num_warmup, trained_context):
    device = model.device
    for _ in range(num_warmup):  # untimed: allocation, kernel selection, lazy init
        score_sequences(model, [samples[0][: chunk_size + 1]], policy, chunk_size)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    diag = Diagnostics()
    scored = []
    with _PeakRSS() as rss:
        start = time.perf_counter()
        for seq in samples:
            scored += score_sequences(model, [seq], policy, chunk_size, diag)
        if device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
    n_tokens = sum(len(s.nll) for s in scored)
    nll = torch.cat([s.nll for s in scored])
    positions = torch.cat([s.positions for s in scored]).double()
    finite = torch.isfinite(nll)
    per_sample_nll = [float(s.nll[torch.isfinite(s.nll)].mean()) for s in scored]
    per_sample_acc = [float(s.correct.double().mean()) for s in scored]
    mean_nll, lo, hi = _t_interval(per_sample_nll)
    acc, acc_lo, acc_hi = _t_interval(per_sample_acc)
    curve_edges = torch.linspace(0, float(positions.max()) + 1, CURVE_BINS + 1).tolist()
    curve = _bucketed(positions, nll, curve_edges[:-1])
    record = {
        "method": policy.method,
        "start_size": policy.start_size if policy.method != "dense" else 0,
        "recent_size": policy.recent_size if policy.method != "dense" else None,
        "ppl": math.exp(float(nll[finite].mean())),
        "ppl_ci": [math.exp(lo), math.exp(hi)],
        "acc": acc,
        "acc_ci": [acc_lo, acc_hi],
        "nll_mean": float(nll[finite].mean()),
        "tokens_per_s": n_tokens / elapsed,
        "latency_ms_per_token": 1000 * elapsed / n_tokens,
        "peak_kv_bytes": diag.peak_kv_bytes,
        "peak_rss_bytes": rss.peak,
        "cuda_max_allocated_bytes": torch.cuda.max_memory_allocated() if device.type == "cuda" else None,
        "exceeded_trained_context": bool(trained_context and diag.max_position >= trained_context),
        "nll_by_position": _bucketed(positions, nll, ABS_EDGES),
        "nll_by_relative_position": _bucketed(positions / trained_context, nll, REL_EDGES) if trained_context
        else None,
        "nll_curve": {"positions": [(a + b) / 2 for a, b in zip(curve_edges, curve_edges[1:])],
                      "nll": curve["nll"]},
        "nonfinite_tokens": int((~finite).sum()),
        **diag.as_dict(),
    }
    return record, per_sample_nll, per_sample_acc


def run_benchmark(model_id: str | None = None, methods=("streaming_llm",), max_tokens: int = 2000,
                  recent_sizes=(252,), num_samples: int = 5, num_warmup: int = 2, start_size: int = 4,
                  dtype: str = "float32", device: str | None = None, chunk_size: int = DEFAULT_CHUNK_SIZE,
                  model=None, tokenizer=None) -> list[dict]:
    """Dense baseline + every (method, recent size), on the same samples: one record per row."""
    for m in methods:
        policy_for(m, start_size, recent_sizes[0] if recent_sizes else 252)
    max_tokens = as_int("max_tokens", max_tokens, 2)
    num_samples = as_int("num_samples", num_samples, 1)
    num_warmup = as_int("num_warmup", num_warmup, 0)
    if model is None:
        model, tokenizer = load_model(model_id, dtype, device, method=methods[0] if methods else "dense")
    import transformers

    from . import __version__

    trained_context = getattr(model.config, "max_position_embeddings", None)
    samples = load_samples(tokenizer, max_tokens, num_samples)
    rows = [("dense", None)] + [(m, r) for m in methods if m != "dense" for r in recent_sizes]
    base = {
        "model_id": model_id or "smollm2-135m", "max_tokens": max_tokens, "num_samples": num_samples,
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""), "device": model.device.type,
        "chunk_size": chunk_size, "trained_context": trained_context,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "lm_eval_streaming": __version__},
        "machine": f"{platform.machine()} {platform.processor() or ''} {torch.get_num_threads()} threads".strip(),
    }
    records, dense_nll, dense_acc = [], None, None
    from tqdm import tqdm

    for method, recent in tqdm(rows, desc="benchmark rows"):
        policy = policy_for(method, start_size, recent if recent is not None else 252)
        record, s_nll, s_acc = _score_row(model, samples, policy, chunk_size, num_warmup, trained_context)
        if method == "dense":
            dense_nll, dense_acc = s_nll, s_acc
            record.update(delta_nll_vs_dense=None, delta_nll_ci=None, delta_acc_vs_dense=None, delta_acc_ci=None)
        else:
            d, dlo, dhi = _t_interval([a - b for a, b in zip(s_nll, dense_nll)])
            a, alo, ahi = _t_interval([a - b for a, b in zip(s_acc, dense_acc)])
            record.update(delta_nll_vs_dense=d, delta_nll_ci=[dlo, dhi], delta_acc_vs_dense=a, delta_acc_ci=[alo, ahi])
        records.append({**base, **record})
    return records


# ---------------------------------------------------------------- table
def format_table(records: list[dict]) -> str:
    from tabulate import tabulate

    def ci(pair, fmt):
        return "n/a" if pair is None or any(math.isnan(x) for x in pair) else f"[{pair[0]:{fmt}}, {pair[1]:{fmt}}]"

    rows = []
    for r in records:
        rows.append([
            r["method"], r["recent_size"] if r["recent_size"] is not None else "all",
            f"{r['ppl']:.3f}", ci(r["ppl_ci"], ".3f"), f"{r['acc']:.4f}", ci(r["acc_ci"], ".4f"),
            "" if r["delta_nll_vs_dense"] is None else f"{r['delta_nll_vs_dense']:+.4f} {ci(r['delta_nll_ci'], '+.4f')}",
            f"{r['tokens_per_s']:.1f}", f"{r['latency_ms_per_token']:.2f}",
            f"{r['peak_kv_bytes'] / 2**20:.1f}", f"{r['peak_rss_bytes'] / 2**20:.0f}",
            "" if r["cuda_max_allocated_bytes"] is None else f"{r['cuda_max_allocated_bytes'] / 2**20:.0f}",
            r["max_position"], "yes" if r["exceeded_trained_context"] else "no",
            f"{r['nan_logits']}/{r['inf_logits']}", f"{r['max_abs_logit']:.1f}", f"{r['max_abs_attn_score']:.1f}",
        ])
    head = ["method", "recent", "ppl", "ppl 95% CI", "acc", "acc 95% CI", "dNLL vs dense [95% CI]", "tok/s",
            "ms/tok", "KV MiB", "RSS MiB", "CUDA MiB", "max pos", "> trained ctx", "NaN/Inf logits",
            "max|logit|", "max|score|"]
    first = records[0]
    title = (f"model={first['model_id']} tokens={first['max_tokens']} samples={first['num_samples']} "
             f"dtype={first['dtype']} device={first['device']} trained_context={first['trained_context']} "
             f"torch={first['versions']['torch']} transformers={first['versions']['transformers']}")
    return title + "\n" + tabulate(rows, headers=head, tablefmt="github")


# ---------------------------------------------------------------- CLI
def _int_list(text: str) -> list[int]:
    try:
        return [as_int("recent_sizes", x, 1) for x in text.split(",") if x.strip()]
    except StreamingArgError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("benchmark", help="dense vs streaming methods on the same samples: one table",
                              description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model_id", default="smollm2-135m",
                   help="HF model id or path; the default is the embedded SmolLM2-135M (offline)")
    p.add_argument("--method", default="streaming_llm",
                   help=f"comma list of methods besides the dense baseline: {', '.join(METHODS)}")
    p.add_argument("--max_tokens", type=int, default=2000, help="tokens per sample")
    p.add_argument("--recent_sizes", type=_int_list, default=[252], help="comma list of recent window sizes")
    p.add_argument("--start_size", type=int, default=4, help="attention sinks")
    p.add_argument("--num_samples", type=int, default=5, help="documents (the same for every row)")
    p.add_argument("--num_warmup", type=int, default=2,
                   help="untimed forward passes of one chunk (first sample) before each row is timed, so one-time "
                        "costs (allocation, kernel selection) are not counted; they are not scored")
    p.add_argument("--chunk_size", type=int, default=DEFAULT_CHUNK_SIZE, help="tokens per forward pass")
    p.add_argument("--dtype", default="float32", choices=list(DTYPES))
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: cuda if available)")
    p.add_argument("--output", default=None, help="write the records as JSON here")
    return p


def run(args) -> int:
    methods = [m.strip() for m in args.method.split(",") if m.strip()]
    records = run_benchmark(args.model_id, methods, args.max_tokens, args.recent_sizes, args.num_samples,
                            args.num_warmup, args.start_size, args.dtype, args.device, args.chunk_size)
    print(format_table(records))
    if args.output:
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(out.suffix + ".tmp")
        tmp.write_text(json.dumps(records, indent=1))
        tmp.replace(out)
        print(f"records written to {out}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="benchmark.py")
    sub = parser.add_subparsers(dest="cmd")
    add_parser(sub)
    return run(parser.parse_args(["benchmark", *(argv if argv is not None else __import__("sys").argv[1:])]))
