"""Conformance table: for every causal-LM type of the installed transformers, does the project give the model's
own numbers, or refuse it in one line?

For each type a tiny random float32 model (``tiny_models``) scores ``DOCS`` documents of ``DOC_LEN`` tokens
(longer than every sliding window) three ways, each compared with the model's own forward
(``model(input_ids)``, its per-token NLL):

- dense through every path of the project (``DENSE_PATHS``: its kernel chunk by chunk and in one call, the
  model's own attention chunk by chunk);
- every cache method of the registry with a cache larger than the document (it evicts nothing: = dense);
- a method or kernel the project cannot run exactly must be refused: a ``UserError`` of one line, raised by
  ``check_supported`` or by ``score_sequences`` before any forward.

A cell is ``exact`` (max |ΔNLL| <= ``TOL`` nats/token), ``refused``, ``WRONG`` (a different number: the worst
outcome) or ``crash`` (any other exception: a traceback for the user). Types that cannot be built tiny are
listed with the reason. ``lm-eval-streaming conformance --output docs/conformance.md`` writes the table.
"""

from __future__ import annotations

import contextlib
import random
import re
import time
from dataclasses import dataclass, field

import torch

from lm_eval_streaming.benchmark.tiny_models import VOCAB, causal_lm_types, tiny_model
from lm_eval_streaming.core.architectures import check_supported
from lm_eval_streaming.core.attention import REFERENCE_KERNEL
from lm_eval_streaming.core.methods import STREAMING_METHODS, baseline_policy, policy_for
from lm_eval_streaming.core.scoring import score_sequences
from lm_eval_streaming.errors import UserError

TOL = 1e-5  # nats/token, float32
DOCS, DOC_LEN, CHUNK = 2, 80, 32  # chunks smaller than a document: the cached path is exercised
START_SIZE = 4  # with recent_size = DOC_LEN the cache is larger than the document
# dense paths of the project: column -> (attn_implementation, one_call)
DENSE_PATHS = {
    "dense kernel": (REFERENCE_KERNEL, False),  # the project's kernel over its cache, chunk by chunk
    "dense kernel, one call": (REFERENCE_KERNEL, True),  # chunk_size=full: one forward, no cache
    "dense, own kernel": (None, False),  # the model's own attention over a transformers cache, chunked
}
FAILURES = ("WRONG", "crash")


@dataclass
class Cell:
    status: str  # exact | refused | WRONG | crash
    detail: str = ""  # the refusal or crash line, or the largest difference

    def short(self) -> str:
        return f"WRONG ({self.detail})" if self.status == "WRONG" else self.status


@dataclass
class Row:
    model_type: str
    not_built: str = ""  # why no tiny model of this type could be built and run by its own forward
    cells: dict[str, Cell] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def failures(self) -> list[str]:
        return [name for name, cell in self.cells.items() if cell.status in FAILURES]


def one_line(exc: BaseException, limit: int = 300) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = f"{type(exc).__name__}: {text}"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def documents(seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(VOCAB - 100) for _ in range(DOC_LEN)] for _ in range(DOCS)]


@torch.no_grad()
def own_nll(model, docs: list[list[int]]) -> torch.Tensor:
    """Per-token NLL [DOCS, DOC_LEN - 1] of the model's own plain forward."""
    ids = torch.tensor(docs)
    logits = model(input_ids=ids).logits.float()
    return -torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None]).squeeze(-1)


@contextlib.contextmanager
def _count_forwards(model):
    calls = [0]
    handle = model.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    try:
        yield calls
    finally:
        handle.remove()


def check(model, docs, reference: torch.Tensor, policy, kernel: str | None, one_call: bool = False,
          tol: float = TOL) -> Cell:
    """One path of the project against the model's own numbers."""
    with _count_forwards(model) as calls:
        try:
            check_supported(model.config, policy, kernel, one_call)
            got = score_sequences(model, docs, policy, chunk_size=CHUNK, attn_implementation=kernel,
                                  one_call=one_call)
        except UserError as exc:
            if calls[0] or "\n" in str(exc).strip():
                why = "after a forward" if calls[0] else "not one line"
                return Cell("crash", f"refusal {why}: {one_line(exc)}")
            return Cell("refused", one_line(exc))
        except Exception as exc:  # noqa: BLE001  (any other exception is a traceback for the user)
            return Cell("crash", one_line(exc))
    delta = max(float((g.nll - r).abs().max()) for g, r in zip(got, reference))
    if not delta <= tol:  # NaN is WRONG too
        return Cell("WRONG", f"{delta:.2g}")
    return Cell("exact", f"{delta:.1g}")


