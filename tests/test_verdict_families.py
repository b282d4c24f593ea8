"""Runs of several model families are judged family by family (analysis/families.py), never pooled: each family's
verdict equals the verdict on its runs alone, its critical point is a multiple of its own trained context, and a
family where a key criterion cannot be decided says so instead of counting as agreeing."""

from __future__ import annotations

from pathlib import Path

import pytest
from synthetic_runs import make_run
from test_analysis import extrapolation_runs
from test_report_screen import _first_screen

from lm_eval_streaming.analysis.base import OPEN, PASS, RULED_OUT, SUPPORTED, UNDECIDED
from lm_eval_streaming.analysis.first_screen import FIRST_SCREEN
from lm_eval_streaming.analysis.report import render_report
from lm_eval_streaming.analysis.verdict import analyze
from lm_eval_streaming.records import load_runs

REPO = Path(__file__).resolve().parents[1]
GEMMA_TC = 32768


def _gemma_nll(break_at: int | None):
    """Gemma-like: streaming 0.3 nats worse than dense everywhere; dense jumps by 1.5 from ``break_at`` on."""
    def nll(model, method, recent, kernel, pos, args):
        if method == "dense":
            return 2.8 + (1.5 if break_at is not None and pos >= break_at else 0.0)
        return 3.1 + (0.8 if method == "window" and pos > 4 + recent else 0.0)
    return nll


def gemma_short_runs():
    """Family B: no run past its trained context (8000 tokens = 0.24x, 16000 = 0.49x)."""
    return [make_run("gemma-3-270m", _gemma_nll(None), max_tokens=n, trained_context=GEMMA_TC,
                     model_family="gemma-3", model_params=2.68e8) for n in (8000, 16000)]


def gemma_long_runs():
    """Family B with a run past its context: dense breaks at its own context, 32768 tokens."""
    return gemma_short_runs() + [make_run("gemma-3-270m", _gemma_nll(GEMMA_TC), max_tokens=40000,
                                          trained_context=GEMMA_TC, model_family="gemma-3", model_params=2.68e8)]


def _criteria(h):
    return [(c.id, c.status, c.evidence) for c in h.criteria]


def test_each_family_is_judged_on_its_own_runs_never_pooled():
    a = analyze(extrapolation_runs() + gemma_short_runs())
    # over families: supported only where every family supports it; B open is not counted as agreeing (pooled, A's
    # break made it "supported" for both)
    assert a.verdicts["extrapolation"] == OPEN and a.cause_key is None
    assert list(a.families) == ["smollm2", "gemma-3"]
    smol, gemma = a.families["smollm2"], a.families["gemma-3"]
    assert smol.verdicts["extrapolation"] == SUPPORTED
    # B has nothing past 1.1x its context: cannot decide, with the step that would decide it
    assert gemma.verdicts["extrapolation"] == OPEN
    jump = gemma.hypotheses["extrapolation"].criterion("dense_jump")
    assert jump.status == UNDECIDED and jump.step == "length"
    # each family's verdict is the verdict on its runs alone, criterion by criterion (B's 0.24x and 0.49x runs are
    # not "short lengths" of A, A's break is not B's)
    for family, runs in (("smollm2", extrapolation_runs()), ("gemma-3", gemma_short_runs())):
        alone = analyze(runs)
        for name, h in a.families[family].hypotheses.items():
            assert _criteria(h) == _criteria(alone.hypotheses[name]), (family, name)
    short_and_long = smol.hypotheses["compression"].criterion("short_and_long").evidence
    assert "16000 tokens" not in short_and_long and "8000 tokens" not in short_and_long
    assert a.hypotheses["extrapolation"].scope.startswith(
        "supported in 1 of 2 families (smollm2); cannot decide in gemma-3 (gemma-3: dense NLL jumps")
    assert [t for t, _, _ in a.reasons] == [False, False, False]  # nothing ticked: not supported in every family


def test_the_first_screen_answers_per_family_with_each_ones_own_context():
    a = analyze(extrapolation_runs() + gemma_short_runs())
    screen = _first_screen(render_report(a))
    assert len(screen) <= FIRST_SCREEN, "\n".join(screen)
    text = " ".join(line.strip() for line in screen)
    # A breaks at its context 8192 (the synthetic dense jumps at position 8192): 1.00x, not 0.25x of B's
    assert ("smollm2 (trained context 8192): 2 of 7 settings streaming better; cause **position extrapolation** (1 key "
            "criterion passes); critical point 8192 tokens = 1.00x its context") in text
    assert ("gemma-3 (trained context 32768): 0 of 2 settings streaming better; cause **cannot decide** (cannot "
            "decide: position extrapolation: next step `length`; others ruled out)") in text
    assert "critical point not reached by 16000 tokens = 0.49x its context" in text
    assert "position extrapolation supported in 1 of 2 (smollm2), cannot decide in 1 of 2 (gemma-3)" in text
    assert "is seen in 1 of 2 families (smollm2: position extrapolation); not in gemma-3" in text
    assert "not shown for every model" in text
    assert any(line.startswith("| gemma-3-270m") for line in screen) and any(
        line.startswith("| smollm2-135m") for line in screen)


