"""Segment profiles and labels a marketer can read.

For each segment: size and share; for each feature how the segment differs from the whole base
(effect size = difference of means in base standard deviations, on the same scale the model sees:
log for money and counts), typical values (medians), and top categories with their lift. The label
joins the words of the one or two most distinctive features (the spec's ``high_label`` /
``low_label``) and a dominant category, e.g. "Recent, big spenders, Germany".
"""
from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd

from segmentation.spec import Spec

MIN_EFFECT = 0.5      # |effect| below this does not go into a label
MIN_CATEGORY_SHARE = 0.5
MIN_CATEGORY_LIFT = 1.5
MAX_LABEL_CORRELATION = 0.6  # a trait that says the same as one already in the label is skipped


def _scale(values: pd.Series, ftype: str) -> pd.Series:
    v = pd.to_numeric(values, errors="coerce").astype("float64")
    if ftype in ("money", "count"):
        return np.sign(v) * np.log1p(np.abs(v))
    return v


def _round(x: Any, nd: int = 3) -> Any:
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return None
    return round(float(x), nd)


def profile_segments(features: pd.DataFrame, segment_ids: np.ndarray, spec: Spec) -> list[dict[str, Any]]:
    """One dict per segment id present: segment_id, size, share, label, features (per-feature summary),
    distinctive (features sorted by |effect|)."""
    seg = pd.Series(np.asarray(segment_ids), index=features.index)
    n = len(features)
    base: dict[str, dict[str, Any]] = {}
    for f in spec.features:
        col = features[f.name]
        if f.type == "categorical":
            base[f.name] = {"shares": col.astype("string").value_counts(normalize=True)}
        else:
            s = _scale(col, f.type)
            base[f.name] = {"mean": s.mean(), "sd": s.std() or 1.0, "median": pd.to_numeric(col, errors="coerce").median()}
    out = []
    for sid in sorted(seg.unique()):
        rows = features[seg == sid]
        feats: dict[str, Any] = {}
        effects: list[tuple[str, float]] = []
        for f in spec.features:
            col = rows[f.name]
            entry: dict[str, Any] = {"type": f.type, "missing_share": _round(col.isna().mean())}
            if f.type == "categorical":
                shares = col.astype("string").value_counts(normalize=True).head(3)
                entry["top"] = [
                    {"value": str(k), "share": _round(v), "lift": _round(v / base[f.name]["shares"].get(k, np.nan))}
                    for k, v in shares.items()
                ]
            else:
                b = base[f.name]
                s = _scale(col, f.type)
                eff = (s.mean() - b["mean"]) / b["sd"] if b["sd"] else 0.0
                entry.update(
                    median=_round(pd.to_numeric(col, errors="coerce").median()),
                    base_median=_round(b["median"]),
                    mean=_round(pd.to_numeric(col, errors="coerce").mean()),
                    effect=_round(eff),
                    direction="higher" if eff > 0 else "lower",
                )
                if np.isfinite(eff):
                    effects.append((f.name, float(eff)))
            feats[f.name] = entry
        effects.sort(key=lambda t: -abs(t[1]))
        out.append({
            "segment_id": int(sid),
            "size": int(len(rows)),
            "share": float(len(rows) / n) if n else 0.0,
            "features": feats,
            "distinctive": [{"feature": k, "effect": _round(e)} for k, e in effects[:5]],
            "_effects": effects,
        })
    numeric = [f for f in spec.features if f.type != "categorical"]
    scaled = pd.DataFrame({f.name: _scale(features[f.name], f.type) for f in numeric})
    corr = scaled.corr(method="spearman") if len(numeric) > 1 else None
    _label_all(spec, out, corr)
    return out


def _trait_words(spec: Spec, effects: list[tuple[str, float]], feats: dict[str, Any],
                 corr: pd.DataFrame | None = None) -> list[str]:
    """Words for the segment's traits, most distinctive first, skipping a feature strongly correlated
    with one already used ("lapsed" and "spending less lately" say the same thing twice)."""
    words: list[str] = []
    used: list[str] = []
    for name, eff in effects:
        if abs(eff) < MIN_EFFECT:
            continue
        if corr is not None and any(abs(corr.at[name, u]) > MAX_LABEL_CORRELATION for u in used
                                    if name in corr.index and u in corr.index):
            continue
        used.append(name)
        f = spec.feature(name)
        words.append((f.high_label if eff > 0 else f.low_label) or f"{'high' if eff > 0 else 'low'} {name.replace('_', ' ')}")
    return words


def _category_words(spec: Spec, feats: dict[str, Any]) -> list[str]:
    out = []
    for f in spec.features:
        top = feats[f.name].get("top") if f.type == "categorical" else None
        if top and top[0]["share"] and top[0]["share"] >= MIN_CATEGORY_SHARE and (top[0]["lift"] or 0) >= MIN_CATEGORY_LIFT:
            out.append(top[0]["value"])
    return out


def _compose(words: list[str]) -> str:
    if not words:
        return "Typical customers"
    text = ", ".join(words)
    return text[0].upper() + text[1:]


def _label_all(spec: Spec, profiles: list[dict[str, Any]], corr: pd.DataFrame | None = None) -> None:
    """Two traits (plus a dominant category) per label; where two segments would read the same
    (same words in any order), each gets further traits until they differ, else the id."""
    traits = {p["segment_id"]: _trait_words(spec, p["_effects"], p["features"], corr) for p in profiles}
    cats = {p["segment_id"]: _category_words(spec, p["features"]) for p in profiles}
    n_words = {sid: 2 for sid in traits}
    for _ in range(4):
        keys: dict[frozenset, list[int]] = {}
        for sid, words in traits.items():
            keys.setdefault(frozenset(words[: n_words[sid]] + cats[sid]), []).append(sid)
        clashes = [sids for sids in keys.values() if len(sids) > 1]
        if not clashes:
            break
        for sids in clashes:
            for sid in sids:
                n_words[sid] += 1
    for p in profiles:
        sid = p["segment_id"]
        p["label"] = _compose(traits[sid][: n_words[sid]] + cats[sid])
    seen: dict[str, int] = {}
    for p in profiles:
        seen[p["label"]] = seen.get(p["label"], 0) + 1
    for p in profiles:
        if seen[p["label"]] > 1:
            p["label"] = f"{p['label']} (segment {p['segment_id']})"
        del p["_effects"]


def profiles_tables(profiles: list[dict[str, Any]]):
    """The ``segments`` and ``segment_profiles`` inputs of ``publish_run`` as Arrow tables."""
    import pyarrow as pa

    segments = pa.table({
        "segment_id": pa.array([p["segment_id"] for p in profiles], pa.int64()),
        "label": pa.array([p["label"] for p in profiles], pa.string()),
    })
    table = pa.table({
        "segment_id": pa.array([p["segment_id"] for p in profiles], pa.int64()),
        "label": pa.array([p["label"] for p in profiles], pa.string()),
        "size": pa.array([p["size"] for p in profiles], pa.int64()),
        "share": pa.array([p["share"] for p in profiles], pa.float64()),
        "summary": pa.array(
            [json.dumps({"features": p["features"], "distinctive": p["distinctive"]}, sort_keys=True) for p in profiles],
            pa.string(),
        ),
    })
    return segments, table