def conform(model_type: str, methods: tuple[str, ...] | None = None) -> Row:
    """The row of one model type."""
    start = time.perf_counter()
    row = Row(model_type)
    docs = documents()
    try:
        model = tiny_model(model_type)
        reference = own_nll(model, docs)
    except Exception as exc:  # noqa: BLE001  (transformers' own defaults or forward: not the project's)
        row.not_built = one_line(exc)
        row.seconds = time.perf_counter() - start
        return row
    for name, (kernel, one_call) in DENSE_PATHS.items():
        row.cells[name] = check(model, docs, reference, baseline_policy(), kernel, one_call)
    # a family whose own float32 rounding is near TOL (MiniCPM3's scaled residuals: the dense kernel already
    # differs by 1e-5) gets the cache methods judged against twice that rounding, never more
    dense = row.cells["dense kernel"]
    tol = max(TOL, 2 * float(dense.detail)) if dense.status == "exact" else TOL
    for method in methods or STREAMING_METHODS:
        row.cells[method] = check(model, docs, reference, policy_for(method, START_SIZE, DOC_LEN), None, tol=tol)
    row.seconds = time.perf_counter() - start
    return row


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def table(rows: list[Row], command: str) -> str:
    import transformers

    methods = list(STREAMING_METHODS)
    built = [r for r in rows if not r.not_built]
    counts = {s: sum(c.status == s for r in built for c in r.cells.values()) for s in ("exact", "refused", *FAILURES)}
    lines = [
        "# Conformance: the project's numbers against each model's own forward",
        "",
        f"Generated by `{command}` with transformers {transformers.__version__}, torch {torch.__version__}: "
        f"every causal-LM model type transformers registers ({len(rows)}), a tiny random float32 model of each "
        f"(hidden 64, 4 heads, vocabulary {VOCAB}, sliding windows of 12 tokens), {DOCS} documents of {DOC_LEN} "
        f"tokens, chunks of {CHUNK}. Each cell compares the per-token NLL with the model's own `model(input_ids)`: "
        f"**exact** (max |ΔNLL| <= {TOL:g} nats/token; for a cache method, or twice the dense kernel's own "
        f"rounding where that is larger), **refused** (one line before any forward, reason below), "
        f"**WRONG** (max |ΔNLL|: a silently different number) or **crash** (a traceback). The cache methods run "
        f"with start_size {START_SIZE} and recent_size {DOC_LEN}: a cache larger than the document, so they must "
        f"equal dense.",
        "",
        f"{len(built)} types built; cells: " + ", ".join(f"{n} {s}" for s, n in counts.items()) + ".",
        "",
        "| model type | " + " | ".join([*DENSE_PATHS, *methods]) + " |",
        "|---|" + "---|" * (len(methods) + len(DENSE_PATHS)),
    ]
    notes = []
    for row in built:
        cells = [row.cells.get(m, Cell("-")).short() for m in [*DENSE_PATHS, *methods]]
        lines.append(f"| {row.model_type} | " + " | ".join(cells) + " |")
        whys: dict[str, list[str]] = {}  # one note per reason, naming the paths that gave it
        for name, c in row.cells.items():
            if c.status in ("refused", "crash"):
                whys.setdefault(re.sub(rf"method={re.escape(name)}\b", "method=…", c.detail), []).append(name)
        notes += [f"- {row.model_type} ({', '.join(names)}): {_cell(w)}" for w, names in whys.items()]
    lines += ["", "## Why refused or crashed", "", *(notes or ["- none"]), "",
              "## Types not built tiny (the shrunk default config, or the model's own forward on it, fails)", ""]
    lines += [f"- {r.model_type}: {_cell(r.not_built)}" for r in rows if r.not_built] or ["- none"]
    return "\n".join(lines) + "\n"


def run_all(types: list[str] | None = None, progress=None) -> list[Row]:
    import transformers

    level = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # tiny configs make every family warn about its defaults
    try:
        rows = []
        for model_type in types or causal_lm_types():
            rows.append(conform(model_type))
            if progress is not None:
                progress(rows[-1])
        return rows
    finally:
        transformers.logging.set_verbosity(level)
