"""Documents of the ``streaming_recall_<D>`` and ``streaming_passkey_<D>`` tasks.

The committed data (``tasks/streaming_recall/data``) hold the long filler texts
once (``filler.jsonl``) and, per distance, small rows saying which filler prefix
each document uses; this module assembles the documents from them, so the
builder (``scripts/make_recall_data.py``), the task loaders and the tests build
the same strings.

Recall document (distance D, Pythia tokens)::

    HEAD + P + SEP + filler[:filler_chars] + tail_sep + HEAD + P
               `------------ D tokens ------------'

``P`` is a seeded list of invented names and numbers (64 Pythia tokens), so the
second copy can only be predicted from the first. Both copies follow the same
cue ``HEAD``; under the Pythia tokenizer the whole document encodes to the
concatenation of the pieces' encodings (checked when the data are built), so
both copies are the same token sequence and exactly D tokens lie between them.

Passkey prompt (haystack of exactly D Pythia tokens)::

    INTRO + before + SEP + NEEDLE + SEP + after + QUESTION   (+ gen_prefix "The pass key is")
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from lm_eval_streaming.harness.task_data import as_test_split, read_jsonl  # noqa: F401  (as_test_split: used by the task loaders)

DISTANCES = (128, 256, 512, 1024, 2000, 4000, 8000, 16000)
PASSAGE_TOKENS = 64
DOCS_PER_DISTANCE = 20
PASSKEY_DEPTHS = (0, 25, 50, 75, 100)  # percent of the haystack before the needle

HEAD = "Membership list, names and numbers:"
SEP = "\n\n"
INTRO = ("There is a pass key hidden inside a lot of irrelevant text. Find it and remember it: "
         "I will ask you for it at the end.\n\n")
NEEDLE = "The pass key is {key}. Remember it. {key} is the pass key."
QUESTION = "\n\nWhat is the pass key?"
GEN_PREFIX = "The pass key is"

RECALL_FIELDS = ("doc_id", "distance", "passage", "n_passage_tokens_pythia", "filler_id", "filler_chars", "tail_sep")
PASSKEY_FIELDS = ("doc_id", "distance", "depth_percent", "needle_offset_tokens", "passkey", "filler_id",
                  "before_chars", "after_start", "after_chars")


@lru_cache(maxsize=4)
def load_fillers(data_dir: str) -> dict[int, dict]:
    """``filler.jsonl`` of ``data_dir``: {filler_id: row}."""
    path = Path(data_dir) / "filler.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (regenerate with scripts/make_recall_data.py)")
    return {int(row["filler_id"]): row for row in read_jsonl(path)}


# --------------------------------------------------------------------------- recall


def recall_between(filler: str, filler_chars: int, tail_sep: str = SEP) -> str:
    """What lies between the two copies: D tokens. ``tail_sep`` is SEP, or one newline where no
    filler prefix gives exactly D tokens with SEP (a blank line before a word is two tokens)."""
    return SEP + filler[:filler_chars] + tail_sep + HEAD


def recall_pieces(passage: str, filler: str, filler_chars: int, tail_sep: str = SEP) -> tuple[str, str, str, str]:
    """(HEAD, P, between, P): the document is their concatenation."""
    return HEAD, passage, recall_between(filler, filler_chars, tail_sep), passage


def recall_document(row: dict, fillers: dict[int, dict]) -> dict:
    """A task document: the row plus ``context_first``, ``context_second``, ``continuation``, ``text``."""
    filler = fillers[int(row["filler_id"])]
    head, passage, between, _ = recall_pieces(row["passage"], filler["text"], int(row["filler_chars"]),
                                              row["tail_sep"])
    context_second = head + passage + between
    return {
        **{k: row[k] for k in RECALL_FIELDS},
        "source_title": filler["title"],
        "context_first": head,
        "context_second": context_second,
        "continuation": passage,
        "text": context_second + passage,
    }


def load_recall_docs(data_dir: str | os.PathLike, distance: int) -> list[dict]:
    data_dir = Path(data_dir).resolve()
    distance = int(distance)
    path = data_dir / f"streaming_recall_{distance}.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (distances: {', '.join(map(str, DISTANCES))}; "
                                f"regenerate with scripts/make_recall_data.py)")
    fillers = load_fillers(str(data_dir))
    docs = [recall_document(row, fillers) for row in read_jsonl(path)]
    bad = [d["doc_id"] for d in docs if int(d["distance"]) != distance]
    if bad:
        raise ValueError(f"{path}: documents {bad} are not at distance {distance}")
    return docs


# --------------------------------------------------------------------------- passkey


def passkey_haystack(filler: str, before_chars: int, after_start: int, after_chars: int, key: str) -> str:
    """The filler with the needle inserted: exactly D Pythia tokens."""
    before = filler[:before_chars]
    after = filler[after_start:after_start + after_chars]
    return SEP.join(part for part in (before, NEEDLE.format(key=key), after) if part)


def passkey_prompt(haystack: str) -> str:
    """doc_to_text; lm-eval appends " " + GEN_PREFIX (or the chat template opens the answer with it)."""
    return INTRO + haystack + QUESTION


def passkey_document(row: dict, fillers: dict[int, dict]) -> dict:
    filler = fillers[int(row["filler_id"])]
    haystack = passkey_haystack(filler["text"], int(row["before_chars"]), int(row["after_start"]),
                                int(row["after_chars"]), str(row["passkey"]))
    return {**{k: row[k] for k in PASSKEY_FIELDS}, "source_title": filler["title"], "haystack": haystack,
            "prompt": passkey_prompt(haystack)}


def load_passkey_docs(recall_data_dir: str | os.PathLike, data_dir: str | os.PathLike, distance: int) -> list[dict]:
    """Passkey documents of one distance; the fillers are the recall tasks' (``recall_data_dir``)."""
    distance = int(distance)
    path = Path(data_dir).resolve() / f"streaming_passkey_{distance}.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (distances: {', '.join(map(str, DISTANCES))}; "
                                f"regenerate with scripts/make_recall_data.py)")
    fillers = load_fillers(str(Path(recall_data_dir).resolve()))
    docs = [passkey_document(row, fillers) for row in read_jsonl(path)]
    bad = [d["doc_id"] for d in docs if int(d["distance"]) != distance]
    if bad:
        raise ValueError(f"{path}: documents {bad} are not at distance {distance}")
    return docs