def test_critical_points_are_multiples_of_each_familys_own_context():
    """Both families break at their own trained context: 1.00x each (8192 and 32768 tokens); pooled, one critical
    point (the longest run's) stood for both."""
    a = analyze(extrapolation_runs() + gemma_long_runs())
    seq = a.scope["sequence length"]
    assert seq.startswith("smollm2 (trained context 8192): >= 8192 tokens (1.00x the trained context 8192)")
    assert "; gemma-3 (trained context 32768): >= 32768 tokens (1.00x the trained context 32768)" in seq
    text = " ".join(line.strip() for line in _first_screen(render_report(a)))
    assert "critical point 8192 tokens = 1.00x its context" in text
    assert "critical point 32768 tokens = 1.00x its context" in text
    assert "the same supported cause in each" in text
    assert a.families["gemma-3"].verdicts["extrapolation"] == SUPPORTED
    assert a.verdicts["extrapolation"] == SUPPORTED and a.cause_key == "extrapolation"
    cps = {label: fa.critical_main for label, fa in a.families.items()}
    assert cps["smollm2"].pooled == 8192 and cps["smollm2"].run.trained_context == 8192
    assert cps["gemma-3"].pooled == 32768 and cps["gemma-3"].run.trained_context == GEMMA_TC


def test_a_family_that_contradicts_is_ruled_out_there_and_named():
    """B runs past its context and dense does not jump: ruled out in B, supported in A; over families: ruled out
    (it does not explain the effect in every model), and the line names both."""
    flat = [make_run("gemma-3-270m", _gemma_nll(None), max_tokens=n, trained_context=GEMMA_TC, model_family="gemma-3")
            for n in (8000, 40000)]
    a = analyze(extrapolation_runs() + flat)
    assert a.verdicts["extrapolation"] == RULED_OUT  # pooled: "supported", B's flat dense diluted into A's jump
    assert a.families["gemma-3"].hypotheses["extrapolation"].criterion("dense_jump").status != PASS
    assert a.families["gemma-3"].verdicts["extrapolation"] == RULED_OUT
    assert a.hypotheses["extrapolation"].scope == ("supported in 1 of 2 families (smollm2); ruled out in 1 of 2 "
                                                   "families (gemma-3)")


def test_one_family_is_analysed_as_before():
    from lm_eval_streaming.analysis.verdict import analyze_family  # the verdict as it was: all runs as one

    runs = extrapolation_runs()
    a = analyze(runs)
    assert a.families == {}
    assert render_report(a) == render_report(analyze_family(runs))
    assert "families" not in render_report(a) and "family" not in _first_screen(render_report(a))[2]


@pytest.mark.parametrize("name", ["two synthetic families", "committed experiments with Gemma"])
def test_two_family_reports_keep_the_screen_and_line_limits(name):
    from test_report_screen import test_first_screen_is_short_lines_are_short_and_commands_are_printed_once as check

    scenarios = {"two synthetic families": lambda: extrapolation_runs() + gemma_short_runs(),
                 "committed experiments with Gemma": lambda: load_runs(
                     sorted((REPO / "docs" / "experiments").glob("*.jsonl"))
                     + sorted((REPO / "docs" / "gemma").glob("*.jsonl")))}
    import test_report_screen

    test_report_screen.SCENARIOS[name] = scenarios[name]
    try:
        check(name)
    finally:
        del test_report_screen.SCENARIOS[name]


def test_a_family_without_the_effect_is_not_counted_as_showing_it():
    """B past its context: dense's gap to streaming grows by 0.2 nats beyond 1.1x (the jump criterion passes), but
    dense stays 0.1 better: the hypothesis is supported there, the effect is not seen, "every model" is not claimed
    (the shape of Gemma's one 37000-token sample)."""
    def nll(model, method, recent, kernel, pos, args):
        if method == "dense":
            return 2.8 + (0.2 if pos >= GEMMA_TC else 0.0)
        return 3.1 + (0.8 if method == "window" and pos > 4 + recent else 0.0)

    b = [make_run("gemma-3-270m", nll, max_tokens=n, trained_context=GEMMA_TC, model_family="gemma-3")
         for n in (8000, 40000)]
    a = analyze(extrapolation_runs() + b)
    assert a.families["gemma-3"].verdicts["extrapolation"] == SUPPORTED
    assert a.families["gemma-3"].critical_main is None
    report = render_report(a)
    text = " ".join(line.strip() for line in _first_screen(report))
    assert ("gemma-3 (trained context 32768): 0 of 2 settings streaming better; no effect to explain; **position "
            "extrapolation** supported (1 key criterion passes); critical point not reached by 40000 tokens = 1.22x "
            "its context") in text
    assert ("is seen in 1 of 2 families (smollm2: position extrapolation); not in gemma-3 (critical point not reached "
            "by 40000 tokens = 1.22x its context): not shown for every model") in text
    assert "- Cause: no effect to explain here" in report
