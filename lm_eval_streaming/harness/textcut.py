"""Cut texts to an exact number of Pythia (GPT-NeoX-20B) tokens.

One home for the text preparation shared by ``scripts/make_task_data.py`` (which
derives the committed ``streaming_ppl`` data) and the PG-19 loader in
``lm_eval_streaming.harness.task_data`` (which cuts books at load time).

Decoding a slice of token ids and re-encoding it can change the token count at
the cut, so :func:`cut_to_n_tokens` cuts the *text* and checks the count of the
re-encoded prefix: the result always encodes to exactly ``n`` tokens, and cuts
of the same text for growing ``n`` are prefixes of one another.
"""

from __future__ import annotations

import bisect
import os
import re
import unicodedata
from pathlib import Path

# The tokenizer shared by the Pythia suite (same vocabulary and merges).
PYTHIA_TOKENIZER_HUB_ID = "EleutherAI/gpt-neox-20b"
TOKENIZER_ENV = "LM_EVAL_STREAMING_TOKENIZER"
# Where a source checkout keeps a copy (tests/ is not installed with the package).
_CHECKOUT_TOKENIZER = (
    Path(__file__).resolve().parents[2] / "tests" / "data" / "gpt-neox-20b" / "tokenizer.json"
)


class TextTooShortError(ValueError):
    """The text has fewer tokens than asked for."""


class NoExactCutError(ValueError):
    """No prefix of the text encodes to exactly the number of tokens asked for.

    It happens when token ``n`` of the full text is the second character of a
    whitespace run such as a blank line: at the end of a string the run becomes
    one token, so the prefix count jumps from ``n - 1`` to ``n + 1``.
    """


def load_pythia_tokenizer(path: str | os.PathLike | None = None):
    """The GPT-NeoX-20B / Pythia ``tokenizers.Tokenizer``.

    Looked up in order: ``path``; ``$LM_EVAL_STREAMING_TOKENIZER`` (a
    ``tokenizer.json`` file, or a hub id); the copy in a source checkout
    (``tests/data/gpt-neox-20b/tokenizer.json``); the hub
    (``EleutherAI/gpt-neox-20b``, served from the local cache when offline).
    """
    from tokenizers import Tokenizer

    spec = path or os.environ.get(TOKENIZER_ENV)
    if spec:
        spec_path = Path(spec).expanduser()
        if spec_path.is_dir():
            spec_path = spec_path / "tokenizer.json"
        if spec_path.is_file():
            return Tokenizer.from_file(str(spec_path))
        return Tokenizer.from_file(_hub_tokenizer_file(str(spec)))
    if _CHECKOUT_TOKENIZER.is_file():
        return Tokenizer.from_file(str(_CHECKOUT_TOKENIZER))
    return Tokenizer.from_file(_hub_tokenizer_file(PYTHIA_TOKENIZER_HUB_ID))


def _hub_tokenizer_file(repo_id: str) -> str:
    """``tokenizer.json`` of a hub model, through the huggingface_hub cache (works offline once cached)."""
    from huggingface_hub import hf_hub_download

    return hf_hub_download(repo_id, "tokenizer.json")


def count_tokens(text: str, tokenizer) -> int:
    """Number of tokens of ``text`` (no special tokens added)."""
    return len(tokenizer.encode(text, add_special_tokens=False).ids)


# --------------------------------------------------------------------------- cleaning

_GUTENBERG_START = re.compile(
    r"^\s*(\*\*\*\s*START OF (THE|THIS) PROJECT GUTENBERG.*"
    r"|\*END\*\s*THE SMALL PRINT.*)$",
    re.IGNORECASE | re.MULTILINE,
)
_GUTENBERG_END = re.compile(
    r"^\s*(\*\*\*\s*END OF (THE|THIS) PROJECT GUTENBERG.*"
    r"|END OF (THE )?PROJECT GUTENBERG.*"
    r"|End of Project Gutenberg'?s.*)$",
    re.IGNORECASE | re.MULTILINE,
)


def strip_gutenberg_boilerplate(text: str) -> str:
    """Drop a Project Gutenberg licence header and footer, if present.

    Everything up to and including the last ``*** START OF ... PROJECT GUTENBERG``
    (or ``*END*THE SMALL PRINT``) line goes, and everything from the first
    ``*** END OF ...`` / ``End of (the) Project Gutenberg ...`` line after it.
    Texts without the markers come back unchanged.
    """
    starts = list(_GUTENBERG_START.finditer(text))
    if starts:
        text = text[starts[-1].end() :]
    end = _GUTENBERG_END.search(text)
    if end:
        text = text[: end.start()]
    return text


def normalize_text(text: str) -> str:
    """NFC, ``\\n`` line ends, no trailing blanks on lines, at most one empty line in a row,
    no leading or trailing whitespace."""
    text = unicodedata.normalize("NFC", text)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = re.sub(r"[ \t]+\n", "\n", text)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip()


# --------------------------------------------------------------------------- cutting


