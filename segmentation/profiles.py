"""Segment profiles and labels a marketer can read.

For each segment: size and share; for each feature how the segment differs from the whole base
(effect size = difference of means in base standard deviations, on the same scale the model sees:
log for money and counts), typical values (medians), and top categories with their lift. The label
joins the words of the one or two most distinctive features (the spec's ``high_label`` /
``low_label``) and a dominant category, e.g. "Recent, big spenders, Germany".

Labels are kept from night to night: a segment id keeps the label it was last published with
unless the segment really changed (the rules are spelled out above ``_label_all``); each profile
says whether its label is new, kept or renamed, and why (``label_change``).
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
MAX_TRAIT_MISSING_SHARE = 0.5  # a feature most of the segment has no value for does not name it


def _scale(values: pd.Series, ftype: str) -> pd.Series:
    v = pd.to_numeric(values, errors="coerce").astype("float64")
    if ftype in ("money", "count"):
        return np.sign(v) * np.log1p(np.abs(v))
    return v


def _round(x: Any, nd: int = 3) -> Any:
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return None
    return round(float(x), nd)


def profile_segments(features: pd.DataFrame, segment_ids: np.ndarray, spec: Spec,
                     previous: dict[int, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """One dict per segment id present: segment_id, size, share, label, label_traits, label_change,
    features (per-feature summary), distinctive (features sorted by |effect|).

    ``previous``: the previous published run's profiles, segment id -> {"label", "share", "summary"}
    (``summary`` the parsed JSON of ``segment_profiles.summary``): an id keeps its label unless the
    segment really changed (see ``_label_all``)."""
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
                    {"value": str(k), "share": _round(v), "lift": _round(v / base[f.name]["shares"].get(k, np.nan)),
                     # the whole base's share, unrounded enough to be a yardstick (stable ids by prototype)
                     "base_share": _round(base[f.name]["shares"].get(k, np.nan), 5)}
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
                    # on the model's scale (log for money and counts): how far the segment itself
                    # moved from one night to the next, whatever happened to the rest of the base
                    scaled_mean=_round(s.mean(), 4),
                    base_mean=_round(b["mean"], 4),
                    base_sd=_round(b["sd"], 4),
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
    _label_all(spec, out, corr, previous)
    return out


def _trait_words(spec: Spec, effects: list[tuple[str, float]], feats: dict[str, Any],
                 corr: pd.DataFrame | None = None, legacy: bool = False) -> list[tuple[str, str]]:
    """(trait key, words) for the segment's traits, most distinctive first. A trait key is
    ``feature:higher`` or ``feature:lower``. Skipped:

    - a feature strongly correlated with one already used ("lapsed" and "spending less lately"
      say the same thing twice);
    - a feature the spec declares ``implied_by`` a trait already used: for brand-new customers all
      spend is recent, so "new customers, spending more lately" would read as growth where there is
      none (a correlation over the whole base is too weak to catch it);
    - a feature that most of the segment has no value for: "order regularly" said of a segment
      whose median customer has ordered once describes the few who ordered twice.

    ``legacy``: the rules of labels published before the last two existed (to read those back)."""
    words: list[tuple[str, str]] = []
    used: list[str] = []
    keys: set[str] = set()
    for name, eff in effects:
        if abs(eff) < MIN_EFFECT:
            continue
        if corr is not None and any(abs(corr.at[name, u]) > MAX_LABEL_CORRELATION for u in used
                                    if name in corr.index and u in corr.index):
            continue
        f = spec.feature(name)
        if not legacy:
            if keys.intersection(f.implied_by):
                continue
            missing = (feats.get(name) or {}).get("missing_share")
            if isinstance(missing, (int, float)) and missing > MAX_TRAIT_MISSING_SHARE:
                continue
        used.append(name)
        key = f"{name}:{'higher' if eff > 0 else 'lower'}"
        keys.add(key)
        text = (f.high_label if eff > 0 else f.low_label) or f"{'high' if eff > 0 else 'low'} {name.replace('_', ' ')}"
        words.append((key, text))
    if not legacy:
        # implied_by holds whichever trait is stronger: "spending more lately" goes without saying
        # next to "new customers" also when it is the larger effect and came first in the loop
        # (a pair that implies each other keeps both)
        implied = {k: set(spec.feature(k.partition(":")[0]).implied_by) for k, _ in words}
        words = [(k, t) for k, t in words
                 if not any(other in keys and k not in implied.get(other, set()) for other in implied[k])]
    return words


def _category_words(spec: Spec, feats: dict[str, Any]) -> list[tuple[str, str]]:
    """(trait key ``feature=value``, value) for each dominant category."""
    out = []
    for f in spec.features:
        top = feats[f.name].get("top") if f.type == "categorical" else None
        if top and top[0]["share"] and top[0]["share"] >= MIN_CATEGORY_SHARE and (top[0]["lift"] or 0) >= MIN_CATEGORY_LIFT:
            out.append((f"{f.name}={top[0]['value']}", top[0]["value"]))
    return out


def _compose(words: list[str]) -> str:
    if not words:
        return "Typical customers"
    text = ", ".join(words)
    return text[0].upper() + text[1:]


def _label_key(label: str) -> frozenset[str]:
    """Labels that read the same (same words in any order, any case) have the same key."""
    return frozenset(part.strip().lower() for part in label.split(","))


def _fresh_labels(spec: Spec, profiles: list[dict[str, Any]], corr: pd.DataFrame | None) -> dict[int, dict[str, Any]]:
    """Tonight's labels derived from the profiles alone: two traits (plus a dominant category) per
    label; where two segments would read the same (same words in any order), each gets further
    traits until they differ, else the id. Returns {segment_id: {"label", "traits", "words", "cats"}}."""
    traits = {p["segment_id"]: _trait_words(spec, p["_effects"], p["features"], corr) for p in profiles}
    cats = {p["segment_id"]: _category_words(spec, p["features"]) for p in profiles}
    n_words = {sid: 2 for sid in traits}
    for _ in range(4):
        keys: dict[frozenset, list[int]] = {}
        for sid, words in traits.items():
            keys.setdefault(frozenset(w for _, w in words[: n_words[sid]] + cats[sid]), []).append(sid)
        clashes = [sids for sids in keys.values() if len(sids) > 1]
        if not clashes:
            break
        for sids in clashes:
            for sid in sids:
                n_words[sid] += 1
    out: dict[int, dict[str, Any]] = {}
    for sid in traits:
        used = traits[sid][: n_words[sid]] + cats[sid]
        out[sid] = {"label": _compose([w for _, w in used]), "traits": [k for k, _ in used],
                    "words": traits[sid], "cats": cats[sid], "n_words": n_words[sid]}
    seen: dict[str, int] = {}
    for v in out.values():
        seen[v["label"]] = seen.get(v["label"], 0) + 1
    for sid, v in out.items():
        if seen[v["label"]] > 1:
            v["label"] = f"{v['label']} (segment {sid})"
    return out


# ---------------------------------------------------------------------------------------------
# labels kept from night to night
# ---------------------------------------------------------------------------------------------
# A segment id keeps the label it was published with last night unless the segment REALLY CHANGED.
# It really changed when BOTH
#   1. the label derived tonight rests on other traits than last night's label (the set of trait
#      keys differs: "monetary:higher", "recency_days:lower", "country=Germany", ...; the same
#      traits in another order are the same label), AND
#   2. the segment moved materially, i.e. at least one of
#      a. the segment no longer fits last night's label: for one of its numeric traits, the
#         segment's own mean tonight, measured against LAST NIGHT's base (mean and SD), lies less
#         than TRAIT_GONE_EFFECT SDs on the label's side (half of MIN_EFFECT, so a trait hovering
#         around the labelling threshold does not flip the label every other night), or against
#         tonight's base it now lies at least MIN_EFFECT on the opposite side (the label says the
#         opposite of the truth); or one of its categories no longer holds TRAIT_GONE_SHARE of the
#         segment. (Last night's yardstick: when only the rest of the base moved, say a large
#         segment turned "promo-averse" too, an unchanged segment keeps its "promo-averse" label.)
#      b. the segment itself shifted: its mean of some feature (on the model's scale: log for money
#         and counts) moved by more than MATERIAL_SHIFT standard deviations of the whole base since
#         last night (its own values, so a change elsewhere in the base that merely moves every
#         segment's effect sizes does not rename segments that stayed the same);
#      c. the segment's share of customers changed by more than MATERIAL_SHARE_CHANGE, relative
#         (e.g. from 10% to over 15% or under 5%).
# Otherwise the label is kept word for word (and kept labels win any clash with new ones).
# A renamed or new segment never takes a label another active segment holds, nor one another
# segment id held last night (a label never jumps from one id to another between two nights):
# it gets further traits until it reads differently, else its id in brackets.
TRAIT_GONE_EFFECT = 0.25
TRAIT_GONE_SHARE = 0.4
MATERIAL_SHIFT = 0.5
MATERIAL_SHARE_CHANGE = 0.5


def _traits_of_summary(spec: Spec, summary: dict[str, Any]) -> list[str]:
    """Trait keys of a label published before labels carried them: the two most distinctive
    numeric features (no correlation pruning: the base is not at hand) plus dominant categories."""
    feats = summary.get("features") or {}
    effects = [(name, float(e["effect"])) for name, e in feats.items()
               if isinstance(e, dict) and isinstance(e.get("effect"), (int, float)) and name in spec.feature_names]
    effects.sort(key=lambda t: -abs(t[1]))
    keys = [k for k, _ in _trait_words(spec, effects, feats, legacy=True)[:2]]
    cats = []
    for f in spec.features:
        top = (feats.get(f.name) or {}).get("top") if f.type == "categorical" else None
        if top and (top[0].get("share") or 0) >= MIN_CATEGORY_SHARE and (top[0].get("lift") or 0) >= MIN_CATEGORY_LIFT:
            cats.append(f"{f.name}={top[0]['value']}")
    return keys + cats


def _numeric_trait(trait: str) -> bool:
    """``feature:higher`` / ``feature:lower`` (else a category trait ``feature=value``)."""
    name, sep, direction = trait.rpartition(":")
    return bool(sep) and direction in ("higher", "lower") and "=" not in name


def _trait_holds(trait: str, feats: dict[str, Any], before: dict[str, Any]) -> bool:
    """Whether the segment (``feats``: tonight's profile) still fits ``trait`` of last night's label
    (``before``: last night's profile features); see rule 2a above."""
    if not _numeric_trait(trait):
        name, _, value = trait.partition("=")
        top = (feats.get(name) or {}).get("top") or []
        return any(t.get("value") == value and (t.get("share") or 0) >= TRAIT_GONE_SHARE for t in top)
    name, _, direction = trait.rpartition(":")
    sign = 1.0 if direction == "higher" else -1.0
    now, old = feats.get(name) or {}, before.get(name) or {}
    if not _number(now.get("effect")):
        return False
    if now["effect"] * sign <= -MIN_EFFECT:
        return False
    if _number(now.get("scaled_mean")) and _number(old.get("base_mean")) and _number(old.get("base_sd")) \
            and old["base_sd"] > 0:
        own = (now["scaled_mean"] - old["base_mean"]) / old["base_sd"]
    else:  # last night's profile predates the yardstick: tonight's effect
        own = now["effect"]
    return own * sign >= TRAIT_GONE_EFFECT


def _trait_text(trait: str) -> str:
    if _numeric_trait(trait):
        name, _, direction = trait.rpartition(":")
        return f"{direction} {name}"
    name, _, value = trait.partition("=")
    return f"mostly {name} {value}"


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and np.isfinite(x)


def _material_change(p: dict[str, Any], prev: dict[str, Any], prev_traits: list[str]) -> str | None:
    """Why the segment changed materially since last night (None: it did not); see the rules above."""
    feats = p["features"]
    before = (prev.get("summary") or {}).get("features") or {}
    gone = [t for t in prev_traits if not _trait_holds(t, feats, before)]
    if gone:
        return f"its label no longer fits: no longer {', '.join(_trait_text(t) for t in gone)}"
    shifts = []
    for name, entry in feats.items():
        old = before.get(name) or {}
        if _number(old.get("scaled_mean")) and _number(entry.get("scaled_mean")) and _number(entry.get("base_sd")) \
                and entry["base_sd"] > 0:
            shift = (entry["scaled_mean"] - old["scaled_mean"]) / entry["base_sd"]
        elif _number(old.get("effect")) and _number(entry.get("effect")):  # published before scaled means were kept
            shift = entry["effect"] - old["effect"]
        else:
            continue
        if abs(shift) > MATERIAL_SHIFT:
            shifts.append((abs(shift), name, shift))
    if shifts:
        _, name, shift = max(shifts)
        return f"its {name} moved by {shift:+.2f} standard deviations"
    s0 = prev.get("share")
    if isinstance(s0, (int, float)) and s0 > 0 and abs(p["share"] - s0) / s0 > MATERIAL_SHARE_CHANGE:
        return f"share of customers changed from {s0:.1%} to {p['share']:.1%}"
    return None


def _distinct(words: list[str], cats: list[str], n: int, sid: int, blocked: set[frozenset[str]]) -> tuple[str, int]:
    """The label of the first ``n`` trait words (then n + 1, ...) plus the categories that no one
    holds; else that label with the id in brackets. Returns (label, trait words used)."""
    for m in range(n, max(n, len(words)) + 1):
        label = _compose(words[:m] + cats)
        if _label_key(label) not in blocked:
            return label, m
    return f"{_compose(words[:n] + cats)} (segment {sid})", n


def _label_all(spec: Spec, profiles: list[dict[str, Any]], corr: pd.DataFrame | None = None,
               previous: dict[int, dict[str, Any]] | None = None) -> None:
    """Set each profile's ``label``, ``label_traits`` and ``label_change`` ({"status": "new" |
    "kept" | "renamed", "previous_label", "reason"}), keeping last night's labels (``previous``:
    segment id -> {"label", "share", "summary"} of the previous published run) by the rules above."""
    fresh = _fresh_labels(spec, profiles, corr)
    previous = previous or {}
    final: dict[int, tuple[str, list[str], dict[str, Any]]] = {}
    pending: list[tuple[dict[str, Any], dict[str, Any]]] = []   # new and renamed ids, labelled last
    taken: set[frozenset[str]] = set()
    for p in sorted(profiles, key=lambda q: q["segment_id"]):
        sid, new = p["segment_id"], fresh[p["segment_id"]]
        prev = previous.get(sid)
        if not prev or not prev.get("label"):
            pending.append((p, {"status": "new", "previous_label": None,
                                "reason": "new segment" if previous else "first run"}))
            continue
        summary = prev.get("summary") if isinstance(prev.get("summary"), dict) else {}
        prev_traits = summary.get("label_traits")
        if not isinstance(prev_traits, list):
            prev_traits = _traits_of_summary(spec, summary)
        old = str(prev["label"])
        if _label_key(old) == _label_key(new["label"]):
            change = {"status": "kept", "previous_label": old, "reason": "same traits"}
        elif set(prev_traits) == set(new["traits"]):
            change = {"status": "kept", "previous_label": old,
                      "reason": f"same traits (tonight's wording would be {new['label']!r})"}
        else:
            moved = _material_change(p, prev, prev_traits)
            change = {"status": "renamed", "previous_label": old, "reason": moved} if moved else {
                "status": "kept", "previous_label": old,
                "reason": f"segment has not really changed (tonight's traits would read {new['label']!r})"}
        if change["status"] == "kept" and _label_key(old) in taken:  # two ids held one label (should not happen)
            change = {"status": "renamed", "previous_label": old, "reason": f"label {old!r} is held by another segment"}
        if change["status"] == "renamed":
            pending.append((p, change))
            continue
        final[sid] = (old, [str(t) for t in prev_traits], change)
        taken.add(_label_key(old))
    # a label another id held last night stays with it: labels never jump between ids overnight
    last_night = {sid: _label_key(str(v["label"])) for sid, v in previous.items() if v.get("label")}
    for p, change in pending:
        sid, new = p["segment_id"], fresh[p["segment_id"]]
        blocked = taken | {k for other, k in last_night.items() if other != sid}
        words, cats, n = new["words"], new["cats"], new["n_words"]
        if _label_key(new["label"]) not in blocked:
            label, m = new["label"], n
        else:
            label, m = _distinct([w for _, w in words], [w for _, w in cats], n, sid, blocked)
            key = _label_key(new["label"])
            holder = next((f"segment {o}" for o, (lab, _, _) in final.items() if _label_key(lab) == key), None) or \
                next((f"segment {o} (last night)" for o, k in last_night.items() if k == key and o != sid), "another segment")
            change = dict(change, reason=f"{change['reason']}; {new['label']!r} is held by {holder}, so {label!r}")
        if change["status"] == "renamed" and _label_key(label) == _label_key(change["previous_label"]):
            label, change = change["previous_label"], {"status": "kept", "previous_label": label,
                                                       "reason": "same label derived tonight"}
        final[sid] = (label, [k for k, _ in words[:m]] + [k for k, _ in cats], change)
        taken.add(_label_key(label))
    for p in profiles:
        p["label"], p["label_traits"], p["label_change"] = final[p["segment_id"]]
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
            [json.dumps({"features": p["features"], "distinctive": p["distinctive"],
                         "label_traits": p.get("label_traits", []), "label_change": p.get("label_change")},
                        sort_keys=True) for p in profiles],
            pa.string(),
        ),
    })
    return segments, table
