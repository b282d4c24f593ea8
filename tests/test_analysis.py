"""Verdicts and figures on synthetic typed runs built to match each hypothesis (tests/synthetic_runs.py)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from synthetic_runs import make_run

from lm_eval_streaming.analysis import figures as plots
from lm_eval_streaming.records import CausalityStats, KernelErrorStats
from lm_eval_streaming.analysis.report import render_report
from lm_eval_streaming.analysis.verdict import analyze
from lm_eval_streaming.analysis.base import FAIL, PASS, RULED_OUT, SUPPORTED, UNDECIDED
from lm_eval_streaming.analysis.data import model_params


# ----------------------------------------------------------------- scenarios
def extrapolation_runs(relative_buckets: bool = True):
    """SmolLM2-like, trained context 8192: dense breaks past 8192, streaming flat, window worse."""
    tc = 8192

    def nll(model, method, recent, kernel, pos, args):
        eps = 0.005 if args["dtype"] != "float32" else 0.0
        if method == "dense":
            return 3.0 + eps + (1.5 if pos >= tc else 0.0)
        base = 3.02 + eps + 0.05 * (252 / recent - 1)
        return base + 0.8 if method == "window" and pos > 4 + recent else base

    common = dict(trained_context=tc, model_family="smollm2", model_params=1.35e8, dense_kernels=("sdpa", "eager"),
                  relative_buckets=relative_buckets)
    runs = [make_run("smollm2-135m", nll, max_tokens=n, **common) for n in (2000, 5000, 10000, 12000)]
    runs += [make_run("smollm2-135m", nll, max_tokens=2000, recent_sizes=(124, 252, 508, 1020), **common)]
    runs += [make_run("smollm2-135m", nll, max_tokens=2000, dtype=dt, **common) for dt in ("bfloat16", "float16")]
    return runs


def numerics_runs():
    """Pythia-like, trained context 2048, MPS float16: the large model's dense kernel has NaN logits and a kernel
    error growing with length."""
    tc = 2048

    def nll(model, method, recent, kernel, pos, args):
        big = "6.9b" in model
        if method == "dense":
            return 2.5 + 0.5 * args["max_tokens"] / 2000 if big else 3.5
        if method == "window" and pos > 4 + recent:
            return 3.4 if big else 4.2
        return 2.5 + 0.4 * recent / 2048 if big else 3.52

    def numerics(args, kernel):
        measured = {"nan_logits": 0, "inf_logits": 0, "nonfinite_tokens": 0, "max_abs_logit": 30.0,
                    "kernel_error": KernelErrorStats("lm_eval_streaming/float32/mps", 1e-4, 1e-3, 0),
                    "causality": CausalityStats([10, 100], [0.0, 0.0], 0.0)}
        if "6.9b" in args["model_id"]:
            n = args["max_tokens"]
            measured.update(nan_logits=20 * n, nonfinite_tokens=n // 50, max_abs_logit=7.0e4,
                            kernel_error=KernelErrorStats("lm_eval_streaming/float32/mps", 0.4, 9.0, n // 50))
        return measured

    common = dict(trained_context=tc, device="mps", dtype="float16", numerics=numerics)
    runs = [make_run(m, nll, max_tokens=n, **common) for m in ("EleutherAI/pythia-70m-deduped",
                                                              "EleutherAI/pythia-6.9b") for n in (500, 1000, 2000)]
    runs += [make_run("EleutherAI/pythia-6.9b", nll, max_tokens=2000, recent_sizes=(124, 252, 508, 1020), **common)]
    return runs


def compression_runs():
    """Streaming better everywhere (two sizes, two dtypes, short and long), optimum at an interior cache size."""

    def nll(model, method, recent, kernel, pos, args):
        if method == "dense":
            return 3.0
        base = 2.8 + 0.1 * math.log2(recent / 350) ** 2
        return base + 0.6 if method == "window" and pos > 4 + recent else base

    models = ["EleutherAI/pythia-70m-deduped", "EleutherAI/pythia-410m-deduped"]
    runs = [make_run(m, nll, max_tokens=n, dtype=dt, trained_context=2048) for m in models
            for dt in ("float32", "bfloat16") for n in (1000, 4000)]
    runs += [make_run(m, nll, max_tokens=1000, recent_sizes=(124, 252, 508, 1020), trained_context=2048)
             for m in models]
    return runs


def _criterion(a, hyp, text):
    return next(c for c in a.hypotheses[hyp].criteria if text in c.name)


# ----------------------------------------------------------------- verdicts
def test_extrapolation_data_supports_extrapolation_and_rules_out_the_others():
    a = analyze(extrapolation_runs())
    assert a.verdicts == {"extrapolation": SUPPORTED, "compression": RULED_OUT, "numerical": RULED_OUT}
    assert a.cause_key == "extrapolation" and a.cause.startswith("其他 other") and a.cause_evidence
    jump = _criterion(a, "extrapolation", "jumps beyond 1.1x")
    assert jump.status == PASS
    # dense 3.0 below / 4.5 beyond, streaming 3.02 everywhere (the NLL function above)
    assert "dense NLL there 4.500 vs streaming 3.020; below 0.9x: 3.000 vs 3.020" in jump.evidence
    assert _criterion(a, "extrapolation", "window-only").status == PASS
    assert _criterion(a, "extrapolation", "dtype and device").status == PASS
    assert _criterion(a, "compression", "short and at long").status == FAIL
    assert _criterion(a, "compression", "interior optimum").status == FAIL
    assert _criterion(a, "numerical", "measured kernel error").status == FAIL
    scope = a.hypotheses["numerical"].scope
    assert scope.startswith("ruled out on") and "cpu/float32 (eager, sdpa; 2000, 5000, 10000, 12000 tokens)" in scope
    assert scope.endswith("not measured on CUDA, MPS: cannot decide there")
    size = _criterion(a, "compression", "model size")  # one model size: cannot be decided, and said so
    assert size.status == UNDECIDED and "cannot be decided" in size.evidence
    report = render_report(a)
    # issue 16 (e): the seed's template in its own form (was: paraphrased headings)
    for heading in ("### 现象描述", "### 原因分析", "### 适用范围", "- 模型大小: ", "- 序列长度: ",
                    "- 硬件限制: MPS / CUDA / CPU: ", "### 实际意义"):
        assert heading in report
    assert "only smollm2-135m (135M) tested" in report
    assert "not measured: MPS, CUDA" in report  # issue 16 (e): "not measured" (was "not tested")
    assert "recall was not measured" in a.meaning


def test_absolute_buckets_decide_when_relative_ones_are_missing():
    a = analyze(extrapolation_runs(relative_buckets=False))
    jump = _criterion(a, "extrapolation", "jumps beyond 1.1x")
    assert jump.status == PASS
    assert "dense NLL there 4.500 vs streaming 3.020; below 0.9x: 3.000 vs 3.020" in jump.evidence
    # without any position buckets there is nothing to decide from
    runs = extrapolation_runs(relative_buckets=False)
    for run in runs:
        for row in run.rows:
            row.nll_by_position = None
    assert _criterion(analyze(runs), "extrapolation", "jumps beyond 1.1x").status == UNDECIDED


def test_numerics_data_supports_the_numerical_problem_for_the_broken_kernel():
    a = analyze(numerics_runs())
    assert a.verdicts["numerical"] == SUPPORTED and a.cause.startswith("数值稳定性")
    key = _criterion(a, "numerical", "measured kernel error")
    assert key.status == PASS and "supported for mps/float16 (sdpa; 500, 1000, 2000 tokens)" in key.evidence
    assert "kernel error mean |ΔNLL| 0.4" in key.evidence and "NaN/Inf" in key.evidence
    assert "mps/float16 (sdpa" in a.meaning  # the practical meaning names the kernel
    for name in ("large models", "grows with sequence length", "bigger cache"):  # the seed's indirect signs
        c = _criterion(a, "numerical", name)
        assert c.status == PASS and not c.required, name
    assert _criterion(a, "extrapolation", "jumps beyond").status == UNDECIDED  # never past 2048
    assert _criterion(a, "extrapolation", "NaN").status == FAIL
    assert _criterion(a, "compression", "model size").status == FAIL  # 70m shows nothing
    assert "pythia (trained context 2048): >= EleutherAI/pythia-6.9b (6.9B)" in a.scope["model size"]


def test_compression_data_supports_compression():
    a = analyze(compression_runs())
    assert a.verdicts == {"compression": SUPPORTED, "extrapolation": RULED_OUT, "numerical": RULED_OUT}
    assert a.cause.startswith("压缩改善预测")
    assert "-> best 252 (interior)" in _criterion(a, "compression", "interior optimum").evidence


def test_no_effect_means_no_cause():
    nll = lambda model, method, recent, kernel, pos, args: 3.0 + (0.01 if method != "dense" else 0)  # noqa: E731
    a = analyze([make_run("smollm2-135m", nll, max_tokens=n, trained_context=8192) for n in (1000, 2000)])
    assert "not reproduced" in a.phenomenon and "no effect to explain" in a.cause
    assert SUPPORTED not in a.verdicts.values()


def test_model_params_from_ids_for_runs_that_did_not_record_them():
    assert model_params("EleutherAI/pythia-6.9b") == pytest.approx(6.9e9)
    assert model_params("EleutherAI/pythia-70m-deduped") == pytest.approx(7e7)
    assert model_params("smollm2-135m") == pytest.approx(1.35e8)
    assert model_params("gpt2") is None


# ----------------------------------------------------------------- figures
def _assert_png(path: Path):
    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000


def test_plots_write_pngs(tmp_path):
    paths = plots.make_figures(extrapolation_runs(), tmp_path / "figs")
    names = [p.name for p in paths]
    assert any(n.startswith("ppl_vs_length__smollm2-135m") for n in names)
    assert any(n.startswith("ppl_vs_cache__smollm2-135m_2000") for n in names)
    assert any(n.startswith("nll_vs_position__smollm2-135m_12000") for n in names)
    assert not any(n.startswith("kernel_error") for n in names)  # no kernel error by position in these runs
    for p in paths:
        _assert_png(p)


def test_kernel_error_figure_only_from_rows_that_measured_it(tmp_path):
    runs = numerics_runs()
    for run in runs:
        for row in run.rows:
            row.kernel_error = None
    assert plots.kernel_error_vs_position(runs, tmp_path) == []
    runs = numerics_runs()  # measured, but without a by-position breakdown: nothing to draw either
    assert plots.kernel_error_vs_position(runs, tmp_path) == []
    for run in runs:
        for row in run.dense_rows():
            row.kernel_error.by_position = row.nll_by_position  # any positive per-bucket values
    paths = plots.kernel_error_vs_position(runs, tmp_path)  # one per model and device
    assert sorted(p.name for p in paths) == ["kernel_error_vs_position__EleutherAI_pythia-6.9b_mps.png",
                                             "kernel_error_vs_position__EleutherAI_pythia-70m-deduped_mps.png"]
    for p in paths:
        _assert_png(p)


# ----------------------------------------------------------------- issue 16 (h): figures a person reads
def _drawn(monkeypatch, draw, runs, tmp_path):
    """The axes of every figure ``draw`` makes (save_figure captured instead of only written)."""
    axes = []

    def keep(fig, path):
        axes.append(fig.axes[0])
        return path

    monkeypatch.setattr(plots, "save_figure", keep)
    draw(runs, tmp_path)
    return axes


def _legend(ax):
    return ax.get_legend_handles_labels()[1]


def test_position_figure_x_axis_context_line_smoothing_and_critical_point(monkeypatch, tmp_path):
    tc = 8192
    runs = extrapolation_runs()
    [short] = _drawn(monkeypatch, plots.nll_vs_position, [r for r in runs if r.max_tokens == 2000
                                                          and r.dtype == "float16"], tmp_path)
    # 2000 tokens: the data ends far below the trained context (8192 > 1.5 x 2000): no line, x-axis to the data
    assert not any("trained context" in label for label in _legend(short))
    assert short.get_xlim()[1] < 2000 * 1.1
    [long] = _drawn(monkeypatch, plots.nll_vs_position, [r for r in runs if r.max_tokens == 12000], tmp_path)
    labels = _legend(long)
    assert f"trained context ({tc})" in labels and long.get_xlim()[1] < 12000 * 1.1
    # dense jumps by 1.5 from 8192 on, streaming is flat: in curve buckets of 256 tokens the critical point is 8192
    assert "critical point 8192 (1.00x)" in labels
    # each method: a faint raw line and a solid smoothed one, in the method's colour
    stream = [line for line in long.lines if line.get_color() == plots.METHOD_COLORS["streaming_llm"]]
    assert len(stream) == 2 and sorted(line.get_alpha() or 1.0 for line in stream) == [0.25, 1.0]


def test_one_colour_per_method_across_figures(monkeypatch, tmp_path):
    runs = extrapolation_runs()
    colours = {}
    for draw in (plots.ppl_vs_length, plots.ppl_vs_cache, plots.nll_vs_position):
        for ax in _drawn(monkeypatch, draw, runs, tmp_path):
            for line in ax.lines:
                label = line.get_label()
                for method in ("streaming_llm", "window"):
                    if label.startswith(method):
                        colours.setdefault(method, set()).add(line.get_color())
    assert colours == {"streaming_llm": {plots.METHOD_COLORS["streaming_llm"]},
                       "window": {plots.METHOD_COLORS["window"]}}


def test_position_figure_prefers_the_run_with_more_samples(monkeypatch, tmp_path):
    def nll(shift):
        return lambda model, method, recent, kernel, pos, args: 3.0 + (1.5 if method == "dense" and pos >= shift else 0)

    one = make_run("smollm2-135m", nll(10240), max_tokens=12000, trained_context=8192, num_samples=1, cell_key="a")
    three = make_run("smollm2-135m", nll(8192), max_tokens=12000, trained_context=8192, num_samples=3, cell_key="b")
    for runs in ([one, three], [three, one]):
        [ax] = _drawn(monkeypatch, plots.nll_vs_position, runs, tmp_path)
        # the 3-sample run's dense jumps at 8192 (a curve bucket edge): its line and its critical point are drawn
        assert "critical point 8192 (1.00x)" in _legend(ax)


def test_legend_names_the_pruning_interval_unless_it_is_the_default():
    """h2o with E=4 and with E=1 are different settings: their legend labels differ (E=1 is the default)."""
    import dataclasses

    row = next(r for run in extrapolation_runs() for r in run.rows if r.method == "streaming_llm")
    h2o = dataclasses.replace(row, method="h2o", evict_every=4)
    assert plots._label(h2o) == f"h2o ({row.start_size}+{row.recent_size}, E=4)"
    assert plots._label(dataclasses.replace(h2o, evict_every=1)) == f"h2o ({row.start_size}+{row.recent_size})"
