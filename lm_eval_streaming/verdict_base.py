"""Shared pieces of the verdict: thresholds, row helpers, the criterion/hypothesis/analysis records and
the rows indexed by benchmark call (`_Data`)."""

from __future__ import annotations

import math
import re
from collections import defaultdict
from dataclasses import dataclass, field




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
