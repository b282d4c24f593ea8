"""Analysis verdicts and figures on synthetic results built to match each hypothesis."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from lm_eval_streaming import analysis as an
from lm_eval_streaming import experiment as ex
from lm_eval_streaming import plots

REL_EDGES = [0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0]
STEP = 32  # each synthetic "token" stands for STEP tokens: keeps the fake fast


def _bins(values, positions, edges, open_end=True):
    sums = [0.0] * len(edges)
    counts = [0] * len(edges)
    for v, p in zip(values, positions):
        i = max(j for j, e in enumerate(edges) if p >= e)
        if not open_end and i == len(edges) - 1:
            continue
        sums[i] += v * STEP
        counts[i] += STEP
    return [s / c if c else math.nan for s, c in zip(sums, counts)], counts


def synthetic_benchmark(nll_fn, trained_context, diag_fn=None):
    """A fake run_benchmark: per-token NLL from ``nll_fn(model, method, recent, pos, L, dtype, device)``."""

    def record(cell, method, recent, dense_mean=None):
        L, model = cell["max_tokens"], cell["model_id"]
        pos = list(range(0, L, STEP))
        vals = [nll_fn(model, method, recent, p, L, cell.get("dtype"), cell.get("device")) for p in pos]
        mean = sum(vals) / len(vals)
        abs_edges = list(range(0, L + 256, 256))
        abs_nll, abs_count = _bins(vals, pos, abs_edges)
        rel_nll, rel_count = _bins(vals, [p / trained_context for p in pos], REL_EDGES)
        dense = method == "dense"
        delta = None if dense else mean - dense_mean
        diag = {"nan_logits": 0, "inf_logits": 0, "max_abs_logit": 25.0, "max_abs_attn_score": 40.0,
                "nonfinite_attn_scores": 0, "nonfinite_tokens": 0, "attn_implementation": "sdpa" if dense else
                "lm_eval_streaming"}
        if dense:  # measured numerics of the dense kernel: clean unless diag_fn says otherwise
            diag["kernel_error"] = {"reference": "lm_eval_streaming/float32/cpu", "mean_abs_dnll": 1e-6,
                                    "max_abs_dnll": 1e-5, "nonfinite": 0}
            diag["causality"] = {"positions": [10, 100], "max_abs_dlogit": [0.0, 0.0], "max_abs_dlogit_overall": 0.0}
        if diag_fn:
            diag.update(diag_fn(model, method, L))
        return {
            "model_id": model, "method": method, "start_size": cell.get("start_size", 4),
            "recent_size": None if dense else recent, "max_tokens": L, "num_samples": cell.get("num_samples", 2),
            "dtype": cell.get("dtype", "float32"), "device": cell.get("device", "cpu"), "chunk_size": 512,
            "trained_context": trained_context, "ppl": math.exp(mean), "ppl_ci": [math.exp(mean - .05), math.exp(mean + .05)],
            "acc": 0.5 - mean / 20, "acc_ci": [0.4, 0.6], "nll_mean": mean,
            "delta_nll_vs_dense": delta, "delta_nll_ci": None if dense else [delta - 0.02, delta + 0.02],
            "delta_acc_vs_dense": None if dense else -delta / 20,
            "delta_acc_ci": None if dense else [-delta / 20 - .01, -delta / 20 + .01],
            "tokens_per_s": 1000.0, "latency_ms_per_token": 1.0, "peak_kv_bytes": 1, "peak_rss_bytes": 1,
            "cuda_max_allocated_bytes": None, "exceeded_trained_context": L > trained_context,
            "max_position": L - 1 if dense else min(L - 1, cell.get("start_size", 4) + (recent or 0)),
            "nll_by_position": {"edges": abs_edges, "nll": abs_nll, "count": abs_count},
            "nll_by_relative_position": {"edges": REL_EDGES, "nll": rel_nll, "count": rel_count},
            "nll_curve": {"positions": [e + 128 for e, c in zip(abs_edges, abs_count) if c],
                          "nll": [v for v, c in zip(abs_nll, abs_count) if c]},
            **diag, "versions": {"torch": "x", "transformers": "y", "lm_eval_streaming": "z"}, "machine": "test",
        }

    def run_benchmark(**cell):
        dense = record(cell, "dense", None)
        rows = [dense]
        for m in cell["methods"]:
            for r in cell.get("recent_sizes", [252]):
                rows.append(record(cell, m, r, dense["nll_mean"]))
        return rows

    return run_benchmark


def run_configs(tmp_path, name, configs, bench) -> Path:
    out = tmp_path / f"{name}.jsonl"
    for i, cfg in enumerate(configs):
        config = ex.validate_config({"name": f"{name}{i}", "methods": ["streaming_llm", "window"], "start_size": 4,
                                     "num_samples": 2, **cfg}, f"{name}{i}.yaml")
        ex.run_experiment(config, out, run_benchmark=bench, progress=False, log=lambda *a: None,
                          skip_unavailable=False)
    return out


# ----------------------------------------------------------------- scenarios
def extrapolation_results(tmp_path) -> Path:
    """SmolLM2-like, trained context 8192: dense breaks past 8192, streaming flat, window worse."""
    tc = 8192

    def nll(model, method, recent, pos, L, dtype, device):
        eps = 0.005 if dtype != "float32" else 0.0
        if method == "dense":
            return 3.0 + eps + (1.5 if pos >= tc else 0.0)
        base = 3.02 + eps + 0.05 * (252 / recent - 1)
        if method == "window" and pos > 4 + recent:
            return base + 0.8
        return base

    bench = synthetic_benchmark(nll, tc)
    common = {"model_id": "smollm2-135m", "device": "cpu"}
    return run_configs(tmp_path, "extrap", [
        {**common, "dtype": "float32", "recent_sizes": [252], "grid": {"max_tokens": [2000, 5000, 10000, 12000]}},
        {**common, "dtype": "float32", "max_tokens": 2000, "grid": {"recent_sizes": [124, 252, 508, 1020]}},
        {**common, "recent_sizes": [252], "max_tokens": 2000, "grid": {"dtype": ["float32", "bfloat16", "float16"]}},
    ], bench)


def numerics_results(tmp_path) -> Path:
    """Pythia-like, trained context 2048: the large model's dense baseline has NaN logits growing with length."""
    tc = 2048

    def nll(model, method, recent, pos, L, dtype, device):
        big = "6.9b" in model
        if method == "dense":
            return 2.5 + 0.5 * L / 2000 if big else 3.5
        if method == "window" and pos > 4 + recent:
            return 3.4 if big else 4.2
        return 2.5 + 0.4 * recent / 2048 if big else 3.52

    def diag(model, method, L):
        if method == "dense" and "6.9b" in model:
            return {"nan_logits": 20 * L, "nonfinite_tokens": L // 50, "max_abs_logit": 7.0e4,
                    "kernel_error": {"reference": "lm_eval_streaming/float32/cpu", "mean_abs_dnll": 0.4,
                                     "max_abs_dnll": 9.0, "nonfinite": L // 50}}
        return {}

    bench = synthetic_benchmark(nll, tc, diag)
    common = {"device": "mps", "dtype": "float16"}
    return run_configs(tmp_path, "numerics", [
        {**common, "recent_sizes": [252], "grid": {"model_id": ["EleutherAI/pythia-70m-deduped",
                                                                "EleutherAI/pythia-6.9b"],
                                                   "max_tokens": [500, 1000, 2000]}},
        {**common, "model_id": "EleutherAI/pythia-6.9b", "max_tokens": 2000,
         "grid": {"recent_sizes": [124, 252, 508, 1020]}},
    ], bench)


def compression_results(tmp_path) -> Path:
    """Streaming better everywhere (two sizes, two dtypes, short and long), optimum at an interior cache size."""
    tc = 2048

    def nll(model, method, recent, pos, L, dtype, device):
        if method == "dense":
            return 3.0
        base = 2.8 + 0.1 * math.log2(recent / 350) ** 2
        if method == "window" and pos > 4 + recent:
            return base + 0.6
        return base

    bench = synthetic_benchmark(nll, tc)
    models = ["EleutherAI/pythia-70m-deduped", "EleutherAI/pythia-410m-deduped"]
    return run_configs(tmp_path, "compress", [
        {"device": "cpu", "recent_sizes": [252], "grid": {"model_id": models, "dtype": ["float32", "bfloat16"],
                                                          "max_tokens": [1000, 4000]}},
        {"device": "cpu", "dtype": "float32", "max_tokens": 1000,
         "grid": {"model_id": models, "recent_sizes": [124, 252, 508, 1020]}},
    ], bench)


def _criterion(a, hyp, text):
    return next(c for c in a.hypotheses[hyp].criteria if text in c.name)


# ----------------------------------------------------------------- tests
def test_extrapolation_data_supports_extrapolation_and_rules_out_compression(tmp_path):
    a = an.analyze(ex.load_results(extrapolation_results(tmp_path)))
    assert a.verdicts == {"extrapolation": an.SUPPORTED, "compression": an.RULED_OUT, "numerical": an.RULED_OUT}
    assert "position extrapolation" in a.cause and a.cause.startswith("其他 other")
    jump = _criterion(a, "extrapolation", "jumps past 1.0x")
    assert jump.status == an.PASS
    assert "dense NLL past 1.0x trained context 4.500 vs streaming 3.020; below: 3.000 vs 3.020" in jump.evidence
    assert _criterion(a, "extrapolation", "window-only").status == an.PASS
    assert _criterion(a, "extrapolation", "dtype and device").status == an.PASS
    assert _criterion(a, "compression", "short and at long").status == an.FAIL
    assert _criterion(a, "compression", "interior optimum").status == an.FAIL
    assert _criterion(a, "numerical", "measured kernel error").status == an.FAIL
    # one model size: the model-size rule cannot be decided, and the report says so
    size = _criterion(a, "compression", "model size")
    assert size.status == an.UNDECIDED and "cannot be decided" in size.evidence
    assert _criterion(a, "numerical", "large models").status == an.UNDECIDED
    report = an.render_report(a)
    for heading in ("现象 (Phenomenon)", "原因 (Cause)", "适用范围 (Scope)", "模型规模 model size",
                    "序列长度 sequence length", "硬件 hardware", "实际意义 (Practical meaning)"):
        assert heading in report
    assert "only smollm2-135m (135M) tested" in report
    assert "not tested: MPS, CUDA" in report


def test_numerics_data_supports_numerical_problem(tmp_path):
    a = an.analyze(ex.load_results(numerics_results(tmp_path)))
    assert a.verdicts == {"numerical": an.SUPPORTED, "extrapolation": an.RULED_OUT, "compression": an.RULED_OUT}
    assert a.cause.startswith("数值稳定性 numerical stability")
    for name in ("measured kernel error", "large models", "grows with sequence length", "bigger cache"):
        assert _criterion(a, "numerical", name).status == an.PASS, name
    assert _criterion(a, "extrapolation", "jumps past 1.0x").status == an.UNDECIDED  # never past 2048
    assert _criterion(a, "extrapolation", "NaN").status == an.FAIL
    assert _criterion(a, "compression", "model size").status == an.FAIL  # 70m shows nothing
    assert ">= EleutherAI/pythia-6.9b (6.9B)" in a.scope["model size"]


def test_compression_data_supports_compression(tmp_path):
    a = an.analyze(ex.load_results(compression_results(tmp_path)))
    assert a.verdicts == {"compression": an.SUPPORTED, "extrapolation": an.RULED_OUT, "numerical": an.RULED_OUT}
    assert a.cause.startswith("压缩改善预测")
    assert "-> best 252 (interior)" in _criterion(a, "compression", "interior optimum").evidence


def test_no_effect_means_no_cause(tmp_path):
    bench = synthetic_benchmark(lambda m, meth, r, p, L, dt, dv: 3.0 + (0.01 if meth != "dense" else 0), 8192)
    out = run_configs(tmp_path, "flat", [{"model_id": "smollm2-135m", "device": "cpu", "dtype": "float32",
                                          "recent_sizes": [252], "grid": {"max_tokens": [1000, 2000]}}], bench)
    a = an.analyze(ex.load_results(out))
    assert "not reproduced" in a.phenomenon and "no effect to explain" in a.cause
    assert an.SUPPORTED not in a.verdicts.values()


def test_model_params_from_ids():
    assert an.model_params("EleutherAI/pythia-6.9b") == pytest.approx(6.9e9)
    assert an.model_params("EleutherAI/pythia-70m-deduped") == pytest.approx(7e7)
    assert an.model_params("smollm2-135m") == pytest.approx(1.35e8)
    assert an.model_params("gpt2") is None


def _assert_png(path: Path):
    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000


def test_plots_write_pngs(tmp_path):
    rows = ex.load_results(extrapolation_results(tmp_path))
    paths = plots.make_figures(rows, tmp_path / "figs")
    names = [p.name for p in paths]
    assert any(n.startswith("ppl_vs_length__smollm2-135m") for n in names)
    assert any(n.startswith("ppl_vs_cache__smollm2-135m_2000") for n in names)
    assert any(n.startswith("nll_vs_position__smollm2-135m_12000") for n in names)
    for p in paths:
        _assert_png(p)


def test_analyze_cli_writes_report_and_figures(tmp_path, capsys):
    results = numerics_results(tmp_path)
    report = tmp_path / "out" / "report.md"
    figs = tmp_path / "out" / "figs"
    assert an.main([str(results), "--output", str(report), "--figures", str(figs)]) == 0
    text = report.read_text(encoding="utf-8")
    assert "原因 (Cause):** 数值稳定性" in text and "](<figs/ppl_vs_length__" in text
    pngs = sorted(figs.glob("*.png"))
    assert pngs
    for p in pngs:
        _assert_png(p)
    assert an.main([str(tmp_path / "missing.jsonl"), "--output", str(report)]) == 2
