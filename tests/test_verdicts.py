"""The verdict claims only what was measured (issue 10 d/e, issue 11 item 4, issue 12 item 12): kernels judged from
their measured numerics, unmeasured = unknown, no significance from one sample, sizes within one family, mixed
result files, recall in the practical meaning, figure links that survive spaces. Synthetic typed runs
(tests/synthetic_runs.py) and the real run of the default model (docs/experiments/offline_numerics.jsonl)."""

from __future__ import annotations

import copy
import math
import json
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote

import pytest
from synthetic_runs import clean_numerics, make_run

from lm_eval_streaming.records import CausalityStats, KernelErrorStats, load_runs, write_run
from lm_eval_streaming.analysis.verdict import analyze
from lm_eval_streaming.analysis.base import CAUSAL_TOL, KERNEL_SHARE, PASS, TOLERANCE, UNDECIDED
from lm_eval_streaming.analysis.report import render_report

REPO = Path(__file__).resolve().parents[1]
REAL = REPO / "docs" / "experiments" / "offline_numerics.jsonl"
LEGACY = REPO / "tests" / "data" / "legacy_experiments" / "offline_dtype.jsonl"
KERNELS = ("sdpa", "eager", "lm_eval_streaming")


def run_cli(*argv, cwd=None):
    return subprocess.run([sys.executable, "-m", "lm_eval_streaming.cli", *map(str, argv)],
                          capture_output=True, text=True, timeout=300, cwd=cwd)


def _numerical(a):
    return next(c for c in a.hypotheses["numerical"].criteria if c.key)


def _runs_with(numerics, dense=4.0, streaming=3.1, **kw):
    """One cpu/float16 run, three dense kernels, streaming better than every dense kernel by dense - streaming."""
    nll = lambda model, method, recent, kernel, pos, args: dense if method == "dense" else streaming  # noqa: E731
    return [make_run("smollm2-135m", nll, max_tokens=1000, trained_context=8192, dtype="float16",
                     dense_kernels=KERNELS, methods=("streaming_llm",), numerics=numerics, **kw)]


# ----------------------------------------------------------------- (a) a broken kernel, named, for that kernel only
def test_a_leaking_kernel_is_supported_for_that_kernel_only():
    def numerics(args, kernel):
        out = clean_numerics(args, kernel)
        if kernel == "sdpa":  # sees the future: logits at p move when later tokens change
            out["causality"] = CausalityStats([250, 500, 750], [0.7, 1.3, 2.0], 2.0)
        return out

    a = analyze(_runs_with(numerics, dense=3.0, streaming=3.1))  # streaming worse: nothing else points at numerics
    key = _numerical(a)
    assert key.status == PASS and a.verdicts["numerical"] == "supported"
    scope = a.hypotheses["numerical"].scope
    assert scope.startswith("supported for cpu/float16 (sdpa; 1000 tokens)")
    assert "ruled out on cpu/float16 (eager, lm_eval_streaming; 1000 tokens)" in scope
    assert "cpu/float16/sdpa: broken (causality probe max |Δlogit| 2 at p=750" in key.evidence
    assert "cpu/float16/eager: clean" in key.evidence and "cpu/float16/lm_eval_streaming: clean" in key.evidence


def test_probe_noise_is_not_a_leak():
    def numerics(args, kernel):
        out = clean_numerics(args, kernel)
        out["causality"] = CausalityStats([250, 500], [3e-5, CAUSAL_TOL / 2], CAUSAL_TOL / 2)  # float32-sized noise
        return out

    assert _numerical(analyze(_runs_with(numerics))).status == "fail"  # measured and clean: ruled out


@pytest.mark.parametrize("error,broken", [
    (0.2, False),  # below half the 0.9 advantage: cannot account for it
    (0.6, True),   # above half of it
])
def test_kernel_error_is_judged_against_the_advantage_it_would_explain(error, broken):
    advantage = 4.0 - 3.1

    def numerics(args, kernel):
        out = clean_numerics(args, kernel)
        if kernel == "eager":
            out["kernel_error"] = KernelErrorStats("lm_eval_streaming/float32/cpu", error, 5 * error, 0)
        return out

    assert (error > KERNEL_SHARE * advantage) == broken  # the cases sit on both sides of the stated rule
    a = analyze(_runs_with(numerics))
    scope = a.hypotheses["numerical"].scope
    assert ("supported for cpu/float16 (eager; 1000 tokens)" in scope) == broken
    assert f"within {KERNEL_SHARE * advantage:.3g}" in _numerical(a).evidence  # the clean kernels, same limit


