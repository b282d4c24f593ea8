"""lm-eval ``--output_path`` folders of ``streaming_hf`` perplexity runs, as typed :class:`Run` records.

``lm_eval --model streaming_hf --tasks streaming_ppl ... --output_path DIR [--log_samples]`` writes
``DIR/<model>/results_<time>.json`` and, with ``--log_samples``, ``samples_<task>_<time>.jsonl`` beside it:
one line per document with the items of the task's token metrics (``token_perplexity``: [NLL sum,
finite tokens], ``token_accuracy``: [correct, tokens], ``nll_<region>_ctx``: [NLL sum, tokens],
``nonfinite_tokens``).

One :class:`Run` per task (one document length) and everything else that changes a number (model,
revision, dtype, device, chunk size, ``--limit``, prompt, other model args; :mod:`.identity`), with one
:class:`Row` per method and cache size, from any number of folders (one lm_eval call per method, as the
README's main job runs them). With samples, the rows are paired by document (the documents every row
scored, matched by lm-eval's ``doc_hash``): per-document mean NLL and accuracy, the Student-t intervals and
the paired differences to dense are computed as ``benchmark`` computes them over its samples
(:func:`.metrics.set_deltas`). Without samples, a row has lm-eval's aggregates only (no interval, no
per-region token counts), and the reader says so in one line.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from pathlib import Path

from lm_eval_streaming.options import FULL_CHUNK
from lm_eval_streaming.records.identity import run_identity, parse_model_args, task_setting
from lm_eval_streaming.records.lm_eval_results import documents, find_result_files, task_samples
from lm_eval_streaming.records.metrics import REGIONS, AROUND_HIGH, AROUND_LOW, set_deltas, t_interval
from lm_eval_streaming.records.run import Buckets, Interval, Row, Run

STREAMING_MODEL = "streaming_hf"
SAMPLE_SPEC = "lm_eval:{task}"  # the documents of an lm-eval task (sizes in the task's own units)
# The relative-position buckets the tasks report: the context regions of records.metrics.
REGION_EDGES = [0.0, AROUND_LOW, AROUND_HIGH, math.inf]
SUBSET_MARK = "subset "  # in a run's sample_spec: the run scored some of the task's documents
_LENGTH = re.compile(r"_(\d+)$")
RUN_KEY = ("model_id", "revision", "model_sha", "dtype", "device", "chunk_size", "limit", "prompt", "extra_args")
# A row: the method with every option it has, defaults filled (identity.policy_options), and its kernel.
ROW_KEY = ("method", "start_size", "recent_size", "policy_options", "attn_implementation")


def is_lm_eval_output(path) -> bool:
    """A folder (lm-eval ``--output_path``) or an lm-eval ``results_*.json`` file."""
    path = Path(path)
    return path.is_dir() or (path.name.startswith("results_") and path.suffix == ".json")


def _timestamp(results: Path) -> str:
    return results.stem[len("results_"):]


def _number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _metric(results: dict, name: str) -> float | None:
    return _number(results.get(f"{name},none"))


class _Doc:
    """One document's token statistics (from its sample line)."""

    def __init__(self, sample: dict):
        nll_sum, finite = sample["token_perplexity"]
        correct, tokens = sample["token_accuracy"]
        self.key = (sample["doc_id"], sample.get("doc_hash"))
        self.nll_sum, self.finite, self.correct, self.tokens = float(nll_sum), int(finite), int(correct), int(tokens)
        self.nonfinite = int(sample.get("nonfinite_tokens") or 0)
        self.regions = {r: tuple(sample[f"nll_{r}_ctx"]) for r in REGIONS if f"nll_{r}_ctx" in sample}

    @property
    def nll(self) -> float:
        return self.nll_sum / self.finite if self.finite else math.nan

    @property
    def acc(self) -> float:
        return self.correct / self.tokens if self.tokens else math.nan


