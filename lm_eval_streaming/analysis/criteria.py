"""Criteria shared by several hypotheses: cache-size curves, groups compared at equal settings, model size
(within one family at one trained context, lengths as multiples of it), the spread across devices/dtypes."""

from __future__ import annotations

from collections import defaultdict

from lm_eval_streaming.analysis.base import FAIL, HW_TOLERANCE, PASS, UNDECIDED, finite, fmt, signed
from lm_eval_streaming.analysis.rules import Decision
from lm_eval_streaming.analysis.data import Data, Scored, effect, family_of, mean_delta, params_of, relative_length, size_label


def cache_curves(d: Data) -> list[tuple[tuple, list[tuple[int, Scored]]]]:
    """streaming_llm rows of one setting at two or more recent sizes, sorted by recent size."""
    groups = defaultdict(dict)
    for e in d.streaming:
        r = e.run
        if finite(e.delta):
            groups[(r.model_id, r.max_tokens, r.device, r.dtype, e.row.start_size, r.num_samples)].setdefault(
                e.row.recent_size, e)
    return [(k, sorted(v.items())) for k, v in groups.items() if len(v) >= 2]


def matched_groups(entries: list[Scored], group_of, setting_of) -> tuple[dict, str]:
    """Rows by group, restricted to settings (the other parameters) that several groups share, so that
    groups are compared at equal settings; returns (groups, note)."""
    groups_by_setting = defaultdict(set)
    for e in entries:
        groups_by_setting[setting_of(e)].add(group_of(e))
    all_groups = {group_of(e) for e in entries}
    shared = {st for st, gs in groups_by_setting.items() if gs == all_groups and len(gs) >= 2}
    if not shared:
        shared = {st for st, gs in groups_by_setting.items() if len(gs) >= 2}
    out = defaultdict(list)
    if not shared:  # no common setting: one group per setting, nothing to compare at equal settings
        for e in entries:
            out[group_of(e)].append(e)
        return out, (" (no setting shared between them: compared across different settings)"
                     if len(all_groups) >= 2 else "")
    for e in entries:
        if setting_of(e) in shared:
            out[group_of(e)].append(e)
    skipped = len({setting_of(e) for e in entries}) - len(shared)
    return out, f" (compared at {len(shared)} shared setting(s)" + (f"; {skipped} unshared left out)" if skipped
                                                                     else ")")


def by_model_size(d: Data, only_large: bool) -> Decision:
    """Whether the effect is on every model size of one family (or, ``only_large``, only above some size)."""
    families = defaultdict(set)
    for e in d.ref:
        families[family_of(e.run)].add(e.run.model_id)
    sized = {f: ms for f, ms in families.items() if len(ms) >= 2}
    if not sized:
        found = "; ".join(f"{f} (trained context {tc}): {', '.join(sorted(ms))}"
                          for (f, tc), ms in families.items()) or "none"
        return Decision(UNDECIDED, f"no family with two or more sizes at one trained context ({found}): "
                                          "the model-size rule cannot be decided; run model_size.yaml (Pythia)")
    family = max(sized, key=lambda f: len(sized[f]))
    groups, note = matched_groups(
        [e for e in d.ref if family_of(e.run) == family], lambda e: e.run.model_id,
        lambda e: (relative_length(e.run), e.run.device, e.run.dtype, e.row.start_size, e.row.recent_size))
    note += f" (family {family[0]}, trained context {family[1]}; lengths as multiples of it)"
    per_model = {m: (effect(groups[m], d.tol), mean_delta(groups[m])) for m in d.models if groups.get(m)}
    found = "; ".join(f"{size_label(d.model_run[m])}: {e} (mean ΔNLL {signed(md)})"
                      for m, (e, md) in per_model.items()) + note
    if len(per_model) < 2:
        return Decision(UNDECIDED, f"only one model size at a shared setting ({found}): the model-size rule "
                                          "cannot be decided; run model_size.yaml")
    if only_large:
        sized_effects = [(params_of(d.model_run[m]), e) for m, (e, _) in per_model.items()
                         if params_of(d.model_run[m]) is not None]
        if len(sized_effects) < 2:
            return Decision(UNDECIDED, f"model sizes are not recorded nor readable from the ids ({found})")
        with_eff = [p for p, e in sized_effects if e == "effect"]
        without = [p for p, e in sized_effects if e == "none"]
        if not with_eff:
            return Decision(FAIL, f"no model size shows the effect ({found})")
        if without and min(with_eff) > max(without):
            return Decision(PASS, found)
        if min(p for p, _ in sized_effects) in with_eff:
            return Decision(FAIL, f"the smallest model shows it too ({found})")
        return Decision(UNDECIDED, found)
    effects = [e for e, _ in per_model.values()]
    if all(e == "effect" for e in effects):
        return Decision(PASS, found)
    return Decision(FAIL if "none" in effects else UNDECIDED, found)


def hardware_spread(d: Data) -> Decision:
    """The largest spread of ΔNLL across devices/dtypes at one otherwise equal streaming setting."""
    groups = defaultdict(list)
    for e in d.streaming:
        r = e.run
        groups[(r.model_id, r.max_tokens, e.row.start_size, e.row.recent_size, r.num_samples)].append(e)
    spreads = []
    for key, entries in groups.items():
        vals = [e for e in entries if finite(e.delta)]
        if len({(e.run.device, e.run.dtype) for e in vals}) >= 2:
            lo, hi = min(vals, key=lambda e: e.delta), max(vals, key=lambda e: e.delta)
            spreads.append((hi.delta - lo.delta, key, lo, hi))
    if not spreads:
        hw = ", ".join(f"{dv}/{dt}" for dv, dt in d.hardware)
        return Decision(UNDECIDED, f"only one device/dtype per setting in the data ({hw}): cannot compare")
    spread, key, lo, hi = max(spreads, key=lambda t: t[0])
    return Decision(PASS if spread <= HW_TOLERANCE else FAIL,
                     f"largest spread of ΔNLL across device/dtype: {fmt(spread)} nats ({lo.run.device}/{lo.run.dtype} "
                     f"{signed(lo.delta)} vs {hi.run.device}/{hi.run.dtype} {signed(hi.delta)}, {key[0]} {key[1]} "
                     f"tokens) over {len(spreads)} setting(s); little means <= {HW_TOLERANCE}")
