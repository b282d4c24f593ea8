"""The arguments of one benchmark run (a ``benchmark`` call or an experiment cell), validated before any work.

Light: no model, no torch tensors. ``experiment`` validates every cell of a config with the same
function, so a value the benchmark would refuse is refused at config validation.
"""

from __future__ import annotations

from lm_eval_streaming.core.loading import check_model_id
from lm_eval_streaming.options import (DEFAULT_CHUNK_SIZE, DEFAULT_RECENT_SIZE, DEFAULT_START_SIZE, REFERENCE_KERNEL, StreamingArgError,
                      as_int, check_device_name, check_dtype, int_list)

MODEL_DEFAULT_KERNEL = "default"  # in --dense_attn: the model's own attention implementation, as loaded
ONE_CALL = "@full"  # KERNEL@full in --dense_attn: each sample in one plain forward, no cache (the seed's baseline)
# default@full is dropped (with one line saying so) where its memory estimate does not fit
DEFAULT_DENSE_ATTN = (MODEL_DEFAULT_KERNEL, MODEL_DEFAULT_KERNEL + ONE_CALL, REFERENCE_KERNEL)

DEFAULTS = {
    "model_id": "smollm2-135m", "methods": ["streaming_llm"], "max_tokens": 2000,
    "recent_sizes": [DEFAULT_RECENT_SIZE], "num_samples": 5, "num_warmup": 2, "start_size": DEFAULT_START_SIZE,
    "dtype": "float32", "device": None, "chunk_size": DEFAULT_CHUNK_SIZE, "dense_attn": list(DEFAULT_DENSE_ATTN),
    "kernel_error": True, "causality_probe": True,
    # None: each method's own default (streaming_llm shifts; h2o, tova, knorm keep true distances)
    "position_shift": None,
    "evict_every": [1],  # h2o, tova, knorm: prune after every E tokens (1 = the papers' one token per step)
}
PARAMS = tuple(DEFAULTS)


def attention_names() -> list[str]:
    """Names --dense_attn accepts: the model's own, and the implementations installed here (eager,
    transformers' registered ones whose package is present, the project's kernel)."""
    from lm_eval_streaming.core.attention import attention_names as kernels

    return [MODEL_DEFAULT_KERNEL, *kernels(available_only=True)]


def split_one_call(name: str) -> tuple[str, bool]:
    """``"sdpa@full"`` -> ("sdpa", True); ``"sdpa"`` -> ("sdpa", False)."""
    return (name[: -len(ONE_CALL)], True) if name.endswith(ONE_CALL) else (name, False)


def check_dense_attn(value) -> list[str]:
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)):
        raise StreamingArgError(f"dense_attn={value!r} is not allowed: expected a comma list of attention "
                                f"implementations from {', '.join(attention_names())}")
    names = [x.strip() if isinstance(x, str) else x for x in items]
    names = [n for n in names if n != ""]
    allowed = attention_names()
    bad = [n for n in names if not isinstance(n, str) or split_one_call(n)[0] not in allowed]
    from lm_eval_streaming.core.attention import attention_names as kernels, check_attention_name

    if bad and isinstance(bad[0], str) and split_one_call(bad[0])[0] in kernels():  # known, package missing
        check_attention_name(split_one_call(bad[0])[0], "dense_attn", extra=(MODEL_DEFAULT_KERNEL,))
    if bad or not names:
        shown = bad[0] if bad else value
        raise StreamingArgError(f"dense_attn={shown!r} is {'unknown' if bad else 'empty'}: expected a comma list "
                                f"from {', '.join(allowed)}, each optionally with {ONE_CALL} (one call per sample)")
    return list(dict.fromkeys(names))


def check_position_shift(value) -> list[bool]:
    """``true`` / ``false`` / ``true,false`` (or a bool / list of bools): streaming_llm rows with the positional
    shift, at true distances, or both."""
    items = value.split(",") if isinstance(value, str) else value if isinstance(value, (list, tuple)) else [value]
    words = {"true": True, "false": False}
    out = []
    for x in items:
        v = words.get(x.strip().lower()) if isinstance(x, str) else x
        if not isinstance(v, bool):
            raise StreamingArgError(f"position_shift={x!r} is not allowed: expected true, false or true,false")
        out.append(v)
    if not out:
        raise StreamingArgError(f"position_shift={value!r} is empty: expected true, false or true,false")
    return list(dict.fromkeys(out))


def check_bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise StreamingArgError(f"{name}={value!r} is not allowed: expected true or false")
    return value


def check_methods(value) -> list[str]:
    from lm_eval_streaming.core.methods import METHODS, policy_for

    items = value.split(",") if isinstance(value, str) else value
    if isinstance(items, (list, tuple)):
        names = [m.strip() if isinstance(m, str) else m for m in items]
        names = [m for m in names if m != ""]
    else:
        names = [items]
    for m in names:
        if not isinstance(m, str) or m not in METHODS:
            raise StreamingArgError(f"method={m!r} is unknown: expected one of {', '.join(METHODS)}")
    # dense is always scored (once per --dense_attn kernel); listing it adds nothing
    return list(dict.fromkeys(m for m in names if not policy_for(m).full_attention))


def check_benchmark_args(**given) -> dict:
    """Every argument of a run, defaults filled in, canonical and validated; StreamingArgError otherwise."""
    from lm_eval_streaming.core.methods import policy_for

    unknown = sorted(set(given) - set(PARAMS))
    if unknown:
        raise StreamingArgError(f"unknown benchmark argument {unknown[0]!r}: expected one of {', '.join(PARAMS)}")
    a = {**DEFAULTS, **{k: v for k, v in given.items() if v is not None or k == "device"}}
    a["model_id"] = check_model_id(a["model_id"])
    a["methods"] = check_methods(a["methods"])
    a["max_tokens"] = as_int("max_tokens", a["max_tokens"], 2)
    a["num_samples"] = as_int("num_samples", a["num_samples"], 1)
    a["num_warmup"] = as_int("num_warmup", a["num_warmup"], 0)
    a["start_size"] = as_int("start_size", a["start_size"], 0)
    a["chunk_size"] = as_int("chunk_size", a["chunk_size"], 1)
    a["recent_sizes"] = int_list("recent_sizes", a["recent_sizes"], 0)
    a["dtype"] = check_dtype(a["dtype"])
    if a["device"] is not None:
        a["device"] = check_device_name(a["device"])
    a["dense_attn"] = check_dense_attn(a["dense_attn"])
    a["kernel_error"] = check_bool("kernel_error", a["kernel_error"])
    a["causality_probe"] = check_bool("causality_probe", a["causality_probe"])
    a["position_shift"] = None if a["position_shift"] is None else check_position_shift(a["position_shift"])
    a["evict_every"] = int_list("evict_every", a["evict_every"], 1)
    for m in a["methods"]:
        for r in a["recent_sizes"]:
            try:
                policy_for(m, a["start_size"], r)
            except StreamingArgError as e:
                raise StreamingArgError(f"recent_sizes={r} with method={m}: {e}") from None
    return a
