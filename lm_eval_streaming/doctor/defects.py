"""Known half-precision defects, as data (no torch): which device types and dtypes they touch, which package
version fixed them (None: no fix released, or not in a library), and which doctor check measures them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class KnownDefect:
    ref: str  # where it is documented
    summary: str
    devices: tuple[str, ...]  # device types it touches ("*": any)
    dtypes: tuple[str, ...]
    package: str | None  # whose version decides (None: in model code, no version decides)
    fixed_in: str | None  # first fixed version of ``package`` (None: not fixed / not known)
    check: str  # the doctor check (or benchmark field) that measures it


HALF = ("float16", "bfloat16")

KNOWN_DEFECTS = (
    KnownDefect("pytorch#195910", "MPS scaled_dot_product_attention with is_causal=True lets queries see future keys "
                "in float16/bfloat16", ("mps",), HALF, "torch", "2.13.0", "causality probe (sdpa)"),
    KnownDefect("pytorch PR #190791", "MPS softmax without float32 accumulation loses precision past ~3068 keys",
                ("mps",), HALF, "torch", None, "kernel error at 4096+ tokens"),
    KnownDefect("EleutherAI/gpt-neox#1003", "rotary angles / cos-sin computed in half precision are wrong at large "
                "positions (from about 1857 in float16)", ("*",), HALF, None, None, "rotary precision"),
    KnownDefect("transformers#30199, #28360", "GPT-NeoX (Pythia) layers overflow to NaN/Inf in float16 without "
                "the attention upcast", ("*",), ("float16",), None, None,
                "benchmark whole-forward error (needs the weights)"),
)


def _version(text: str):
    from packaging.version import Version

    return Version(text.split("+")[0])


def defect_status(defect: KnownDefect, device_type: str, dtype: str, versions: dict[str, str]) -> str:
    """One word or phrase for this machine: 'n/a' (another device/dtype), 'fixed (torch 2.13.0 >= 2.13.0)',
    'affected by version (...)', 'no fix released: measured below', 'model code: measured below'."""
    if ("*" not in defect.devices and device_type not in defect.devices) or dtype not in defect.dtypes:
        return "n/a"
    if defect.package is None:
        return f"model code: see {defect.check}"
    have = versions.get(defect.package)
    if defect.fixed_in is None:
        return f"no fix released ({defect.package} {have}): see {defect.check}"
    if have is not None and _version(have) >= _version(defect.fixed_in):
        return f"fixed ({defect.package} {have} >= {defect.fixed_in})"
    return f"AFFECTED by version ({defect.package} {have} < {defect.fixed_in}): see {defect.check}"
