"""The documentation a newcomer walks: the README stays short, and every relative link in it and in docs/
leads somewhere."""

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README_MAX_LINES = 300
# [text](target) and ![alt](target); the target ends at whitespace or ")" (a title after a space is ignored)
LINK = re.compile(r"!?\[[^\]]*\]\(\s*([^)\s]+)(?:\s+\"[^\"]*\")?\s*\)")


def _pages():
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def relative_links(text: str) -> list[str]:
    """The link targets of a markdown text that point into the repository (no URL scheme, no pure anchor),
    without code spans and fenced blocks, where brackets are not links."""
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    text = re.sub(r"`[^`\n]*`", "", text)
    out = []
    for target in LINK.findall(text):
        if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target) or target.startswith("#"):
            continue
        out.append(target)
    return out


def anchors(text: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped (word characters, "-" and spaces kept),
    spaces to "-"; a repeated heading gets "-1", "-2", ..."""
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    seen: dict[str, int] = {}
    out = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def test_link_reader_finds_links_and_skips_code_and_urls():
    text = ("See [a](docs/a.md#x), ![f](fig/p.png), [w](https://x.org/y), [t](#top), "
            "`[no](in_code.md)` and\n```\n[no](fenced.md)\n```\n[b](docs/b.md \"title\")")
    assert relative_links(text) == ["docs/a.md#x", "fig/p.png", "docs/b.md"]
    assert anchors("# A `b` c\n## Kill and resume\n## Kill and resume\n```\n# not a heading\n```") == {
        "a-b-c", "kill-and-resume", "kill-and-resume-1"}


def test_readme_is_at_most_300_lines():
    n = len((REPO / "README.md").read_text(encoding="utf-8").splitlines())
    assert n <= README_MAX_LINES, f"README.md has {n} lines: move detail to a docs/ page"


@pytest.mark.parametrize("page", _pages(), ids=lambda p: p.relative_to(REPO).as_posix())
def test_relative_links_resolve(page):
    broken = []
    for target in relative_links(page.read_text(encoding="utf-8")):
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve()
        if not linked.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked.read_text(encoding="utf-8")):
            broken.append(f"{target} (no such heading)")
    assert not broken, f"{page.relative_to(REPO)}: broken links: {broken}"


def test_docs_verdict_md_criteria_are_written_from_the_rule_records():
    from lm_eval_streaming.analysis.rules_doc import BEGIN, END, block
    from lm_eval_streaming.analysis.verdict import HYPOTHESES

    text = (REPO / "docs" / "verdict.md").read_text(encoding="utf-8")
    committed = BEGIN + text.split(BEGIN, 1)[1].split(END, 1)[0] + END
    assert committed == block(), "run: python3 -m lm_eval_streaming.analysis.rules_doc docs/verdict.md"
    assert all(f"`{r.id}`" in committed for h in HYPOTHESES.values() for r in h.rules)
