#!/usr/bin/env python
"""Try bad inputs through the real commands and count how many give a clear error.

Clear = the command exits non-zero, prints no traceback, and its message names the offending value.
Prints one row per case and a summary line ('N passed, N failed' counts clear / unclear errors).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path


def _cases(tmp: Path) -> list[tuple[str, list[str], str]]:
    """(name, argv, fragment the message must contain)."""
    import transformers.utils
    from transformers import GPT2Config, LlamaConfig, LlamaForCausalLM

    flash = transformers.utils.is_flash_attn_2_available()  # the not-installed cases only where it is not

    no_tok = tmp / "no_tokenizer"
    LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=1)).save_pretrained(no_tok)
    gpt2 = tmp / "gpt2"
    GPT2Config(n_layer=1, n_embd=16, n_head=2).save_pretrained(gpt2)
    (gpt2 / "tokenizer.json").write_text("{}")
    configs = {  # experiment configs, one mistake each (good: none)
        "bad": "name: bad\nmodel_id: smollm2-135m\nmax_tokens: many\ngrid:\n  recent_sizes: [252]\n",
        "missing": "model_id: smollm2-135m\ngrid:\n  max_tokens: [500]\n",
        "unknown": "name: u\nmodel_id: smollm2-135m\nmethods: [sinks_only]\ngrid:\n  max_tokens: [500]\n",
        "one_token": "name: one\nmodel_id: smollm2-135m\nmethods: [streaming_llm]\ngrid:\n  max_tokens: [1, 500]\n",
        "nopath": "name: np\nmodel_id: /does/not/exist\nmethods: [streaming_llm]\nmax_tokens: 500\n",
        "good": "name: g\nmodel_id: smollm2-135m\nmethods: [streaming_llm]\nmax_tokens: 500\nnum_samples: 1\n",
    }
    for name, text in configs.items():
        (tmp / f"{name}.yaml").write_text(text)
    bad_cfg, missing_cfg, unknown_cfg, tiny_cfg, nopath_cfg, good_cfg = (tmp / f"{n}.yaml" for n in configs)
    blocker = tmp / "a_file"
    blocker.write_text("")
    lm_eval = [sys.executable, "-m", "lm_eval", "--tasks", "streaming_ppl_500", "--model", "streaming_hf",
               "--model_args"]
    cli = [sys.executable, "-m", "lm_eval_streaming.cli"]
    return [
        ("negative recent_size", lm_eval + ["recent_size=-1"], "recent_size=-1 is too small"),  # not -1.0
        ("zero recent_size (h2o)", lm_eval + ["method=h2o,recent_size=0"], "recent_size=0 is too small"),
        ("option of another method", lm_eval + ["method=window,position_shift=true"],
         "position_shift=True does not apply to method=window: it has no options"),  # no class attributes listed
        ("zero recent_size (streaming_llm)", lm_eval + ["recent_size=0"], "recent_size=0"),
        ("fractional recent_size", lm_eval + ["recent_size=2.5"], "recent_size=2.5"),
        ("string start_size", lm_eval + ["start_size=abc"], "start_size='abc'"),
        ("unknown method", lm_eval + ["method=sinks"], "method='sinks'"),
        ("chunk_size 0", lm_eval + ["chunk_size=0"], "chunk_size=0"),
        ("typo of an arg", lm_eval + ["recnt_size=3"], "recnt_size"),
        ("path that does not exist", lm_eval + ["pretrained=/does/not/exist"], "/does/not/exist"),
        ("checkpoint without tokenizer", lm_eval + [f"pretrained={no_tok}"], "no tokenizer"),
        ("learned absolute positions (GPT-2)", lm_eval + [f"pretrained={gpt2}"], "'gpt2'"),
        ("unknown attention kernel", lm_eval + ["method=dense,attn_implementation=nonsense"],
         "attn_implementation='nonsense'"),
        *([("flash_attention_2 not installed", lm_eval + ["method=dense,attn_implementation=flash_attention_2"],
            "attn_implementation='flash_attention_2' is not available")] if not flash else []),
        ("benchmark: unknown dtype", cli + ["benchmark", "--dtype", "float8"], "float8"),
        ("benchmark: recent size 0", cli + ["benchmark", "--recent_sizes", "0"], "recent_sizes"),
        ("benchmark: unknown method", cli + ["benchmark", "--method", "sinks", "--max_tokens", "50"], "sinks"),
        ("benchmark: 1 token", cli + ["benchmark", "--max_tokens", "1"], "max_tokens=1"),
        ("benchmark: chunk_size -100", cli + ["benchmark", "--chunk_size", "-100"], "chunk_size=-100"),
        ("benchmark: chunk_size 0", cli + ["benchmark", "--chunk_size", "0"], "chunk_size=0"),
        ("benchmark: num_samples 0", cli + ["benchmark", "--num_samples", "0"], "num_samples=0"),
        ("benchmark: num_warmup -1", cli + ["benchmark", "--num_warmup", "-1"], "num_warmup=-1"),
        ("benchmark: start_size -1", cli + ["benchmark", "--start_size", "-1"], "start_size=-1"),
        ("benchmark: unknown dense kernel", cli + ["benchmark", "--dense_attn", "sdpa,fast"], "dense_attn='fast'"),
        *([("benchmark: dense kernel not installed", cli + ["benchmark", "--dense_attn", "sdpa,flash_attention_2"],
            "dense_attn='flash_attention_2' is not available")] if not flash else []),
        ("benchmark: more samples than the data", cli + ["benchmark", "--num_samples", "1000", "--max_tokens",
                                                         "20000"], "num_samples=1000"),
        ("benchmark: missing model path", cli + ["benchmark", "--model_id", "/does/not/exist"], "/does/not/exist"),
        ("benchmark: unknown device", cli + ["benchmark", "--device", "tpu"], "device='tpu'"),
        ("benchmark: unwritable output", cli + ["benchmark", "--output", str(blocker / "r.json")], "not writable"),
        ("experiment: max_tokens 1", cli + ["experiment", str(tiny_cfg), "--dry-run"], "max_tokens=1"),
        ("experiment: missing model path (dry run)", cli + ["experiment", str(nopath_cfg), "--dry-run"],
         "/does/not/exist"),
        ("experiment: unwritable output", cli + ["experiment", str(good_cfg), "--output", str(blocker / "r.jsonl")],
         "not writable"),
        ("experiment: wrong type", cli + ["experiment", str(bad_cfg), "--dry-run"], "max_tokens"),
        ("experiment: missing field", cli + ["experiment", str(missing_cfg), "--dry-run"], "name"),
        ("experiment: unknown method", cli + ["experiment", str(unknown_cfg), "--dry-run"], "sinks_only"),
        ("experiment: no such file", cli + ["experiment", str(tmp / "nope.yaml")], "nope.yaml"),
        ("analyze: no such file", cli + ["analyze", str(tmp / "nope.json")], "nope.json"),
        ("leaderboard: no such folder", cli + ["leaderboard", str(tmp / "no_dir")], "no_dir"),
    ]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", default=None, metavar="TEXT", help="only the cases whose name contains TEXT")
    args = parser.parse_args(argv)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    clear = unclear = 0
    with tempfile.TemporaryDirectory() as tmp:
        for name, cmd, fragment in _cases(Path(tmp)):
            if args.only and args.only not in name:
                continue
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp, timeout=600)
            lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
            last = lines[-1] if lines else ""
            ok = proc.returncode != 0 and "Traceback" not in proc.stderr and fragment in proc.stderr
            clear, unclear = clear + ok, unclear + (not ok)
            print(f"{'clear  ' if ok else 'UNCLEAR'} | {name:36s} | exit {proc.returncode} | {last[:150]}")
    print(f"bad inputs: {clear} passed, {unclear} failed")
    return 0 if unclear == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