def _row_from_docs(base: dict, docs: list[_Doc]) -> Row:
    """A row from paired documents: the statistics benchmark computes over its samples."""
    per_nll, per_acc = [d.nll for d in docs], [d.acc for d in docs]
    finite = sum(d.finite for d in docs)
    nll_mean = sum(d.nll_sum for d in docs) / finite if finite else math.nan
    _, nll_ci = t_interval(per_nll)
    _, acc_ci = t_interval(per_acc)
    tokens = sum(d.tokens for d in docs)
    sums = {r: [sum(d.regions.get(r, (0.0, 0))[0] for d in docs), sum(d.regions.get(r, (0.0, 0))[1] for d in docs)]
            for r in REGIONS}
    buckets = Buckets(list(REGION_EDGES), [s / n if n else None for s, n in sums.values()],
                      [int(n) for _, n in sums.values()])
    return Row(
        **base, nll_mean=nll_mean, ppl=math.exp(nll_mean) if math.isfinite(nll_mean) else math.nan,
        acc=sum(d.correct for d in docs) / tokens if tokens else None,
        ppl_ci=None if nll_ci is None else Interval(math.exp(nll_ci.low), math.exp(nll_ci.high)),
        acc_ci=None if acc_ci is None else Interval(max(0.0, acc_ci.low), min(1.0, acc_ci.high)),
        per_sample_nll=per_nll, per_sample_acc=per_acc, scored_tokens=tokens,
        nll_by_relative_position=buckets, nonfinite_tokens=sum(d.nonfinite for d in docs))


def _row_from_aggregates(base: dict, results: dict) -> Row:
    ppl = _metric(results, "token_perplexity")
    nll = math.log(ppl) if ppl and ppl > 0 and math.isfinite(ppl) else math.nan
    nonfinite = _metric(results, "nonfinite_tokens")
    return Row(**base, ppl=math.nan if ppl is None else ppl, nll_mean=nll, acc=_metric(results, "token_accuracy"),
               nonfinite_tokens=None if nonfinite is None else int(nonfinite))


class _Setting:
    """One (results file, task): a row to be."""

    def __init__(self, path: Path, data: dict, task: str, ident: dict):
        config = data.get("config") or {}
        diag = config.get("streaming_diagnostics") or {}
        args = parse_model_args(config.get("model_args"))
        self.path, self.task, self.ident = path, task, ident
        self.results = data["results"][task]
        self.time = _timestamp(path)
        self.samples = task_samples(path, task)
        # what else changes the numbers of this task: its config and the documents scored (a subset is its own run)
        self.task_key = (task_setting(data, task), documents(data, task, path, self.samples))
        self.one_call = ident["recent_size"] is None and ident["chunk_size"] == FULL_CHUNK
        # lm-eval's max_length is the model's max_position_embeddings unless the user set max_length
        self.trained_context = None if "max_length" in args else (int(data["max_length"])
                                                                   if _number(data.get("max_length")) else None)
        self.versions = {k: str(data[f"{k}_version"]) for k in ("lm_eval", "transformers") if data.get(f"{k}_version")}
        self.base = dict(
            method=ident["method"], start_size=ident["start_size"], recent_size=ident["recent_size"],
            attn_implementation=ident["attn_implementation"], source=str(path),
            position_shift=ident["policy_values"].get("position_shift"),
            evict_every=ident["policy_values"].get("evict_every"),
            one_call=self.one_call if ident["recent_size"] is None else None,  # chunk_size=full: one plain forward
            # older results recorded the stream's true position as max_position for every method
            max_position=diag.get("max_position") if "max_stream_position" in diag or ident["recent_size"] is None
            else None, stream_length=None if diag.get("max_stream_position") is None
            else diag["max_stream_position"] + 1, nan_logits=diag.get("nan_logits"),
            inf_logits=diag.get("inf_logits"), max_abs_logit=diag.get("max_abs_logit"),
            max_abs_attn_score=diag.get("max_abs_attn_score"), nonfinite_attn_scores=diag.get("nonfinite_attn_scores"))
        mp, tc = self.base["max_position"], self.trained_context
        self.base["exceeded_trained_context"] = None if mp is None or not tc else mp >= tc

    def docs(self) -> dict | None:
        if self.samples is None:
            return None
        return {d.key: d for d in map(_Doc, self.samples)}


def _settings(paths, warn: Callable[[str], None]) -> list[_Setting]:
    out = []
    for root in paths:
        files = find_result_files(root)
        if not files:
            warn(f"{root}: no lm-eval results_*.json files")
        for path in files:
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                warn(f"{path}: unreadable ({type(exc).__name__}: {exc})")
                continue
            config = data.get("config") or {}
            if config.get("model") != STREAMING_MODEL:
                warn(f"{path}: --model {config.get('model')!r}, not {STREAMING_MODEL}: its perplexities are not "
                     f"one-stream token scores; skipped")
                continue
            ident = run_identity(data)
            tasks = [t for t, m in (data.get("results") or {}).items()
                     if isinstance(m, dict) and "token_perplexity,none" in m]
            if not tasks and not any("byte_perplexity,none" in m for m in (data.get("results") or {}).values()
                                     if isinstance(m, dict)):  # lm-eval's rolling tasks: records.lm_eval_rolling
                warn(f"{path}: no perplexity task (token_perplexity, byte_perplexity) in it; skipped")
            for task in tasks:
                try:
                    out.append(_Setting(path, data, task, ident))
                except (KeyError, TypeError, ValueError) as exc:
                    warn(f"{path}: task {task}: unreadable samples ({type(exc).__name__}: {exc}); skipped")
    return out


