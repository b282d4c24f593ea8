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
SUPPORTED, RULED_OUT, OPEN = "supported", "ruled out", "cannot decide"

# What to run next when a criterion cannot be decided: (command here on the default model or the seed's config, what
# it adds, the seed's setting on a Mac or None).
MAC = "--num_samples 5 --device mps --dtype float16"
NEXT = {
    "length": ("lm-eval-streaming experiment configs/offline_length_long.yaml --output "
               "docs/experiments/offline_length_long.jsonl", "the default model at 2.4x its trained context",
               f"python scripts/benchmark.py --model_id EleutherAI/pythia-6.9b --max_tokens 5000 {MAC} "
               "--output runs/length_5000.json"),
    "ablation": ("lm-eval-streaming experiment configs/offline_ablation.yaml --output "
                 "docs/experiments/offline_ablation.jsonl", "streaming_llm with position_shift=false", None),
    "size": ("lm-eval-streaming experiment configs/model_size.yaml --output runs/model_size.jsonl",
             "Pythia 70M / 410M / 6.9B, one family", "the README's loop 3 (`--model_id EleutherAI/$M ... --device mps`)"),
    "hardware": ("lm-eval-streaming experiment configs/hardware.yaml --output runs/hardware.jsonl",
                 "every device x dtype, kernel checks on",
                 f"python scripts/benchmark.py --model_id EleutherAI/pythia-6.9b --max_tokens 2000 {MAC} "
                 "--output runs/hw_mps_float16.json"),
    "cache": ("lm-eval-streaming experiment configs/offline_cache_size.yaml --output "
              "docs/experiments/offline_cache_size.jsonl", "several recent sizes", None),
}


def say_failures(criteria: list[Criterion], phrases: dict[str, str]) -> None:
    """Give a failed criterion the words for what failed (its name holds a phrase key), so that a fail that is
    good news never reads as bad news."""
    for c in criteria:
        if c.status == FAIL and c.outcome is None:
            c.outcome = next((v for k, v in phrases.items() if k in c.name), None)


def run_next(what: str) -> str:
    """"run `COMMAND` (what it adds; on a Mac: `COMMAND`)" for one of NEXT's keys."""
    here, adds, mac = NEXT[what]
    if mac is None:
        return f"run `{here}` ({adds})"
    return f"run `{here}` ({adds}; on a Mac: {mac if mac.startswith('the ') else f'`{mac}`'})"


# ------------------------------------------------------------------ results
@dataclass
class Criterion:
    name: str  # phrased as a claim: "pass" means the claim holds
    status: str  # PASS | FAIL | UNDECIDED
    evidence: str
    key: bool = False  # key criteria decide the verdict; side criteria (key=False) only inform
    outcome: str | None = None  # what the status means in words, e.g. "numerical problem not found"
    next_step: str | None = None  # what to run when it cannot be decided
    short: str | None = None  # the key numbers in a few words (verdict table, 原因分析)
    see: str | None = None  # where the report shows the full evidence instead (a section heading)

    def brief(self, limit: int = 140) -> str:
        """The key numbers: ``short``, else the evidence cut at a word boundary."""
        text = self.short or self.evidence
        return text if len(text) <= limit else text[: limit - 2].rsplit(" ", 1)[0] + " …"

    @property
    def required(self) -> bool:
        """Whether the criterion can support or rule out its hypothesis (only key criteria can)."""
        return self.key


@dataclass
class Hypothesis:
    name: str
    label: str
    criteria: list[Criterion] = field(default_factory=list)
    scope: str | None = None  # where the verdict holds, when it holds only for what was measured
    where: str | None = None  # the same in a few words, for the verdict table ("on CPU; not measured on MPS, CUDA")

    @property
    def keys(self) -> list[Criterion]:
        return [c for c in self.criteria if c.key]

    @property
    def verdict(self) -> str:
        """Key criteria only: ruled out when one fails, supported when every one passes, else cannot decide
        (a side criterion never decides: it fails for reasons of its own, e.g. a short benchmark)."""
        keys = self.keys
        if any(c.status == FAIL for c in keys):
            return RULED_OUT
        if keys and all(c.status == PASS for c in keys):
            return SUPPORTED
        return OPEN

    def failed(self) -> list[Criterion]:
        return [c for c in self.keys if c.status == FAIL]

    def undecided(self) -> list[Criterion]:
        return [c for c in self.keys if c.status == UNDECIDED]

    def next_steps(self) -> list[str]:
        """Commands that would decide the undecided key criteria (each once)."""
        return list(dict.fromkeys(c.next_step for c in self.undecided() if c.next_step))


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
    # the seed's 原因分析: (ticked, line label, evidence) for 压缩提升预测能力 / 数值稳定性问题 / 其他
    reasons: list[tuple[bool, str, str]] = field(default_factory=list)
    critical: list = field(default_factory=list)  # critical.CriticalPoint per run
    critical_main: object = None  # the critical point the template cites (None: not reached anywhere)
    kernels: list = field(default_factory=list)  # numerics.KernelJudgement per device x dtype x kernel
    notes: list[str] = field(default_factory=list)  # what was not measured (accuracy, per-sample curves)

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