@pytest.mark.parametrize("error,broken", [(0.6 * TOLERANCE, False), (1.2 * TOLERANCE, True)])
def test_without_an_advantage_the_kernel_is_held_to_the_tolerance(error, broken):
    def numerics(args, kernel):
        out = clean_numerics(args, kernel)
        out["kernel_error"] = KernelErrorStats("lm_eval_streaming/float32/cpu", error, 1.0, 0)
        return out

    a = analyze(_runs_with(numerics, dense=3.0, streaming=3.2))
    assert ("supported for cpu/float16" in a.hypotheses["numerical"].scope) == broken
    assert "no streaming advantage to explain" in _numerical(a).evidence


# ----------------------------------------------------------------- (b) unmeasured is unknown, never clean
@pytest.fixture(scope="module")
def real_runs():
    found = load_runs([REAL])
    assert {r.dtype for r in found} == {"float32", "bfloat16", "float16"}
    return found


def test_unmeasured_is_unknown_never_clean(real_runs):
    bare = copy.deepcopy(real_runs)
    for run in bare:
        for row in run.rows:
            row.kernel_error = row.causality = None
            row.nan_logits = row.inf_logits = row.nonfinite_tokens = None
            row.max_abs_attn_score = row.nonfinite_attn_scores = None
    a = analyze(bare)
    assert a.verdicts["numerical"] == "cannot decide" and _numerical(a).status == UNDECIDED
    report = render_report(a)
    assert "clean" not in report and "0 non-finite" not in report and "0 NaN" not in report
    assert "not measured on CPU, CUDA, MPS: cannot decide there" in a.hypotheses["numerical"].scope
    nan = next(c for c in a.hypotheses["extrapolation"].criteria if c.name == "no NaN / Inf")
    assert nan.status == UNDECIDED and "not measured" in nan.evidence
    assert "no dense kernel's numerics were measured" in a.scope["hardware"]


def test_partly_measured_names_what_is_missing(real_runs):
    part = copy.deepcopy(real_runs)
    for run in part:
        for row in run.rows:
            row.kernel_error = row.causality = None  # NaN/Inf counted, kernel checks off
    a = analyze(part)
    key = _numerical(a)
    assert key.status == UNDECIDED and "not measured: causality probe, kernel error" in key.evidence
    assert ": clean" not in key.evidence


# ----------------------------------------------------------------- (c) one sample is never significant
def test_one_sample_is_never_significant():
    nll = lambda model, method, recent, kernel, pos, args: 4.0 if method == "dense" else 3.2  # noqa: E731
    runs = [make_run("smollm2-135m", nll, max_tokens=n, trained_context=8192, num_samples=1) for n in (1000, 2000)]
    assert all(r.delta_nll_ci is None for run in runs for r in run.rows)  # one sample: no interval
    a = analyze(runs)
    assert "(0 significant, 0 significantly worse; 2 without an interval: one sample" in a.phenomenon
    assert "not reproduced with significance" in a.phenomenon
    # issue 16 (d): the line now gives the critical point, and still says that nothing is significant
    assert "no length shows a significant effect" in a.scope["sequence length"]
    assert "no effect to explain" in a.cause


# ----------------------------------------------------------------- (d) sizes only within one family
def test_sizes_only_within_one_family():
    nll = lambda model, method, recent, kernel, pos, args: 3.0 if method == "dense" else 2.5  # noqa: E731
    a = make_run("EleutherAI/pythia-6.9b", nll, max_tokens=1000, trained_context=2048, model_family="pythia",
                 model_params=6.9e9)
    b = make_run("meta-llama/Llama-2-7b-hf", nll, max_tokens=1000, trained_context=4096, model_family="llama",
                 model_params=6.7e9)
    result = analyze([a, b])
    for hyp in ("numerical", "compression"):
        crit = next(c for c in result.hypotheses[hyp].criteria if "model" in c.name)
        assert crit.status == UNDECIDED and "no family with two or more sizes" in crit.evidence
    size = result.scope["model size"]
    assert "pythia (trained context 2048): only EleutherAI/pythia-6.9b (6.9B) tested" in size
    assert "llama (trained context 4096): only meta-llama/Llama-2-7b-hf (6.7B) tested" in size