def _reference(rows: list[Row]) -> Row | None:
    """The dense row the others are paired with: the model's own kernel (sdpa) when there are several, chunked
    before ``@full`` (as benchmark pairs)."""
    dense = sorted((r for r in rows if r.is_dense), key=lambda r: (r.attn_implementation != "sdpa", bool(r.one_call)))
    return dense[0] if dense else None


def _run(task: str, group: list[_Setting], warn) -> Run:
    # One row per setting; a setting scored twice: the later results file.
    latest: dict[tuple, _Setting] = {}
    for s in sorted(group, key=lambda s: s.time):
        latest[(*(s.ident[k] for k in ROW_KEY), s.one_call)] = s
    settings = list(latest.values())
    docs = {id(s): s.docs() for s in settings}
    with_docs = [s for s in settings if docs[id(s)] is not None]
    common = set.intersection(*(set(docs[id(s)]) for s in with_docs)) if with_docs else set()
    for s in with_docs:
        if set(docs[id(s)]) != common:
            warn(f"{s.path}: {task}: {len(docs[id(s)])} documents, {len(common)} of them scored by every "
                 f"setting: " + ("paired over those" if common else "not paired: each row over its own documents"))
    for s in settings:
        if docs[id(s)] is None:
            warn(f"{s.path}: {task}: no per-document samples (run lm_eval with --log_samples): the row has "
                 f"lm-eval's aggregates only, no interval and no paired difference")
    order = sorted(common)
    rows = [_row_from_docs(s.base, [docs[id(s)][k] for k in order]) if docs[id(s)] is not None and order
            else _row_from_docs(s.base, list(docs[id(s)].values())) if docs[id(s)] is not None
            else _row_from_aggregates(s.base, s.results) for s in settings]
    ref = _reference(rows)
    for row in rows:
        if (row is not ref and ref is not None and order and row.per_sample_nll is not None
                and ref.per_sample_nll is not None):
            set_deltas(row, ref)
    first = next((s for s in settings if not s.one_call), settings[0])
    tokens = [d.tokens for d in (docs[id(with_docs[0])].values() if with_docs else ())]
    length = _LENGTH.search(task)
    # The longest document in the model's tokens (+1: the prefix token, as a benchmark sample counts it).
    max_tokens = max(tokens) + 1 if tokens else int(length.group(1)) if length else 0
    contexts = {s.trained_context for s in settings} - {None}
    n_samples = len(order) if order else int(_number(first.results.get("sample_len")) or 0)
    return Run(
        model_id=first.ident["model_id"], max_tokens=max_tokens, num_samples=n_samples,
        dtype=first.ident["dtype"], device=first.ident["device"],
        chunk_size=0 if first.one_call else first.ident["chunk_size"] or 0,
        rows=rows, model_revision=first.ident["model_sha"] or None,
        trained_context=contexts.pop() if len(contexts) == 1 else None,
        sample_spec=SAMPLE_SPEC.format(task=task) + ("" if first.ident["limit"] is None
                                                     else f":limit={first.ident['limit']}")
        + ("" if first.task_key[1] is None else f":{SUBSET_MARK}{first.task_key[1]}"),
        versions=first.versions, finished_at=max(s.time for s in settings),
        source=", ".join(sorted({str(s.path) for s in settings})))


def load_lm_eval_runs(paths, warn: Callable[[str], None] | None = None) -> list[Run]:
    """The runs in lm-eval output folders / results files (see the module docstring)."""
    import logging

    warn = warn or logging.getLogger(__name__).warning
    groups: dict[tuple, list[_Setting]] = {}
    for s in _settings(list(paths), warn):
        groups.setdefault((s.task, s.task_key, *(s.ident[k] for k in RUN_KEY)), []).append(s)
    # dense with chunk_size=full has no chunk: it joins every run that differs from it by the chunk size only
    chunk = 2 + RUN_KEY.index("chunk_size")
    for key in [k for k in groups if k[chunk] == FULL_CHUNK]:
        rest = key[:chunk] + key[chunk + 1:]
        others = [k for k in groups if k[chunk] != FULL_CHUNK and k[:chunk] + k[chunk + 1:] == rest]
        for other in others:
            groups[other] += groups[key]
        if others:
            del groups[key]
    return [_run(key[0], group, warn) for key, group in groups.items()]
