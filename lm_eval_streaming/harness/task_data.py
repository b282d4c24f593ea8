"""Datasets of the streaming perplexity tasks, built in Python for lm-eval.

The task YAMLs name ``custom_dataset: !function utils.load_dataset``; lm-eval
0.4.13 calls that function as ``custom_dataset(**metadata, **dataset_kwargs)``
(``ConfigurableTask.download``) and uses the ``datasets.DatasetDict`` it returns
instead of calling ``datasets.load_dataset``. ``metadata`` holds the task's own
``metadata`` plus whatever the user passed (``--metadata``, and lm-eval's CLI
adds the ``--model_args``), so the loaders take ``**kwargs`` and ignore unknown keys.

* ``streaming_ppl``: committed JSONL files next to the task YAMLs, read by
  absolute path (``tasks/streaming_ppl/utils.py`` passes its own ``data/`` dir),
  so loading works from any current directory and offline.
* ``streaming_pg19``: the PG-19 test split, each of the first ``pg19_num_docs``
  books long enough cut to exactly ``target_tokens`` Pythia tokens.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from pathlib import Path

from lm_eval_streaming.harness.textcut import (
    NoExactCutError,
    TextTooShortError,
    cut_lengths,
    load_pythia_tokenizer,
    normalize_text,
    strip_gutenberg_boilerplate,
)

log = logging.getLogger(__name__)

# Document lengths (Pythia tokens) of the streaming_ppl_<N> / streaming_pg19_<N> tasks.
LENGTHS = (500, 1000, 2000, 5000, 10000, 20000)
FIELDS = ("text", "title", "source_file", "n_tokens_pythia")

PG19_HUB_PATH = "deepmind/pg19"
# deepmind/pg19 is a loading-script dataset, which datasets>=4 refuses to run;
# this parquet copy of its test split is used instead when that happens.
PG19_HUB_FALLBACK = "emozilla/pg19-test"
PG19_PATH_ENV = "LM_EVAL_STREAMING_PG19_PATH"
PG19_HUB_ENV = "LM_EVAL_STREAMING_PG19_HUB"
PG19_NUM_DOCS = 10


# --------------------------------------------------------------------------- helpers


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def as_test_split(rows: list[dict]):
    """``DatasetDict({"test": Dataset})`` of ``rows`` (in memory, no cache files)."""
    import datasets

    if not rows:
        raise ValueError("no documents")
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


# --------------------------------------------------------------------------- streaming_ppl


def load_jsonl_task(data_dir: str | os.PathLike, target_tokens: int, prefix: str = "streaming_ppl"):
    """The committed ``<data_dir>/<prefix>_<target_tokens>.jsonl`` as a test split."""
    target_tokens = int(target_tokens)
    path = Path(data_dir).resolve() / f"{prefix}_{target_tokens}.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (regenerate with scripts/make_task_data.py)")
    rows = read_jsonl(path)
    for i, row in enumerate(rows):
        if int(row["n_tokens_pythia"]) != target_tokens:
            raise ValueError(f"{path}: document {i} has {row['n_tokens_pythia']} tokens, not {target_tokens}")
    return as_test_split([{k: row[k] for k in FIELDS} for row in rows])


# --------------------------------------------------------------------------- PG-19


def _local_rows(path: Path) -> list[dict]:
    """Rows of a local PG-19 stand-in: a .jsonl / .json / .parquet file or a folder of them."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in (".jsonl", ".json", ".parquet"))
        if not files:
            raise FileNotFoundError(f"no .jsonl/.json/.parquet files in {path}")
        return [row for f in files for row in _local_rows(f)]
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    if path.suffix == ".json":
        with open(path, encoding="utf-8") as fh:
            first = fh.read(1)
        if first == "[":
            with open(path, encoding="utf-8") as fh:
                return list(json.load(fh))
    return read_jsonl(path)


