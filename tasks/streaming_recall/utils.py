"""Functions the streaming_recall YAMLs name with ``!function utils.<name>``.

The code lives in the ``lm_eval_streaming`` package (``recall_data``,
``recall_tasks``); this module only binds it to this folder's data.
"""

from pathlib import Path

try:
    import lm_eval_streaming  # noqa: F401
except ImportError:  # a source checkout used with --include_path, package not installed
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from lm_eval_streaming.harness.recall_data import as_test_split, load_recall_docs
from lm_eval_streaming.harness.recall_tasks import RecallTask, recall_results  # noqa: F401  (named by the YAMLs)

DATA_DIR = Path(__file__).resolve().parent / "data"


def load_dataset(distance, **_metadata):
    """``custom_dataset``: the documents of ``data/streaming_recall_<distance>.jsonl`` as the test split.

    lm-eval also passes the task metadata (and ``--metadata`` / model args) as keyword arguments; ignored.
    """
    return as_test_split(load_recall_docs(DATA_DIR, distance))
