"""Functions the streaming_passkey YAMLs name with ``!function utils.<name>``.

The fillers are the streaming_recall tasks' (``../streaming_recall/data/filler.jsonl``).
"""

from pathlib import Path

try:
    import lm_eval_streaming  # noqa: F401
except ImportError:  # a source checkout used with --include_path, package not installed
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from lm_eval_streaming.harness.recall_data import as_test_split, load_passkey_docs
from lm_eval_streaming.harness.recall_tasks import passkey_results  # noqa: F401  (named by the YAMLs)

HERE = Path(__file__).resolve().parent
DATA_DIR = HERE / "data"
RECALL_DATA_DIR = HERE.parent / "streaming_recall" / "data"


def load_dataset(distance, **_metadata):
    """``custom_dataset``: ``data/streaming_passkey_<distance>.jsonl`` assembled into prompts, as the test split."""
    return as_test_split(load_passkey_docs(RECALL_DATA_DIR, DATA_DIR, distance))
