"""What every verdict rule shares: thresholds (with why), criterion statuses, the result records
(criterion, hypothesis, analysis) and number formatting that prints "n/a" for what was not measured."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from lm_eval_streaming.options import DEFAULT_RECENT_SIZE

# ------------------------------------------------------------------ thresholds
TOLERANCE = 0.05  # nats/token: smaller NLL differences are "no change" (--tolerance)
HW_TOLERANCE = 0.10  # nats/token: spread of ΔNLL across devices/dtypes that still counts as "little"
HUGE_LOGIT = 1e3  # |logit| above this is "huge" (normal LMs stay below ~100); informational only
HUGE_ATTN_SCORE = 1e4  # |q.k/sqrt(d)| above this is "huge" (float16 overflows at 65504); informational only
# Causality probe, max |Δlogit| at positions <= p when the tokens after p change. A causal kernel gives exactly 0
# or float32 rounding noise (~1e-5 .. 1e-4 through a deep model); a kernel that lets a query see the next token
# moves logits by 0.1 .. 10. 1e-2 sits two orders above the noise and an order below the smallest leak seen.
CAUSAL_TOL = 1e-2
# Kernel error, mean |ΔNLL| per token against the float32 reference. It bounds how far the kernel moves the mean
# NLL (|mean Δ| <= mean |Δ|), so a kernel whose bound is below half of the streaming advantage cannot account for
# most of it. Where streaming has no advantage beyond TOLERANCE, the kernel is held to TOLERANCE itself.
KERNEL_SHARE = 0.5
REF_RECENT = DEFAULT_RECENT_SIZE  # the seed's recent size: the reference streaming setting

PASS, FAIL, UNDECIDED = "pass", "fail", "cannot decide"
SUPPORTED, RULED_OUT, OPEN = "supported", "ruled out", "undecided"


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
        if any(c.key for c in required) and all(c.status == PASS for c in required if c.key):
            return SUPPORTED
        return OPEN

    def failed(self) -> list[Criterion]:
        return [c for c in self.criteria if c.required and c.status == FAIL]

    def undecided(self) -> list[Criterion]:
        return [c for c in self.criteria if c.required and c.status == UNDECIDED]


@dataclass
class Analysis:
    runs: list  # list[records.Run], deduplicated: what the verdict rests on
    hypotheses: dict[str, Hypothesis]
    phenomenon: str
    cause: str
    cause_key: str | None  # the one supported hypothesis, or None
    cause_evidence: list[str]  # the criteria behind the cause (and what rules the others out)
    scope: dict[str, str]  # 适用范围: model size, sequence length, hardware (as measured)
    meaning: str
    summary: str
    tolerance: float = TOLERANCE  # the no-change threshold the verdict used
    figures: list[str] = field(default_factory=list)

    @property
    def verdicts(self) -> dict[str, str]:
        return {k: h.verdict for k, h in self.hypotheses.items()}


# ------------------------------------------------------------------ formatting ("n/a" = not measured)
def finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def fmt(x, digits: int = 3) -> str:
    if not finite(x):
        return "n/a" if x is None or not isinstance(x, (int, float)) else str(x)
    return f"{x:.3g}" if abs(x) >= 1e5 else f"{x:.{digits}f}"


def signed(x, digits: int = 3) -> str:
    return f"{x:+.{digits}f}" if finite(x) else "n/a"


def interval(ci) -> str:
    """`` [low, high]`` of an Interval; "" when there is none (one sample)."""
    return "" if ci is None else f" [{signed(ci.low)}, {signed(ci.high)}]"


def mean(values) -> float:
    vals = [v for v in values if finite(v)]
    return sum(vals) / len(vals) if vals else math.nan
