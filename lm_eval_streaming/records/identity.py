"""What identifies the setting of an lm-eval run (a ``results_*.json``), and its display name.

Two runs are merged into one leaderboard row only when everything that can change a number is
equal: the model (its resolved path or hub id, revision and sha; a local directory has no revision),
the lm-eval model type, the method, its cache sizes and its own options (``evict_every``,
``position_shift``, defaults filled in), the chunk size, the attention kernel, the dtype,
the device, ``--limit``, the prompt (chat template, system instruction, few-shot as multi-turn),
``--gen_kwargs``, the seeds and any other model argument; per task, the number of few-shot examples,
the task version and its config (:func:`task_setting`). Names are shortened
only for display (``tiny-neox__dense``); when two different settings would get the same name,
the name grows by what tells them apart (``a/tiny-neox``, ``-float16``, ``@v2``, ...).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from pathlib import Path

from lm_eval_streaming.core.loading import canonical_model_id
from lm_eval_streaming.default_model import DEFAULT_MODEL_NAME, lookup, model_of_checkpoint
from lm_eval_streaming.options import (DEFAULT_CHUNK_SIZE, DEFAULT_METHOD, DEFAULT_RECENT_SIZE, DEFAULT_START_SIZE, FULL_CHUNK,
                                       as_int)

HF_MODELS = ("hf", "hf-auto", "huggingface")
STREAMING_MODEL = "streaming_hf"
# Model args that change how a result is computed, not what it is.
NEUTRAL_ARGS = frozenset({"batch_size", "max_batch_size", "device", "parallelize", "device_map",
                          "max_memory_per_gpu", "max_cpu_memory", "offload_folder", "trust_remote_code"})
# Model args naming a checkpoint directory or hub id: one spelling each, like the model's.
PATH_ARGS = frozenset({"tokenizer", "peft", "delta"})
# Model args read into their own fields below.
POLICY_ARGS = ("evict_every", "position_shift")  # the methods' own options (core/methods)
OWN_ARGS = frozenset({"pretrained", "method", "start_size", "recent_size", "chunk_size", "dtype", "revision",
                      "attn_implementation", *POLICY_ARGS})
# Everything that identifies a setting, in the order its qualifiers are added to a display name.
KEY_FIELDS = ("lm_eval_model", "model_id", "method", "start_size", "recent_size", "policy_options", "revision",
              "model_sha", "dtype", "attn_implementation", "chunk_size", "device", "limit", "prompt", "gen_kwargs",
              "seeds", "extra_args")
SEEDS = ("random_seed", "numpy_seed", "torch_seed", "fewshot_seed")


def parse_model_args(model_args) -> dict:
    """``"pretrained=x,method=dense"`` or a dict -> dict (string values kept)."""
    if model_args is None:
        return {}
    if isinstance(model_args, dict):
        return dict(model_args)
    out = {}
    for part in str(model_args).split(","):
        if "=" in part:
            k, v = part.split("=", 1)
            out[k.strip()] = v.strip()
    return out


def _looks_local(text: str) -> bool:
    return text.startswith(("/", "./", "../", "~")) or text.count("/") > 1 or Path(text).is_dir()


def model_id(pretrained) -> str:
    """The model's identity: an embedded model's name, a hub id, or a local path as recorded (normalised)."""
    if pretrained is None or not str(pretrained).strip():
        return DEFAULT_MODEL_NAME
    embedded = lookup(str(pretrained))
    if embedded is not None:
        return embedded.name
    text = str(pretrained).strip()
    if not _looks_local(text):
        return text
    # one checkpoint under two spellings (a symlink, a relative path) is one model: core.loading's rule
    text = canonical_model_id(os.path.normpath(os.path.expanduser(text)))
    # The official conversion of an embedded model (another GGUF's conversion is another model).
    return model_of_checkpoint(text) or text


def short_model(model: str) -> str:
    """Display name of a model id: hub ids and the default model as they are, local paths by their last part."""
    return Path(model).name if _looks_local(model) else model


def _first_int(name: str, *values, default=None):
    for value in values:
        if value is not None and value != "":
            return as_int(name, value, 0)
    return default


def _policy(method: str, config: dict, args: dict):
    """(start_size, recent_size, full_attention, options) as recorded, defaults filled in; ``options``: the
    method's own fields (``evict_every``, ``position_shift``) with the method's defaults, as {name: value},
    so ``evict_every=1`` given or left to its default is one setting."""
    start = _first_int("start_size", config.get("streaming_start_size"), args.get("start_size"),
                       default=DEFAULT_START_SIZE)
    recent = _first_int("recent_size", config.get("streaming_recent_size"), args.get("recent_size"),
                        default=DEFAULT_RECENT_SIZE)
    from lm_eval_streaming.core.methods import policy_for

    given = {k: config.get(f"streaming_{k}") if config.get(f"streaming_{k}") is not None else args.get(k)
             for k in POLICY_ARGS}
    try:
        policy = policy_for(method, start, recent)
        own = sorted({f.name for f in dataclasses.fields(policy)} - {"start_size", "recent_size"})
        # replace validates the recorded values as the method does; None keeps the method's default
        policy = dataclasses.replace(policy, **{k: given[k] for k in own if given.get(k) is not None})
    except ValueError:  # a method or option this version does not know: keep what was recorded
        return start, recent, False, {k: v for k, v in sorted(given.items()) if v is not None}
    return (*policy.record_sizes(), policy.full_attention, {k: getattr(policy, k) for k in own})


def _limit(value):
    if value is None or value == "":
        return None
    value = float(value)
    return int(value) if value.is_integer() else value


def _dtype(config: dict, args: dict) -> str:
    raw = str(config.get("model_dtype") or args.get("dtype") or "")
    return raw[len("torch."):] if raw.startswith("torch.") else raw


def _canonical_kwargs(value) -> str | None:
    """``--gen_kwargs`` as recorded (a dict, or the CLI string): sorted ``k=v``; None when empty."""
    items = parse_model_args(value) if isinstance(value, str) else dict(value or {})
    return ",".join(f"{k}={items[k]}" for k in sorted(items)) or None


def task_setting(data: dict, task: str) -> str:
    """What changes a task's numbers inside one run: its few-shot count, version and config (lm-eval's
    recorded task config without ``metadata``, which repeats the model args), as ``2-shot v1.0 3f2a9c1e``."""
    config = dict((data.get("configs") or {}).get(task) or {})
    config.pop("metadata", None)
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:8]
    shots = (data.get("n-shot") or {}).get(task, config.get("num_fewshot"))
    return f"{shots if shots is not None else '?'}-shot v{(data.get('versions') or {}).get(task, '?')} {digest}"


def run_identity(data: dict) -> dict:
    """Identity fields (``KEY_FIELDS``), ``key`` (a tuple of them), ``model`` (short) and ``model_name``
    (the undisambiguated display name) of one lm-eval results JSON."""
    config = data.get("config") or {}
    args = parse_model_args(config.get("model_args"))
    lm_model = str(config.get("model") or "")
    mid = model_id(config.get("streaming_pretrained") or args.get("pretrained"))
    ident = {"lm_eval_model": lm_model,
             "model_id": mid,
             # transformers ignores a revision for a local directory
             "revision": "main" if _looks_local(mid) else str(config.get("model_revision") or args.get("revision")
                                                             or "main"),
             "model_sha": str(config.get("model_sha") or ""),
             "dtype": _dtype(config, args),
             "device": str(config.get("streaming_device") or config.get("device") or ""),
             "limit": _limit(config.get("limit")),
             "prompt": "|".join([str(data.get("chat_template_sha") or ""), str(data.get("system_instruction_sha") or ""),
                                 "multiturn" if data.get("fewshot_as_multiturn") is True else ""]).strip("|") or None,
             "gen_kwargs": _canonical_kwargs(config.get("gen_kwargs")),
             "seeds": "/".join(str(config.get(k)) for k in SEEDS) if any(k in config for k in SEEDS) else None,
             "extra_args": ",".join(f"{k}={model_id(v) if k in PATH_ARGS else v}" for k, v in sorted(args.items())
                                    if k not in NEUTRAL_ARGS | OWN_ARGS) or None}
    if lm_model in HF_MODELS:
        method, start, recent, chunk, suffix, options = "hf (windowed)", None, None, None, "hf-windowed", None
        values = {}
        attn = args.get("attn_implementation")
    elif lm_model == STREAMING_MODEL or not lm_model:
        method = str(config.get("streaming_method") or args.get("method") or DEFAULT_METHOD)
        start, recent, full, values = _policy(method, config, args)
        options = ",".join(f"{k}={v}" for k, v in values.items()) or None
        given = config.get("streaming_chunk_size") or args.get("chunk_size")
        chunk = FULL_CHUNK if str(given).strip().lower() == FULL_CHUNK else _first_int(
            "chunk_size", config.get("streaming_chunk_size"), args.get("chunk_size"), default=DEFAULT_CHUNK_SIZE)
        attn = config.get("streaming_attn_implementation") or args.get("attn_implementation")
        suffix = method if full or recent is None else f"{method}-s{start}-r{recent}"
    else:
        method, start, recent, chunk, options, values = lm_model, None, None, None, None, {}
        attn = args.get("attn_implementation")
        suffix = re.sub(r"[^A-Za-z0-9._-]+", "-", lm_model)
    ident.update(method=method, start_size=start, recent_size=recent, policy_options=options, chunk_size=chunk,
                 attn_implementation=attn, policy_values=values)
    model = short_model(ident["model_id"])
    ident.update(key=tuple(ident[k] for k in KEY_FIELDS), model=model, model_name=f"{model}__{suffix}",
                 suffix=suffix, model_args=config.get("model_args"))
    return ident


# How a field that tells two settings apart lengthens their display names.
QUALIFIERS = {
    "policy_options": lambda v: f"-{v}" if v else "",
    "revision": lambda v: f"@{v}",
    "model_sha": lambda v: f"@{str(v)[:12] or 'no-sha'}",
    "dtype": lambda v: f"-{v or 'dtype?'}",
    "attn_implementation": lambda v: f"-attn={v or '?'}",
    "chunk_size": lambda v: f"-c{v}",
    "device": lambda v: f"-{v or 'device?'}",
    "limit": lambda v: "-all" if v is None else f"-limit{v}",
    "prompt": lambda v: f"-prompt={str(v)[:8]}" if v else "-plain",
    "extra_args": lambda v: f"-{v}" if v else "-no-args",
    "gen_kwargs": lambda v: f"-gen={v}" if v else "-gen=default",
    "seeds": lambda v: f"-seeds={v}" if v else "-seeds?",
    "num_fewshot": lambda v: f"-{v}shot",
    "task_config": lambda v: f"-task={v}",
    "documents": lambda v: "" if v == "all" else "-docs=" + re.sub(r"[^A-Za-z0-9]+", "-", str(v)),
    "lm_eval_model": lambda v: f"-{v}",
}


def _path_tails(ids: list[str]) -> dict[str, str]:
    """The shortest trailing path parts that tell the distinct model ids apart."""
    parts = {i: Path(i).parts if _looks_local(i) else (i,) for i in ids}
    for n in range(1, max(len(p) for p in parts.values()) + 1):
        tails = {i: "/".join(p[-n:]) for i, p in parts.items()}
        if len(set(tails.values())) == len(tails):
            return tails
    return {i: i for i in ids}


def display_names(identities: list[dict], fields: tuple[str, ...] = KEY_FIELDS) -> dict[tuple, tuple[str, str]]:
    """{key: (model display name, model_name)}: unique per key, as short as the other settings allow
    (``fields``: the identity fields that can tell two keys apart)."""
    groups: dict[str, dict[tuple, dict]] = {}
    for ident in identities:
        groups.setdefault(ident["model_name"], {})[ident["key"]] = ident
    out = {}
    for idents in groups.values():
        members = list(idents.values())
        if len(members) == 1:
            out[members[0]["key"]] = (members[0]["model"], members[0]["model_name"])
            continue
        tails = _path_tails(sorted({m["model_id"] for m in members}))
        varying = [f for f in fields if f not in ("model_id", "method", "start_size", "recent_size")
                   and len({m[f] for m in members}) > 1]
        for m in members:
            model = tails[m["model_id"]]
            out[m["key"]] = (model, f"{model}__{m['suffix']}" + "".join(QUALIFIERS[f](m[f]) for f in varying))
    # Names can still meet across groups (a hub id "a/x" and a local ".../a/x"): add a hash of the key.
    seen: dict[str, int] = {}
    for model, name in out.values():
        seen[name] = seen.get(name, 0) + 1
    for key, (model, name) in list(out.items()):
        if seen[name] > 1:
            out[key] = (model, f"{name}-{hashlib.sha256(repr(key).encode()).hexdigest()[:8]}")
    return out
