"""The typed record of a scored run: what ``benchmark`` produces, ``experiment`` stores and
``analyze`` / ``plot`` / ``leaderboard`` read.

A :class:`Run` is one benchmark call (one experiment cell): the run's settings and one
:class:`Row` per scored setting (dense once per attention kernel, every streaming setting), all
on the same samples. Optional fields are ``None`` when not measured; every reader treats
``None`` as unknown, never as 0 or clean.

JSON: ``Run.to_dict()`` / ``Run.from_dict()`` (the new layout, marked ``"schema": SCHEMA``;
unknown keys are an error). :mod:`.io` reads the old flat layout and files
(``load_runs``: any mix of experiment JSONL and benchmark JSON, old or new layout).
"""

from __future__ import annotations

import math
from dataclasses import MISSING, asdict, dataclass, field, fields

from lm_eval_streaming.errors import UserError

SCHEMA = "lm_eval_streaming.run/2"


class RecordError(UserError, ValueError):
    """A dict is not a valid record of this layout."""


@dataclass
class Buckets:
    """Token-weighted mean NLL per bucket. ``edges`` are the len(nll)+1 boundaries (a bucket is
    [edges[i], edges[i+1])); ``nll`` is None for an empty bucket; ``count`` None when not recorded."""

    edges: list[float]
    nll: list[float | None]
    count: list[int] | None = None

    def centers(self) -> list[float]:
        return [(a + b) / 2 if math.isfinite(b) else a for a, b in zip(self.edges, self.edges[1:])]


@dataclass
class Interval:
    """95% confidence interval; a field holds None instead when it cannot be computed (1 sample)."""

    low: float
    high: float

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


@dataclass
class AttentionLayerError:
    """One layer: |attention output of the row's kernel - the float32 reference's from the same q/k/v|."""

    layer: int
    mean_abs: float
    max_abs: float
    by_position: Buckets | None = None  # mean per position bucket
    max_by_position: list[float | None] | None = None  # max per bucket of by_position


@dataclass
class KernelErrorStats:
    """|NLL(row's kernel, dtype, device) - NLL(reference kernel)| per token, and the per-call attention error."""

    reference: str  # kernel/dtype/device of the reference weights, e.g. "lm_eval_streaming/float16/cpu"
    mean_abs_dnll: float
    max_abs_dnll: float
    nonfinite: int | None = None  # tokens where either side was NaN/Inf
    by_position: Buckets | None = None
    by_relative_position: Buckets | None = None  # position / trained context
    # True: the reference had float32 weights (a float32 model, or a float32 copy that fit); False: the same
    # weights in the model's dtype (the copy did not fit the checks' memory budget); None: not recorded
    float32_weights: bool | None = None
    # every attention call also computed by the float32 reference from the same q/k/v (None: not measured)
    attention_reference: str | None = None
    attention_mean_abs: float | None = None
    attention_max_abs: float | None = None
    attention_nonfinite: int | None = None
    attention_layers: list[AttentionLayerError] | None = None


@dataclass
class ModuleDivergence:
    """The first module call, in execution order, whose run-dtype output was off its float32 output by more
    than the tolerance (per-token relative error)."""

    module: str  # e.g. "gpt_neox.layers.3.mlp"
    kind: str  # embedding, rotary, norm, attention, mlp, head, other
    layer: int | None
    position: int
    rel_error: float


@dataclass
class WholeForwardStats:
    """|NLL(row's dtype) - NLL(float32 shadow of the same path)| per token; where the forward first diverged."""

    reference: str  # e.g. "float32 shadow/sdpa/cuda"
    dtype: str  # the row's dtype
    mean_abs_dnll: float
    max_abs_dnll: float
    nonfinite: int
    by_position: Buckets | None = None
    tolerance: float | None = None  # per-token relative error counted as diverged
    located: bool = False  # whether the module location ran
    first_divergence: ModuleDivergence | None = None  # None with located: no module diverged
    max_rel_by_kind: dict[str, float] | None = None  # largest per-token relative error per module kind
    # attention called with a KV cache is not re-run in the row's dtype (its local error: the kernel checks)
    attention_located: bool | None = None


@dataclass
class CausalityStats:
    """For each probed position p: max |dlogit| at positions <= p when the tokens after p change."""

    positions: list[int]
    max_abs_dlogit: list[float]
    max_abs_dlogit_overall: float
    samples_probed: int = 1  # the first samples of the run


