"""PNG figures of result runs (matplotlib, Agg canvas; no display needed); the ``plot`` command draws them
from result files without a report (``lm-eval-streaming plot RESULTS... --figures DIR``).

* ``ppl_vs_length__<model>_<device>_<dtype>.png``: perplexity vs sequence length, one line per method (and
  cache size) and per dense kernel, the trained context as a vertical line;
* ``ppl_vs_cache__<model>_<tokens>_<device>_<dtype>.png``: perplexity vs recent size per method, each dense
  kernel as a horizontal line;
* ``nll_vs_position__<model>_<tokens>_<device>_<dtype>.png``: NLL by token position (``nll_curve``) per row at
  the longest length, raw (faint) and smoothed, with the critical point (analysis.critical);
* ``kernel_error_vs_position__<model>_<device>.png``: mean |ΔNLL| of each dense kernel against the float32
  reference by position (rows that measured the kernel error).

Every figure: the x-axis spans the data, the trained context is drawn only where the data reaches within 1.5x
of it, and each method has one colour in every figure (METHOD_COLORS). Figures are drawn on :class:`matplotlib.figure.Figure` with an Agg canvas, so
they never touch pyplot's global state or the user's backend.
"""

from __future__ import annotations

import math
import re
import sys
import textwrap
from collections import defaultdict
from pathlib import Path

from lm_eval_streaming.records import Row, Run
from lm_eval_streaming.analysis.base import TOLERANCE
from lm_eval_streaming.analysis.critical import SMOOTH_BINS, critical_points, smooth
from lm_eval_streaming.analysis.data import Data, kernel_name
from lm_eval_streaming.analysis.inputs import check_figures_dir, check_result_files, read_results

# One colour per method in every figure (dense kernels: greys with their own line style); a method not listed gets a
# colour from its name, the same in every figure.
METHOD_COLORS = {"streaming_llm": "tab:blue", "window": "tab:orange", "streaming_llm noshift": "tab:green",
                 "h2o": "tab:red", "tova": "tab:purple", "knorm": "tab:brown"}
SPARE_COLORS = ("tab:pink", "tab:olive", "tab:cyan", "gold", "teal", "navy")
DENSE_STYLES = [{"color": c, "linestyle": ls, "linewidth": 1.6}
                for c, ls in (("black", "--"), ("dimgray", "-."), ("darkgray", ":"), ("silver", (0, (5, 1))))]
CONTEXT_REACH = 1.5  # draw the trained context only when the data reaches within 1.5x of it


def method_key(row: Row) -> str:
    return row.method + (" noshift" if row.position_shift is False else "")


def method_color(key: str) -> str:
    if key in METHOD_COLORS:
        return METHOD_COLORS[key]
    return SPARE_COLORS[sum(map(ord, key)) % len(SPARE_COLORS)]  # stable across runs (str hash is salted)


def _row_style(row: Row, label: str, labels) -> dict:
    """Dense: a grey line style per kernel; a method: its colour."""
    if row.is_dense:
        return _dense_style(label, labels)
    return {"color": method_color(method_key(row))}


def _marker(label: str) -> str:
    """Cache sizes of one method share its colour; the marker tells them apart (the seed's 252: a circle)."""
    found = re.search(r"\+(\d+)\)", label)
    size = int(found.group(1)) if found else 252
    return {252: "o", 124: "v", 508: "^", 1020: "s"}.get(size, "D")


def _dense_style(label: str, labels) -> dict:
    dense = sorted(x for x in labels if x.startswith("dense"))
    return DENSE_STYLES[dense.index(label) % len(DENSE_STYLES)] if label in dense else {}


def _slug(*parts) -> str:
    text = "_".join(str(p) for p in parts if p is not None)
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", text).strip("_") or "all"


