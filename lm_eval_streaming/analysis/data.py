"""The runs as the verdict rules see them: each row with its run (:class:`Scored`), rows grouped by kind,
each run's reference rows, model families and sizes, and the per-row quantities the rules compare
(paired ΔNLL class, NLL by context region, NaN/Inf counts). Unmeasured (None) stays unknown throughout."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from lm_eval_streaming.records.metrics import exceeds_trained_context, region_means
from lm_eval_streaming.records import Row, Run
from lm_eval_streaming.records.lm_eval_runs import SUBSET_MARK
from lm_eval_streaming.analysis.base import REF_RECENT, finite, mean

NONFINITE_FIELDS = ("nan_logits", "inf_logits", "nonfinite_tokens", "nonfinite_attn_scores")
LOGIT_COUNTS = ("nan_logits", "inf_logits", "nonfinite_tokens")  # every kernel records these


@dataclass(frozen=True, eq=False)
class Scored:
    """One row with the run it belongs to: the model, hardware and length come from the run."""

    run: Run
    row: Row

    @property
    def delta(self) -> float | None:
        return self.row.delta_nll_vs_dense

    def setting(self, *skip: str) -> str:
        run, row = self.run, self.row
        parts = {"model": run.model_id, "device": run.device, "dtype": run.dtype, "tokens": f"{run.max_tokens} tokens",
                 "method": row.label()}
        return " ".join(v for k, v in parts.items() if k not in skip)


# ------------------------------------------------------------------ models
def model_params(model_id: str | None) -> float | None:
    """Parameter count read from a model id (``pythia-6.9b`` -> 6.9e9): for runs that did not record it."""
    if not model_id:
        return None
    name = str(model_id).lower().rstrip("/").split("/")[-1]
    found = re.findall(r"(?<![a-z0-9.])(\d+(?:\.\d+)?)([mbk])(?![a-z])", name.replace("_", "-"))
    if not found:
        return None
    value, unit = found[-1]
    return float(value) * {"k": 1e3, "m": 1e6, "b": 1e9}[unit]


def params_of(run: Run) -> float | None:
    return run.model_params if run.model_params else model_params(run.model_id)


def family_of(run: Run) -> tuple[str, int | None]:
    """Sizes compare only within one family at one trained context (Pythia 70M / 410M / 6.9B), never across
    families (pythia-6.9b vs another family's 7b) nor across trained contexts."""
    from lm_eval_streaming.core.loading import model_family

    return run.model_family or model_family(run.model_id), run.trained_context


def size_label(run: Run) -> str:
    p = params_of(run)
    if p is None:
        return run.model_id
    return f"{run.model_id} ({p / 1e9:.3g}B)" if p >= 1e9 else f"{run.model_id} ({p / 1e6:.3g}M)"


def relative_length(run: Run):
    """Length as a multiple of the model's trained context (models with different contexts compare there)."""
    return round(run.max_tokens / run.trained_context, 2) if run.trained_context else run.max_tokens


# ------------------------------------------------------------------ per-row quantities
def kernel_name(row: Row) -> str:
    """The dense kernel, ``@full`` when the row scored each sample in one model call (the seed's baseline)."""
    return (row.attn_implementation or "kernel not recorded") + ("@full" if row.one_call else "")


def is_ablation(row: Row) -> bool:
    """streaming_llm's tokens at their true distances (position_shift=false): the decisive ablation."""
    return row.method == "streaming_llm" and row.position_shift is False


def delta_class(row: Row, tol: float) -> str:
    """'better' (streaming significantly lower NLL), 'worse', 'tie' or 'unknown'."""
    d, ci = row.delta_nll_vs_dense, row.delta_nll_ci
    if not finite(d):
        return "unknown"
    if ci is not None and finite(ci.low) and finite(ci.high):
        return "better" if ci.high < 0 else "worse" if ci.low > 0 else "tie"
    # No interval (one sample): never significant, whatever the point estimate says.
    return "tie" if abs(d) <= tol else "unknown"


def mean_delta(entries) -> float:
    return mean(e.delta for e in entries)


def _benefit_excluded(row: Row, tol: float) -> bool:
    """The data rule out that streaming is lower by more than ``tol``: the interval's low end (or, with one sample,
    the point estimate) is above -tol."""
    ci = row.delta_nll_ci
    if ci is not None and finite(ci.low):
        return ci.low >= -tol
    return finite(row.delta_nll_vs_dense) and row.delta_nll_vs_dense >= -tol


def effect(entries, tol: float) -> str:
    """Effect of a group of streaming rows: 'effect' (lower NLL on average, significantly somewhere),
    'none' (not lower on average, and a benefit beyond the tolerance excluded in every row) or 'unclear'
    (e.g. two documents whose interval still allows a benefit: too few to rule it out)."""
    m = mean_delta(entries)
    if math.isnan(m):
        return "unclear"
    if m >= 0:
        return "none" if all(_benefit_excluded(e.row, tol) for e in entries) else "unclear"
    return "effect" if any(delta_class(e.row, tol) == "better" for e in entries) else "unclear"


def regions(e: Scored) -> dict[str, tuple[float, int]]:
    """{below/around/beyond: (mean NLL, tokens)} (the regions of records.metrics), from the buckets by fraction of the
    trained context, or from the absolute-position buckets when those are missing."""
    found = region_means(e.row.nll_by_relative_position)
    if not found and e.run.trained_context:
        found = region_means(e.row.nll_by_position, e.run.trained_context)
    return found


def nonfinite(row: Row) -> int | None:
    """NaN/Inf logits, token NLLs and attention scores, summed over what was measured; None if nothing was."""
    counts = [getattr(row, k) for k in NONFINITE_FIELDS if getattr(row, k) is not None]
    return sum(counts) if counts else None


def logit_counts_measured(row: Row) -> bool:
    return all(getattr(row, k) is not None for k in LOGIT_COUNTS)


def samples_text(run: Run) -> str:
    """The number of samples, and ``(subset 2 of 10 docs, ids ...)`` when an lm-eval run scored only some
    of its task's documents (``--limit``, ``--samples``)."""
    subset = next((p for p in (run.sample_spec or "").split(":") if p.startswith(SUBSET_MARK)), None)
    return str(run.num_samples) + (f" ({subset})" if subset else "")


def data_counts(runs: list[Run]) -> str:
    """``3 result files: 1 run, 3 rows``: the files read (a run of lm-eval folders has one per row), runs, rows."""
    files = {row.source or run.source for run in runs for row in run.rows} - {None}
    n_rows = sum(len(r.rows) for r in runs)
    counts = f"{len(runs)} run{'s' * (len(runs) != 1)}, {n_rows} row{'s' * (n_rows != 1)}"
    return f"{len(files)} result file{'s' * (len(files) != 1)}: {counts}" if files else counts


# ------------------------------------------------------------------ the data
def dedupe(runs: list[Run]) -> list[Run]:
    """A cell listed by two experiments (same cell key: same arguments) counts once; the later one wins."""
    out: dict = {}
    for i, run in enumerate(runs):
        out[run.cell_key or ("run", i)] = run
    return list(out.values())


class Data:
    def __init__(self, runs: list[Run], tol: float):
        self.tol = tol
        self.runs = dedupe(runs)
        self.entries = [Scored(run, row) for run in self.runs for row in run.rows]
        self.dense = [e for e in self.entries if e.row.is_dense]
        self.streaming = [e for e in self.entries if e.row.method == "streaming_llm" and not is_ablation(e.row)]
        self.ablation = [e for e in self.entries if is_ablation(e.row)]
        self.window = [e for e in self.entries if e.row.method == "window"]
        self.ref = [e for e in (self.ref_of(run) for run in self.runs) if e is not None]
        self.model_run = {r.model_id: r for r in self.runs}  # one run per model: its size, family, context
        self.models = sorted(self.model_run, key=lambda m: (params_of(self.model_run[m]) is None,
                                                            params_of(self.model_run[m]) or 0, m))
        self.hardware = sorted({(r.device, r.dtype) for r in self.runs})
        self.lengths = sorted({r.max_tokens for r in self.runs})
        self.trained_contexts = {m: self.model_run[m].trained_context for m in self.models}

    def dense_of(self, run: Run) -> Row | None:
        """The dense row the run's deltas are against (the model's own kernel)."""
        dense = run.dense_rows()
        refs = {r.delta_reference for r in run.rows if r.delta_reference is not None}
        return (next((r for r in dense if r.delta_reference is None and r.attn_implementation in refs), None)
                or next((r for r in dense if r.delta_reference is None), None)
                or (dense[0] if dense else None))

    def ref_of(self, run: Run) -> Scored | None:
        """The run's streaming_llm row closest to the seed's recent size (the setting the phenomenon is about)."""
        rows = [r for r in run.rows if r.method == "streaming_llm" and r.recent_size is not None and not is_ablation(r)]
        if not rows:
            return None
        return Scored(run, min(rows, key=lambda r: (abs(r.recent_size - REF_RECENT), r.recent_size)))

    def of_method(self, run: Run, method: str) -> list[Scored]:
        return [Scored(run, r) for r in run.rows if r.method == method and not is_ablation(r)]

    def ablation_of(self, run: Run, like: Row) -> Row | None:
        """The run's position_shift=false row with the same sinks and recent size as ``like``."""
        return next((r for r in run.rows if is_ablation(r) and (r.start_size, r.recent_size)
                     == (like.start_size, like.recent_size)), None)

    def is_long(self, run: Run) -> bool | None:
        """Whether dense had to use positions past the trained context; by the lengths tested when unknown."""
        recorded = [r.exceeded_trained_context for r in run.dense_rows() if r.exceeded_trained_context is not None]
        if recorded:
            return any(recorded)
        known = exceeds_trained_context(run.max_tokens - 1, run.trained_context)
        if known is not None:
            return known
        if len(self.lengths) >= 2 and run.max_tokens in (self.lengths[0], self.lengths[-1]):
            return run.max_tokens == self.lengths[-1]
        return None