def _encode_prefix(text: str, n: int, tokenizer):
    """Encoding of a prefix of ``text`` holding more than ``n`` tokens (or all of it)."""
    n_chars = min(len(text), 8 * n + 1024)
    while True:
        enc = tokenizer.encode(text[:n_chars], add_special_tokens=False)
        if len(enc.ids) > n or n_chars >= len(text):
            return enc, n_chars
        n_chars = min(len(text), 2 * n_chars)


def cut_to_n_tokens(text: str, n: int, tokenizer) -> str:
    """The prefix of ``text`` that encodes to exactly ``n`` tokens.

    ``text`` should be normalized already (see :func:`normalize_text`); the cut
    is a plain prefix ``text[:p]``, so cuts of one text for growing ``n`` are
    prefixes of one another.

    The cut prefers a word boundary (the prefix ends with a complete
    whitespace-delimited word). When token ``n`` ends inside a word that
    tokenizes to several tokens, no word boundary gives exactly ``n`` tokens; the
    cut then takes the first position in the gap that does, preferring one
    inside the whitespace after the previous word, then one inside the word.

    Raises :class:`TextTooShortError` when the text has fewer than ``n`` tokens.
    """
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    enc, n_chars = _encode_prefix(text, n, tokenizer)
    if len(enc.ids) < n:
        raise TextTooShortError(f"text has {len(enc.ids)} tokens, fewer than {n}")
    if len(enc.ids) == n and n_chars == len(text):
        return text

    # For a word boundary p (text[p-1] not a space, text[p] a space, or p the end
    # of the whole text) the pre-tokenizer splits there, so text[:p] encodes to
    # exactly the tokens of the full encoding that start before p.
    starts = [start for start, _ in enc.offsets]

    def count_at(p: int) -> int:
        return bisect.bisect_left(starts, p)

    limit = n_chars if n_chars == len(text) else n_chars - 1
    boundaries = [m.end() for m in re.finditer(r"\S+", text[:n_chars]) if m.end() <= limit]
    if n_chars == len(text) and (not boundaries or boundaries[-1] != len(text)):
        boundaries.append(len(text))

    # Largest boundary with count <= n (counts grow with p).
    lo, hi = 0, len(boundaries)
    while lo < hi:
        mid = (lo + hi) // 2
        if count_at(boundaries[mid]) <= n:
            lo = mid + 1
        else:
            hi = mid
    idx = lo - 1  # boundaries[idx] is the last one with count <= n

    if idx >= 0 and count_at(boundaries[idx]) == n:
        cut = text[: boundaries[idx]]
        if count_tokens(cut, tokenizer) == n:
            return cut

    # Token n ends inside a word: search the gap between the previous boundary
    # and the next one, trailing-whitespace cuts first.
    gap_lo = boundaries[idx] if idx >= 0 else 0
    gap_hi = boundaries[idx + 1] if idx + 1 < len(boundaries) else n_chars
    word_start = gap_lo
    while word_start < gap_hi and text[word_start].isspace():
        word_start += 1
    candidates = list(range(gap_lo + 1, word_start + 1)) + list(range(word_start + 1, gap_hi))
    for p in candidates:
        cut = text[:p]
        if count_tokens(cut, tokenizer) == n:
            return cut
    # Prefixes ending after gap_hi have more than n tokens, and those ending
    # before gap_lo (barring a partial word that splits into more tokens than
    # the whole word) at most count_at(gap_lo) < n: no prefix has exactly n.
    raise NoExactCutError(f"no prefix of the text has exactly {n} tokens")


def cut_lengths(text: str, lengths, tokenizer, max_start_shift: int = 200) -> tuple[int, dict[int, str]]:
    """Nested cuts of one text to each length in ``lengths``.

    Returns ``(start, {n: cut})`` where every cut is a prefix of
    ``text[start:]`` with exactly ``n`` tokens, so shorter cuts are prefixes of
    longer ones. ``start`` is 0 unless some length has no exact cut from there
    (:class:`NoExactCutError`); then the start moves forward to the next line
    that is not blank, up to ``max_start_shift`` lines.

    Raises :class:`TextTooShortError` when the text is too short for the
    longest length, :class:`NoExactCutError` when no start works.
    """
    lengths = sorted(set(int(n) for n in lengths))
    start = 0
    for _ in range(max_start_shift + 1):
        body = text[start:]
        try:
            cuts = {n: cut_to_n_tokens(body, n, tokenizer) for n in lengths}
        except NoExactCutError:
            nxt = _next_line_start(text, start)
            if nxt is None:
                break
            start = nxt
            continue
        ordered = [cuts[n] for n in lengths]
        for shorter, longer in zip(ordered, ordered[1:]):
            if not longer.startswith(shorter):
                raise AssertionError("cuts of one text are not nested prefixes")
        return start, cuts
    raise NoExactCutError(f"no start within {max_start_shift} lines gives exact cuts for {lengths}")


def _next_line_start(text: str, start: int) -> int | None:
    """Offset of the first non-blank line after the line holding ``start``."""
    m = re.compile(r"\n[ \t]*(?=\S)").search(text, start)
    return m.end() if m else None
