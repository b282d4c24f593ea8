"""Results of the ``streaming_recall_<D>`` tasks: reading them, the stop distance, the paragraph for 实际意义.

Used by the verdict and by the ``recall-report`` command (:mod:`.recall_report`: table, figure):

* :func:`load_recall_results` ``(paths) -> list[RecallPoint]``: one point per
  model x method (with cache sizes) x distance, from lm-eval ``--output_path``
  folders or ``results_*.json`` files;
* :func:`stop_distance` ``(points, label) -> int | None``: the smallest measured
  distance at which that method no longer recalls (rule: :data:`STOP_RULE`);
* :func:`practical_meaning` ``(points) -> str``: one paragraph citing the
  measured stop distances per method ("recall was not measured" without points).

"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path

from lm_eval_streaming.records.lm_eval_results import find_result_files, run_metrics
from lm_eval_streaming.records.identity import KEY_FIELDS, display_names, run_identity

logger = logging.getLogger(__name__)

TASK_PATTERN = re.compile(r"^streaming_recall_(\d+)$")
PASSKEY_PATTERN = re.compile(r"^streaming_passkey_(\d+)$")
# A run's setting, and the few-shot count and version its recall tasks were scored with (the distance
# is in each task's own name and config, so the config digest would tell every task apart).
RECALL_FIELDS = (*KEY_FIELDS, "num_fewshot", "task_config")

# A method recalls at distance D when the lower end of the 95% interval of
# recall_gain (nats per Pythia token of the passage) is above this. A real copy
# gains several nats per token; forgetting gives about 0.
RECALL_MIN_GAIN = 0.5
STOP_RULE = (
    f"a method recalls at distance D when the lower end of the 95% t-interval of recall_gain over documents "
    f"is above {RECALL_MIN_GAIN} nats per Pythia token (with one document: its recall_gain is above "
    f"{RECALL_MIN_GAIN}); its stop distance is the smallest measured D at which it does not"
)
# The default model's trained context (SmolLM2-135M), used when a run does not record it.
DEFAULT_TRAINED_CONTEXT = 8192


@dataclass(frozen=True)
class RecallPoint:
    """recall metrics of one model x method x distance (means over documents, with standard errors).

    recall_gain / recall_nll: nats per Pythia token of the passage; recall_acc: next-token top-1
    accuracy on the second copy (None when the model did not report token counts, e.g. lm-eval's
    ``hf``); recall_exact: fraction of documents whose whole second copy is the greedy continuation.
    """

    model: str
    label: str  # method with cache sizes: "dense", "streaming_llm-s4-r252", "window-s0-r256", "hf-windowed"
    method: str
    start_size: int | None
    recent_size: int | None
    distance: int
    recall_gain: float
    recall_gain_stderr: float | None
    recall_nll: float
    recall_nll_stderr: float | None
    recall_acc: float | None
    recall_acc_stderr: float | None
    recall_exact: float | None
    recall_exact_stderr: float | None
    first_nll: float | None
    n_docs: int | None
    source: str

    @property
    def cache_size(self) -> int | None:
        if self.recent_size is None:
            return None
        return (self.start_size or 0) + self.recent_size


def _num(value) -> float | None:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x


def _n_docs(data: dict, task: str) -> int | None:
    entry = (data.get("n-samples") or {}).get(task) or {}
    n = entry.get("effective", entry.get("original"))
    return int(n) if isinstance(n, (int, float)) else None


def _task_settings(data: dict, tasks) -> dict:
    def values(field: str) -> list[str]:
        recorded = data.get(field) or {}
        return sorted({str(recorded[t]) for t in tasks if recorded.get(t) is not None})

    shots, versions = values("n-shot"), values("versions")
    return {"num_fewshot": ",".join(shots) or None, "task_config": ("v" + ",".join(versions)) if versions else None}


def _collect(paths, pattern: re.Pattern, required: str):
    """[(model, label, ident, distance, metrics, n_docs, source)] of the tasks matching ``pattern``.

    Runs of one setting (everything that can change a number, :mod:`lm_eval_streaming.records.identity`, except
    ``--limit``) are merged: different distances side by side; for the same distance the newest run
    (lm-eval's ``date``, then file name) wins. Settings that differ in more than method and cache
    sizes get labels that say how (``dense-float16``). Other runs and tasks are ignored.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    found: dict[tuple, tuple] = {}
    idents: dict[tuple, dict] = {}
    for root in paths:
        if not Path(root).exists():
            raise FileNotFoundError(f"{root}: no such file or folder")
        for path in find_result_files(root):
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as err:
                logger.warning("skipping %s: %s", path, err)
                continue
            if not isinstance(data, dict) or not isinstance(data.get("results"), dict):
                continue
            metrics = {t: m for t, m in run_metrics(data).items() if pattern.match(t) and required in m}
            if not metrics:
                continue
            ident = {**run_identity(data), "limit": None}  # --limit only changes how many documents
            ident.update(_task_settings(data, metrics))
            ident["key"] = tuple(ident[k] for k in RECALL_FIELDS)
            idents[ident["key"]] = ident
            order = (_num(data.get("date")) or -math.inf, path.name)
            for task, m in metrics.items():
                key = (ident["key"], int(pattern.match(task).group(1)))
                if key not in found or order >= found[key][0]:
                    found[key] = (order, m, _n_docs(data, task), str(path))
    names = display_names(list(idents.values()), RECALL_FIELDS)
    out = []
    for (key, distance), (_, m, n_docs, source) in found.items():
        model, model_name = names[key]
        out.append((model, model_name.split("__", 1)[1], idents[key], distance, m, n_docs, source))
    return sorted(out, key=lambda r: (r[0], r[1], r[3]))


def load_recall_results(paths) -> list[RecallPoint]:
    """Recall points from lm-eval results (folders searched for ``results_*.json``, or files);
    runs are merged per setting as :func:`_collect` says."""
    return [
        RecallPoint(
            model=model, label=label, method=ident["method"], start_size=ident["start_size"],
            recent_size=ident["recent_size"], distance=distance,
            recall_gain=m["recall_gain"], recall_gain_stderr=m.get("recall_gain_stderr"),
            recall_nll=m["recall_nll"], recall_nll_stderr=m.get("recall_nll_stderr"),
            recall_acc=m.get("recall_acc"), recall_acc_stderr=m.get("recall_acc_stderr"),
            recall_exact=m.get("recall_exact"), recall_exact_stderr=m.get("recall_exact_stderr"),
            first_nll=m.get("first_nll"), n_docs=n_docs, source=source,
        )
        for model, label, ident, distance, m, n_docs, source in _collect(paths, TASK_PATTERN, "recall_gain")
    ]


def load_passkey_results(paths) -> list[dict]:
    """Rows of the ``streaming_passkey_<D>`` results: model, label, distance, exact_match (+ _stderr),
    by_depth {percent: (value, stderr)}, n_docs, source."""
    rows = []
    for model, label, _, distance, m, n_docs, source in _collect(paths, PASSKEY_PATTERN, "exact_match"):
        by_depth = {int(k.rsplit("_", 1)[1]): (v, m.get(f"{k}_stderr")) for k, v in m.items()
                    if k.startswith("exact_match_depth_") and not k.endswith("_stderr")}
        rows.append({"model": model, "label": label, "distance": distance, "exact_match": m["exact_match"],
                     "exact_match_stderr": m.get("exact_match_stderr"), "by_depth": dict(sorted(by_depth.items())),
                     "n_docs": n_docs, "source": source})
    return rows


def _t975(dof: int) -> float:
    from scipy.stats import t

    return float(t.ppf(0.975, dof))


def gain_lower_bound(point: RecallPoint) -> float:
    """Lower end of the 95% t-interval of recall_gain (the point estimate with one document or no stderr)."""
    se = point.recall_gain_stderr
    n = point.n_docs or 0
    if se is None or not math.isfinite(se) or n < 2:
        return point.recall_gain
    return point.recall_gain - _t975(n - 1) * se


def recalls(point: RecallPoint) -> bool:
    """Whether the method recalls at this point's distance (see :data:`STOP_RULE`); NaN never recalls."""
    lower = gain_lower_bound(point)
    return math.isfinite(lower) and lower > RECALL_MIN_GAIN


def select_points(points, label: str, model: str | None) -> list[RecallPoint]:
    chosen = [p for p in points if p.label == label and (model is None or p.model == model)]
    models = {p.model for p in chosen}
    if len(models) > 1:
        raise ValueError(f"label {label!r} has points of several models ({', '.join(sorted(models))}): pass model=")
    return sorted(chosen, key=lambda p: p.distance)


def stop_distance(points, label: str, model: str | None = None) -> int | None:
    """The smallest measured distance at which ``label`` no longer recalls (:data:`STOP_RULE`).

    None when it recalls at every measured distance, or when ``label`` has no points
    (check :func:`labels` to tell these apart).
    """
    for point in select_points(points, label, model):
        if not recalls(point):
            return point.distance
    return None


def labels(points) -> list[tuple[str, str]]:
    """(model, label) pairs present, dense first."""
    pairs = {(p.model, p.label) for p in points}
    return sorted(pairs, key=lambda ml: (ml[0], ml[1] != "dense", ml[1]))


def describe_label(label: str) -> str:
    """'streaming_llm-s4-r252' -> 'streaming_llm 4+252'; others unchanged."""
    m = re.fullmatch(r"(.+)-s(\d+)-r(\d+)", label)
    return f"{m.group(1)} {m.group(2)}+{m.group(3)}" if m else label


def practical_meaning(points) -> str:
    """One paragraph for 实际意义: the measured stop distance of every method."""
    points = list(points)
    if not points:
        return ("Recall beside perplexity: recall was not measured (no streaming_recall_<D> results were given), "
                "so nothing here says what eviction forgets; run the streaming_recall tasks to measure it.")
    parts = []
    for model, label in labels(points):
        mine = select_points(points, label, model)
        measured = ", ".join(str(p.distance) for p in mine)
        stop = stop_distance(points, label, model)
        name = f"{describe_label(label)} ({model})"
        if stop is None:
            parts.append(f"{name} recalled at every measured distance (up to {mine[-1].distance} tokens)")
        else:
            last_ok = [p.distance for p in mine if p.distance < stop]
            if last_ok:
                parts.append(f"{name} recalled up to {last_ok[-1]} tokens and stopped recalling at {stop}")
            else:
                parts.append(f"{name} did not recall even at the shortest measured distance, {stop}")
        gains = "; ".join(f"D={p.distance}: {p.recall_gain:.2f}" for p in mine)
        parts[-1] += f" (measured at {measured}; recall_gain nats/token {gains})"
    return (
        "Recall beside perplexity (streaming_recall: a 64-token passage repeated after D Pythia tokens of text): "
        + "; ".join(parts) + f". Rule: {STOP_RULE}." + _contrast(points)
    )


def _contrast(points) -> str:
    """A sentence when the data show a cache forgetting what full attention still recalls at the same D."""
    out = []
    for model in sorted({p.model for p in points}):
        full = [lab for m, lab in labels(points) if m == model and lab.split("-")[0] in ("dense", "hf")]
        if not full:
            continue
        base = full[0]  # dense if measured, else lm-eval's hf
        base_stop = stop_distance(points, base, model)
        base_d = {p.distance for p in select_points(points, base, model)}
        for m, lab in labels(points):
            if m != model or lab in full:
                continue
            stop = stop_distance(points, lab, model)
            if stop is not None and stop in base_d and (base_stop is None or base_stop > stop):
                out.append(f"{describe_label(lab)} from D={stop}")
        if out:
            out[-1] += f", while {base} still recalls there"
    if not out:
        return ""
    return (" So a cache that keeps perplexity near dense forgets what lies beyond it (no longer recalling: "
            + "; ".join(out) + "): the memory it saves is context lost, not ability gained.")