def test_one_family_compares_lengths_as_multiples_of_its_context():
    """pythia-70m at 1000 tokens and pythia-410m at 1000 tokens share a setting; a third size at another length
    does not: it is left out of the comparison, not compared at unequal multiples."""
    nll = lambda model, method, recent, kernel, pos, args: 3.0 if method == "dense" else 2.5  # noqa: E731
    runs = [make_run(f"EleutherAI/pythia-{m}", nll, max_tokens=n, trained_context=2048, model_family="pythia")
            for m, n in (("70m", 1000), ("410m", 1000), ("1b", 3000))]
    crit = next(c for c in analyze(runs).hypotheses["compression"].criteria if "model size" in c.name)
    assert crit.status == PASS and "compared at 1 shared setting(s); 1 unshared left out" in crit.evidence
    assert "pythia-1b" not in crit.evidence.split("(compared")[0]


# ----------------------------------------------------------------- (e) absolute buckets: tests/test_analysis.py
# ----------------------------------------------------------------- (f) mixed files through the real command
def _jsonl(path: Path, runs):
    path.write_text("".join(json.dumps(r.to_dict()) + "\n" for r in runs))


def test_analyze_reads_benchmark_json_experiment_jsonl_and_old_files_mixed(tmp_path, real_runs):
    bench = tmp_path / "bench run.json"  # what `benchmark --output` writes
    write_run(bench, real_runs[0])
    exp = tmp_path / "exp.jsonl"  # what `experiment` writes
    _jsonl(exp, real_runs[1:])
    bad = tmp_path / "notes.json"
    bad.write_text("this is not json\n" * 300)
    report = tmp_path / "report.md"
    proc = run_cli("analyze", bench, exp, LEGACY, bad, "--output", report)
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if "notes.json" in line]
    assert len(warnings) == 1 and warnings[0].startswith("lm-eval-streaming analyze: warning:"), proc.stderr
    assert "torn" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    n_legacy = len([line for line in LEGACY.read_text().splitlines() if line.strip()])
    expected = len(real_runs) + n_legacy
    text = report.read_text()
    assert f": {expected} runs, " in text  # after "N result files"
    # every source contributed rows: the legacy runs' reference kernel, the new runs' sdpa with kernel error
    assert "| smollm2-135m | cpu | float32 | 1000 | dense[sdpa] | sdpa |" in text
    assert text.count("| dense[lm_eval_streaming] |") >= len(real_runs) + n_legacy


@pytest.mark.parametrize("args,needle", [
    (["--tolerance", "0"], "--tolerance=0.0"),
    (["--figures", "{file}"], "is a file, not a directory"),
    (["--recall", "{tmp}/no_such_dir"], "no_such_dir"),
    (["--recall", "{tmp}"], "no streaming_recall results"),
])
def test_bad_arguments_are_one_line_before_any_work(tmp_path, real_runs, args, needle):
    res = tmp_path / "run.json"
    write_run(res, real_runs[0])
    args = [a.format(tmp=tmp_path, file=res) for a in args]
    proc = run_cli("analyze", res, *args, "--output", tmp_path / "r.md")
    assert proc.returncode == 2 and needle in proc.stderr, proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    assert not (tmp_path / "r.md").exists()


# ----------------------------------------------------------------- recall in the practical meaning
def test_practical_meaning_cites_measured_recall_or_says_it_was_not_measured(tmp_path, real_runs):
    from lm_eval_streaming.analysis.recall import labels, load_recall_results, practical_meaning, stop_distance

    recall_dir = REPO / "docs" / "recall" / "runs"
    res = tmp_path / "run.json"
    write_run(res, real_runs[0])
    proc = run_cli("analyze", res, "--recall", recall_dir, "--output", tmp_path / "with.md")
    assert proc.returncode == 0, proc.stderr
    # issue 16 (e): 实际意义 is a section of the seed's template now (wrapped lines, joined back here)
    text = (tmp_path / "with.md").read_text()
    meaning = " ".join(text.split("### 实际意义", 1)[1].split("\n## ", 1)[0].split())
    points = load_recall_results(recall_dir)
    assert practical_meaning(points) in meaning
    stops = [stop_distance(points, label, model) for model, label in labels(points)]
    assert any(s is not None for s in stops)
    for s in stops:
        if s is not None:
            assert f"stopped recalling at {s}" in meaning
    proc = run_cli("analyze", res, "--output", tmp_path / "without.md")
    without = " ".join((tmp_path / "without.md").read_text().split())  # wrapped lines joined back, as above
    assert proc.returncode == 0 and "recall was not measured" in without


