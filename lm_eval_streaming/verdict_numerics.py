"""The numerical hypothesis judged from *measured* numerics, per device x dtype x attention kernel.

A dense kernel is judged from what was measured on its rows (``benchmark`` records them):

- the causality probe (max |dlogit| at positions <= p when the tokens after p change): a kernel that lets
  a position see the future moves logits by O(0.1..10); float32 noise is about 1e-5, so > ``CAUSAL_TOL``
  is a leak;
- the kernel error (mean |dNLL| per token against the project's float32 reference kernel): above the
  verdict's tolerance (the "no change" threshold for NLL differences) the kernel changes the very quantity
  the comparison is about;
- NaN/Inf counts of logits, token NLLs and the kernel error.

``broken``: any of them fails. ``clean``: all three were measured and pass. Otherwise ``not measured``,
naming what is missing: a field that was not measured is unknown, never clean.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

CAUSAL_TOL = 1e-2  # max |dlogit|
NONFINITE_COUNTS = ("nan_logits", "inf_logits", "nonfinite_tokens")
BROKEN, CLEAN, UNMEASURED = "broken", "clean", "not measured"
DEVICE_TYPES = ("cpu", "cuda", "mps")


@dataclass
class KernelJudgement:
    device: str
    dtype: str
    kernel: str
    status: str  # BROKEN | CLEAN | UNMEASURED
    evidence: str


def _num(x) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def _device_type(device) -> str:
    return str(device or "?").split(":")[0]


def judge_kernel(rows: list[dict], tol: float) -> tuple[str, str]:
    """(status, evidence) of one device/dtype/kernel from its dense rows."""
    probes = [r["causality"] for r in rows if isinstance(r.get("causality"), dict)]
    errors = [r["kernel_error"] for r in rows if isinstance(r.get("kernel_error"), dict)]
    counts = [sum(int(_num(r.get(k))) for k in NONFINITE_COUNTS) for r in rows
              if all(r.get(k) is not None for k in NONFINITE_COUNTS)]
    parts, broken, missing = [], False, []
    if probes:
        worst = max((_num(p.get("max_abs_dlogit_overall")) for p in probes), key=lambda v: (not math.isnan(v), v))
        leak = math.isnan(worst) or worst > CAUSAL_TOL
        broken |= leak
        parts.append(f"causality probe max |Δlogit| {worst:.2g}" + (" (leaks the future)" if leak else ""))
    else:
        missing.append("causality probe")
    if errors:
        mean = max(_num(e.get("mean_abs_dnll")) for e in errors)
        peak = max(_num(e.get("max_abs_dnll")) for e in errors)
        bad = sum(int(_num(e.get("nonfinite") or 0)) for e in errors)
        large = math.isnan(mean) or mean > tol or bad > 0
        broken |= large
        parts.append(f"kernel error mean |ΔNLL| {mean:.2g} (max {peak:.2g}) vs {errors[0].get('reference')}"
                     + (f", {bad} non-finite" if bad else "") + (f" (> {tol})" if large else ""))
    else:
        missing.append("kernel error")
    if counts:
        broken |= sum(counts) > 0
        parts.append(f"{sum(counts)} NaN/Inf logits or token NLLs")
    else:
        missing.append("NaN/Inf counts")
    if broken:
        return BROKEN, "; ".join(parts)
    if missing:
        return UNMEASURED, "; ".join(parts + [f"not measured: {', '.join(missing)}"])
    return CLEAN, "; ".join(parts)


def judge_kernels(dense_rows: list[dict], tol: float) -> list[KernelJudgement]:
    groups = defaultdict(list)
    for r in dense_rows:
        groups[(_device_type(r.get("device")), str(r.get("dtype")), str(r.get("attn_implementation") or "?"))].append(r)
    return [KernelJudgement(dev, dt, k, *judge_kernel(rows, tol)) for (dev, dt, k), rows in sorted(groups.items())]


def _listing(judgements: list[KernelJudgement]) -> str:
    by_hw = defaultdict(list)
    for j in judgements:
        by_hw[f"{j.device}/{j.dtype}"].append(j.kernel)
    return ", ".join(f"{hw} ({', '.join(ks)})" for hw, ks in by_hw.items())


def numerical_scope(judgements: list[KernelJudgement]) -> tuple[str, str, str]:
    """(status, evidence, scope): PASS when a measured kernel is broken (named, with numbers), FAIL when every
    measured kernel is clean, "cannot decide" when nothing was measured; scope names what was measured where."""
    broken = [j for j in judgements if j.status == BROKEN]
    clean = [j for j in judgements if j.status == CLEAN]
    unmeasured = [j for j in judgements if j.status == UNMEASURED]
    untested = [d.upper() if d != "cpu" else "CPU" for d in DEVICE_TYPES
                if not any(j.device == d and j.status != UNMEASURED for j in judgements)]
    notes = []
    if clean:
        notes.append(f"ruled out on {_listing(clean)}")
    if broken:
        notes.append(f"supported for {_listing(broken)}")
    if unmeasured:
        notes.append(f"not measured (older rows without kernel error / probe) on {_listing(unmeasured)}")
    if untested:
        notes.append(f"not measured on {', '.join(untested)}: cannot decide there")
    scope = "; ".join(notes)
    detail = " | ".join(f"{j.device}/{j.dtype}/{j.kernel}: {j.status} ({j.evidence})" for j in judgements)
    if broken:
        return "pass", f"{scope}. {detail}", scope
    if clean:
        return "fail", f"{scope}. {detail}", scope
    return "cannot decide", f"no dense row has a kernel error, causality probe and NaN/Inf counts. {detail}", scope
