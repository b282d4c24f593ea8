"""lm-eval's standard rolling perplexity tasks (``output_type: loglikelihood_rolling``, wikitext-style
``word_perplexity`` / ``byte_perplexity`` / ``bits_per_byte``) scored with ``--model streaming_hf``, as runs.

With ``--log_samples`` each sample line holds the document's total log-likelihood with its word and byte counts
(``byte_perplexity``: [loglikelihood, bytes]). The rows of one task are paired by document (lm-eval's
``doc_hash``) exactly as :mod:`.lm_eval_runs` pairs the project's tasks. The NLL is per token, the tokens
counted with the run's own tokenizer (``streaming_pretrained`` in the results' config, encoded as streaming_hf
encodes a rolling document); where that tokenizer cannot be loaded here it is per byte, the run's sample_spec
ends in ``:per=byte`` and the reader says so in one line. These tasks give no accuracy and no NLL by position:
the critical point and the split beyond the trained context need the project's ``streaming_ppl_<N>`` tasks.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

from lm_eval_streaming.records.identity import run_identity
from lm_eval_streaming.records.lm_eval_results import find_result_files
from lm_eval_streaming.records.lm_eval_runs import RUN_KEY, STREAMING_MODEL, _run, _Setting
from lm_eval_streaming.records.run import Run

ROLLING_METRICS = ("word_perplexity", "byte_perplexity", "bits_per_byte")
ROLLING, PER_BYTE = ":rolling", ":per=byte"  # sample_spec suffixes: what the run is, its NLL unit
POSITION_TASK = "streaming_ppl_<N>"  # the project's tasks with NLL by position (critical point, beyond-context split)


def rolling_tasks(data: dict) -> list[str]:
    """The tasks of a results JSON that are lm-eval rolling perplexity tasks (not the project's token tasks)."""
    return [t for t, m in (data.get("results") or {}).items() if isinstance(m, dict)
            and "byte_perplexity,none" in m and "token_perplexity,none" not in m]


@lru_cache(maxsize=8)
def _tokenizer(path: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError):
        return None


class _RollingDoc:
    """One document: its NLL sum over ``tokens`` units (tokens, or bytes without the tokenizer)."""

    correct, acc = 0, 0.0  # rolling tasks measure no accuracy: cleared from the rows afterwards
    nonfinite = 0
    regions: dict = {}

    def __init__(self, sample: dict, count: Callable[[str], int] | None):
        loglik, n_bytes = sample["byte_perplexity"]
        self.key = (sample["doc_id"], sample.get("doc_hash"))
        self.nll_sum = -float(loglik)
        self.tokens = self.finite = count(_text(sample)) if count else int(n_bytes)

    @property
    def nll(self) -> float:
        return self.nll_sum / self.finite if self.finite else math.nan


def _text(sample: dict) -> str:
    """The scored string: the rolling request's argument (lm-eval logs it under ``arguments``)."""
    args = sample.get("arguments")
    if isinstance(args, dict):
        args = next(iter(args.values()))
        return str(args.get("arg_0") if isinstance(args, dict) else args[0])
    return str(args[0][0] if isinstance(args[0], (list, tuple)) else args[0])


class _RollingSetting(_Setting):
    def __init__(self, path: Path, data: dict, task: str, ident: dict):
        super().__init__(path, data, task, ident)
        pretrained = (data.get("config") or {}).get("streaming_pretrained")
        tok = _tokenizer(str(pretrained)) if pretrained else None
        self.per_byte = tok is None
        self.count = None if tok is None else (lambda text: len(tok(text, add_special_tokens=False)["input_ids"]))

    def docs(self) -> dict | None:
        if self.samples is None:
            return None
        return {d.key: d for d in (_RollingDoc(s, self.count) for s in self.samples)}


def _settings(paths, warn) -> list[_RollingSetting]:
    out = []
    for root in paths:
        for path in find_result_files(root):
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue  # lm_eval_runs has said so
            if (data.get("config") or {}).get("model") != STREAMING_MODEL:
                continue
            for task in rolling_tasks(data):
                s = _RollingSetting(path, data, task, run_identity(data))
                if s.samples is None:
                    warn(f"{path}: {task}: a rolling perplexity task without --log_samples: documents cannot be "
                         "paired nor counted in tokens; skipped")
                    continue
                out.append(s)
    return out


def _without_accuracy(run: Run, per_byte: bool) -> Run:
    rows = [dataclasses.replace(r, acc=None, acc_ci=None, per_sample_acc=None, delta_acc_vs_dense=None,
                                delta_acc_ci=None, nll_by_relative_position=None, nonfinite_tokens=None)
            for r in run.rows]
    return dataclasses.replace(run, rows=rows, sample_spec=run.sample_spec + ROLLING + (PER_BYTE if per_byte else ""))


def load_rolling_runs(paths, warn: Callable[[str], None]) -> list[Run]:
    """The rolling perplexity runs in lm-eval output folders (see the module docstring)."""
    groups: dict[tuple, list[_RollingSetting]] = {}
    for s in _settings(list(paths), warn):
        groups.setdefault((s.task, *(s.ident[k] for k in RUN_KEY)), []).append(s)
    runs = []
    for (task, *_), group in groups.items():
        per_byte = any(s.per_byte for s in group)
        if per_byte:
            for s in group:
                s.count = None
            warn(f"{task}: the run's tokenizer cannot be loaded here: NLL per byte (nats/byte), not per token")
        runs.append(_without_accuracy(_run(task, group, warn), per_byte))
    if runs:
        warn(f"{len(runs)} lm-eval rolling perplexity run(s): no NLL by position, so no critical point and no "
             f"split beyond the trained context (the project's {POSITION_TASK} tasks measure them)")
    return runs
