"""The lm-eval entry point ``lm_eval_streaming.model:StreamingHFLM`` (named by ``--model streaming_hf``'s
registration and the ``lm_eval.models`` entry point); the adapter lives in :mod:`.harness.model`."""

from lm_eval_streaming.harness.model import StreamingHFLM

__all__ = ["StreamingHFLM"]
