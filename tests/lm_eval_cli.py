"""lm-eval's own command line, run in this process (the ``lm_eval`` console script's code path, without
paying its start-up once per call): ``lm_eval_cli(["--model", "streaming_hf", ...])``."""

from __future__ import annotations

import sys


def lm_eval_cli(argv: list[str]) -> None:
    from lm_eval._cli import HarnessCLI

    old = sys.argv
    sys.argv = ["lm_eval", *map(str, argv)]
    try:
        parser = HarnessCLI()
        parser.execute(parser.parse_args())
    finally:
        sys.argv = old


def ppl_run(out, pretrained, model_args: str, *extra, limit=3, task="streaming_ppl_500") -> None:
    """One streaming_hf perplexity run of ``task`` with --log_samples into ``out``."""
    model_args = f"pretrained={pretrained},chunk_size=64,{model_args}".rstrip(",")
    args = ["--model", "streaming_hf", "--model_args", model_args,
            "--tasks", task, "--device", "cpu", "--output_path", out, "--log_samples", *extra]
    lm_eval_cli(args + (["--limit", limit] if limit is not None else []))
