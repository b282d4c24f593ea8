"""Criteria shared by several hypotheses: cache-size curves, groups compared at equal settings, model size
(within one family at one trained context)."""

from __future__ import annotations

from collections import defaultdict

from .verdict_base import (Criterion, FAIL, PASS, UNDECIDED, model_params, _Data, _effect, _fin, _mean_delta,
                           _num, _signed, _size_label)


def _cache_curves(d: _Data):
    groups = defaultdict(dict)
    for r in d.streaming:
        key = (r.get("model_id"), r.get("max_tokens"), r.get("device"), r.get("dtype"), r.get("start_size"),
               r.get("num_samples"))
        if _fin(_num(r.get("delta_nll_vs_dense"))) and r.get("recent_size") is not None:
            groups[key].setdefault(r["recent_size"], r)
    return [(k, sorted(v.items())) for k, v in groups.items() if len(v) >= 2]


def _matched_groups(rows: list[dict], group_of, setting_of) -> tuple[dict, str]:
    """Rows by group, restricted to settings (the other parameters) that several groups share, so that
    groups are compared at equal settings; returns (groups, note)."""
    groups_by_setting = defaultdict(set)
    for r in rows:
        groups_by_setting[setting_of(r)].add(group_of(r))
    all_groups = {group_of(r) for r in rows}
    shared = {st for st, gs in groups_by_setting.items() if gs == all_groups and len(gs) >= 2}
    if not shared:
        shared = {st for st, gs in groups_by_setting.items() if len(gs) >= 2}
    out = defaultdict(list)
    if not shared:  # no common setting: one group per setting, nothing to compare at equal settings
        for r in rows:
            out[group_of(r)].append(r)
        return out, (" (no setting shared between them: compared across different settings)"
                     if len(all_groups) >= 2 else "")
    for r in rows:
        if setting_of(r) in shared:
            out[group_of(r)].append(r)
    skipped = len({setting_of(r) for r in rows}) - len(shared)
    note = f" (compared at {len(shared)} shared setting(s)" + (f"; {skipped} unshared left out)" if skipped else ")")
    return out, note


def _family(row) -> tuple:
    """Sizes are compared within one family at one trained context (Pythia 70M / 410M / 6.9B), never across
    families (pythia-6.9b vs another family's 7b) nor across trained contexts."""
    from .model_loading import model_family

    return (row.get("model_family") or model_family(str(row.get("model_id"))), row.get("trained_context"))


def _relative_length(row):
    """Length as a multiple of the model's trained context (models with different contexts compare there)."""
    tc, n = row.get("trained_context"), row.get("max_tokens")
    return round(n / tc, 2) if tc and n else n


def _by_model_size(d: _Data, only_large: bool) -> Criterion:
    name = ("the effect appears only in large models" if only_large else "the effect on every model size")
    families = defaultdict(set)
    for r in d.ref:
        families[_family(r)].add(r.get("model_id"))
    sized = {f: ms for f, ms in families.items() if len(ms) >= 2}
    if not sized:
        listing = "; ".join(f"{f[0]} (trained context {f[1]}): {', '.join(sorted(map(str, ms)))}"
                            for f, ms in families.items()) or "none"
        return Criterion(name, UNDECIDED, f"no family with two or more sizes at one trained context ({listing}): "
                                          "the model-size rule cannot be decided; run model_size.yaml (Pythia)")
    family = max(sized, key=lambda f: len(sized[f]))
    rows = [r for r in d.ref if _family(r) == family]
    groups, note = _matched_groups(
        rows, lambda r: r.get("model_id"),
        lambda r: (_relative_length(r), r.get("device"), r.get("dtype"), r.get("start_size"), r.get("recent_size")))
    note += f" (family {family[0]}, trained context {family[1]}; lengths as multiples of it)"
    per_model = {}
    for m in d.models:
        m_rows = groups.get(m)
        if m_rows:
            per_model[m] = (_effect(m_rows, d.tol), _mean_delta(m_rows))
    listing = "; ".join(f"{_size_label(m)}: {e} (mean ΔNLL {_signed(md)})" for m, (e, md) in per_model.items()) + note
    if len(per_model) < 2:
        return Criterion(name, UNDECIDED,
                         f"only one model size in the data ({listing or 'none'}): the model-size rule cannot be "
                         "decided; run model_size.yaml")
    if only_large:
        sized = [(model_params(m), e) for m, (e, _) in per_model.items() if model_params(m) is not None]
        if len(sized) < 2:
            return Criterion(name, UNDECIDED, f"model sizes cannot be read from the ids ({listing})")
        with_eff = [p for p, e in sized if e == "effect"]
        without = [p for p, e in sized if e == "none"]
        if not with_eff:
            return Criterion(name, FAIL, f"no model size shows the effect ({listing})")
        if without and min(with_eff) > max(without):
            return Criterion(name, PASS, listing)
        if min(p for p, _ in sized) in with_eff:
            return Criterion(name, FAIL, f"the smallest model shows it too ({listing})")
        return Criterion(name, UNDECIDED, listing)
    effects = [e for e, _ in per_model.values()]
    if all(e == "effect" for e in effects):
        return Criterion(name, PASS, listing)
    if any(e == "none" for e in effects):
        return Criterion(name, FAIL, listing)
    return Criterion(name, UNDECIDED, listing)
