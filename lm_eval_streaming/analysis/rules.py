"""The judgement rules as data: every criterion is one :class:`Rule` record, a hypothesis is a list of them.

A rule is declared once: its id (what tests and docs name), its claim, whether it decides the verdict
(``KEY``), only informs (``SIDE``) or decides only when it could be evaluated (``KEY_IF_DECIDED``), the
function that decides it on the data, the words that say what each outcome means ("no huge logits: ok" where a
fail is good news) and the :data:`STEPS` entry that would decide it when it cannot be decided. Adding a
criterion is adding one record to a hypothesis's list (and its test); nothing matches names or positions.
docs/verdict.md's criteria table is :func:`criteria_markdown` (tests/test_docs.py checks it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from lm_eval_streaming.analysis.base import FAIL, PASS, STEPS, UNDECIDED, Criterion, Hypothesis

KEY, SIDE, KEY_IF_DECIDED = "key", "side", "key when decided"


@dataclass(frozen=True)
class Decision:
    """What a rule's function found: its status and the numbers behind it."""

    status: str  # PASS | FAIL | UNDECIDED
    evidence: str
    short: str | None = None  # the key numbers in a few words
    see: str | None = None  # the report section that shows the full evidence instead


@dataclass(frozen=True)
class Words:
    """What each outcome means, read on its own in the report ("no huge logits: ok")."""

    passed: str
    failed: str
    undecided: str = "cannot decide"

    def of(self, status: str) -> str:
        return {PASS: self.passed, FAIL: self.failed, UNDECIDED: self.undecided}[status]


@dataclass(frozen=True)
class Rule:
    """One criterion, declared once (see the module docstring)."""

    id: str
    name: str  # the claim: "pass" means it holds
    role: str  # KEY | SIDE | KEY_IF_DECIDED
    decide: Callable  # Data -> Decision
    words: Words
    step: str | None = None  # a STEPS id: what to run when it cannot be decided

    def __post_init__(self):
        if self.role not in (KEY, SIDE, KEY_IF_DECIDED) or (self.step and self.step not in STEPS):
            raise ValueError(f"rule {self.id}: role {self.role!r} or step {self.step!r} unknown")

    def judge(self, d) -> Criterion:
        found = self.decide(d)
        key = self.role == KEY or (self.role == KEY_IF_DECIDED and found.status != UNDECIDED)
        return Criterion(self.name, found.status, found.evidence, key=key, outcome=self.words.of(found.status),
                         step=self.step if found.status == UNDECIDED else None, short=found.short, see=found.see,
                         id=self.id)


@dataclass(frozen=True)
class HypothesisRules:
    """A hypothesis: its rules, and where its verdict holds when that depends on what was measured."""

    name: str
    label: str
    rules: tuple[Rule, ...]
    scope: Callable | None = None  # Data -> (scope, where): where the verdict holds

    def judge(self, d) -> Hypothesis:
        h = Hypothesis(self.name, self.label, [r.judge(d) for r in self.rules])
        if self.scope is not None:
            h.scope, h.where = self.scope(d)
        return h


def criteria_markdown(hypotheses) -> list[str]:
    """docs/verdict.md's table of every criterion, from the records."""
    out = ["| hypothesis | id | criterion | role | pass reads | fail reads | cannot decide: run |",
           "|---|---|---|---|---|---|---|"]
    for h in hypotheses:
        for r in h.rules:
            step = STEPS[r.step].id if r.step else ""
            out.append(f"| {h.name} | `{r.id}` | {r.name} | {r.role} | {r.words.passed} | {r.words.failed} | "
                       f"{step} |")
    return out


def steps_markdown() -> list[str]:
    out = ["| step | what it adds | offline (default model) | with a model hub / on a Mac |", "|---|---|---|---|"]
    for s in STEPS.values():
        out.append(f"| {s.id} | {s.adds} | {f'`{s.offline}`' if s.offline else 'none'} | "
                   f"{f'`{s.hub}`' if s.hub else ''} |")
    return out
