"""Benchmark samples: distinct token windows of the task documents (real long English text).

Samples must be independent for the confidence intervals over samples to mean anything, so no
token of the corpus is used twice. Windows of ``max_tokens`` tokens are cut from the documents:

- when every document holds at least one window: disjoint windows within each document, taken
  round robin (the first window of every document, then the second of every document, ...), so
  the first samples are the documents' beginnings;
- otherwise (windows longer than some document): disjoint windows of the documents joined in order.

Each sample starts with the special tokens the model's tokenizer puts before a text by default (its
``<bos>`` for Gemma or Llama-2; nothing for SmolLM2 or GPT-NeoX), as the model was trained and as lm-eval's
path feeds it; the window of text after them is ``max_tokens`` minus their number, so every sample is
``max_tokens`` tokens long. The prefix is part of the sample's identity (:func:`sample_spec`, the experiment
cell key) only when it is not empty, so records of tokenizers without one keep their keys.

More samples than the corpus holds is refused with a message saying how many fit.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

from lm_eval_streaming.options import StreamingArgError

SAMPLES_VERSION = "disjoint-windows/1"  # part of every experiment cell key: changing it changes the numbers


def corpus_file() -> Path:
    """The longest streaming_ppl task file (the same documents as the shorter ones, longer)."""
    from lm_eval_streaming._hook import tasks_dir

    data = Path(tasks_dir()) / "streaming_ppl" / "data"
    files = sorted(data.glob("streaming_ppl_*.jsonl"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))
    if not files:
        raise FileNotFoundError(f"no task data under {data}")
    return files[-1]


def text_prefix(tokenizer) -> list[int]:
    """The token ids the tokenizer puts before a text when asked for its special tokens (leading ones only)."""
    probe = "The text"
    plain = tokenizer(probe, add_special_tokens=False, verbose=False)["input_ids"]
    full = tokenizer(probe, verbose=False)["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start:start + len(plain)] == plain:
            return list(full[:start])
    raise ValueError(f"the tokenizer encodes {probe!r} differently with and without its special tokens "
                     f"({full} vs {plain}): cannot tell which tokens it puts before a text")


@functools.lru_cache(maxsize=None)
def model_prefix(model_id: str) -> tuple[int, ...]:
    """:func:`text_prefix` of the model's tokenizer (loaded once per process)."""
    from lm_eval_streaming.core.loading import load_tokenizer

    return tuple(text_prefix(load_tokenizer(model_id)))


def sample_spec(prefix=()) -> str:
    return f"{corpus_file().stem}:{SAMPLES_VERSION}" + (f":prefix={','.join(map(str, prefix))}" if prefix else "")


def windows(documents: list[list[int]], max_tokens: int) -> list[list[int]]:
    """Every disjoint window of ``max_tokens`` tokens, in the order samples are taken (see module doc)."""
    if documents and all(len(d) >= max_tokens for d in documents):
        per_doc = [[d[k:k + max_tokens] for k in range(0, len(d) - max_tokens + 1, max_tokens)] for d in documents]
        return [doc[i] for i in range(max(map(len, per_doc))) for doc in per_doc if i < len(doc)]
    stream = [t for d in documents for t in d]
    return [stream[k:k + max_tokens] for k in range(0, len(stream) - max_tokens + 1, max_tokens)]


def load_samples(tokenizer, max_tokens: int, num_samples: int) -> list[list[int]]:
    """``num_samples`` distinct token sequences of exactly ``max_tokens`` tokens each (the tokenizer's prefix,
    then text)."""
    path = corpus_file()
    texts = [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    encoded = [tokenizer(t, add_special_tokens=False, verbose=False)["input_ids"] for t in texts]
    prefix = text_prefix(tokenizer)
    if max_tokens <= len(prefix) + 1:
        raise StreamingArgError(f"max_tokens={max_tokens} is too short: this tokenizer puts {len(prefix)} token(s) "
                                f"before the text; use max_tokens >= {len(prefix) + 2}")
    available = [prefix + w for w in windows(encoded, max_tokens - len(prefix))]
    if len(available) < num_samples:
        total = sum(map(len, encoded))
        raise StreamingArgError(
            f"num_samples={num_samples} with max_tokens={max_tokens}: the task data ({len(encoded)} documents, "
            f"{total} tokens of this tokenizer) holds only {len(available)} distinct samples of that length; "
            f"use --num_samples <= {len(available)} or fewer --max_tokens")
    return available[:num_samples]
