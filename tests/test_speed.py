"""``lm-eval-streaming speed`` through the real command, on a small random GPT-NeoX and on the
``plan`` section (Pythia shapes on the meta device). Timings are not asserted (they depend on the
machine); what is checked is what the tables claim beyond timing: the memory numbers against the
model's own shapes, the generation blocks against the arguments, the numerics against their bounds,
and the derived columns against the seconds they are derived from."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from conftest import load_tokenizer

HIDDEN, LAYERS, HEADS = 256, 4, 8
KV_BYTES_PER_TOKEN = 2 * LAYERS * HIDDEN * 4  # keys and values, every layer, float32 (GPT-NeoX: no GQA)


@pytest.fixture(scope="module")
def small_model_dir(tmp_path_factory):
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(0)
    config = GPTNeoXConfig(vocab_size=50304, hidden_size=HIDDEN, intermediate_size=4 * HIDDEN,
                           num_hidden_layers=LAYERS, num_attention_heads=HEADS, rotary_pct=0.25,
                           max_position_embeddings=4096, bos_token_id=0, eos_token_id=0)
    path = tmp_path_factory.mktemp("speed-model")
    GPTNeoXForCausalLM(config).eval().save_pretrained(path)
    load_tokenizer().save_pretrained(path)
    return path


def speed(*argv) -> str:
    proc = subprocess.run([sys.executable, "-m", "lm_eval_streaming.cli", "speed", *map(str, argv)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def table(text: str, title: str) -> list[list[str]]:
    """The rows of the github-style table printed after the line starting with ``title``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title))
    rows = []
    for line in lines[start + 1:]:
        if not line.startswith("|"):
            if rows:
                break
            continue
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows[2:]  # header and rule


@pytest.mark.slow
def test_speed_tables_on_a_small_model(small_model_dir):
    tokens, chunk, start, recent, steady = 600, 128, 4, 60, 40
    lengths = (300, 1200)
    gen_tokens, block = 64, 16
    out = speed("--model_id", small_model_dir, "--tokens", tokens, "--chunk_size", chunk, "--start_size", start,
                "--recent_size", recent, "--steady_tokens", steady, "--memory_lengths", ",".join(map(str, lengths)),
                "--gen_tokens", gen_tokens, "--gen_block", block)

    rows = table(out, f"{tokens}-token document")
    assert [r[0] for r in rows] == [f"streaming_llm chunk_size={chunk}", "streaming_llm chunk_size=1",
                                    "dense, one plain HF forward (sdpa)", f"dense chunked, chunk_size={chunk}"]
    base = float(rows[0][1])
    for name, seconds, ms_per_token, ratio, _ in rows:
        # seconds are printed to 0.05 s, ms/token to 0.005 ms: compare within both roundings
        assert float(ms_per_token) == pytest.approx(1000 * float(seconds) / tokens, abs=0.005 + 1000 * 0.05 / tokens)
        if base > 0.5:  # the printed seconds have one decimal
            assert float(ratio) == pytest.approx(float(seconds) / base, rel=0.15)
    assert rows[1][4] == f"{steady} steady-state tokens x {tokens - 1}"

    mem = table(out, "peak memory vs document length")
    kv = {(r[0], int(r[1])): float(r[2]) for r in mem}
    assert set(kv) == {(m, n) for m in ("streaming_llm", "dense") for n in lengths}
    # Streaming: the cache does not grow with the document; dense: every token's keys and values.
    assert kv[("streaming_llm", lengths[0])] == kv[("streaming_llm", lengths[1])]
    assert kv[("streaming_llm", lengths[1])] <= (start + recent + chunk) * KV_BYTES_PER_TOKEN / 2**20 + 0.05
    for n in lengths:
        assert kv[("dense", n)] == pytest.approx(n * KV_BYTES_PER_TOKEN / 2**20, abs=0.05 + 0.01 * n / 1000)

    gen = table(out, f"generation latency, cache {start}+{recent}")
    assert [r[0] for r in gen] == [f"{i - block + 1}-{i}" for i in range(block, gen_tokens, block)]
    assert [int(r[1]) for r in gen] == [64 + i for i in range(block, gen_tokens, block)]  # 64-token prompt
    assert all(float(r[2]) > 0 for r in gen)

    num = table(out, f"cost of the measured numerics, {tokens}-token document")
    assert num[0][0] == "dense through sdpa (scoring)" and float(num[0][2]) == 1.0
    numerics = out[out.index("cost of the measured numerics"):]  # its result cells hold "|" themselves
    mean, worst = map(float, re.search(r"mean \|dNLL\| (\S+), max (\S+) ", numerics).groups())
    assert 0 <= mean <= worst < 1e-4  # sdpa vs the reference kernel, both float32 on the CPU
    assert float(re.search(r"max \|dlogit\| (\S+) ", numerics).group(1)) < 1e-4  # sdpa is causal
    shadow = [line for line in numerics.splitlines() if line.startswith("| whole-forward error")]
    assert len(shadow) == 2 and "(float32 shadow, located)" in shadow[1], shadow
    # a float32 model is its own float32 shadow: exactly 0, no module off
    assert all("mean |dNLL| 0.00e+00, max 0.00e+00" in line for line in shadow), shadow
    assert "no module off" in shadow[1]


