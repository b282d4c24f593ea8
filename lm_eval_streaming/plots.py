"""PNG figures of experiment results (matplotlib, Agg canvas; no display needed).

* ``ppl_vs_length__<model>_<device>_<dtype>.png``: perplexity vs sequence length,
  one line per method (and cache size), the trained context as a vertical line;
* ``ppl_vs_cache__<model>_<tokens>_<device>_<dtype>.png``: perplexity vs recent
  size per method, dense as a horizontal line;
* ``nll_vs_position__<model>_<tokens>_<device>_<dtype>.png``: NLL by token
  position (``nll_curve``) per method at the longest length, with a vertical
  line at the trained context.

Figures are drawn on :class:`matplotlib.figure.Figure` with an Agg canvas, so
they never touch pyplot's global state or the user's backend.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from pathlib import Path

DENSE_STYLE = {"color": "black", "linestyle": "--", "linewidth": 1.6}


def _slug(*parts) -> str:
    text = "_".join(str(p) for p in parts if p is not None)
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", text).strip("_") or "all"


def _finite(x) -> bool:
    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def _label(row) -> str:
    if row.get("method") == "dense":
        return "dense"
    return f"{row.get('method')} ({row.get('start_size')}+{row.get('recent_size')})"


def _new_figure(width: float = 7.0, height: float = 4.5):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(1, 1, 1)


def _finish(fig, ax, xlabel: str, ylabel: str, title: str, path: Path) -> Path:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path


def _mean(values) -> float:
    vals = [float(v) for v in values if _finite(v)]
    return sum(vals) / len(vals) if vals else math.nan


def _trained_context(rows) -> int | None:
    return next((r.get("trained_context") for r in rows if r.get("trained_context")), None)


def ppl_vs_length(rows: list[dict], outdir: Path) -> list[Path]:
    groups = defaultdict(list)
    for r in rows:
        groups[(r.get("model_id"), r.get("device"), r.get("dtype"))].append(r)
    paths = []
    for (model, device, dtype), rs in sorted(groups.items(), key=str):
        if len({r.get("max_tokens") for r in rs}) < 2:
            continue
        lines = defaultdict(lambda: defaultdict(list))
        for r in rs:
            lines[_label(r)][r.get("max_tokens")].append(r.get("ppl"))
        fig, ax = _new_figure()
        for label in sorted(lines, key=lambda s: (s != "dense", s)):
            pts = sorted((L, _mean(v)) for L, v in lines[label].items() if L is not None)
            xs, ys = [p[0] for p in pts], [p[1] for p in pts]
            style = DENSE_STYLE if label == "dense" else {}
            ax.plot(xs, ys, marker="o", label=label, **style)
        tc = _trained_context(rs)
        if tc:
            ax.axvline(tc, color="red", linestyle=":", label=f"trained context ({tc})")
        ax.set_xscale("log")
        ax.set_yscale("log")
        paths.append(_finish(fig, ax, "sequence length (tokens)", "perplexity",
                             f"Perplexity vs length: {model} ({device}, {dtype})",
                             outdir / f"ppl_vs_length__{_slug(model, device, dtype)}.png"))
    return paths


def ppl_vs_cache(rows: list[dict], outdir: Path) -> list[Path]:
    groups = defaultdict(list)
    for r in rows:
        groups[(r.get("model_id"), r.get("max_tokens"), r.get("device"), r.get("dtype"))].append(r)
    paths = []
    for (model, tokens, device, dtype), rs in sorted(groups.items(), key=str):
        cached = [r for r in rs if r.get("method") != "dense" and r.get("recent_size") is not None]
        if len({r.get("recent_size") for r in cached}) < 2:
            continue
        lines = defaultdict(lambda: defaultdict(list))
        for r in cached:
            lines[f"{r.get('method')} (sinks {r.get('start_size')})"][r["recent_size"]].append(r.get("ppl"))
        fig, ax = _new_figure()
        for label in sorted(lines):
            pts = sorted((k, _mean(v)) for k, v in lines[label].items())
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
        dense = _mean(r.get("ppl") for r in rs if r.get("method") == "dense")
        if _finite(dense):
            ax.axhline(dense, label=f"dense ({dense:.2f})", **DENSE_STYLE)
        ax.set_xscale("log", base=2)
        paths.append(_finish(fig, ax, "recent size (tokens kept besides the sinks)", "perplexity",
                             f"Perplexity vs cache size: {model}, {tokens} tokens ({device}, {dtype})",
                             outdir / f"ppl_vs_cache__{_slug(model, tokens, device, dtype)}.png"))
    return paths


def nll_vs_position(rows: list[dict], outdir: Path) -> list[Path]:
    groups = defaultdict(list)
    for r in rows:
        curve = r.get("nll_curve") or {}
        if curve.get("positions") and curve.get("nll"):
            groups[(r.get("model_id"), r.get("device"), r.get("dtype"))].append(r)
    paths = []
    for (model, device, dtype), rs in sorted(groups.items(), key=str):
        longest = max(r.get("max_tokens") or 0 for r in rs)
        rs = [r for r in rs if (r.get("max_tokens") or 0) == longest]
        fig, ax = _new_figure(8.0, 4.8)
        seen = set()
        for r in sorted(rs, key=lambda r: (r.get("method") != "dense", _label(r))):
            label = _label(r)
            if label in seen:  # dense scored once per cell: draw it once
                continue
            seen.add(label)
            pts = [(p, v) for p, v in zip(r["nll_curve"]["positions"], r["nll_curve"]["nll"]) if _finite(v)]
            style = DENSE_STYLE if label == "dense" else {}
            ax.plot([p for p, _ in pts], [v for _, v in pts], label=label, **style)
        tc = _trained_context(rs)
        if tc:
            ax.axvline(tc, color="red", linestyle=":", label=f"trained context ({tc})")
        paths.append(_finish(fig, ax, "token position", "NLL (nats/token)",
                             f"NLL vs position: {model}, {longest} tokens ({device}, {dtype})",
                             outdir / f"nll_vs_position__{_slug(model, longest, device, dtype)}.png"))
    return paths


def kernel_error_vs_position(rows: list[dict], outdir: Path) -> list[Path]:
    """Mean |ΔNLL| against the float32 reference kernel by position, one line per dtype x kernel and length,
    per model and device (dense rows that carry a measured kernel error)."""
    groups = defaultdict(list)
    for r in rows:
        err = r.get("kernel_error")
        if r.get("method") == "dense" and isinstance(err, dict) and err.get("by_position"):
            groups[(r.get("model_id"), r.get("device"))].append(r)
    paths = []
    for (model, device), rs in sorted(groups.items(), key=str):
        fig, ax = _new_figure()
        for r in sorted(rs, key=lambda r: (str(r.get("dtype")), str(r.get("attn_implementation")), r.get("max_tokens"))):
            b = r["kernel_error"]["by_position"]
            edges, values = b["edges"], b["nll"]
            pts = [((lo + hi) / 2, v) for lo, hi, v in zip(edges, edges[1:], values) if _finite(v) and v > 0]
            if pts:
                ax.plot(*zip(*pts), marker="o", markersize=3,
                        label=f"{r.get('dtype')} {r.get('attn_implementation')} ({r.get('max_tokens')} tok)")
        if not ax.lines:
            continue  # every kernel equals the reference exactly: nothing to draw on a log axis
        ax.set_yscale("log")
        tc = rs[0].get("trained_context")
        if tc:
            ax.axvline(tc, color="grey", linestyle=":", label=f"trained context {tc}")
        paths.append(_finish(fig, ax, "position (tokens)", "mean |ΔNLL| vs float32 reference (nats)",
                             f"kernel error by position: {model}, {device} (0 = identical to the reference)",
                             outdir / f"kernel_error_vs_position__{_slug(model, device)}.png"))
    return paths


def make_figures(rows: list[dict], outdir) -> list[Path]:
    """Write every figure the rows allow into ``outdir``; returns their paths."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    return (ppl_vs_length(rows, outdir) + ppl_vs_cache(rows, outdir) + nll_vs_position(rows, outdir)
            + kernel_error_vs_position(rows, outdir))


# ------------------------------------------------------------------ CLI
def _configure(parser):
    parser.add_argument("results", nargs="+", help="experiment JSONL and/or `benchmark --output` JSON files")
    parser.add_argument("--figures", "--output", "-o", dest="figures", default="figures", metavar="DIR",
                        help="directory for the PNG files (default: figures)")
    parser.set_defaults(func=run)
    return parser


def add_parser(subparsers):
    return _configure(subparsers.add_parser("plot", help="PNG figures of experiment results",
                                            description="Draw the experiment figures without the report."))


def run(args) -> int:
    from lm_eval_streaming.errors import UserError
    from lm_eval_streaming.experiment.flat import load_results

    missing = [p for p in args.results if not Path(p).is_file()]
    if missing:
        raise UserError(f"result file(s) not found: {', '.join(missing)}")
    paths = make_figures(load_results(args.results), args.figures)
    for p in paths:
        print(p)
    return 0


def main(argv=None) -> int:
    import argparse

    return run(_configure(argparse.ArgumentParser(prog="lm-eval-streaming plot")).parse_args(argv))


if __name__ == "__main__":
    import sys

    sys.exit(main())
