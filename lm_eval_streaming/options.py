"""One place for user-facing options: defaults, argument validation, dtypes and devices.

Every command (``lm_eval --model streaming_hf``, ``benchmark``, ``experiment``,
``speed``, ``leaderboard``) validates its arguments here, before any work starts,
and raises :class:`StreamingArgError` naming the value and what is allowed.
"""

from __future__ import annotations

import logging
import math

from lm_eval_streaming.errors import UserError

logger = logging.getLogger(__name__)

DEFAULT_METHOD = "streaming_llm"
DEFAULT_START_SIZE = 4
DEFAULT_RECENT_SIZE = 252  # the seed's cache: 4 sinks + 252 recent = 256 entries
DEFAULT_CHUNK_SIZE = 512
FULL_CHUNK = "full"  # chunk_size=full (method=dense): one plain forward per document, no cache
# The project's attention kernel (float32 softmax): the reference other kernels are measured against.
REFERENCE_KERNEL = "lm_eval_streaming"
DTYPE_NAMES = ("float32", "bfloat16", "float16")
DEVICES_ALLOWED = "cpu, cuda, cuda:N (N >= 0) or mps"


class StreamingArgError(UserError, ValueError):
    """An argument the user gave is not allowed."""


def as_bool(name: str, value) -> bool:
    """True/False, or the strings lm-eval's model_args may pass (true/false, 1/0)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
        return value.strip().lower() in ("true", "1")
    raise StreamingArgError(f"{name}={value!r} is not allowed: expected true or false")


def as_int(name: str, value, minimum: int = 0, allow_none: bool = False) -> int | None:
    """Accept ints, integral floats (lm-eval turns ``1e3`` into 1000.0) and
    numeric strings; reject the rest with a message naming the argument."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or value is None:
        raise StreamingArgError(f"{name}={value!r} is not allowed: expected an integer >= {minimum}")
    parsed = value
    if isinstance(value, str):
        try:
            parsed = float(value.strip())
        except ValueError:
            raise StreamingArgError(
                f"{name}={value!r} is not a number: expected an integer >= {minimum}"
            ) from None
    if isinstance(parsed, float):
        if not math.isfinite(parsed) or not parsed.is_integer():
            raise StreamingArgError(f"{name}={value!r} is not an integer: expected an integer >= {minimum}")
        parsed = int(parsed)
    if not isinstance(parsed, int):
        raise StreamingArgError(f"{name}={value!r} has type {type(value).__name__}: expected an integer >= {minimum}")
    if parsed < minimum:
        # the integer, not as passed: lm-eval hands recent_size=-1 over as -1.0
        raise StreamingArgError(f"{name}={parsed} is too small: expected an integer >= {minimum}")
    return parsed


def int_list(name: str, text, minimum: int = 1) -> list[int]:
    """``"124,252"`` or ``[124, 252]`` -> [124, 252], each checked by :func:`as_int`; a value listed twice
    counts once (``16,16`` -> [16]: one row per setting, never two identical rows)."""
    items = text.split(",") if isinstance(text, str) else list(text)
    values = [as_int(name, x, minimum) for x in items if not (isinstance(x, str) and not x.strip())]
    if not values:
        raise StreamingArgError(f"{name}={text!r} is empty: expected a comma list of integers >= {minimum}")
    return list(dict.fromkeys(values))


def check_dtype(name) -> str:
    if name not in DTYPE_NAMES:
        raise StreamingArgError(f"dtype={name!r} is unknown: expected one of {', '.join(DTYPE_NAMES)}")
    return name


def torch_dtype(name: str):
    import torch

    return getattr(torch, check_dtype(name))


def check_device_name(value) -> str:
    """Syntax only (``cpu``, ``cuda``, ``cuda:N``, ``mps``); whether it exists is :func:`resolve_device`'s job."""
    ok = isinstance(value, str) and (
        value in ("cpu", "cuda", "mps") or (value.startswith("cuda:") and value[5:].isdigit()))
    if not ok:
        raise StreamingArgError(f"device={value!r} is unknown: expected {DEVICES_ALLOWED}")
    return value


def device_available(device: str) -> bool:
    import torch

    if device == "cpu":
        return True
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            return False
        index = int(device[5:]) if ":" in device else 0
        return index < torch.cuda.device_count()
    if device == "mps":
        mps = getattr(torch.backends, "mps", None)
        return bool(mps is not None and mps.is_available())
    return False


def best_device() -> str:
    """CUDA, else MPS, else CPU."""
    if device_available("cuda"):
        return "cuda"
    if device_available("mps"):
        return "mps"
    return "cpu"


def resolve_device(requested: str | None) -> str:
    """The requested device if it exists here; otherwise the best available one, with a warning
    (lm_eval's CLI passes cuda:0 by default, also on a Mac)."""
    if not requested:
        return best_device()
    check_device_name(requested)
    if device_available(requested):
        return requested
    fallback = best_device()
    logger.warning("device=%s is not available here; using %s", requested, fallback)
    return fallback
