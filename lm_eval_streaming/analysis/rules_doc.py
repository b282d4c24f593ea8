"""docs/verdict.md's criteria and next-step tables, written from the rule records (analysis.rules).

``python3 -m lm_eval_streaming.analysis.rules_doc docs/verdict.md`` rewrites the block between the BEGIN and END
markers; tests/test_docs.py checks that the committed block is what this writes."""

from __future__ import annotations

import sys
from pathlib import Path

from lm_eval_streaming.analysis.rules import criteria_markdown, steps_markdown
from lm_eval_streaming.analysis.verdict import HYPOTHESES

BEGIN = "<!-- criteria: written by `python3 -m lm_eval_streaming.analysis.rules_doc docs/verdict.md` -->"
END = "<!-- end of criteria -->"


def block() -> str:
    return "\n".join([BEGIN, "", *criteria_markdown(HYPOTHESES.values()), "",
                      "What each step runs (`analyze` prints each command once, under Next commands):", "",
                      *steps_markdown(), "", END])


def replace_block(text: str) -> str:
    head, sep, rest = text.partition(BEGIN)
    if not sep:
        raise SystemExit(f"no {BEGIN!r} marker")
    return head + block() + rest.partition(END)[2]


def main(argv=None) -> int:
    path = Path((argv or sys.argv[1:] or ["docs/verdict.md"])[0])
    path.write_text(replace_block(path.read_text(encoding="utf-8")), encoding="utf-8")
    print(f"criteria -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