# ----------------------------------------------------------------- (g) figure links with spaces render
def test_figure_links_with_spaces_resolve(tmp_path, real_runs):
    markdown_it = pytest.importorskip("markdown_it")
    res = tmp_path / "my results" / "run 1.json"
    res.parent.mkdir()
    write_run(res, real_runs[0])
    report = tmp_path / "out dir" / "report.md"
    proc = run_cli("analyze", res, "--output", report, "--figures", tmp_path / "out dir" / "fig s")
    assert proc.returncode == 0, proc.stderr
    tokens = markdown_it.MarkdownIt().parse(report.read_text())
    images = [child for t in tokens if t.type == "inline" for child in t.children or [] if child.type == "image"]
    assert images, "the report links no figure"
    for image in images:  # a CommonMark parser finds each image, and its target is the PNG on disk
        target = report.parent / unquote(image.attrs["src"])
        assert target.is_file() and target.read_bytes()[:4] == b"\x89PNG", image.attrs["src"]
    assert any("kernel_error_vs_position" in image.attrs["src"] for image in images)


# ----------------------------------------------------------------- issue 16 (f): key criteria decide
def test_side_criteria_never_decide_a_200_token_benchmark_of_a_small_model():
    """200 tokens of a model trained on 2048 (0.1x): nothing past the context, so the extrapolation hypothesis
    cannot be decided; the window-only side criterion fails (window equals streaming here) and must not rule it out."""
    nll = lambda model, method, recent, kernel, pos, args: 3.0 if method == "dense" else 3.1  # noqa: E731
    runs = [make_run("EleutherAI/pythia-70m-deduped", nll, max_tokens=200, trained_context=2048, recent_sizes=(64,))]
    a = analyze(runs)
    h = a.hypotheses["extrapolation"]
    window = next(c for c in h.criteria if c.name.startswith("window-only"))
    # window minus streaming NLL = 3.1 - 3.1 = 0 <= tolerance: the side criterion fails ...
    assert window.status == "fail" and not window.key
    jump = next(c for c in h.criteria if c.key)
    assert jump.status == UNDECIDED and "beyond 1.1x" in jump.name
    assert a.verdicts["extrapolation"] == "cannot decide"  # ... and decides nothing
    assert any("configs/offline_length_long.yaml" in s and "--device mps" in s for s in h.next_steps())
    report = render_report(a)
    assert "ruled out" not in next(line for line in report.splitlines() if line.startswith("| 其他: 位置外推"))
    assert "□ 其他: 位置外推 (超出训练长度): 证据不足" in report


def _ablation_runs(noshift_jump: float):
    """Extrapolation data (dense +1.5 past 8192) with the ablation row: streaming's tokens at true distances, whose NLL
    rises by ``noshift_jump`` past the trained context."""
    tc = 8192

    def nll(model, method, recent, kernel, pos, args):
        if method == "dense":
            return 3.0 + (1.5 if pos >= tc else 0.0)
        if method == "streaming_llm noshift":
            return 3.02 + (noshift_jump if pos >= tc else 0.0)
        return 3.02

    return [make_run("smollm2-135m", nll, max_tokens=n, trained_context=tc, methods=("streaming_llm",), ablation=True)
            for n in (4000, 12000)]


@pytest.mark.parametrize("jump,status,verdict", [(1.0, PASS, "supported"), (0.0, "fail", "ruled out")])
def test_the_ablation_is_a_key_criterion_when_present(jump, status, verdict):
    a = analyze(_ablation_runs(jump))
    h = a.hypotheses["extrapolation"]
    abl = next(c for c in h.criteria if c.name.startswith("same cache at true distances"))
    assert abl.key and abl.status == status and a.verdicts["extrapolation"] == verdict
    # beyond 1.1x: noshift 3.02 + jump vs streaming 3.02; below 0.9x both 3.02; dense's gap grows by 1.5 (the NLLs above)
    assert f"grows by {jump:+.3f} beyond 1.1x" in abl.evidence and "+1.500" in abl.evidence
    if status == "fail":
        assert abl.outcome == "the same cache at true distances does not degrade"
        assert "| the same cache at true distances does not degrade |" in render_report(a)
    # the ablation rows are not streaming rows: the reference streaming row stays the shifted one
    assert all(r.position_shift is not False for r in (e.row for e in _data(a).ref))
    # where the unshifted cache starts to lose to the shifted one: at 8192 (a bucket edge) when it jumps there;
    # the template's critical point stays dense's (dense jumps at 8192 too)
    [noshift] = [p for p in a.critical if p.dense.position_shift is False and p.run.max_tokens == 12000]
    assert noshift.pooled == (8192 if jump else None)
    assert a.critical_main.dense.is_dense and a.critical_main.pooled == 8192