def pythia_parameters(hidden, layers, intermediate, vocab) -> int:
    """GPT-NeoX parameter count from its shapes: untied input/output embeddings, per layer a fused QKV and
    an output projection (with biases), a two-matrix MLP (with biases) and two layer norms; a final norm."""
    attention = 4 * hidden * hidden + 4 * hidden
    mlp = 2 * hidden * intermediate + intermediate + hidden
    norms = 4 * hidden
    return 2 * vocab * hidden + layers * (attention + mlp + norms) + 2 * hidden


@pytest.mark.slow
def test_plan_weights_match_the_pythia_shapes():
    assert pythia_parameters(512, 6, 2048, 50304) == 70_426_624  # Pythia-70M's published count
    rows = table(speed("--only", "plan"), "memory plan")
    shapes = {"pythia-6.9b": (4096, 32, 16384, 50432), "pythia-410m": (1024, 24, 4096, 50304),
              "pythia-70m": (512, 6, 2048, 50304)}
    assert {(r[0], r[1]) for r in rows} == {(s, d) for s in shapes for d in ("float16", "float32")}
    for name, dtype, weights, dense_2k, stream_2k, dense_5k, stream_5k in rows:
        nbytes = pythia_parameters(*shapes[name]) * (2 if dtype == "float16" else 4)
        assert float(weights) == pytest.approx(nbytes / 2**30, abs=0.006), (name, dtype)
        assert stream_2k == stream_5k  # a streaming cache does not grow with the document
        assert float(weights) < float(stream_2k) < float(dense_2k) < float(dense_5k)


def test_eviction_section_kv_flat_and_bounded(small_model_dir):
    """The eviction table through the real command: one row per (method, E), peak KV the same at both
    lengths, and exactly start + recent + E entries for the score-based methods (streaming_llm: start + recent)."""
    start, recent, chunk, lengths, every = 2, 6, 4, (30, 45), (1, 8)  # lengths >= start + recent + 2 * 8
    out = speed("--model_id", small_model_dir, "--only", "eviction", "--start_size", start, "--recent_size", recent,
                "--chunk_size", chunk, "--eviction_lengths", ",".join(map(str, lengths)),
                "--eviction_every", ",".join(map(str, every)))
    rows = table(out, "score-based eviction beside streaming_llm")
    assert [(r[0], r[1]) for r in rows] == [("streaming_llm", "")] + [
        (m, str(e)) for m in ("h2o", "tova", "knorm") for e in every]
    for method, every, ms, *kv in rows:
        assert float(ms) > 0
        assert kv[0] == kv[1], (method, every, kv)
        # score-based: measured before each pruning (the kept + up to E new); streaming_llm: after its chunk's eviction
        entries = start + recent + (int(every) if every else 0)
        assert float(kv[0]) == pytest.approx(entries * KV_BYTES_PER_TOKEN / 2**20, abs=0.006), (method, every)
