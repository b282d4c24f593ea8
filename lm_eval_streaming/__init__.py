"""lm-eval-streaming: score Hugging Face causal LMs with a StreamingLLM KV cache in lm-eval."""

__version__ = "0.1.0"