def _data(a):
    from lm_eval_streaming.analysis.data import Data
    return Data(a.runs, TOLERANCE)


def test_without_the_ablation_the_report_says_so_and_gives_the_command():
    nll = lambda model, method, recent, kernel, pos, args: 3.0 + (1.5 if method == "dense" and pos >= 8192 else 0)  # noqa
    a = analyze([make_run("smollm2-135m", nll, max_tokens=12000, trained_context=8192)])
    abl = next(c for c in a.hypotheses["extrapolation"].criteria if c.name.startswith("same cache at true"))
    assert not abl.key and abl.status == UNDECIDED and "not run" in abl.evidence
    assert "lm-eval-streaming experiment configs/offline_ablation.yaml --output" in abl.next_step
    report = render_report(a)
    assert "the ablation was not run" in report and "configs/offline_ablation.yaml" in report
    assert a.verdicts["extrapolation"] == "supported"  # decided by its key criterion, the jump


# ----------------------------------------------------------------- issue 16 (d): the critical point
def _curve_run(per_sample_gap, width=256.0, tc=8192, base=3.0):
    """One run whose per-sample dense curves are streaming's (``base``) plus ``per_sample_gap[s][i]`` in bucket i."""
    from lm_eval_streaming.records import Buckets, Row, Run

    n = len(per_sample_gap[0])
    edges = [i * width for i in range(n + 1)]
    dense_s = [[base + g for g in gaps] for gaps in per_sample_gap]
    stream_s = [[base] * n for _ in per_sample_gap]
    pooled = lambda curves: [sum(c[i] for c in curves) / len(curves) for i in range(n)]  # noqa: E731

    def row(method, recent, curves):
        return Row(method=method, start_size=0 if recent is None else 4, recent_size=recent,
                   attn_implementation="sdpa" if recent is None else "lm_eval_streaming", ppl=20.0, nll_mean=3.0,
                   nll_curve=Buckets(edges, pooled(curves), [256] * n), nll_curve_per_sample=curves,
                   delta_nll_vs_dense=None if recent is None else -0.1, delta_reference=None if recent is None else "sdpa")

    return Run(model_id="smollm2-135m", max_tokens=int(n * width), num_samples=len(per_sample_gap), dtype="float32",
               device="cpu", chunk_size=512, trained_context=tc,
               rows=[row("dense", None, dense_s), row("streaming_llm", 252, stream_s)])


def _step(n, start, height=1.0, noise=0.02):
    """0 +- noise before bucket ``start``, height +- noise from it (noise below the tolerance)."""
    return [(height if i >= start else 0.0) + (noise if i % 2 else -noise) for i in range(n)]


def test_critical_point_per_sample_and_pooled():
    from lm_eval_streaming.analysis.critical import critical_points

    n, width = 50, 256.0
    starts = [30, 35, 40]  # buckets where each sample's dense starts to lose: 7680, 8960, 10240 tokens
    a = analyze([_curve_run([_step(n, s) for s in starts], width)])
    [cp] = critical_points(_data(a))
    assert cp.per_sample == [s * width for s in starts]
    # pooled: a third of the samples lose from bucket 30 on (gap 1/3 > 0.05), so the pooled curve turns there
    assert cp.pooled == 30 * width and cp.multiple(cp.pooled) == pytest.approx(7680 / 8192)
    assert cp.spread() == "median 8960 [7680, 10240] over 3 of 3 samples"
    assert a.scope["sequence length"].startswith(">= 7680 tokens (0.94x the trained context 8192)")
    assert "- 序列长度: >= 7680 tokens" in render_report(a)


