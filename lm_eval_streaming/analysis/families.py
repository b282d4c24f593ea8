"""Several model families in one analysis. Each family (``data.family_of``: the family at one trained context) is
judged on its own runs by the single-family verdict (:func:`verdict.analyze_family`): the same rule records, the
data restricted to the family, lengths as multiples of ITS trained context, its own critical point. Nothing is
pooled across families. This module puts the per-family results side by side:

- a hypothesis over families keeps each family's criteria, named with the family, so its verdict claims only what
  every family measured: supported when supported in every family, ruled out when a key criterion fails in one
  (it then does not explain the effect in every model), else cannot decide;
- the line over families: "supported in 1 of 2 families (smollm2); cannot decide in gemma-3 (next: ...)";
- whether the effect itself (streaming better than dense, or a critical point reached) is seen in each family.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace

from lm_eval_streaming.records import Run
from lm_eval_streaming.analysis.base import OPEN, RULED_OUT, SUPPORTED, Analysis, Hypothesis, step_ref
from lm_eval_streaming.analysis.data import Data, dedupe, delta_class, family_of

SHORT = {"compression": "compression", "numerical": "numerics of dense", "extrapolation": "position extrapolation"}


def split_families(runs: list[Run]) -> dict[str, list[Run]]:
    """{label: runs} per family at one trained context, in the order the runs came; the label is the family name,
    with ``@context`` when one family comes at two trained contexts."""
    groups: dict[tuple, list[Run]] = {}
    for run in dedupe(runs):
        groups.setdefault(family_of(run), []).append(run)
    names = [f for f, _ in groups]
    return {(str(f) if names.count(f) == 1 else f"{f}@{tc}"): rs for (f, tc), rs in groups.items()}


def context_of(a: Analysis) -> int | None:
    return a.runs[0].trained_context if a.runs else None


def title(label: str, a: Analysis) -> str:
    tc = context_of(a)
    return f"{label} (trained context {tc})" if tc else f"{label} (trained context not recorded)"


def longest(a: Analysis) -> str:
    """The longest run of a family as tokens and multiple of its trained context: ``37000 tokens = 1.13x``."""
    run = max(a.runs, key=lambda r: r.max_tokens)
    tc = run.trained_context
    return f"{run.max_tokens} tokens" + (f" = {run.max_tokens / tc:.2f}x its context" if tc else "")


def critical_text(a: Analysis) -> str:
    """The family's critical point as a multiple of its own trained context, or how far it was looked for."""
    cp = a.critical_main
    if cp is None:
        return f"critical point not reached by {longest(a)}"
    m = cp.multiple(cp.pooled)
    return f"critical point {cp.pooled:.0f} tokens" + (f" = {m:.2f}x its context" if m is not None else "")


def effect_seen(a: Analysis) -> bool:
    """Streaming significantly better than dense somewhere in the family, or dense's NLL lastingly above."""
    d = Data(a.runs, a.tolerance)
    return a.critical_main is not None or any(delta_class(e.row, d.tol) == "better" for e in d.ref)


def _open_why(h: Hypothesis) -> str:
    steps = h.steps()
    return "; ".join(c.name for c in h.undecided()[:1]) + (f"; next: {step_ref(steps[0])}" if steps else "")


def over_families(name: str, per: dict[str, Analysis], brief: bool = False) -> str:
    """``supported in 1 of 2 families (smollm2); cannot decide in gemma-3 (why; next: step ...)``; ``brief``:
    ``supported in 1 of 2 (smollm2), cannot decide in 1 of 2 (gemma-3)``, families named where not all."""
    by = defaultdict(list)
    for label, a in per.items():
        by[a.hypotheses[name].verdict].append(label)
    n, parts = len(per), []
    if brief:
        return ", ".join(f"{v} in {len(by[v])} of {n}" + (f" ({', '.join(by[v])})" if len(by[v]) < n else "")
                         for v in (SUPPORTED, RULED_OUT, OPEN) if by[v])
    for verdict in (SUPPORTED, RULED_OUT):
        if by[verdict]:
            parts.append(f"{verdict} in {len(by[verdict])} of {n} families ({', '.join(by[verdict])})")
    if by[OPEN]:
        parts.append(f"cannot decide in {', '.join(by[OPEN])} ("
                     + "; ".join(f"{label}: {_open_why(per[label].hypotheses[name])}" for label in by[OPEN]) + ")")
    return "; ".join(parts)