def _finite(x) -> bool:
    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def new_figure(width: float = 7.0, height: float = 4.5):
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
    n = len(ax.get_legend_handles_labels()[1])
    if n > 6:  # a long legend goes below the axes instead of over the data
        width, height = fig.get_size_inches()
        fig.set_size_inches(width, height + 0.2 * ((n + 1) // 2))
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)
    else:
        ax.legend(fontsize=8)
    return save_figure(fig, path)


def save_figure(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, format="png", bbox_inches="tight")  # keeps a legend placed below the axes
    return path


def _mean(values) -> float:
    vals = [float(v) for v in values if _finite(v)]
    return sum(vals) / len(vals) if vals else math.nan


def _label(row: Row) -> str:
    """Legend label: dense per kernel (several dense kernels per run), streaming methods by cache size."""
    if row.is_dense:
        return f"dense ({kernel_name(row)})"
    every = f", E={row.evict_every}" if row.evict_every not in (None, 1) else ""  # E=1: the methods' default
    return f"{method_key(row)} ({row.start_size}+{row.recent_size}{every})"


def _by(runs: list[Run], *keys: str) -> dict:
    groups = defaultdict(list)
    for run in runs:
        groups[tuple(getattr(run, k) for k in keys)].append(run)
    return dict(sorted(groups.items(), key=str))


def _trained_context(runs: list[Run]) -> int | None:
    return next((r.trained_context for r in runs if r.trained_context), None)


def _context_line(ax, runs: list[Run], x_max: float | None = None, color: str = "red"):
    """The trained context as a vertical line, only when the data reaches within CONTEXT_REACH of it (a line far
    right of the data would squash it); the x-axis then ends at the data or the line, whichever is further."""
    tc = _trained_context(runs)
    if tc and (x_max is None or x_max * CONTEXT_REACH >= tc):
        ax.axvline(tc, color=color, linestyle=":", label=f"trained context ({tc})")
        return tc
    return None


def _x_to_data(ax, xs, line: float | None = None, log: bool = False):
    """x-axis from the data's first to its last point (and the trained-context line when drawn)."""
    xs = [x for x in xs if _finite(x)]
    if not xs:
        return
    lo, hi = min(xs), max(xs + ([line] if line else []))
    if hi > lo:
        pad = (hi / lo) ** 0.03 if log and lo > 0 else (hi - lo) * 0.02
        ax.set_xlim((lo / pad, hi * pad) if log and lo > 0 else (lo - pad, hi + pad))


def _layout(spec: str | None) -> str:
    """How a run built its samples, without the length: lm-eval's streaming_ppl_500 and streaming_ppl_1000 are one
    task family (one line joins them)."""
    return re.sub(r"^(lm_eval:[A-Za-z_]+?)_\d+", r"\1", spec or "")


def readable_ticks(ax, axis: str, values=None):
    """Plain numbers on a log axis (30, 40, 60, not 3x10^1): ticks at the measured values when given (a few), else
    the log locator's ticks, minor ones labelled too when the axis spans less than a decade and a half."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter, NullLocator

    target = ax.xaxis if axis == "x" else ax.yaxis
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    if values:
        kept = []
        for v in sorted(set(values)):  # labels closer than 1.3x apart on the log axis would overlap
            if not kept or v / kept[-1] >= 1.3:
                kept.append(v)
        target.set_major_locator(FixedLocator(kept))
        target.set_minor_locator(NullLocator())
        target.set_major_formatter(plain)
        return
    lo, hi = (ax.get_xlim() if axis == "x" else ax.get_ylim())
    target.set_major_formatter(plain)
    target.set_minor_formatter(plain if lo > 0 and hi / lo < 30 else NullFormatter())


def ppl_vs_length(runs: list[Run], outdir: Path) -> list[Path]:
    """One line per setting (method, cache, kernel) joining its lengths; at each length the runs with the most
    samples (several sample layouts at one length: the one with most samples, said in the title)."""
    paths = []
    for (model, device, dtype), rs in _by(runs, "model_id", "device", "dtype").items():
        if len({r.max_tokens for r in rs}) < 2:
            continue
        best = {}  # length -> the sample layout with the most samples there
        for run in rs:
            key = (run.num_samples, _layout(run.sample_spec))
            best[run.max_tokens] = max(best.get(run.max_tokens, key), key)
        lines, kinds = defaultdict(lambda: defaultdict(list)), {}
        for run in rs:
            if _layout(run.sample_spec) != best[run.max_tokens][1]:
                continue
            for row in run.rows:
                lines[_label(row)][run.max_tokens].append(row.ppl)
                kinds[_label(row)] = method_key(row)
        fig, ax = new_figure()
        for label in sorted(lines, key=lambda k: (not k.startswith("dense"), k)):
            pts = sorted((n, _mean(v)) for n, v in lines[label].items())
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=_marker(label), label=label,
                    **(_dense_style(label, lines) if label.startswith("dense") else
                       {"color": method_color(kinds[label])}))
        lengths = sorted({r.max_tokens for r in rs})
        line = _context_line(ax, rs, max(lengths))
        ax.set_xscale("log")
        _x_to_data(ax, lengths, line, log=True)
        ax.set_yscale("log")
        readable_ticks(ax, "x", lengths if len(lengths) <= 8 else None)
        readable_ticks(ax, "y")
        docs = sorted({n for n, _ in best.values()})
        layouts = len({spec for _, spec in best.values()})
        title = (f"Perplexity vs length: {model} ({device}, {dtype})\n{'-'.join(map(str, docs[::max(1, len(docs) - 1)]))}"
                 f" document(s) per length" + (f"; {layouts} sample layouts, the one with most samples per length"
                                                if layouts > 1 else "")
                 + ("; marker shape: recent size" if len({_marker(k) for k in lines}) > 1 else ""))
        paths.append(_finish(fig, ax, "sequence length (tokens)", "perplexity", title,
                             outdir / f"ppl_vs_length__{_slug(model, device, dtype)}.png"))
    return paths


def ppl_vs_cache(runs: list[Run], outdir: Path) -> list[Path]:
    paths = []
    for (model, tokens, device, dtype), rs in _by(runs, "model_id", "max_tokens", "device", "dtype").items():
        cached = [row for run in rs for row in run.rows if not row.is_dense]
        if len({row.recent_size for row in cached}) < 2:
            continue
        lines, kinds = defaultdict(lambda: defaultdict(list)), {}
        for row in cached:
            label = f"{method_key(row)} (sinks {row.start_size})"
            lines[label][row.recent_size].append(row.ppl)
            kinds[label] = method_key(row)
        fig, ax = new_figure()
        for label in sorted(lines):
            pts = sorted((k, _mean(v)) for k, v in lines[label].items())
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label,
                    color=method_color(kinds[label]))
        dense = defaultdict(list)
        for run in rs:
            for row in run.dense_rows():
                dense[_label(row)].append(row.ppl)
        for label, values in sorted(dense.items()):
            if _finite(_mean(values)):
                ax.axhline(_mean(values), label=f"{label}: {_mean(values):.2f}", **_dense_style(label, dense))
        ax.set_xscale("log", base=2)
        _x_to_data(ax, [row.recent_size for row in cached], log=True)
        readable_ticks(ax, "x", [row.recent_size for row in cached])
        readable_ticks(ax, "y")
        paths.append(_finish(fig, ax, "recent size (tokens kept besides the sinks)", "perplexity",
                             f"Perplexity vs cache size: {model}, {tokens} tokens ({device}, {dtype})",
                             outdir / f"ppl_vs_cache__{_slug(model, tokens, device, dtype)}.png"))
    return paths


def nll_vs_position(runs: list[Run], outdir: Path, tol: float = TOLERANCE) -> list[Path]:
    """NLL by position (``nll_curve``) per row at the longest length of each model/device/dtype, from the runs of
    one way of building samples (the one with the most samples there, then the most rows), so every line shows the
    same tokens; the run's critical point as a vertical line."""
    paths = []
    curved = [r for r in runs if any(row.nll_curve for row in r.rows)]
    for (model, device, dtype), rs in _by(curved, "model_id", "device", "dtype").items():
        longest = max(r.max_tokens for r in rs)
        fig, ax = new_figure(8.0, 4.8)
        by_spec = defaultdict(list)
        for r in rs:
            if r.max_tokens == longest:
                by_spec[r.sample_spec or ""].append(r)
        # the layout with the most samples (its curves are the least noisy), then the most rows
        chosen = max(by_spec.values(), key=lambda group: (max(r.num_samples for r in group),
                                                          sum(len(r.rows) for r in group)))
        chosen = sorted(chosen, key=lambda r: -r.num_samples)  # a setting in two runs: the one with more samples
        rows = {}  # the same setting in two runs of this length: drawn once
        for row in (row for r in chosen for row in r.rows if row.nll_curve):
            rows.setdefault(_label(row), row)
        xs = []
        for label, row in sorted(rows.items(), key=lambda t: (not t[1].is_dense, t[0])):
            pts = [(x, v) for x, v in zip(row.nll_curve.centers(), row.nll_curve.nll) if _finite(v)]
            style = _row_style(row, label, rows)
            x, raw = [p for p, _ in pts], [v for _, v in pts]
            ax.plot(x, raw, alpha=0.25, linewidth=0.8, **{k: v for k, v in style.items() if k != "linewidth"})
            ax.plot(x, smooth(raw), label=label, **style)
            xs += x
        line = _context_line(ax, rs, max(xs, default=None))
        _x_to_data(ax, xs + [0], line)
        drawn = set()
        for cp in critical_points(Data(chosen[:1], tol)):  # the run with the most samples
            kind = "dense" if cp.dense.is_dense else "noshift"
            if cp.pooled is not None and kind not in drawn:  # one per kind (one run of this length)
                drawn.add(kind)
                m = cp.multiple(cp.pooled)
                ax.axvline(cp.pooled, linewidth=1.2, **({"color": "crimson"} if kind == "dense" else
                                                         {"color": method_color("streaming_llm noshift"),
                                                          "linestyle": "--"}),
                           label=("critical point" if kind == "dense" else "position_shift=false loses from")
                           + f" {cp.pooled:.0f}" + (f" ({m:.2f}x)" if m else ""))
        paths.append(_finish(fig, ax, "token position", "NLL (nats/token)",
                             f"NLL vs position: {model}, {longest} tokens ({device}, {dtype})\n"
                             f"faint: per bucket of {longest / len(row.nll_curve.nll):.0f} tokens; solid: moving "
                             f"average over {SMOOTH_BINS} buckets",
                             outdir / f"nll_vs_position__{_slug(model, longest, device, dtype)}.png"))
    return paths


def kernel_error_vs_position(runs: list[Run], outdir: Path) -> list[Path]:
    """Mean |ΔNLL| against the float32 reference kernel by position: one line per dtype x kernel x length, one
    figure per model and device (dense rows that measured it; 0 cannot be drawn on the log axis and is said)."""
    paths = []
    measured = [r for r in runs if any(row.kernel_error and row.kernel_error.by_position for row in r.dense_rows())]
    for (model, device), rs in _by(measured, "model_id", "device").items():
        fig, ax = new_figure()
        exact = set()
        for run in sorted(rs, key=lambda r: (r.dtype, r.max_tokens)):
            for row in sorted(run.dense_rows(), key=lambda row: row.attn_implementation or ""):
                b = row.kernel_error.by_position if row.kernel_error else None
                if b is None:
                    continue
                # x: the middle of the positions a bucket actually holds (the last bucket ends at the run's length)
                pts = [((lo + min(hi, run.max_tokens)) / 2, v) for lo, hi, v in zip(b.edges, b.edges[1:], b.nll)
                       if _finite(v) and v > 0]
                if pts:
                    ax.plot(*zip(*pts), marker="o", markersize=3,
                            label=f"{run.dtype} {row.attn_implementation} ({run.max_tokens} tok)")
                else:
                    exact.add(f"{run.dtype} {row.attn_implementation}")
        if not ax.lines:
            continue  # every kernel equals the reference exactly: nothing to draw on a log axis
        ax.set_yscale("log")
        xs = [x for line_ in ax.lines for x in line_.get_xdata()]
        readable_ticks(ax, "y")
        line = _context_line(ax, rs, max(xs), color="grey")
        _x_to_data(ax, xs, line)
        title = f"Kernel error by position: {model}, {device}"
        if exact:
            title += "\n" + textwrap.fill(f"identical to the reference (0, not drawn): {', '.join(sorted(exact))}", 90)
        paths.append(_finish(fig, ax, "position (tokens)", "mean |ΔNLL| vs float32 reference (nats)", title,
                             outdir / f"kernel_error_vs_position__{_slug(model, device)}.png"))
    return paths


def make_figures(runs: list[Run], outdir, tol: float = TOLERANCE) -> list[Path]:
    """Write every figure the runs allow into ``outdir``; returns their paths."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    return (ppl_vs_length(runs, outdir) + ppl_vs_cache(runs, outdir) + nll_vs_position(runs, outdir, tol)
            + kernel_error_vs_position(runs, outdir))


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

    check_result_files(args.results)
    check_figures_dir(args.figures)
    paths = make_figures(read_results(args.results, "plot"), args.figures)
    for p in paths:
        print(p)
    if not paths:
        print("no figures: the runs need two lengths or two cache sizes of one setting, an NLL curve, or a kernel "
              "error by position", file=sys.stderr)
    return 0


def main(argv=None) -> int:
    from lm_eval_streaming.cli import main as cli_main  # the one error path

    return cli_main(["plot", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
