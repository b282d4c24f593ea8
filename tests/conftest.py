"""Tiny random models (GPT-NeoX and Llama/GQA) saved with the real GPT-NeoX-20B tokenizer."""

from __future__ import annotations

import os
from pathlib import Path

# Tiny models gain nothing from threads, and threads spin against each other on a shared machine.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
TOKENIZER_DIR = REPO / "tests" / "data" / "gpt-neox-20b"
VOCAB = 50304


def load_tokenizer():
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_file=str(TOKENIZER_DIR / "tokenizer.json"),
        bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>",
    )


def sharpen(model, factor: float = 4.0):
    """Scale query/key weights so attention is peaked and positions matter."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if any(k in name for k in ("q_proj", "k_proj", "query_key_value")):
                p.mul_(factor)
    return model


def make_model(arch: str, layers: int = 2, seed: int = 0, max_positions: int = 256, vocab: int = VOCAB):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    if arch == "gpt_neox":
        cfg = GPTNeoXConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                            num_attention_heads=4, rotary_pct=0.25, max_position_embeddings=max_positions,
                            use_parallel_residual=True, bos_token_id=0, eos_token_id=0)
        model = GPTNeoXForCausalLM(cfg)
    elif arch == "llama":
        cfg = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_positions,
                          bos_token_id=0, eos_token_id=0, tie_word_embeddings=False)
        model = LlamaForCausalLM(cfg)
    else:
        raise ValueError(arch)
    return sharpen(model).float().eval()


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory):
    """{arch: directory} of saved tiny models, loadable with from_pretrained / lm_eval."""
    out = {}
    tok = load_tokenizer()
    for arch in ("gpt_neox", "llama"):
        path = tmp_path_factory.mktemp(f"tiny-{arch}")
        make_model(arch).save_pretrained(path)
        tok.save_pretrained(path)
        out[arch] = path
    return out


def load_tasks_offline(include_path, names: list[str]):
    """lm-eval tasks loaded the way a user meets them: from another directory (/), with the hub offline."""
    from lm_eval.tasks import TaskManager

    mp = pytest.MonkeyPatch()
    here = os.getcwd()
    try:
        mp.setenv("HF_DATASETS_OFFLINE", "1")
        mp.setenv("HF_HUB_OFFLINE", "1")
        os.chdir("/")
        return TaskManager(include_path=str(include_path), include_defaults=False).load(names)
    finally:
        os.chdir(here)
        mp.undo()