def _iter_pg19_books(source: str, is_local: bool):
    """(index, row) of the PG-19 test split, in source order."""
    if is_local:
        yield from enumerate(_local_rows(Path(source).expanduser()))
        return
    import datasets

    try:
        ds = datasets.load_dataset(source, split="test")
    except RuntimeError as err:
        if "scripts are no longer supported" not in str(err) or source != PG19_HUB_PATH:
            raise
        log.warning(
            "%s is a loading-script dataset, which datasets %s cannot run; using %s "
            "(a parquet copy of the PG-19 test split) instead.",
            source,
            datasets.__version__,
            PG19_HUB_FALLBACK,
        )
        ds = datasets.load_dataset(PG19_HUB_FALLBACK, split="test")
    yield from enumerate(ds)


def _pg19_source(pg19_path=None, pg19_hub_path=None) -> tuple[str, bool]:
    local = pg19_path or os.environ.get(PG19_PATH_ENV)
    if local:
        return str(Path(local).expanduser().resolve()), True
    return pg19_hub_path or os.environ.get(PG19_HUB_ENV) or PG19_HUB_PATH, False


@functools.lru_cache(maxsize=8)
def _pg19_cuts(source: str, is_local: bool, num_docs: int, lengths: tuple[int, ...]):
    """The first ``num_docs`` books with exact nested cuts for every length: [(meta, {n: text})]."""
    tokenizer = load_pythia_tokenizer()
    picked = []
    skipped = 0
    for index, row in _iter_pg19_books(source, is_local):
        text = normalize_text(strip_gutenberg_boilerplate(row["text"]))
        try:
            _, cuts = cut_lengths(text, lengths, tokenizer)
        except (TextTooShortError, NoExactCutError):
            skipped += 1
            continue
        title = row.get("short_book_title") or row.get("title") or f"pg19 test book {index}"
        meta = {"title": str(title), "source_file": f"{source}#{index}"}
        picked.append((meta, cuts))
        if len(picked) == num_docs:
            break
    if len(picked) < num_docs:
        log.warning("PG-19 (%s): only %d books have %d+ tokens", source, len(picked), max(lengths))
    if skipped:
        log.info("PG-19 (%s): skipped %d books shorter than %d tokens", source, skipped, max(lengths))
    return tuple(picked)


def pg19_documents(
    target_tokens: int,
    num_docs: int = PG19_NUM_DOCS,
    pg19_path: str | None = None,
    pg19_hub_path: str | None = None,
    lengths=LENGTHS,
) -> list[dict]:
    """Documents of ``streaming_pg19_<target_tokens>``.

    The first ``num_docs`` books of the PG-19 test split (source order) that
    are at least ``max(lengths, target_tokens)`` tokens long, each cut to
    exactly ``target_tokens`` tokens with the same cutting as the committed
    ``streaming_ppl`` data. Books are picked and cut for all ``lengths`` at
    once, so every length uses the same books and shorter documents are
    prefixes of longer ones.

    The source is, in order: ``pg19_path`` or ``$LM_EVAL_STREAMING_PG19_PATH``
    (a local .jsonl/.json/.parquet file or folder with a ``text`` field, e.g. a
    stand-in for tests); else the hub dataset ``pg19_hub_path`` or
    ``$LM_EVAL_STREAMING_PG19_HUB`` or ``deepmind/pg19`` (``datasets.load_dataset``,
    cached by ``datasets``, so offline runs work once it has been downloaded).
    """
    target_tokens = int(target_tokens)
    source, is_local = _pg19_source(pg19_path, pg19_hub_path)
    all_lengths = tuple(sorted({int(n) for n in lengths} | {target_tokens}))
    picked = _pg19_cuts(source, is_local, int(num_docs), all_lengths)
    return [{**meta, "text": cuts[target_tokens], "n_tokens_pythia": target_tokens} for meta, cuts in picked]


def load_pg19(target_tokens, pg19_num_docs=PG19_NUM_DOCS, pg19_path=None, pg19_hub_path=None, **_metadata):
    """``custom_dataset`` of the ``streaming_pg19_<N>`` tasks (see :func:`pg19_documents`).

    ``pg19_num_docs`` / ``pg19_path`` / ``pg19_hub_path`` can be given with
    lm-eval's ``--metadata``; other keyword arguments are ignored.
    """
    rows = pg19_documents(target_tokens, pg19_num_docs, pg19_path, pg19_hub_path)
    return as_test_split([{k: row[k] for k in FIELDS} for row in rows])