def test_critical_point_must_stay_above_to_the_end():
    from lm_eval_streaming.analysis.critical import first_lasting_excess

    n = 50
    edges = [float(i) for i in range(n + 1)]
    zero = [3.0] * n
    # above from 10 to 20, far below from 21 to 30, above again from 31: the point is 31, not 10
    gap = [1.0 if 10 <= i <= 20 or i >= 31 else (-1.0 if i <= 30 and i > 20 else 0.0) for i in range(n)]
    assert first_lasting_excess(edges, [3.0 + g for g in gap], zero, TOLERANCE) == 31.0
    # a blip in the last two buckets is not "stays above": not reached
    tail = [1.0 if i >= n - 2 else 0.0 for i in range(n)]
    assert first_lasting_excess(edges, [3.0 + g for g in tail], zero, TOLERANCE) is None
    # never above: not reached, and the template says so
    a = analyze([_curve_run([_step(n, n, 0.0)] * 2)])
    assert a.critical_main is None and a.scope["sequence length"].startswith("not reached")


def test_critical_point_matches_a_brute_force_rule_on_noisy_curves():
    """A brute-force reading of the documented rule (every candidate bucket tried, smoothing recomputed by hand)."""
    import random

    from lm_eval_streaming.analysis.critical import MIN_TAIL_BINS, SMOOTH_BINS, first_lasting_excess

    rng = random.Random(16)
    n, edges = 50, [float(10 * i) for i in range(51)]
    for _ in range(200):
        start = rng.randrange(0, n)
        gap = [(0.3 if i >= start else 0.0) + rng.gauss(0, 0.08) for i in range(n)]

        def smoothed(i):
            window = gap[max(0, i - SMOOTH_BINS // 2): i + SMOOTH_BINS // 2 + 1]
            return sum(window) / len(window)

        expected = None
        for i in range(n):
            if (n - i >= MIN_TAIL_BINS and gap[i] > TOLERANCE and all(smoothed(j) > TOLERANCE for j in range(i, n))):
                expected = edges[i]
                break
        assert first_lasting_excess(edges, [3 + g for g in gap], [3.0] * n, TOLERANCE) == expected


# ----------------------------------------------------------------- issue 16 (g): missing metrics are unknown
def test_records_without_accuracy_or_intervals_load_with_them_unknown(tmp_path, real_runs):
    flat = [{"model_id": "other-impl", "max_tokens": 1000, "num_samples": 2, "dtype": "float32", "device": "cpu",
             "method": m, "start_size": s, "recent_size": r, "ppl": p} for m, s, r, p in
            (("dense", 0, None, 30.0), ("streaming_llm", 4, 252, 33.0))]
    old_json = tmp_path / "other_impl.json"
    old_json.write_text(json.dumps(flat))
    entry = {"experiment": "x", "cell_key": "c1", "cell": {}, "rows": [dict(flat[0], nll_mean=3.4, ppl=None)]}
    del entry["rows"][0]["ppl"]
    old_jsonl = tmp_path / "old.jsonl"
    old_jsonl.write_text(json.dumps(entry) + "\n")
    new = real_runs[0].to_dict()
    for row in new["rows"]:
        for k in ("acc", "acc_ci", "ppl_ci", "delta_acc_vs_dense", "delta_acc_ci", "per_sample_acc"):
            row.pop(k)
    new_json = tmp_path / "new.json"
    new_json.write_text(json.dumps(new))
    runs = load_runs([old_json, old_jsonl, new_json], warn=lambda m: pytest.fail(m))
    assert len(runs) == 3
    assert all(row.acc is None and row.acc_ci is None for run in runs for row in run.rows)
    assert runs[0].rows[1].nll_mean == pytest.approx(math.log(33.0))  # one of ppl / nll_mean suffices
    assert runs[1].rows[0].ppl == pytest.approx(math.exp(3.4))
    a = analyze(runs)
    rows = sum(len(r.rows) for r in runs)
    assert f"Accuracy was not measured in {rows} of {rows} rows: the verdicts use NLL alone." in a.phenomenon
    report = render_report(a)
    assert "not measured" in report and "Δaccuracy n/a" in report
    proc = run_cli("analyze", old_json, old_jsonl, new_json, "--output", tmp_path / "r.md")
    assert proc.returncode == 0 and "missing acc" not in proc.stderr, proc.stderr


# ----------------------------------------------------------------- issue 16 (e, h): the report a person reads
def _lines_are_short(report: str):
    long = [line[:80] for line in report.splitlines() if len(line) > 300]
    assert not long, long


def test_report_reads_verdict_table_first_template_and_tables(real_runs):
    from test_analysis import extrapolation_runs

    a = analyze(extrapolation_runs())
    report = render_report(a)
    _lines_are_short(report)
    body = report.split("## Verdicts", 1)[1].lstrip().splitlines()
    assert body[0] == "| hypothesis | verdict | decided by (key criteria) | key numbers |"
    assert "| 其他: 位置外推 position extrapolation | supported |" in report
    reasons = report.split("### 原因分析", 1)[1].split("###", 1)[0]
    assert reasons.count("☑") == 1 and reasons.count("□") == 2
    assert "- ☑ 其他: 位置外推 (超出训练长度): dense NLL jumps" in reasons
    assert "- □ 压缩提升预测能力: ruled out" in report and "- □ 数值稳定性问题: ruled out" in report
    assert "| criterion | key or side | outcome | numbers |" in report
    assert "| device/dtype/kernel | probe | kernel error | whole forward vs float32 | NaN/Inf | verdict |" in report
    # "fail" with good news says what failed
    assert "ruled out: no numerical problem where measured" in report
    assert "| cpu/float32/sdpa | max abs Δlogit 0 <= 0.01 |" in report and "numerical problem not found |" in report
    _lines_are_short(render_report(analyze(real_runs)))


def test_no_supported_hypothesis_ticks_nothing_and_says_what_to_run():
    nll = lambda model, method, recent, kernel, pos, args: 3.0 if method == "dense" else 3.1  # noqa: E731
    a = analyze([make_run("EleutherAI/pythia-70m-deduped", nll, max_tokens=200, trained_context=2048,
                          numerics=lambda args, kernel: {})])
    report = render_report(a)
    assert "☑" not in report and report.count("- □ ") == 3
    assert "无法判定 (cannot decide): no hypothesis is supported by its key criteria. Next: step `" in report


def test_accuracy_intervals_stay_within_0_and_1(real_runs):
    from lm_eval_streaming.records import Interval

    runs = copy.deepcopy(real_runs[:1])
    runs[0].num_samples = 3  # from fewer documents no interval is shown (test_report_first_screen)
    runs[0].rows[0].acc, runs[0].rows[0].acc_ci = 0.97, Interval(0.9, 1.05)
    runs[0].rows[1].acc, runs[0].rows[1].acc_ci = 0.02, Interval(-0.03, 0.07)
    report = render_report(analyze(runs))
    assert "0.9700 [0.9000, 1.0000]" in report and "0.0200 [0.0000, 0.0700]" in report


def test_model_size_line_in_the_template_form():
    from test_analysis import numerics_runs

    # pythia-70m shows no effect, pythia-6.9b does (numerics_runs' NLLs): the bound is the 6.9B model
    a = analyze(numerics_runs())
    assert a.scope["model size"].startswith(">= 6.9B 参数 (pythia (trained context 2048)")
    assert "- 模型大小: >= 6.9B 参数" in render_report(a)


def test_an_interval_that_still_allows_a_benefit_does_not_rule_compression_out():
    """Absence of the effect is decided only where the data exclude a benefit beyond the tolerance: two documents
    with streaming 0.003 nats worse and an interval of +-0.11 (lm_eval --limit 2 at 500 tokens) cannot rule it out;
    the same point estimate with a tight interval does."""
    import dataclasses

    from lm_eval_streaming.records import Interval

    def nll(model_id, method, recent, kernel, position, args):
        return 3.0 if method == "dense" else 3.003

    def verdict(half):
        run = make_run("m", nll, max_tokens=500, trained_context=8192, methods=("streaming_llm",))
        rows = [r if r.delta_nll_vs_dense is None else dataclasses.replace(
            r, delta_nll_ci=Interval(r.delta_nll_vs_dense - half, r.delta_nll_vs_dense + half)) for r in run.rows]
        hyp = analyze([dataclasses.replace(run, rows=rows)]).hypotheses["compression"]
        length = next(c for c in hyp.criteria if "short and at long" in c.name)
        return hyp.verdict, length.status

    assert verdict(0.11) == ("cannot decide", UNDECIDED)
    assert verdict(0.02)[1] == "fail" and verdict(0.02)[0] == "ruled out"
