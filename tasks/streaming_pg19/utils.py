"""Functions the streaming_pg19 task YAMLs name with ``!function utils.<name>``.

The loader is ``lm_eval_streaming.task_data.load_pg19``: the first
``pg19_num_docs`` (default 10) PG-19 test books with 20000+ Pythia tokens,
cut to exactly ``target_tokens`` tokens. Local stand-in instead of the hub:
``$LM_EVAL_STREAMING_PG19_PATH`` or ``--metadata '{"pg19_path": "..."}'``.
The metric functions come from ../streaming_ppl (its _template.yaml, which
the streaming_pg19 template includes, names ../streaming_ppl/utils.py).
"""

from pathlib import Path

try:
    import lm_eval_streaming  # noqa: F401
except ImportError:  # a source checkout used with --include_path, package not installed
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from lm_eval_streaming.harness.task_data import load_pg19 as load_dataset  # noqa: F401
