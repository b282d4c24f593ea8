"""The report's first screen (at most FIRST_SCREEN lines): where streaming is better or worse than dense and by how
much, the cause the data supports and how sure, and the one command that would decide what is open, runnable
here (offline, the default model). Everything else follows below it in the report."""

from __future__ import annotations

from lm_eval_streaming.analysis.base import (MIN_INTERVAL_DOCS, OPEN, RULED_OUT, STEPS, SUPPORTED, Analysis, code, fmt,
                                             signed, spread, wrap)
from lm_eval_streaming.analysis.data import Data, Scored, data_counts, delta_class
from lm_eval_streaming.analysis.families import critical_text, default_model_note, effect_seen, every_model, over_families, title
from lm_eval_streaming.records.lm_eval_rolling import PER_BYTE

FIRST_SCREEN = 25  # lines, title included
MAX_SETTINGS = 4  # rows of the first screen's table; the rest are in the report's Data table
UNIT = "nats/token"
READS = {"better": "streaming better", "worse": "streaming worse", "tie": "no significant difference",
         "unknown": "one sample: cannot tell"}
SHORT_NAMES = {"compression": "compression", "numerical": "numerics of dense",
               "extrapolation": "position extrapolation"}


def unit_of(run) -> str:
    """NLL per token, or per byte where lm-eval's rolling tasks were read without the run's tokenizer."""
    return "nats/byte" if PER_BYTE in (run.sample_spec or "") else UNIT


def _length(run) -> str:
    tc = run.trained_context
    return f"{run.max_tokens} ({run.max_tokens / tc:.2g}x)" if tc else str(run.max_tokens)


def _pick(d: Data, families: dict | None = None) -> list[Scored]:
    """The settings the table shows: significant ones first, then the largest differences; by length. With several
    families, each family's own (MAX_SETTINGS shared out)."""
    rank = {"better": 0, "worse": 1, "tie": 2, "unknown": 3}
    groups = [[e for e in d.ref if e.run in fa.runs] for fa in families.values()] if families else [d.ref]
    n = MAX_SETTINGS if len(groups) == 1 else 1  # several families: each one's first row (its line follows)
    rows = [e for g in groups for e in sorted(g, key=lambda e: (rank[delta_class(e.row, d.tol)],
                                                                 -abs(e.delta or 0.0)))[:n]]
    return sorted(rows, key=lambda e: (e.run.model_id, e.run.device, e.run.dtype, e.run.max_tokens))


def _table(d: Data, families: dict | None = None) -> list[str]:
    out = [f"| model device/dtype | tokens (x context) | docs | dense ppl | streaming ppl | "
           f"ΔNLL ({unit_of(d.ref[0].run)}) | reads |", "|---|---|---|---|---|---|---|"]
    for e in _pick(d, families):
        dense = d.dense_of(e.run)
        out.append(f"| {e.run.model_id} {e.run.device}/{e.run.dtype} | {_length(e.run)} | {e.run.num_samples} | "
                   f"{fmt(dense.ppl if dense else None, 2)} | {fmt(e.row.ppl, 2)} | "
                   f"{signed(e.delta)}{spread(e.row.delta_nll_ci, e.run.num_samples)} | "
                   f"{READS[delta_class(e.row, d.tol)]} |")
    return out


def _answer(d: Data) -> str:
    classes = [delta_class(e.row, d.tol) for e in d.ref]
    few = sum(e.run.num_samples < MIN_INTERVAL_DOCS for e in d.ref)
    unclear = classes.count("tie") + classes.count("unknown")
    text = (f"Streaming is significantly better in {classes.count('better')} of {len(classes)} settings, worse in "
            f"{classes.count('worse')}, not significantly different in {unclear}"
            + (f" ({few} from < {MIN_INTERVAL_DOCS} documents)" if few else ""))
    best = [e for e in d.ref if delta_class(e.row, d.tol) == "better"]
    if best:
        e = min(best, key=lambda e: e.delta)
        text += f"; largest gain ΔNLL {signed(e.delta)} at {e.run.max_tokens} tokens"
    more = len(d.ref) - min(len(d.ref), MAX_SETTINGS)
    return text + (f"; {more} more settings under Data." if more else ".")


def _cause(a: Analysis) -> list[str]:
    hyps = a.hypotheses
    if a.cause_key:
        h = hyps[a.cause_key]
        head = (f"Cause: **{SHORT_NAMES[a.cause_key]}**, supported: its {len(h.keys)} key criteria pass ("
                + (h.keys[0].short or h.keys[0].outcome) + ").")
    else:
        head = "Cause: **cannot decide**: no hypothesis has all its key criteria passing."
    lines = wrap(head)
    for name, h in hyps.items():
        if name == a.cause_key:
            continue
        if h.verdict == RULED_OUT:
            why = f"ruled out: {h.failed()[0].outcome}"
        elif h.verdict == OPEN:
            why = f"open: {len(h.undecided())} of {len(h.keys)} key criteria cannot be decided on this data"
        else:
            why = "supported too"
        where = f" ({h.where.removeprefix('numerical problem ')})" if h.where and h.verdict != SUPPORTED else ""
        lines += wrap(f"- {SHORT_NAMES.get(name, name)}: {why}{where}", "  ")
    return lines


