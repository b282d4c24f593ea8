"""The built-in cache methods, one small policy class each (imported to register them)."""

from . import streaming_llm, dense, window, sliding_recompute  # noqa: F401  (order = METHODS order)
