"""Functions the streaming_ppl task YAMLs name with ``!function utils.<name>``.

The code lives in the ``lm_eval_streaming`` package (``task_data``,
``task_metrics``); this module only binds it to this folder's data.
"""

from pathlib import Path

try:
    import lm_eval_streaming  # noqa: F401
except ImportError:  # a source checkout used with --include_path, package not installed
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from lm_eval_streaming.harness.task_data import load_jsonl_task
from lm_eval_streaming.harness.task_metrics import (  # noqa: F401  (named by the YAMLs)
    agg_bucket_nll,
    agg_sum,
    agg_token_accuracy,
    agg_token_accuracy_stderr,
    agg_token_perplexity,
    agg_token_perplexity_stderr,
    process_results,
)

DATA_DIR = Path(__file__).resolve().parent / "data"


def load_dataset(target_tokens, **_metadata):
    """``custom_dataset``: ``data/streaming_ppl_<target_tokens>.jsonl`` as the test split.

    lm-eval passes the task metadata (and user ``--metadata`` / model args) as
    keyword arguments too; they are ignored.
    """
    return load_jsonl_task(DATA_DIR, target_tokens)
