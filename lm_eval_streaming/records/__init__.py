"""Records: what a scored run is, and how it is read and written.

- ``run``: the typed record (:class:`Run`, :class:`Row` and their parts; None = not measured).
- ``io``: files of runs (benchmark JSON, experiment JSONL), old layouts, writing.
- ``metrics``: derived quantities, one definition each (context regions, intervals, buckets).
- ``identity``: what identifies an lm-eval run's setting, and its display name.
- ``lm_eval_results``: lm-eval's own results files (found under a folder, their metrics).

Imports only the core and the infrastructure modules (``options``, ``errors``, ``default_model``).
"""

from lm_eval_streaming.records.io import (OutputNotWritable, check_writable, from_json_value, load_runs,
                                          row_from_legacy, run_from_legacy_entry, run_from_legacy_rows, write_run)
from lm_eval_streaming.records.run import (SCHEMA, Buckets, CausalityStats, Interval, KernelErrorStats, RecordError,
                                           Row, Run)

__all__ = ["SCHEMA", "Buckets", "CausalityStats", "Interval", "KernelErrorStats", "OutputNotWritable", "RecordError",
           "Row", "Run", "check_writable", "from_json_value", "load_runs", "row_from_legacy", "run_from_legacy_entry",
           "run_from_legacy_rows", "write_run"]
