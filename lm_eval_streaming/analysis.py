"""Which hypothesis do the experiment results support?

``lm-eval-streaming analyze RESULTS.jsonl... [--output REPORT.md] [--figures DIR]``

Reads result files written by ``lm-eval-streaming experiment`` (one row per
dense baseline / method / recent size, see :func:`lm_eval_streaming.experiment.load_results`)
and checks the three hypotheses for "StreamingLLM beats dense attention" against
the judgement rules, each criterion with the numbers it rests on:

* **compression improves prediction**: the advantage on every model size, every
  device/dtype, at short (within the trained context) and long lengths, with an
  interior optimum over cache sizes;
* **numerical problem of the baseline**: non-finite or huge logits / attention
  scores in the dense diagnostics (required), the advantage only in large
  models, growing with length, a bigger cache approaching dense (possibly absent
  on CUDA: reported, not required);
* **position extrapolation**: dense NLL jumps past 1.0x the trained context
  relative to streaming (required), streaming stays flat there, no advantage
  within the trained context, window-only (no sinks) degrades, dtype and device
  change little, no non-finite values.

Each criterion passes, fails or cannot be decided from the data (for instance a
single model size); a hypothesis is *supported* when its key criterion passes
and none fails, *ruled out* when any fails, and *undecided* otherwise.

"Advantage" is ΔNLL = NLL(streaming) - NLL(dense) (nats/token, paired on the same
samples, ``delta_nll_vs_dense`` and its CI): significant when the CI excludes 0,
absent when the point estimate is >= 0. Differences below ``--tolerance`` (0.05
nats by default) count as "no change".
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from .verdict_numerics import judge_kernels, numerical_scope

TOLERANCE = 0.05  # nats/token: smaller differences are "no change"
HW_TOLERANCE = 0.10  # nats/token: spread of ΔNLL across devices/dtypes that still counts as "little"
HUGE_LOGIT = 1e3  # |logit| above this is "huge" (normal LMs stay below ~100)
HUGE_ATTN_SCORE = 1e4  # |q.k/sqrt(d)| above this is "huge" (float16 overflows at 65504)
REF_RECENT = 252  # the seed's recent size: the reference setting
NONFINITE_FIELDS = ("nan_logits", "inf_logits", "nonfinite_attn_scores", "nonfinite_tokens")

PASS, FAIL, UNDECIDED = "pass", "fail", "cannot decide"
SUPPORTED, RULED_OUT, OPEN = "supported", "ruled out", "undecided"


# ------------------------------------------------------------------ helpers
def _num(value) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return math.nan
    return x


def _fin(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _f(x, digits: int = 3) -> str:
    x = _num(x)
    if math.isnan(x):
        return "n/a"
    if abs(x) >= 1e5:
        return f"{x:.3g}"
    return f"{x:.{digits}f}"


def _signed(x, digits: int = 3) -> str:
    x = _num(x)
    return "n/a" if math.isnan(x) else f"{x:+.{digits}f}"


def _ci(ci) -> str:
    if not ci or len(ci) != 2:
        return ""
    return f" [{_signed(ci[0])}, {_signed(ci[1])}]"


def model_params(model_id: str | None) -> float | None:
    """Parameter count read from a model id (``pythia-6.9b`` -> 6.9e9, ``smollm2-135m`` -> 1.35e8)."""
    if not model_id:
        return None
    name = str(model_id).lower().rstrip("/").split("/")[-1]
    found = re.findall(r"(?<![a-z0-9.])(\d+(?:\.\d+)?)([mbk])(?![a-z])", name.replace("_", "-"))
    if not found:
        return None
    value, unit = found[-1]
    return float(value) * {"k": 1e3, "m": 1e6, "b": 1e9}[unit]


def _size_label(model_id: str) -> str:
    p = model_params(model_id)
    if p is None:
        return str(model_id)
    return f"{model_id} ({p / 1e9:.3g}B)" if p >= 1e9 else f"{model_id} ({p / 1e6:.3g}M)"


def _is_dense(row) -> bool:
    return row.get("method") == "dense"


def _call_id(row) -> tuple:
    """Rows scored in one run_benchmark call (same samples) share this id."""
    if row.get("cell_key"):
        return ("cell", row["cell_key"])
    return ("params", row.get("model_id"), row.get("max_tokens"), row.get("num_samples"), row.get("dtype"),
            row.get("device"), row.get("chunk_size"), row.get("source"))


def _dedupe(rows: list[dict]) -> list[dict]:
    """Identical cells listed by two experiments count once."""
    seen, out = set(), []
    for r in rows:
        key = (_call_id(r), r.get("method"), r.get("start_size"), r.get("recent_size"), r.get("attn_implementation"))
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out


def _exceeds(row) -> bool | None:
    if row.get("exceeded_trained_context") is not None:
        return bool(row["exceeded_trained_context"])
    tc = row.get("trained_context")
    if tc and row.get("max_tokens"):
        return row["max_tokens"] > tc
    return None


def _delta_class(row, tol: float) -> str:
    """'better' (streaming significantly lower NLL), 'worse', 'tie' or 'unknown'."""
    d = _num(row.get("delta_nll_vs_dense"))
    if math.isnan(d):
        return "unknown"
    ci = row.get("delta_nll_ci")
    if ci and len(ci) == 2 and _fin(_num(ci[0])) and _fin(_num(ci[1])):
        if ci[1] < 0:
            return "better"
        if ci[0] > 0:
            return "worse"
        return "tie"
    # No interval (one sample): never significant, whatever the point estimate says.
    return "tie" if abs(d) <= tol else "unknown"


def _effect(rows: list[dict], tol: float) -> str:
    """Effect of a group of streaming rows: 'effect' | 'none' | 'unclear'."""
    ds = [_num(r.get("delta_nll_vs_dense")) for r in rows]
    ds = [d for d in ds if not math.isnan(d)]
    if not ds:
        return "unclear"
    mean = sum(ds) / len(ds)
    if mean >= 0:
        return "none"
    if any(_delta_class(r, tol) == "better" for r in rows):
        return "effect"
    return "unclear"


def _mean_delta(rows) -> float:
    ds = [_num(r.get("delta_nll_vs_dense")) for r in rows]
    ds = [d for d in ds if not math.isnan(d)]
    return sum(ds) / len(ds) if ds else math.nan


def _region_means(row) -> dict:
    """Token-weighted NLL below / past 1.0x trained context from ``nll_by_relative_position``."""
    d = row.get("nll_by_relative_position") or {}
    scale = 1.0
    if not d.get("edges") and row.get("trained_context") and row.get("nll_by_position"):
        # absolute buckets, as fractions of the trained context; a bucket straddling 1.0x is left out
        d, scale = row["nll_by_position"], float(row["trained_context"])
    edges, nll, count = d.get("edges"), d.get("nll"), d.get("count")
    out = {"below": (0.0, 0), "past": (0.0, 0)}
    if not edges or nll is None or count is None:
        return out
    acc = {"below": [0.0, 0], "past": [0.0, 0]}
    for i, (v, c) in enumerate(zip(nll, count)):
        if i >= len(edges) or not c or not _fin(_num(v)):
            continue
        lo = float(edges[i]) / scale
        hi = float(edges[i + 1]) / scale if i + 1 < len(edges) else math.inf
        if lo < 1.0 - 1e-9 < hi - 2e-9 and hi > 1.0 + 1e-9:
            continue  # straddles 1.0x: cannot be split
        region = "past" if lo >= 1.0 - 1e-9 else "below"
        acc[region][0] += float(v) * c
        acc[region][1] += int(c)
    return {k: (s, n) for k, (s, n) in acc.items()}


def _nonfinite(row) -> int:
    return int(sum(_num(row.get(k)) for k in NONFINITE_FIELDS if _fin(_num(row.get(k)))))


def _anomalous(row) -> bool:
    return (_nonfinite(row) > 0 or _num(row.get("max_abs_logit")) > HUGE_LOGIT
            or _num(row.get("max_abs_attn_score")) > HUGE_ATTN_SCORE)


def _has_diagnostics(row) -> bool:
    """Whether non-finite counts were measured (present and not None): unmeasured is unknown, never clean."""
    return any(row.get(k) is not None for k in NONFINITE_FIELDS)


def _setting(row, *skip) -> str:
    parts = []
    for k in ("model_id", "device", "dtype", "max_tokens", "method", "recent_size"):
        if k in skip or row.get(k) is None:
            continue
        parts.append(f"{row[k]}" if k in ("model_id", "device", "dtype", "method") else f"{k.split('_')[0]}={row[k]}")
    return " ".join(parts)


# ------------------------------------------------------------------ results
@dataclass
class Criterion:
    name: str
    status: str  # PASS | FAIL | UNDECIDED
    evidence: str
    key: bool = False  # the criterion without which the hypothesis cannot be supported
    required: bool = True  # informational criteria neither support nor rule out


@dataclass
class Hypothesis:
    name: str
    label: str
    criteria: list[Criterion] = field(default_factory=list)
    scope: str | None = None  # where the verdict holds, when it holds only for what was measured

    @property
    def verdict(self) -> str:
        required = [c for c in self.criteria if c.required]
        if any(c.status == FAIL for c in required):
            return RULED_OUT
        if all(c.status == PASS for c in required if c.key) and any(c.key for c in required):
            return SUPPORTED
        return OPEN

    def failed(self) -> list[Criterion]:
        return [c for c in self.criteria if c.required and c.status == FAIL]

    def undecided(self) -> list[Criterion]:
        return [c for c in self.criteria if c.required and c.status == UNDECIDED]


@dataclass
class Analysis:
    rows: list[dict]
    hypotheses: dict[str, Hypothesis]
    phenomenon: str
    cause: str
    scope: dict[str, str]
    meaning: str
    summary: str
    figures: list[str] = field(default_factory=list)

    @property
    def verdicts(self) -> dict[str, str]:
        return {k: h.verdict for k, h in self.hypotheses.items()}


# ------------------------------------------------------------------ analysis
class _Data:
    def __init__(self, rows: list[dict], tol: float):
        self.tol = tol
        self.rows = _dedupe(rows)
        self.dense = [r for r in self.rows if _is_dense(r)]
        self.streaming = [r for r in self.rows if r.get("method") == "streaming_llm"]
        self.window = [r for r in self.rows if r.get("method") == "window"]
        if any(r.get("recent_size") == REF_RECENT for r in self.streaming):
            self.ref = [r for r in self.streaming if r.get("recent_size") == REF_RECENT]
        else:
            self.ref = list(self.streaming)
        self.calls: dict[tuple, dict] = defaultdict(lambda: {"dense": None, "streaming_llm": [], "window": []})
        for r in self.rows:
            call = self.calls[_call_id(r)]
            if _is_dense(r):
                ref = r.get("delta_reference")
                if call["dense"] is None or (ref is None and r.get("attn_implementation") ==
                                             call["dense"].get("delta_reference")):
                    call["dense"] = r  # the dense row the deltas are measured against
            elif r.get("method") in ("streaming_llm", "window"):
                call[r["method"]].append(r)
        self.models = sorted({r.get("model_id") for r in self.rows if r.get("model_id")},
                             key=lambda m: (model_params(m) is None, model_params(m) or 0, m))
        self.hardware = sorted({(r.get("device"), r.get("dtype")) for r in self.rows}, key=str)
        self.lengths = sorted({r.get("max_tokens") for r in self.rows if r.get("max_tokens")})
        tcs = {r.get("trained_context") for r in self.rows if r.get("trained_context")}
        self.trained_contexts = {m: next((r.get("trained_context") for r in self.rows
                                          if r.get("model_id") == m and r.get("trained_context")), None)
                                 for m in self.models}
        self.any_trained_context = bool(tcs)

    def ref_of_call(self, call) -> dict | None:
        rows = call["streaming_llm"]
        if not rows:
            return None
        return min(rows, key=lambda r: abs((r.get("recent_size") or 0) - REF_RECENT))

    def is_long(self, row) -> bool | None:
        ex = _exceeds(row)
        if ex is not None:
            return ex
        if len(self.lengths) >= 2 and row.get("max_tokens"):
            if row["max_tokens"] == self.lengths[-1]:
                return True
            if row["max_tokens"] == self.lengths[0]:
                return False
        return None


def _phenomenon(d: _Data) -> tuple[str, bool]:
    ref = d.ref
    if not ref:
        return "No streaming_llm rows in the data: nothing to compare with dense.", False
    n = len(ref)
    better = [r for r in ref if _delta_class(r, d.tol) == "better"]
    lower = [r for r in ref if _num(r.get("delta_nll_vs_dense")) < 0]
    worse = [r for r in ref if _delta_class(r, d.tol) == "worse"]
    best = min(ref, key=lambda r: _num(r.get("delta_nll_vs_dense")) if _fin(_num(r.get("delta_nll_vs_dense"))) else 1e9)
    bd = d.calls[_call_id(best)]["dense"] or {}
    sizes = sorted({(r.get("start_size"), r.get("recent_size")) for r in ref}, key=str)
    cache = ", ".join(f"{s}+{rc}" for s, rc in sizes)
    text = (f"StreamingLLM ({cache} sinks+recent) has a lower NLL than dense attention in {len(lower)} of {n} "
            f"settings ({len(better)} significant, {len(worse)} significantly worse). Best streaming setting: "
            f"{_setting(best, 'method')}: perplexity {_f(best.get('ppl'), 2)} vs dense {_f(bd.get('ppl'), 2)}, "
            f"ΔNLL {_signed(best.get('delta_nll_vs_dense'))}{_ci(best.get('delta_nll_ci'))} nats/token, "
            f"Δaccuracy {_signed(best.get('delta_acc_vs_dense'), 4)}{_ci(best.get('delta_acc_ci'))}.")
    reproduced = bool(better)
    if not reproduced:
        text += (" The seed's phenomenon (streaming better than dense) is not reproduced with significance "
                 "in this data.")
    return text, reproduced


# ---- position extrapolation
def _extrapolation(d: _Data) -> Hypothesis:
    h = Hypothesis("extrapolation", "position extrapolation (位置外推): dense attention past the trained context")
    tol = d.tol
    pooled = {k: [0.0, 0] for k in ("d_below", "s_below", "d_past", "s_past", "d_below_all", "s_below_all")}
    n_exceeding = 0
    for call in d.calls.values():
        dense, s = call["dense"], d.ref_of_call(call)
        if not dense or not s:
            continue
        rd, rs = _region_means(dense), _region_means(s)
        for region in ("below",):
            if rd[region][1] and rs[region][1]:
                pooled["d_below_all"][0] += rd[region][0]
                pooled["d_below_all"][1] += rd[region][1]
                pooled["s_below_all"][0] += rs[region][0]
                pooled["s_below_all"][1] += rs[region][1]
        if rd["past"][1] and rs["past"][1] and rd["below"][1] and rs["below"][1]:
            n_exceeding += 1
            for key, reg in (("d_below", rd["below"]), ("s_below", rs["below"]), ("d_past", rd["past"]),
                             ("s_past", rs["past"])):
                pooled[key][0] += reg[0]
                pooled[key][1] += reg[1]
    mean = {k: (v[0] / v[1] if v[1] else math.nan) for k, v in pooled.items()}

    # E1 (key): dense jumps past 1.0x relative to streaming.
    if n_exceeding:
        jump = (mean["d_past"] - mean["s_past"]) - (mean["d_below"] - mean["s_below"])
        ev = (f"in the {n_exceeding} run(s) longer than the trained context: dense NLL past 1.0x trained context "
              f"{_f(mean['d_past'])} vs streaming {_f(mean['s_past'])}; below: {_f(mean['d_below'])} vs "
              f"{_f(mean['s_below'])}; dense-minus-streaming gap grows by {_signed(jump)} nats past 1.0x "
              f"(threshold {tol})")
        h.criteria.append(Criterion("dense NLL jumps past 1.0x trained context (relative to streaming)",
                                    PASS if jump > tol else FAIL, ev, key=True))
        s_change = mean["s_past"] - mean["s_below"]
        d_change = mean["d_past"] - mean["d_below"]
        limit = max(tol, 0.25 * max(d_change, 0.0))
        h.criteria.append(Criterion(
            "streaming NLL stays flat past 1.0x",
            PASS if s_change <= limit else FAIL,
            f"streaming NLL changes by {_signed(s_change)} past 1.0x (dense {_signed(d_change)}); flat means "
            f"<= {_f(limit)}"))
    else:
        why = ("no row has nll_by_relative_position with tokens past 1.0x trained context"
               if d.any_trained_context else "no trained_context in the rows")
        lens = ", ".join(map(str, d.lengths)) or "none"
        tcs = ", ".join(f"{m}: {tc}" for m, tc in d.trained_contexts.items())
        h.criteria.append(Criterion("dense NLL jumps past 1.0x trained context (relative to streaming)", UNDECIDED,
                                    f"{why} (lengths {lens}; trained contexts {tcs or 'unknown'}): run lengths past "
                                    "the trained context", key=True))
        h.criteria.append(Criterion("streaming NLL stays flat past 1.0x", UNDECIDED, "no tokens past 1.0x"))

    # E3: no advantage within the trained context.
    gap_below = mean["d_below_all"] - mean["s_below_all"]
    short = [r for r in d.ref if d.is_long(r) is False]
    short_better = [r for r in short if _delta_class(r, tol) == "better" and _num(r.get("delta_nll_vs_dense")) < -tol]
    if math.isnan(gap_below) and not short:
        h.criteria.append(Criterion("dense is not worse within the trained context", UNDECIDED,
                                    "no NLL below 1.0x trained context and no run within it"))
    else:
        ok = (math.isnan(gap_below) or gap_below <= tol) and not short_better
        parts = []
        if not math.isnan(gap_below):
            parts.append(f"below 1.0x trained context dense NLL {_f(mean['d_below_all'])} vs streaming "
                         f"{_f(mean['s_below_all'])} (gap {_signed(gap_below)}, tolerance {tol})")
        if short:
            parts.append(f"runs within the trained context: streaming significantly better by more than {tol} in "
                         f"{len(short_better)} of {len(short)}"
                         + (f" (e.g. {_setting(short_better[0], 'method')}: ΔNLL "
                            f"{_signed(short_better[0].get('delta_nll_vs_dense'))}"
                            f"{_ci(short_better[0].get('delta_nll_ci'))})" if short_better else ""))
        h.criteria.append(Criterion("dense is not worse within the trained context", PASS if ok else FAIL,
                                    "; ".join(parts)))

    # E4: window-only (no sinks) degrades.
    diffs = []
    for call in d.calls.values():
        for w in call["window"]:
            match = [s for s in call["streaming_llm"] if s.get("recent_size") == w.get("recent_size")
                     and s.get("start_size") == w.get("start_size")]
            budget = (w.get("start_size") or 0) + (w.get("recent_size") or 0)
            if match and (w.get("max_tokens") or 0) > budget:
                dw, ds = _num(w.get("nll_mean")), _num(match[0].get("nll_mean"))
                if _fin(dw) and _fin(ds):
                    diffs.append((dw - ds, w, _num(w.get("delta_nll_vs_dense"))))
    if diffs:
        diffs.sort(key=lambda t: t[0])
        median = diffs[len(diffs) // 2][0]
        worst = diffs[-1]
        h.criteria.append(Criterion(
            "window-only (no sinks) degrades (the paper's failing baseline)",
            PASS if median > tol else FAIL,
            f"window minus streaming_llm NLL at equal cache size: median {_signed(median)} over {len(diffs)} runs "
            f"(largest {_signed(worst[0])} at {_setting(worst[1], 'method')}; window vs dense "
            f"{_signed(worst[2])})"))
    else:
        h.criteria.append(Criterion("window-only (no sinks) degrades (the paper's failing baseline)", UNDECIDED,
                                    "no window rows paired with streaming_llm at the same cache size"))

    # E5: dtype and device change little.
    h.criteria.append(_hardware_spread(d, "dtype and device change the streaming-vs-dense gap little"))

    # E6: no NaN.
    h.criteria.append(_no_nonfinite(d))
    return h


def _hardware_spread(d: _Data, name: str) -> Criterion:
    groups = defaultdict(list)
    for r in d.streaming:
        groups[(r.get("model_id"), r.get("max_tokens"), r.get("start_size"), r.get("recent_size"),
                r.get("num_samples"))].append(r)
    spreads = []
    for key, rows in groups.items():
        hw = {(r.get("device"), r.get("dtype")) for r in rows}
        vals = [(_num(r.get("delta_nll_vs_dense")), r) for r in rows]
        vals = [(v, r) for v, r in vals if _fin(v)]
        if len(hw) >= 2 and len(vals) >= 2:
            lo, hi = min(vals, key=lambda t: t[0]), max(vals, key=lambda t: t[0])
            spreads.append((hi[0] - lo[0], key, lo, hi))
    if not spreads:
        hw = ", ".join(f"{dv}/{dt}" for dv, dt in d.hardware)
        return Criterion(name, UNDECIDED, f"only one device/dtype per setting in the data ({hw}): cannot compare")
    worst = max(spreads, key=lambda t: t[0])
    _, key, lo, hi = worst
    ev = (f"largest spread of ΔNLL across device/dtype: {_f(worst[0])} nats ({lo[1].get('device')}/"
          f"{lo[1].get('dtype')} {_signed(lo[0])} vs {hi[1].get('device')}/{hi[1].get('dtype')} {_signed(hi[0])}, "
          f"{key[0]} len={key[1]}) over {len(spreads)} setting(s); little means <= {HW_TOLERANCE}")
    return Criterion(name, PASS if worst[0] <= HW_TOLERANCE else FAIL, ev)


def _no_nonfinite(d: _Data) -> Criterion:
    rows = [r for r in d.rows if _has_diagnostics(r)]
    if not rows:
        return Criterion("no NaN / Inf", UNDECIDED, "no diagnostics fields in the rows")
    bad = [r for r in rows if _nonfinite(r) > 0]
    if not bad:
        return Criterion("no NaN / Inf", PASS, f"0 non-finite logits, attention scores or token NLLs in "
                                               f"{len(rows)} rows")
    ex = max(bad, key=_nonfinite)
    return Criterion("no NaN / Inf", FAIL,
                     f"{len(bad)} of {len(rows)} rows have non-finite values (most: {_setting(ex)}: "
                     + ", ".join(f"{k}={int(_num(ex.get(k)))}" for k in NONFINITE_FIELDS if _fin(_num(ex.get(k))))
                     + ")")


# ---- numerical problem
def _numerical(d: _Data) -> Hypothesis:
    h = Hypothesis("numerical", "数值稳定性 numerical stability of the dense baseline")
    tol = d.tol
    status, evidence, scope = numerical_scope(judge_kernels(d.dense, tol))
    h.criteria.append(Criterion("measured kernel error, causality probe and NaN/Inf of the dense kernels", status,
                                evidence, key=True))
    h.scope = scope
    rows = [r for r in d.dense if r.get("max_abs_logit") is not None]
    if rows:
        worst = max(rows, key=lambda r: _num(r.get("max_abs_logit")))
        scores = [_num(r.get("max_abs_attn_score")) for r in rows if r.get("max_abs_attn_score") is not None]
        h.criteria.append(Criterion(
            "logit and attention-score magnitudes (informational)", PASS if _anomalous(worst) else FAIL,
            f"max |logit| {_f(worst.get('max_abs_logit'), 1)} over {len(rows)} dense rows (huge means > {HUGE_LOGIT:g}); "
            + (f"max |attention score| {_f(max(scores), 1)} where the project's kernel ran"
               if scores else "attention scores not measured (they are observable only in the project's kernel)"),
            required=False))

    # N2: only in large models.
    h.criteria.append(_by_model_size(d, only_large=True))

    # N3: growing with length.
    groups = defaultdict(list)
    for r in d.ref:
        groups[(r.get("model_id"), r.get("device"), r.get("dtype"), r.get("start_size"), r.get("recent_size"))].append(r)
    growth, flat = [], []
    for key, rs in groups.items():
        by_len = defaultdict(list)
        for r in rs:
            by_len[r.get("max_tokens")].append(r)
        if len(by_len) < 2:
            continue
        lens = sorted(by_len)
        adv = [-_mean_delta(by_len[L]) for L in lens]
        dense_bad = []
        for L in lens:
            ds = [d.calls[_call_id(r)]["dense"] for r in by_len[L]]
            dense_bad.append(sum(_nonfinite(x) for x in ds if x))
        if any(_fin(a) and a > tol for a in adv) or any(dense_bad):  # where there is an effect to grow
            growth.append((key, lens, adv, dense_bad))
        else:
            flat.append(key)
    if not growth and flat:
        h.criteria.append(Criterion("the effect grows with sequence length", FAIL,
                                    f"no advantage over dense and no non-finite values at any length in "
                                    f"{len(flat)} setting(s) with several lengths"))
    elif not growth:
        h.criteria.append(Criterion("the effect grows with sequence length", UNDECIDED,
                                    f"only one length per setting (lengths: {', '.join(map(str, d.lengths)) or 'none'})"))
    else:
        grows, parts = [], []
        for key, lens, adv, bad in growth:
            g_adv = _fin(adv[-1]) and _fin(adv[0]) and adv[-1] - adv[0] > tol
            g_bad = bad[-1] > bad[0] and all(b2 >= b1 for b1, b2 in zip(bad, bad[1:]))
            grows.append(g_adv or g_bad)
            parts.append(f"{key[0]} {key[1]}/{key[2]}: advantage (-ΔNLL) "
                         + ", ".join(f"{L}: {_signed(a)}" for L, a in zip(lens, adv))
                         + ("; dense non-finite " + ", ".join(f"{L}: {b}" for L, b in zip(lens, bad)) if any(bad) else ""))
        h.criteria.append(Criterion("the effect grows with sequence length", PASS if all(grows) else FAIL,
                                    "; ".join(parts)))

    # N4: a bigger cache approaches the baseline.
    curves = _cache_curves(d)
    if not curves:
        h.criteria.append(Criterion("a bigger cache approaches the dense baseline", UNDECIDED,
                                    "fewer than 2 recent sizes per setting"))
    else:
        oks, parts = [], []
        for key, pts in curves:
            absd = [abs(_num(r.get("delta_nll_vs_dense"))) for _, r in pts]
            ok = absd[-1] < absd[0] and all(b <= a + tol / 2 for a, b in zip(absd, absd[1:]))
            oks.append(ok)
            parts.append(f"{key[0]} len={key[1]}: |ΔNLL| by recent size "
                         + ", ".join(f"{rc}: {_f(a)}" for (rc, _), a in zip(pts, absd)))
        h.criteria.append(Criterion("a bigger cache approaches the dense baseline", PASS if all(oks) else FAIL,
                                    "; ".join(parts)))

    # N5 (informational): absent on CUDA.
    cuda = [r for r in d.ref if str(r.get("device", "")).startswith("cuda")]
    other = [r for r in d.ref if r.get("device") and not str(r.get("device")).startswith("cuda")]
    if cuda and other:
        ev = (f"mean ΔNLL on CUDA {_signed(_mean_delta(cuda))} vs elsewhere {_signed(_mean_delta(other))}; "
              f"dense rows anomalous on CUDA: {sum(_anomalous(r) for r in d.dense if str(r.get('device', '')).startswith('cuda'))}")
        status = PASS if _effect(cuda, tol) != "effect" and _effect(other, tol) == "effect" else FAIL
    else:
        ev, status = "needs rows on CUDA and on another device", UNDECIDED
    h.criteria.append(Criterion("possibly absent on CUDA (optional)", status, ev, required=False))
    return h


def _cache_curves(d: _Data):
    groups = defaultdict(dict)
    for r in d.streaming:
        key = (r.get("model_id"), r.get("max_tokens"), r.get("device"), r.get("dtype"), r.get("start_size"),
               r.get("num_samples"))
        if _fin(_num(r.get("delta_nll_vs_dense"))) and r.get("recent_size") is not None:
            groups[key].setdefault(r["recent_size"], r)
    return [(k, sorted(v.items())) for k, v in groups.items() if len(v) >= 2]


def _matched_groups(rows: list[dict], group_of, setting_of) -> tuple[dict, str]:
    """Rows by group, restricted to settings (the other parameters) that several groups share, so that
    groups are compared at equal settings; returns (groups, note)."""
    groups_by_setting = defaultdict(set)
    for r in rows:
        groups_by_setting[setting_of(r)].add(group_of(r))
    all_groups = {group_of(r) for r in rows}
    shared = {st for st, gs in groups_by_setting.items() if gs == all_groups and len(gs) >= 2}
    if not shared:
        shared = {st for st, gs in groups_by_setting.items() if len(gs) >= 2}
    out = defaultdict(list)
    if not shared:  # no common setting: one group per setting, nothing to compare at equal settings
        for r in rows:
            out[group_of(r)].append(r)
        return out, (" (no setting shared between them: compared across different settings)"
                     if len(all_groups) >= 2 else "")
    for r in rows:
        if setting_of(r) in shared:
            out[group_of(r)].append(r)
    skipped = len({setting_of(r) for r in rows}) - len(shared)
    note = f" (compared at {len(shared)} shared setting(s)" + (f"; {skipped} unshared left out)" if skipped else ")")
    return out, note


def _family(row) -> tuple:
    """Sizes are compared within one family at one trained context (Pythia 70M / 410M / 6.9B), never across
    families (pythia-6.9b vs another family's 7b) nor across trained contexts."""
    from .model_loading import model_family

    return (row.get("model_family") or model_family(str(row.get("model_id"))), row.get("trained_context"))


def _relative_length(row):
    """Length as a multiple of the model's trained context (models with different contexts compare there)."""
    tc, n = row.get("trained_context"), row.get("max_tokens")
    return round(n / tc, 2) if tc and n else n


def _by_model_size(d: _Data, only_large: bool) -> Criterion:
    name = ("the effect appears only in large models" if only_large else "the effect on every model size")
    families = defaultdict(set)
    for r in d.ref:
        families[_family(r)].add(r.get("model_id"))
    sized = {f: ms for f, ms in families.items() if len(ms) >= 2}
    if not sized:
        listing = "; ".join(f"{f[0]} (trained context {f[1]}): {', '.join(sorted(map(str, ms)))}"
                            for f, ms in families.items()) or "none"
        return Criterion(name, UNDECIDED, f"no family with two or more sizes at one trained context ({listing}): "
                                          "the model-size rule cannot be decided; run model_size.yaml (Pythia)")
    family = max(sized, key=lambda f: len(sized[f]))
    rows = [r for r in d.ref if _family(r) == family]
    groups, note = _matched_groups(
        rows, lambda r: r.get("model_id"),
        lambda r: (_relative_length(r), r.get("device"), r.get("dtype"), r.get("start_size"), r.get("recent_size")))
    note += f" (family {family[0]}, trained context {family[1]}; lengths as multiples of it)"
    per_model = {}
    for m in d.models:
        m_rows = groups.get(m)
        if m_rows:
            per_model[m] = (_effect(m_rows, d.tol), _mean_delta(m_rows))
    listing = "; ".join(f"{_size_label(m)}: {e} (mean ΔNLL {_signed(md)})" for m, (e, md) in per_model.items()) + note
    if len(per_model) < 2:
        return Criterion(name, UNDECIDED,
                         f"only one model size in the data ({listing or 'none'}): the model-size rule cannot be "
                         "decided; run model_size.yaml")
    if only_large:
        sized = [(model_params(m), e) for m, (e, _) in per_model.items() if model_params(m) is not None]
        if len(sized) < 2:
            return Criterion(name, UNDECIDED, f"model sizes cannot be read from the ids ({listing})")
        with_eff = [p for p, e in sized if e == "effect"]
        without = [p for p, e in sized if e == "none"]
        if not with_eff:
            return Criterion(name, FAIL, f"no model size shows the effect ({listing})")
        if without and min(with_eff) > max(without):
            return Criterion(name, PASS, listing)
        if min(p for p, _ in sized) in with_eff:
            return Criterion(name, FAIL, f"the smallest model shows it too ({listing})")
        return Criterion(name, UNDECIDED, listing)
    effects = [e for e, _ in per_model.values()]
    if all(e == "effect" for e in effects):
        return Criterion(name, PASS, listing)
    if any(e == "none" for e in effects):
        return Criterion(name, FAIL, listing)
    return Criterion(name, UNDECIDED, listing)


# ---- compression
def _compression(d: _Data) -> Hypothesis:
    h = Hypothesis("compression", "压缩改善预测 compression improves prediction")
    tol = d.tol
    c1 = _by_model_size(d, only_large=False)
    c1.key = True
    h.criteria.append(c1)

    groups, note = _matched_groups(
        d.ref, lambda r: (r.get("device"), r.get("dtype")),
        lambda r: (r.get("model_id"), r.get("max_tokens"), r.get("start_size"), r.get("recent_size")))
    per_hw = {}
    for hw in d.hardware:
        rows = groups.get(hw)
        if rows:
            per_hw[hw] = (_effect(rows, tol), _mean_delta(rows))
    listing = "; ".join(f"{dv}/{dt}: {e} (mean ΔNLL {_signed(md)})" for (dv, dt), (e, md) in per_hw.items()) + note
    if len(per_hw) < 2:
        h.criteria.append(Criterion("the effect on every device and dtype", UNDECIDED,
                                    f"only one device/dtype in the data ({listing or 'none'}): cannot be decided",
                                    key=True))
    else:
        effects = [e for e, _ in per_hw.values()]
        st = PASS if all(e == "effect" for e in effects) else FAIL if any(e == "none" for e in effects) else UNDECIDED
        h.criteria.append(Criterion("the effect on every device and dtype", st, listing, key=True))

    by_len = defaultdict(list)
    for r in d.ref:
        by_len[r.get("max_tokens")].append(r)
    per_len = {L: (_effect(rs, tol), _mean_delta(rs), d.is_long(rs[0])) for L, rs in sorted(by_len.items(), key=lambda t: t[0] or 0)}
    classes = {cls for _, _, cls in per_len.values()}
    ev = "; ".join(f"{L} tokens ({'long: past the trained context' if cls else 'short' if cls is False else 'unclassified'}): "
                   f"{e} (mean ΔNLL {_signed(md)})" for L, (e, md, cls) in per_len.items())
    if any(e == "none" for e, _, _ in per_len.values()):
        st = FAIL
    elif per_len and all(e == "effect" for e, _, _ in per_len.values()) and {True, False} <= classes:
        st = PASS
    else:
        st = UNDECIDED
        if not ({True, False} <= classes):
            ev += "; needs lengths both within and past the trained context"
    h.criteria.append(Criterion("the effect at short and at long lengths", st, ev or "no streaming rows", key=True))

    curves = [(k, pts) for k, pts in _cache_curves(d) if len(pts) >= 3]
    if not curves:
        h.criteria.append(Criterion("an interior optimum over cache sizes", UNDECIDED,
                                    "fewer than 3 recent sizes per setting", key=True))
    else:
        oks, parts = [], []
        for key, pts in curves:
            nll = [_num(r.get("nll_mean")) for _, r in pts]
            if not all(_fin(x) for x in nll):
                nll = [_num(r.get("delta_nll_vs_dense")) for _, r in pts]
            i = min(range(len(nll)), key=lambda j: nll[j])
            oks.append(0 < i < len(nll) - 1)
            parts.append(f"{key[0]} len={key[1]}: streaming NLL by recent size "
                         + ", ".join(f"{rc}: {_f(x)}" for (rc, _), x in zip(pts, nll))
                         + f" -> best {pts[i][0]} ({'interior' if oks[-1] else 'at the end of the range: monotone'})")
        h.criteria.append(Criterion("an interior optimum over cache sizes", PASS if all(oks) else FAIL,
                                    "; ".join(parts), key=True))
    return h


# ---- conclusion
def _scope(d: _Data, cause_key: str | None) -> dict[str, str]:
    tol = d.tol
    eff_models = [m for m in d.models if _effect([r for r in d.ref if r.get("model_id") == m], tol) == "effect"]
    tested_models = ", ".join(_size_label(m) for m in d.models) or "none"
    if not eff_models:
        size = f"no model size shows the effect (tested: {tested_models})"
    elif len(d.models) < 2:
        size = f"only {tested_models} tested: the size range cannot be bounded"
    else:
        smallest = eff_models[0]
        size = f">= {_size_label(smallest)} (tested: {tested_models})"
    eff_len = sorted({r.get("max_tokens") for r in d.ref if _delta_class(r, tol) == "better"})
    tested_len = ", ".join(map(str, d.lengths)) or "none"
    if not eff_len:
        length = f"no length shows a significant effect (tested: {tested_len})"
    else:
        length = f">= {eff_len[0]} tokens (tested: {tested_len})"
        if cause_key == "extrapolation":
            tcs = ", ".join(f"{tc} for {m}" for m, tc in d.trained_contexts.items() if tc)
            length += f"; i.e. only past the trained context ({tcs})"
    devices = sorted({str(r.get("device")) for r in d.ref if _delta_class(r, tol) == "better"})
    tested_dev = sorted({f"{dv}/{dt}" for dv, dt in d.hardware})
    untested = [x for x in ("mps", "cuda", "cpu") if not any(str(dv).startswith(x) for dv, _ in d.hardware)]
    hw = (f"effect seen on {', '.join(devices) or 'none'} (tested: {', '.join(tested_dev) or 'none'}"
          + (f"; not tested: {', '.join(u.upper() for u in untested)}" if untested else "") + ")")
    measured = [j for j in judge_kernels(d.dense, tol) if j.status != "not measured"]
    hw += ("; dense kernels with measured numerics: " + ", ".join(f"{j.device}/{j.dtype}/{j.kernel}" for j in measured)
           if measured else "; no dense kernel's numerics were measured")
    return {"model size": size, "sequence length": length, "hardware": hw}


MEANING = {
    "extrapolation": (
        "StreamingLLM does not predict better than dense attention within the model's trained context; it only "
        "avoids positions the model never saw. The 'improvement' measures dense attention running past "
        "max_position_embeddings. Compare against a baseline that stays within the trained context (lm-eval's "
        "`hf` model scores long documents in trained-context windows), and present StreamingLLM as a way to run "
        "past the context at constant memory, not as a better predictor."),
    "numerical": (
        "The dense baseline is numerically broken on this setup (non-finite or overflowing values), so its "
        "perplexity is not a valid reference. Re-run the baseline in float32 (or on CUDA), or fix the attention "
        "computation, before comparing; the streaming 'gain' is the baseline's loss."),
    "compression": (
        "Dropping the middle of the context acts like a regulariser for this model: a bounded cache of the "
        "optimal size both saves memory and lowers perplexity. Tune the recent size per model."),
}


def analyze(rows: list[dict], tolerance: float = TOLERANCE, recall_points=()) -> Analysis:
    d = _Data(rows, tolerance)
    phenomenon, reproduced = _phenomenon(d)
    hyps = {"compression": _compression(d), "numerical": _numerical(d), "extrapolation": _extrapolation(d)}
    supported = [k for k, h in hyps.items() if h.verdict == SUPPORTED]
    ruled = [k for k, h in hyps.items() if h.verdict == RULED_OUT]
    open_ = [k for k, h in hyps.items() if h.verdict == OPEN]
    cause_key = supported[0] if len(supported) == 1 else None
    if not reproduced and not supported:
        cause = ("其他 other: no effect to explain — streaming is not significantly better than dense in this data, "
                 "so no cause can be assigned")
    elif cause_key == "compression":
        cause = "压缩改善预测 compression improves prediction"
    elif cause_key == "numerical":
        cause = "数值稳定性 numerical stability (of the dense baseline)"
    elif cause_key == "extrapolation":
        cause = ("其他 other: position extrapolation (位置外推) — dense attention is scored past the model's trained "
                 "context, at positions it never saw; StreamingLLM's positions never exceed its cache size")
    elif len(supported) > 1:
        cause = "其他 other: undecided — the data fits " + " and ".join(hyps[k].label for k in supported)
    else:
        cause = ("其他 other: undecided — " + (f"ruled out: {', '.join(hyps[k].label for k in ruled)}; " if ruled else "")
                 + (f"not decidable from this data: {', '.join(hyps[k].label for k in open_)}" if open_ else ""))
    evidence = []
    for k in supported:
        evidence += [f"{c.name}: {c.evidence}" for c in hyps[k].criteria if c.key and c.status == PASS]
    for k in ruled:
        evidence += [f"rules out {hyps[k].label}: {c.name} fails — {c.evidence}" for c in hyps[k].failed()[:2]]
    summary_lines = []
    for k, h in hyps.items():
        line = f"- **{h.label}**: {h.verdict}" + (f" ({h.scope})" if h.scope else "")
        if h.verdict == RULED_OUT:
            line += " — fails: " + "; ".join(c.name for c in h.failed())
        elif h.verdict == OPEN:
            line += " — cannot decide: " + "; ".join(c.name for c in h.undecided())
        summary_lines.append(line)
    scope = _scope(d, cause_key)
    meaning = MEANING.get(cause_key) if cause_key else None
    if meaning is None:
        missing = sorted({c.name for k in open_ for c in hyps[k].undecided()})
        meaning = ("No practical conclusion yet: the data does not single out a cause."
                   + (f" Missing evidence: {'; '.join(missing)}." if missing else "")
                   + " Run the remaining configs (length past the trained context, several model sizes, cache sizes, "
                     "devices/dtypes) and analyse all result files together.")
    from .recall import practical_meaning

    meaning += " " + practical_meaning(recall_points)  # measured recall, or "recall was not measured"
    a = Analysis(rows=d.rows, hypotheses=hyps, phenomenon=phenomenon, cause=cause, scope=scope, meaning=meaning,
                 summary="\n".join(summary_lines))
    a.cause_evidence = evidence  # type: ignore[attr-defined]
    a.cause_key = cause_key  # type: ignore[attr-defined]
    return a


# ------------------------------------------------------------------ report
def _table(d_rows: list[dict]) -> str:
    head = ("| model | device | dtype | tokens | method | sinks+recent | ppl | acc | ΔNLL vs dense [CI] | Δacc | "
            "non-finite | max abs logit |\n|---|---|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    key = lambda r: (str(r.get("model_id")), str(r.get("device")), str(r.get("dtype")), r.get("max_tokens") or 0,
                     r.get("method") != "dense", str(r.get("method")), r.get("recent_size") or 0)
    for r in sorted(d_rows, key=key):
        cache = "all" if _is_dense(r) else f"{r.get('start_size')}+{r.get('recent_size')}"
        lines.append(
            f"| {r.get('model_id')} | {r.get('device')} | {r.get('dtype')} | {r.get('max_tokens')} | {r.get('method')} "
            f"| {cache} | {_f(r.get('ppl'), 2)} | {_f(r.get('acc'), 4)} | "
            f"{'' if _is_dense(r) else _signed(r.get('delta_nll_vs_dense')) + _ci(r.get('delta_nll_ci'))} | "
            f"{'' if _is_dense(r) else _signed(r.get('delta_acc_vs_dense'), 4)} | {_nonfinite(r)} | "
            f"{_f(r.get('max_abs_logit'), 1)} |")
    return "\n".join(lines)


def render_report(a: Analysis, sources: Iterable[str] = (), figure_links: Iterable[str] = ()) -> str:
    out = ["# StreamingLLM vs dense attention: which hypothesis does the data support?", ""]
    srcs = list(sources)
    if srcs:
        out += ["Data: " + ", ".join(f"`{s}`" for s in srcs) + f" ({len(a.rows)} rows).", ""]
    out += ["## Verdicts", "", a.summary, "",
            "## Conclusion (结论)", "",
            f"**现象 (Phenomenon):** {a.phenomenon}", "",
            f"**原因 (Cause):** {a.cause}", ""]
    ev = getattr(a, "cause_evidence", [])
    if ev:
        out += ["Evidence:", ""] + [f"- {e}" for e in ev] + [""]
    out += ["**适用范围 (Scope):**", "",
            f"- 模型规模 model size: {a.scope['model size']}",
            f"- 序列长度 sequence length: {a.scope['sequence length']}",
            f"- 硬件 hardware (MPS / CUDA / CPU): {a.scope['hardware']}", "",
            f"**实际意义 (Practical meaning):** {a.meaning}", "",
            "## Judgement rules, criterion by criterion", ""]
    for h in a.hypotheses.values():
        out += [f"### {h.label}: {h.verdict}", ""]
        for c in h.criteria:
            tag = " (key)" if c.key else "" if c.required else " (informational)"
            out.append(f"- [{c.status}] {c.name}{tag}: {c.evidence}")
        out.append("")
    links = list(figure_links)
    if links:
        out += ["## Figures", ""] + [f"![{Path(p).stem}](<{p}>)" for p in links] + [""]  # <..>: paths with spaces
    out += ["## Data", "", _table(a.rows), "",
            f"Thresholds: no change below {TOLERANCE} nats/token (set with --tolerance), device/dtype spread "
            f"<= {HW_TOLERANCE}, huge |logit| > {HUGE_LOGIT:g}, huge |attention score| > {HUGE_ATTN_SCORE:g}. "
            "ΔNLL = NLL(method) - NLL(dense) on the same samples; negative = better than dense.", ""]
    return "\n".join(out)


# ------------------------------------------------------------------ CLI
def _configure(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("results", nargs="+",
                        help="result files: experiment JSONL and/or `benchmark --output` JSON, mixed")
    parser.add_argument("--output", "-o", default="-", help="report (markdown); default: stdout")
    parser.add_argument("--figures", default=None, metavar="DIR", help="write PNG figures into DIR and link them")
    parser.add_argument("--recall", nargs="+", default=None, metavar="DIR",
                        help="lm-eval --output_path folders of the streaming_recall tasks: the practical meaning "
                             "cites the measured distances at which each method stops recalling")
    parser.add_argument("--tolerance", type=float, default=TOLERANCE,
                        help=f"NLL differences below this (nats/token) count as no change (default {TOLERANCE})")
    parser.set_defaults(func=run)
    return parser


def add_parser(subparsers) -> argparse.ArgumentParser:
    return _configure(subparsers.add_parser(
        "analyze", help="decide between the hypotheses from experiment results; write a report",
        description="Evaluate the judgement rules (compression / numerics / position extrapolation) on result "
                    "JSONL files and write a markdown report with the conclusion template."))


def run(args) -> int:
    from lm_eval_streaming.errors import UserError
    from lm_eval_streaming.experiment.flat import flat_row
    from lm_eval_streaming.records import load_runs

    missing = [p for p in args.results if not Path(p).is_file()]
    if missing:
        raise UserError(f"result file(s) not found: {', '.join(missing)}")
    # benchmark --output JSON and experiment JSONL, mixed; one line per file that cannot be read
    runs = load_runs(args.results, warn=lambda msg: print(f"lm-eval-streaming analyze: warning: {msg}",
                                                          file=sys.stderr))
    rows = [flat_row(run, row) for run in runs for row in run.rows]
    if not rows:
        raise UserError(f"no scored runs in {', '.join(args.results)}")
    recall_points = []
    if args.recall:
        from lm_eval_streaming.recall import load_recall_results

        recall_points = load_recall_results(args.recall)
    a = analyze(rows, tolerance=args.tolerance, recall_points=recall_points)
    links = []
    if args.figures:
        from lm_eval_streaming.plots import make_figures

        figs = make_figures(a.rows, args.figures)
        a.figures = [str(p) for p in figs]
        base = Path(args.output).resolve().parent if args.output != "-" else Path.cwd()
        links = [os.path.relpath(Path(p).resolve(), base) for p in figs]
    text = render_report(a, sources=args.results, figure_links=links)
    if args.output == "-":
        print(text)
    else:
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")
        print(f"report -> {out}" + (f" ({len(links)} figures in {args.figures})" if args.figures else ""))
        for k, h in a.hypotheses.items():
            print(f"  {h.label}: {h.verdict}")
    return 0


def main(argv=None) -> int:
    from .cli import main as cli_main  # the one error path

    return cli_main(["analyze", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
