"""What every verdict rule shares: thresholds (with why), criterion statuses, the result records
(criterion, hypothesis, analysis) and number formatting that prints "n/a" for what was not measured."""

from __future__ import annotations

import math
import shlex
import textwrap
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

@dataclass(frozen=True)
class Step:
    """A command that decides what is open: here (offline, the default model) and with a model hub / a Mac."""

    id: str
    adds: str  # what it measures
    offline: str | None  # runnable here, no hub; None when only the hub can decide it
    hub: str | None = None  # the seed's setting (Pythia, hub access; on a Mac with --device mps)

    @property
    def command(self) -> str:
        return self.offline or self.hub or ""


_MAC = "--num_samples 5 --device mps --dtype float16"
# In the order the report proposes them: the first open one with an offline command is "the next command".
STEPS = {s.id: s for s in (
    Step("length", "the default model at 2.4x its trained context (dense about 12 min on one core)",
         "lm-eval-streaming experiment configs/offline_length_long.yaml --output runs/offline_length_long.jsonl",
         f"python scripts/benchmark.py --model_id EleutherAI/pythia-6.9b --max_tokens 5000 {_MAC} "
         "--output runs/length_5000.json"),
    Step("ablation", "streaming_llm with position_shift=false (the same cache at true distances)",
         "lm-eval-streaming experiment configs/offline_ablation.yaml --output runs/offline_ablation.jsonl"),
    Step("hardware", "kernel error, causality probe, NaN/Inf of each dense kernel and dtype",
         "lm-eval-streaming experiment configs/offline_numerics.yaml --output runs/offline_numerics.jsonl",
         "lm-eval-streaming experiment configs/hardware.yaml --output runs/hardware.jsonl"),
    Step("cache", "several recent sizes", "lm-eval-streaming experiment configs/offline_cache_size.yaml --output "
                                          "runs/offline_cache_size.jsonl"),
    Step("eviction", "H2O, TOVA, key-norm at the same budget, more samples (narrower intervals)",
         "lm-eval-streaming benchmark --method streaming_llm,h2o,tova,knorm --evict_every 64 --max_tokens 4000 "
         "--num_samples 8"),
    Step("size", "Pythia 70M / 410M / 6.9B, one family (hub access)", None,
         "lm-eval-streaming experiment configs/model_size.yaml --output runs/model_size.jsonl"),
)}


def run_next(step: str) -> str:
    """"run `COMMAND` (what it adds; with a model hub: `COMMAND`)" for one of STEPS."""
    s = STEPS[step]
    if s.offline is None:
        return f"with a model hub: run `{s.hub}` ({s.adds})"
    return f"run `{s.offline}` ({s.adds}" + (f"; with a model hub: `{s.hub}`)" if s.hub else ")")


def step_ref(step: str) -> str:
    """A step named where its command is not printed (the report prints each command once)."""
    return f"step `{step}` (Next commands)"


# ------------------------------------------------------------------ results
@dataclass
class Criterion:
    name: str  # phrased as a claim: "pass" means the claim holds
    status: str  # PASS | FAIL | UNDECIDED
    evidence: str
    key: bool = False  # key criteria decide the verdict; side criteria (key=False) only inform
    outcome: str | None = None  # what the status means, read on its own ("no huge logits: ok")
    step: str | None = None  # the STEPS entry that would decide it (only when it cannot be decided)
    short: str | None = None  # the key numbers in a few words (verdict table, 原因分析)
    see: str | None = None  # where the report shows the full evidence instead (a section heading)
    id: str = ""  # the rule's id (analysis.rules)

    @property
    def next_step(self) -> str | None:
        """What to run when it cannot be decided, in words with the command."""
        return run_next(self.step) if self.step else None

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

    def steps(self) -> list[str]:
        """The STEPS that would decide the undecided key criteria (each once)."""
        return list(dict.fromkeys(c.step for c in self.undecided() if c.step))

    def next_steps(self) -> list[str]:
        return [run_next(s) for s in self.steps()]

    def criterion(self, rule_id: str) -> Criterion:
        return next(c for c in self.criteria if c.id == rule_id)


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
    families: dict = field(default_factory=dict)  # label -> each family's own Analysis, when there are several

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


MIN_INTERVAL_DOCS = 3  # fewer documents give an interval too wide to read as evidence: not shown


def spread(ci, n: int) -> str:
    """`` [low, high]``, or why no interval is shown (one sample; too few documents)."""
    if n < 2 or ci is None:
        return " (one sample)" if n < 2 else " (no interval)"
    if n < MIN_INTERVAL_DOCS:
        return f" ({n} documents: no interval shown)"
    return f" [{signed(ci.low)}, {signed(ci.high)}]"


def mean(values) -> float:
    vals = [v for v in values if finite(v)]
    return sum(vals) / len(vals) if vals else math.nan


WRAP = 120  # prose lines are wrapped here (markdown joins them)


def wrap(text: str, indent: str = "") -> list[str]:
    """A paragraph (or a bullet, with ``indent`` for its continuation lines) as lines of at most WRAP characters."""
    return textwrap.wrap(text, WRAP, subsequent_indent=indent, break_long_words=False, break_on_hyphens=False) or [""]


def code(command: str, indent: str = "    ") -> list[str]:
    """A command as an indented code block, continued with backslashes past WRAP characters."""
    words, lines, line = shlex.split(command), [], indent
    for w in words:
        w = shlex.quote(w)
        if len(line) + len(w) + 3 > WRAP and line.strip():
            lines.append(line + " \\")
            line = indent + "    "
        line += ("" if not line.strip() else " ") + w
    return lines + [line]