def _family_cause(fa: Analysis) -> str:
    if fa.cause_key:
        n = len(fa.hypotheses[fa.cause_key].keys)
        passes = f"{n} key criteri{'on passes' if n == 1 else 'a pass'}"
        if not effect_seen(fa):  # supported by its criteria, but there is no effect in this family to explain
            return f"no effect to explain; **{SHORT_NAMES[fa.cause_key]}** supported ({passes})"
        return f"cause **{SHORT_NAMES[fa.cause_key]}** ({passes})"
    by = {}
    for k, h in fa.hypotheses.items():
        steps = h.steps() if h.verdict == OPEN else []
        by.setdefault(h.verdict, []).append(SHORT_NAMES[k] + (f": next step `{steps[0]}`" if steps else ""))
    parts = [f"{v}: {', '.join(by[v])}" for v in (OPEN, SUPPORTED) if v in by]
    if RULED_OUT in by:
        parts.append(("others" if len(by) > 1 else "all") + " ruled out" if len(by[RULED_OUT]) + len(by.get(OPEN, []))
                     == len(fa.hypotheses) else f"ruled out: {', '.join(by[RULED_OUT])}")
    return "cause **cannot decide** (" + "; ".join(parts) + ")"


def _families(a: Analysis) -> list[str]:
    """Several families: one answer per family (its own runs, its own trained context), then the lines over them."""
    lines = []
    for label, fa in a.families.items():
        fd = Data(fa.runs, fa.tolerance)
        better = sum(delta_class(e.row, fd.tol) == "better" for e in fd.ref)
        lines += wrap(f"- {title(label, fa)}: {better} of {len(fd.ref)} settings streaming better; "
                      f"{_family_cause(fa)}; {critical_text(fa)}.", "  ")
    lines += wrap("- over families: " + "; ".join(f"{SHORT_NAMES[k]} {over_families(k, a.families, brief=True)}"
                                                 for k in a.hypotheses) + ".", "  ")
    lines += wrap(f"- every model: {every_model(a.families)}.", "  ")
    return lines


def judged(a: Analysis) -> list[tuple[str, object]]:
    """(name prefix, hypothesis) as judged: each family's own when there are several (what is open is open in a
    family, whatever the verdict over families), else the analysis's."""
    if a.families:
        return [(f"{label}: ", h) for label, fa in a.families.items() for h in fa.hypotheses.values()]
    return [("", h) for h in a.hypotheses.values()]


SEED = "the seed's setting (MPS, float16), not measured here"


def open_steps(a: Analysis) -> dict[str, list[str]]:
    """{step: the criteria it decides} for the undecided key criteria of the hypotheses still open, in STEPS order;
    with none open and the seed's device (MPS) not measured, its hardware recipe (with a model hub)."""
    found = {}
    for prefix, h in judged(a):
        if h.verdict == OPEN:
            for c in h.undecided():
                if c.step:
                    found.setdefault(c.step, []).append(prefix + c.name)
    for prefix, h in judged(a):  # then what would strengthen a verdict (the ablation where it was not run)
        if h.verdict != RULED_OUT:
            for c in h.criteria:
                if c.step and not c.key and c.step not in found:
                    found.setdefault(c.step, []).append(prefix + c.name)
    if not found and not any(str(r.device).startswith("mps") for r in a.runs):
        found["hardware"] = [SEED]
    return {s: found[s] for s in STEPS if s in found}


def next_step(a: Analysis) -> tuple[str, bool] | None:
    """(step, offline): the first open step that runs here, offline (those deciding an open hypothesis first); else
    the first one, with a model hub."""
    steps = open_steps(a)
    keys = {c.step for _, h in judged(a) if h.verdict == OPEN for c in h.undecided()}
    ordered = [s for s in steps if s in keys] or list(steps)
    offline = next((s for s in ordered if STEPS[s].offline and steps[s] != [SEED]), None)
    return (offline, True) if offline else ((ordered[0], False) if ordered else None)


def first_screen(a: Analysis, d: Data, sources: list[str]) -> list[str]:
    labels = ", ".join(sorted({e.row.label() for e in d.ref})) or "none"
    out = ["# StreamingLLM vs dense attention: the answer", ""]
    families = f"; {len(a.families)} model families, each judged on its own runs" if a.families else ""
    out += wrap(f"{labels} vs dense ({data_counts(a.runs)}{families}). ΔNLL = streaming - dense, same documents; "
                "< 0: better.") + [""]
    if a.families:
        out += (_table(d, a.families) + [""] if d.ref else []) + _families(a)
    elif d.ref:
        out += _table(d) + [""] + wrap(_answer(d))
    else:
        out.append("No streaming_llm rows in the data: nothing to compare with dense.")
    out += [] if a.families else [""] + _cause(a)
    cp = a.critical_main
    if (cp is not None or d.ref) and not a.families:
        out += wrap("Critical point: " + (f"dense's NLL stays above streaming's from {cp.text()}." if cp else
                                          "not reached in this data."))
    step = next_step(a)
    if step:
        s, offline = STEPS[step[0]], step[1]
        seed = open_steps(a).get(step[0]) == [SEED]
        where = ("here (offline, the default model)" if offline else "on a Mac with a model hub" if seed
                 else "with a model hub (nothing offline is open)")
        what = "the seed's setting, MPS float16, with kernel checks" if seed else s.adds
        note = default_model_note(a, step[0]) if offline and a.families else ""
        out += [""] + wrap(f"Next, {where}: {what}{note}:") + [""] + code(s.offline if offline else s.hub)
    return out
