"""The typed record: JSON round trip, the old layout (real files in docs/experiments), mixed loading."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from lm_eval_streaming import records as rec

REPO = Path(__file__).resolve().parents[1]


def _is_legacy(path: Path) -> bool:
    first = path.read_text().split("\n", 1)[0]
    return bool(first.strip()) and "schema" not in json.loads(first)


# the old layout's real files: copies of docs/experiments as the old code wrote them (the docs get regenerated),
# and whatever in docs/experiments is still in the old layout
LEGACY = sorted((REPO / "tests" / "data" / "legacy_experiments").glob("*.jsonl")) + sorted(
    p for p in (REPO / "docs" / "experiments").glob("*.jsonl") if _is_legacy(p))


def _raw_entries(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _is_nan(x):
    return isinstance(x, float) and math.isnan(x)


def test_legacy_experiment_files_load_with_every_number_kept():
    assert LEGACY, "docs/experiments/*.jsonl are the old layout's real files"
    for path in LEGACY:
        warnings = []
        runs = rec.load_runs([path], warn=warnings.append)
        entries = _raw_entries(path)
        assert warnings == [] and len(runs) == len(entries), path
        for run, entry in zip(runs, entries):
            assert (run.experiment, run.cell_key, run.source) == (entry["experiment"], entry["cell_key"], str(path))
            assert run.cell == entry["cell"] and run.num_warmup == entry["cell"]["num_warmup"]
            assert len(run.rows) == len(entry["rows"])
            for row, raw in zip(run.rows, entry["rows"]):
                assert (run.model_id, run.max_tokens, run.dtype, run.trained_context) == (
                    raw["model_id"], raw["max_tokens"], raw["dtype"], raw["trained_context"])
                for key in ("method", "ppl", "acc", "nll_mean", "max_position", "max_abs_logit", "nan_logits",
                            "delta_nll_vs_dense", "peak_kv_bytes", "exceeded_trained_context"):
                    if key in ("max_position", "exceeded_trained_context") and not row.is_dense:
                        # the old layout recorded the stream's position for every method, not the one
                        # attention saw (S+R with StreamingLLM's shift): unknown, never the wrong number
                        assert getattr(row, key) is None and row.stream_length is None, (path, key)
                        continue
                    assert getattr(row, key) == raw[key], (path, key)
                # a CI of NaNs (one sample) is "not computable", never a number
                if _is_nan(raw["ppl_ci"][0]):
                    assert row.ppl_ci is None
                else:
                    assert (row.ppl_ci.low, row.ppl_ci.high) == tuple(raw["ppl_ci"])
                # buckets: every non-empty bucket's count and mean survive; empty ones become None
                old = raw["nll_by_position"]
                kept = {e: (n, c) for e, n, c in zip(old["edges"], old["nll"], old["count"]) if c}
                new = row.nll_by_position
                got = {e: (n, c) for e, n, c in zip(new.edges, new.nll, new.count) if c}
                assert got == kept
                assert all(n is None for n, c in zip(new.nll, new.count) if c == 0)
                # never measured in the old layout: unknown, not 0
                assert row.kernel_error is None and row.causality is None and row.per_sample_nll is None
                # scores were observable only in the project's kernel: those rows ran through it
                assert row.attn_implementation == "lm_eval_streaming"
                assert (row.delta_reference is None) == (raw["delta_nll_vs_dense"] is None)


def test_legacy_curve_centres_are_kept():
    raw = _raw_entries(LEGACY[0])[0]["rows"][0]
    curve = rec.row_from_legacy(raw).nll_curve
    assert curve.centers() == pytest.approx(raw["nll_curve"]["positions"]) and curve.count is None


def _run(**over) -> rec.Run:
    dense = rec.Row("dense", 0, None, "sdpa", ppl=30.0, acc=0.4, nll_mean=math.log(30.0),
                    ppl_ci=rec.Interval(20.0, 40.0), per_sample_nll=[3.3, 3.5], per_sample_acc=[0.4, 0.4],
                    max_abs_attn_score=None,
                    kernel_error=rec.KernelErrorStats("lm_eval_streaming/float32/cpu", 1e-6, 4e-5, 0,
                                                      rec.Buckets([0, 256, 512], [1e-6, None], [255, 0])),
                    causality=rec.CausalityStats([10, 50], [0.0, 0.0], 0.0))
    stream = rec.Row("streaming_llm", 4, 252, "lm_eval_streaming", ppl=33.0, acc=0.39, nll_mean=math.log(33.0),
                     delta_reference="sdpa", delta_nll_vs_dense=0.1, delta_nll_ci=None)
    fields = dict(model_id="m", max_tokens=100, num_samples=2, dtype="float32", device="cpu", chunk_size=512,
                  rows=[dense, stream], versions={"torch": "x"}, experiment="e", cell_key="k")
    fields.update(over)
    return rec.Run(**fields)


def test_round_trip_through_json():
    run = _run()
    data = json.loads(json.dumps(run.to_dict()))
    assert data["schema"] == rec.SCHEMA and "source" not in data
    back = rec.Run.from_dict(data, source="f.jsonl")
    assert back.source == "f.jsonl"
    back.source = None
    assert back == run
    assert isinstance(back.rows[0].kernel_error.by_position, rec.Buckets)
    assert back.rows[0].max_abs_attn_score is None  # not measured stays unknown


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.update(colour=1), "unknown keys colour"),
    (lambda d: d["rows"][0].update(ppx=1), r"rows\[0\]: unknown keys ppx"),
    (lambda d: d["rows"][0]["kernel_error"].update(mean=1), "kernel_error: unknown keys mean"),
    (lambda d: d.pop("max_tokens"), "missing keys max_tokens"),
    (lambda d: d.update(schema="other/1"), "schema"),
])
def test_from_dict_is_strict(mutate, message):
    data = _run().to_dict()
    mutate(data)
    with pytest.raises(rec.RecordError, match=message):
        rec.Run.from_dict(data)


def test_load_runs_reads_benchmark_json_and_experiment_jsonl_mixed(tmp_path):
    old_entry = _raw_entries(LEGACY[0])[0]
    old_bench = tmp_path / "old_run.json"  # the old `benchmark --output`: a list of flat rows
    old_bench.write_text(json.dumps(old_entry["rows"], indent=1))
    new_bench = tmp_path / "new_run.json"
    new_bench.write_text(json.dumps(_run(experiment=None, cell_key=None).to_dict(), indent=1))
    new_jsonl = tmp_path / "exp.jsonl"
    new_jsonl.write_text("".join(json.dumps(_run(cell_key=k).to_dict()) + "\n" for k in ("a", "b")))
    notes = tmp_path / "notes.txt"
    notes.write_text("\n".join(f"line {i}" for i in range(300)))
    warnings = []
    runs = rec.load_runs([old_bench, new_bench, new_jsonl, notes, tmp_path / "gone.json", LEGACY[0]],
                         warn=warnings.append)
    assert [r.source for r in runs] == [str(old_bench), str(new_bench), str(new_jsonl), str(new_jsonl)] + [
        str(LEGACY[0])] * len(_raw_entries(LEGACY[0]))
    assert [r.ppl for r in runs[0].rows] == [r["ppl"] for r in old_entry["rows"]]
    # one line per unreadable file, naming it and why
    assert len(warnings) == 2
    assert warnings[0].startswith(str(notes)) and "neither JSON nor JSON lines" in warnings[0]
    assert warnings[1].startswith(str(tmp_path / "gone.json")) and "not found" in warnings[1]


def test_torn_and_bad_lines_one_warning_per_file(tmp_path):
    path = tmp_path / "r.jsonl"
    good = json.dumps(_run(cell_key="a").to_dict())
    path.write_text(good + "\n" + "{not json\n" + "[1, 2]\n" + good.replace('"a"', '"b"') + "\n" + good[:40])
    warnings = []
    runs = rec.load_runs(path, warn=warnings.append)
    assert [r.cell_key for r in runs] == ["a", "b"]
    assert len(warnings) == 1
    assert "2 unreadable line(s)" in warnings[0] and "line 2" in warnings[0] and "incomplete last line" in warnings[0]


def test_a_cell_written_twice_counts_once_the_last(tmp_path):
    first, second = _run(cell_key="a"), _run(cell_key="a", max_tokens=999)
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(first.to_dict()) + "\n" + json.dumps(second.to_dict()) + "\n")
    runs = rec.load_runs([path])
    assert len(runs) == 1 and runs[0].max_tokens == 999