@dataclass
class Row:
    """One scored setting of a run, on the same samples as every other row of the run."""

    method: str
    start_size: int
    recent_size: int | None  # None: all tokens (dense)
    attn_implementation: str | None  # None: not recorded
    ppl: float
    nll_mean: float
    # dense: True = each sample in ONE model call, no cache, the model's own mask path (``KERNEL@full``,
    # what ``model(input_ids)`` computes: the seed's baseline); False = chunked with a cache; None: not recorded
    one_call: bool | None = None
    # streaming_llm: False = the kept tokens at their true distances (no positional shift); None: not recorded
    position_shift: bool | None = None
    # score-based eviction (h2o, tova, knorm): the cache is pruned after every evict_every tokens; None: not
    # such a method, or not recorded (files before it existed)
    evict_every: int | None = None
    acc: float | None = None  # None: not measured (other implementations log per-token NLL only)
    ppl_ci: Interval | None = None
    acc_ci: Interval | None = None
    per_sample_nll: list[float] | None = None
    per_sample_acc: list[float] | None = None
    scored_tokens: int | None = None
    # paired difference to one dense row of the run (its attn_implementation: delta_reference)
    delta_reference: str | None = None
    delta_nll_vs_dense: float | None = None
    delta_nll_ci: Interval | None = None
    delta_acc_vs_dense: float | None = None
    delta_acc_ci: Interval | None = None
    tokens_per_s: float | None = None
    latency_ms_per_token: float | None = None
    peak_kv_bytes: int | None = None
    peak_rss_bytes: int | None = None
    cuda_max_allocated_bytes: int | None = None
    # the largest position the model's rotary embedding saw (largest query-key distance scored: at most
    # start_size + recent_size for streaming_llm with the shift), and whether it reached the trained context
    max_position: int | None = None
    exceeded_trained_context: bool | None = None
    stream_length: int | None = None  # tokens in the longest sample (None: old files)
    nll_by_position: Buckets | None = None
    nll_by_relative_position: Buckets | None = None
    nll_curve: Buckets | None = None
    # each sample's mean NLL in the buckets of nll_curve (same edges), in sample order: the critical point's spread
    nll_curve_per_sample: list[list[float | None]] | None = None
    nonfinite_tokens: int | None = None
    nan_logits: int | None = None
    inf_logits: int | None = None
    max_abs_logit: float | None = None
    max_abs_attn_score: float | None = None
    nonfinite_attn_scores: int | None = None
    kernel_error: KernelErrorStats | None = None
    causality: CausalityStats | None = None
    whole_forward: WholeForwardStats | None = None  # the row's dtype against a float32 shadow of its forward
    source: str | None = None  # file it was read from, when the run's rows come from several (not stored)

    @property
    def is_dense(self) -> bool:
        return self.recent_size is None

    def label(self) -> str:
        if self.is_dense:
            return f"dense[{self.attn_implementation or '?'}{'@full' if self.one_call else ''}]"
        return f"{self.method_label()} {self.start_size}+{self.recent_size}"

    def method_label(self) -> str:
        """The method and the options that tell its rows apart: ``streaming_llm noshift``, ``h2o E64 shift``."""
        if self.evict_every is not None:  # score-based: kept keys at true distances unless shifted
            return f"{self.method} E{self.evict_every}" + (" shift" if self.position_shift else "")
        return self.method + (" noshift" if self.position_shift is False else "")


@dataclass
class Run:
    """One benchmark call = one experiment cell."""

    model_id: str
    max_tokens: int
    num_samples: int
    dtype: str
    device: str
    chunk_size: int
    rows: list[Row]
    model_revision: str | None = None
    model_family: str | None = None
    model_params: float | None = None
    trained_context: int | None = None
    num_warmup: int | None = None
    sample_spec: str | None = None  # how the samples were built (changes the numbers)
    versions: dict[str, str] = field(default_factory=dict)
    machine: str | None = None
    experiment: str | None = None
    cell_key: str | None = None
    cell: dict | None = None  # the experiment cell's parameters
    finished_at: str | None = None
    source: str | None = None  # file it was read from (not stored)

    def to_dict(self) -> dict:
        out = {"schema": SCHEMA, **asdict(self)}
        out.pop("source")
        for row in out["rows"]:
            row.pop("source")
        return out

    @classmethod
    def from_dict(cls, data: dict, source: str | None = None) -> "Run":
        data = dict(data)
        schema = data.pop("schema", None)
        if schema != SCHEMA:
            raise RecordError(f"schema {schema!r} is not {SCHEMA!r}")
        run = _build(cls, data, "run")
        run.source = source
        for row, raw in zip(run.rows, data.get("rows") or []):
            forget_stream_positions(row, raw)
        return run

    def dense_rows(self) -> list[Row]:
        return [r for r in self.rows if r.is_dense]


def forget_stream_positions(row: Row, raw: dict) -> None:
    """Files without ``stream_length`` recorded the stream's true position as ``max_position`` for every
    method; for a cache method that is not the position attention saw, so it is unknown (None)."""
    if "stream_length" not in raw and not row.is_dense:
        row.max_position = row.exceeded_trained_context = None


# ------------------------------------------------------------------ dict -> dataclass (strict)
_NESTED_LISTS = {"attention_layers": AttentionLayerError}
_NESTED = {
    "ppl_ci": Interval, "acc_ci": Interval, "delta_nll_ci": Interval, "delta_acc_ci": Interval,
    "nll_by_position": Buckets, "nll_by_relative_position": Buckets, "nll_curve": Buckets,
    "by_position": Buckets, "by_relative_position": Buckets,
    "kernel_error": KernelErrorStats, "causality": CausalityStats,
    "whole_forward": WholeForwardStats, "first_divergence": ModuleDivergence,
}


def _build(cls, data: dict, where: str):
    if not isinstance(data, dict):
        raise RecordError(f"{where}: expected a mapping, got {type(data).__name__}")
    names = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise RecordError(f"{where}: unknown keys {', '.join(unknown)}")
    missing = [n for n, f in names.items() if n not in data and f.default is MISSING
               and f.default_factory is MISSING]
    if missing:
        raise RecordError(f"{where}: missing keys {', '.join(missing)}")
    kwargs = {}
    for key, value in data.items():
        if key == "rows":
            if not isinstance(value, list):
                raise RecordError(f"{where}.rows: expected a list")
            value = [_build(Row, r, f"{where}.rows[{i}]") for i, r in enumerate(value)]
        elif key in _NESTED_LISTS and value is not None:
            if not isinstance(value, list):
                raise RecordError(f"{where}.{key}: expected a list")
            value = [_build(_NESTED_LISTS[key], x, f"{where}.{key}[{i}]") for i, x in enumerate(value)]
        elif key in _NESTED and value is not None:
            value = _build(_NESTED[key], value, f"{where}.{key}")
        kwargs[key] = value
    return cls(**kwargs)

