"""Issue 25: the report's first screen answers, its lines are short, each command is printed once, and the
judgement rules are records (docs/verdict.md's table is written from them)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
from synthetic_runs import make_run
from test_analysis import extrapolation_runs

from lm_eval_streaming.analysis.base import FAIL, PASS, STEPS, UNDECIDED, WRAP
from lm_eval_streaming.analysis.first_screen import FIRST_SCREEN
from lm_eval_streaming.analysis.report import render_report
from lm_eval_streaming.analysis.rules import KEY, Decision, Rule, Words
from lm_eval_streaming.analysis.verdict import HYPOTHESES, analyze
from lm_eval_streaming.records import load_runs

REPO = Path(__file__).resolve().parents[1]


def _short_runs():
    """The README's main job with --limit 2: two documents at 500 and 1000 tokens, streaming slightly worse."""
    nll = lambda model, method, recent, kernel, pos, args: 3.0 if method == "dense" else 3.03  # noqa: E731
    return [make_run("smollm2-135m", nll, max_tokens=n, trained_context=8192, num_samples=2) for n in (513, 1011)]


SCENARIOS = {"main job, 2 documents": _short_runs, "extrapolation": extrapolation_runs,
             "committed experiments": lambda: load_runs(sorted((REPO / "docs" / "experiments").glob("*.jsonl")))}


def _first_screen(report: str) -> list[str]:
    lines = report.splitlines()
    end = next(i for i, line in enumerate(lines[1:], 1) if line.startswith("## "))
    while not lines[end - 1].strip():
        end -= 1
    return lines[:end]


def _commands(report: str) -> list[str]:
    """The indented code lines of the report, continuation lines joined."""
    text = re.sub(r" \\\n +", " ", report)
    return [line.strip() for line in text.splitlines() if line.startswith("    ") and not line.lstrip().startswith("-")]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_first_screen_is_short_lines_are_short_and_commands_are_printed_once(scenario):
    report = render_report(analyze(SCENARIOS[scenario]()), sources=["a", "b"])
    screen = _first_screen(report)
    assert len(screen) <= FIRST_SCREEN, "\n".join(screen)
    long = [line for line in report.splitlines() if len(line) > WRAP and not line.startswith("|")]
    assert not long, long
    commands = _commands(report)
    assert len(commands) == len(set(commands)), commands
    every = {c for s in STEPS.values() for c in (s.offline, s.hub) if c}
    assert all(c in every for c in commands)
    for c in every:  # a command is printed once, or named by its step elsewhere
        assert re.sub(r" \\\n +", " ", report).count(c) <= 1, c


def test_the_first_screen_of_the_main_job_gives_numbers_without_two_document_intervals_and_an_offline_command():
    a = analyze(_short_runs())
    screen = _first_screen(render_report(a))
    rows = [line for line in screen if line.startswith("| smollm2-135m")]
    assert len(rows) == 2 and all("2 documents: no interval shown" in r and "[" not in r for r in rows)
    # the one command on the first screen runs offline (no hub model) and decides an open key criterion
    [command] = _commands("\n".join(screen))
    step = next(s for s in STEPS.values() if s.offline == command)
    assert step.id in {c.step for h in a.hypotheses.values() for c in h.undecided()}
    assert "pythia" not in command.lower()


def test_the_first_screen_names_the_supported_cause():
    a = analyze(extrapolation_runs())
    screen = "\n".join(_first_screen(render_report(a)))
    assert a.cause_key == "extrapolation" and "Cause: **position extrapolation**, supported" in screen
    assert screen.count("ruled out") == 2


# ----------------------------------------------------------------- criteria as records
def test_every_rule_is_one_record_with_an_id_words_and_a_known_step():
    ids = [r.id for h in HYPOTHESES.values() for r in h.rules]
    assert len(ids) == len(set(ids))
    for h in HYPOTHESES.values():
        judged = h.judge(_data(extrapolation_runs()))
        assert [c.id for c in judged.criteria] == [r.id for r in h.rules]  # one criterion per record, in order
        for rule, c in zip(h.rules, judged.criteria):
            assert c.name == rule.name and c.outcome == rule.words.of(c.status)
            assert c.step == (rule.step if c.status == UNDECIDED else None)


def _data(runs):
    from lm_eval_streaming.analysis.data import Data

    return Data(runs, 0.05)


@pytest.mark.parametrize("status,verdict", [(FAIL, "ruled out"), (UNDECIDED, "cannot decide"), (PASS, "supported")])
def test_a_new_criterion_is_one_record(monkeypatch, status, verdict):
    """A key record added to the supported hypothesis decides with it, and reads in its own words."""
    new = Rule("always", "a new claim", KEY, lambda d: Decision(status, "because"), Words("holds", "does not hold"),
               "cache")
    ext = HYPOTHESES["extrapolation"]
    monkeypatch.setitem(HYPOTHESES, "extrapolation", dataclasses.replace(ext, rules=ext.rules + (new,)))
    a = analyze(extrapolation_runs())
    c = a.hypotheses["extrapolation"].criterion("always")
    assert a.verdicts["extrapolation"] == verdict and c.outcome == new.words.of(status)
    assert (c.outcome in render_report(a)) is True


def test_good_news_reads_as_good_news():
    h = analyze(extrapolation_runs()).hypotheses["numerical"]
    c = h.criterion("magnitudes")
    assert c.status == FAIL and c.outcome.endswith(": ok")


# ----------------------------------------------------------------- figures a person reads
def _lm_eval_like_runs():
    """The main job's shape: one lm-eval task per length, so each length has its own sample spec."""
    runs = _short_runs()
    for run in runs:
        run.sample_spec = f"lm_eval:streaming_ppl_{run.max_tokens}:limit=2"
    return runs


@pytest.mark.parametrize("runs", [_lm_eval_like_runs, lambda: load_runs(
    sorted((REPO / "docs" / "experiments").glob("*.jsonl")))], ids=["main job", "committed experiments"])
def test_ppl_vs_length_has_one_legend_entry_per_setting_joined_lines_and_plain_ticks(monkeypatch, tmp_path, runs):
    from test_analysis import _drawn

    from lm_eval_streaming.analysis import figures as plots

    for ax in _drawn(monkeypatch, plots.ppl_vs_length, runs(), tmp_path):
        ax.figure.canvas.draw()
        labels = ax.get_legend_handles_labels()[1]
        assert len(labels) == len(set(labels)) and not any("[" in label for label in labels), labels
        lines = {line.get_label(): line for line in ax.lines}
        for name in ("dense (sdpa)", "streaming_llm (4+252)"):
            if name in lines:
                assert len(lines[name].get_xdata()) >= 2  # a method's lengths joined by one line
        ticks = [t.get_text() for axis in (ax.xaxis, ax.yaxis) for t in axis.get_ticklabels(which="both")]
        assert not any("times" in t or "^" in t for t in ticks), ticks
        assert any(t for t in ax.yaxis.get_ticklabels(which="both") if t.get_text())
