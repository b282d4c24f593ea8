"""The cache methods, one small policy class per file, and the registry that finds them by name.

A new method is one new file here (a :class:`CachePolicy` subclass decorated with
``@register_policy``), imported below, plus its tests.
"""

import dataclasses

from . import streaming_llm, dense, window, sliding_recompute, h2o, tova, knorm  # noqa: F401  (registers them; order = METHODS order)
from lm_eval_streaming.core.policy import _REGISTRY, CachePolicy
from lm_eval_streaming.options import DEFAULT_METHOD, DEFAULT_RECENT_SIZE, DEFAULT_START_SIZE, StreamingArgError

__all__ = ["METHODS", "STREAMING_METHODS", "baseline_policy", "method_names", "policy_for"]


def method_names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def policy_for(method: str = DEFAULT_METHOD, start_size=DEFAULT_START_SIZE,
               recent_size=DEFAULT_RECENT_SIZE, **options) -> CachePolicy:
    """The policy of a method by name, with its sizes validated. ``options``: the method's own
    fields (e.g. ``position_shift`` of streaming_llm); None means its default."""
    cls = _REGISTRY.get(method)
    if cls is None:
        raise StreamingArgError(f"method={method!r} is unknown: expected one of {', '.join(_REGISTRY)}")
    options = {k: v for k, v in options.items() if v is not None}
    # dataclasses.fields: the options a user passes (__dataclass_fields__ also lists the ClassVars)
    fields = {f.name for f in dataclasses.fields(cls)} - {"start_size", "recent_size"}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise StreamingArgError(f"{unknown[0]}={options[unknown[0]]!r} does not apply to method={method}"
                                + (f": it takes {', '.join(sorted(fields))}" if fields else ": it has no options"))
    return cls(start_size, recent_size, **options)


def baseline_policy() -> CachePolicy:
    """The full-attention policy every cache method is compared against (dense)."""
    return next(cls() for cls in _REGISTRY.values() if cls.full_attention)


def __getattr__(name):  # METHODS / STREAMING_METHODS reflect the registry (a test may add a method)
    if name == "METHODS":
        return method_names()
    if name == "STREAMING_METHODS":
        return tuple(m for m in method_names() if not _REGISTRY[m].full_attention)
    raise AttributeError(name)
