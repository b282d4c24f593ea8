"""Experiment grids: ``lm-eval-streaming experiment CONFIG [--output results.jsonl] [--dry-run]``.

- :mod:`.config`: the YAML config, validated with the benchmark's checks, crossed into cells and keyed;
- :mod:`.store`: the JSONL of finished runs (file lock, atomic appends) and claims on cells in progress;
- :mod:`.runner`: runs the unfinished cells, and the CLI.
"""

from .config import ConfigError, cell_key, cell_label, expand_cells, load_config, validate_config
from .runner import add_parser, default_output, main, run, run_experiment
from .store import append_run, check_writable, finished_keys, read_entries

__all__ = ["ConfigError", "add_parser", "append_run", "cell_key", "cell_label", "check_writable", "default_output",
           "expand_cells", "finished_keys", "load_config", "main", "read_entries", "run",
           "run_experiment", "validate_config"]