def every_model(per: dict[str, Analysis]) -> str:
    """What the families say about "the effect in every model": where the effect is seen and its cause there;
    a family where it is not seen is named with how far it was looked for, never counted as agreeing."""
    seen = [label for label, a in per.items() if effect_seen(a)]
    where = [f"{label}: {SHORT[per[label].cause_key] if per[label].cause_key else 'cause cannot decide'}"
             for label in seen]
    text = f"the effect (streaming better than dense) is seen in {len(seen)} of {len(per)} families"
    text += f" ({'; '.join(where)})" if where else ""
    unseen = [f"{label} ({critical_text(a)})" for label, a in per.items() if label not in seen]
    if unseen:
        return text + f"; not in {', '.join(unseen)}: not shown for every model"
    causes = {per[label].cause_key for label in seen}
    return text + (f", with the same supported cause in each" if len(causes) == 1 and None not in causes
                   else ", without one cause supported in each")


def default_model_note(a: Analysis, step: str) -> str:
    """Steps' offline commands run the default model: for another family whose criterion the step would decide,
    say so (its config with that family's model_id decides it there)."""
    from lm_eval_streaming.default_model import DEFAULT_MODEL_NAME

    others = []
    for label, fa in a.families.items():
        models = sorted({r.model_id for r in fa.runs})
        if DEFAULT_MODEL_NAME not in models and any(c.step == step for h in fa.hypotheses.values()
                                                    for c in h.criteria):
            others.append(f"{label} needs one with model_id {', '.join(models)} at its context {context_of(fa)}")
    return f" ({DEFAULT_MODEL_NAME}'s config; {'; '.join(others)})" if others else ""


def _hypothesis(name: str, per: dict[str, Analysis]) -> Hypothesis:
    """One hypothesis over families: every family's criteria, each named with its family."""
    first = next(iter(per.values())).hypotheses[name]
    h = Hypothesis(name, first.label, [replace(c, name=f"{label}: {c.name}") for label, a in per.items()
                                       for c in a.hypotheses[name].criteria])
    h.scope = h.where = over_families(name, per)
    return h


def _joined(per: dict[str, Analysis], text_of) -> str:
    return "; ".join(f"{title(label, a)}: {text_of(a)}" for label, a in per.items())


def _without_notes(a: Analysis) -> str:
    """A family's phenomenon without the sentences on what was not measured (said once, over all runs)."""
    text = a.phenomenon
    for note in a.notes:
        text = text.replace(" " + note, "")
    return text


def _meaning(per: dict[str, Analysis], recall_text: str) -> str:
    """Each family's practical meaning once, with the families it holds for; the recall measurement once."""
    by_text = defaultdict(list)
    for label, a in per.items():
        by_text[a.meaning].append(label)
    if len(by_text) == 1:
        text = next(iter(by_text))
    else:
        text = " ".join(f"{', '.join(labels)}: {t}" for t, labels in by_text.items())
    return (text + " " + recall_text).strip()


def combine(per: dict[str, Analysis], d: Data, size_line: str, recall_text: str, causes: dict,
            reason_lines: tuple, notes: list[str]) -> Analysis:
    """The analysis over families from each family's own (``per``: label -> Analysis, judged without recall)."""
    hyps = {name: _hypothesis(name, per) for name in next(iter(per.values())).hypotheses}
    supported = [k for k, h in hyps.items() if h.verdict == SUPPORTED]
    cause_key = supported[0] if len(supported) == 1 else None
    cause = (f"{causes[cause_key]} (supported in each of the {len(per)} families)" if cause_key
             else "per family, each judged on its own runs: " + _joined(per, lambda a: a.cause))
    # the seed's three 原因分析 lines: ticked only when supported in every family
    reasons = [(key == cause_key, label, "; ".join(f"{fl}: {a.reasons[i][2]}" for fl, a in per.items()))
               for i, (key, label) in enumerate(reason_lines)]
    return Analysis(
        runs=d.runs, hypotheses=hyps, phenomenon=" ".join([f"{title(label, a)}: {_without_notes(a)}"
                                                           for label, a in per.items()] + notes),
        cause=cause, cause_key=cause_key,
        cause_evidence=[f"{label}: {e}" for label, a in per.items() for e in a.cause_evidence],
        scope={"model size": size_line, "sequence length": _joined(per, lambda a: a.scope["sequence length"]),
               "hardware": _joined(per, lambda a: a.scope["hardware"])},
        meaning=_meaning(per, recall_text),
        summary="\n".join(f"{label}: {line.removeprefix('- ')}" for label, a in per.items()
                          for line in a.summary.splitlines()),
        tolerance=d.tol, reasons=reasons, critical=[p for a in per.values() for p in a.critical], critical_main=None,
        kernels=[j for a in per.values() for j in a.kernels], notes=notes, families=per)
