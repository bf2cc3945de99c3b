"""Drift between tonight's features and the reference stored with the production model.

    ref = feature_reference(features_table, spec)     # at training time; JSON-able, store it with the model
    res = validate_features(url, spec, as_of=..., reference=ref)
    res.drift            # {"monetary": 0.03, "recency_days": 0.41, ...}  (PSI per feature)
    res.drift_detected   # True if any PSI > threshold (default 0.2): the pipeline retrains

PSI (population stability index) = sum over bins of (a - e) * ln(a / e), with e the reference share
and a tonight's share of each bin, both floored at 1e-4 so an empty bin counts but never divides by 0.
Numeric features: bins cut at the reference deciles (ties merged, so a binary feature gets two bins),
plus one bin for nulls. Categorical features: one bin per reference level, one for nulls, and one
for every level the reference never saw. Rules of thumb: < 0.1 stable, 0.1 to 0.2 moderate,
> 0.2 a real shift.
"""
from __future__ import annotations

import datetime as dt
import math
from typing import Any

import numpy as np

from segmentation.spec import Spec

REFERENCE_VERSION = 1
DEFAULT_PSI_THRESHOLD = 0.2
EPS = 1e-4
NULL_LEVEL = "__null__"
NEW_LEVEL = "__new__"


def _column(data: Any, name: str) -> np.ndarray:
    """One column of a pyarrow Table or a pandas DataFrame as a numpy array (nulls as NaN/None)."""
    if hasattr(data, "schema") and hasattr(data, "column_names"):  # pyarrow.Table
        col = data.column(name)
        import pyarrow as pa

        if pa.types.is_dictionary(col.type):
            col = col.cast(col.type.value_type)
        if pa.types.is_decimal(col.type) or pa.types.is_integer(col.type) or pa.types.is_boolean(col.type):
            col = col.cast(pa.float64())
        if pa.types.is_floating(col.type):
            return col.to_numpy(zero_copy_only=False).astype(float)  # nulls -> NaN
        return np.asarray(col.to_pylist(), dtype=object)
    s = data[name]
    if s.dtype.kind in "biuf":
        return s.to_numpy(dtype=float, na_value=np.nan)
    return np.asarray(s.astype(object).where(s.notna(), None).tolist(), dtype=object)


def _numeric_reference(x: np.ndarray, bins: int) -> dict[str, Any]:
    n = len(x)
    null = np.isnan(x)
    vals = x[~null]
    finite = vals[np.isfinite(vals)]
    probs = np.arange(1, bins) / bins
    extra = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
    if len(finite):
        qs = np.quantile(finite, np.concatenate([probs, extra]))  # one partition for all of them
        edges = sorted({float(q) for q in qs[: len(probs)]})
    else:
        qs, edges = None, []
    ref: dict[str, Any] = {
        "kind": "numeric",
        "edges": edges,
        "shares": _numeric_shares(x, edges),
        "null_share": float(null.mean()) if n else 0.0,
        "min": float(finite.min()) if len(finite) else None,
        "max": float(finite.max()) if len(finite) else None,
    }
    if qs is not None:
        ref["quantiles"] = {str(p): float(q) for p, q in zip(extra, qs[len(probs):])}
        ref["mean"] = float(finite.mean())
    return ref


def _numeric_shares(x: np.ndarray, edges: list[float]) -> list[float]:
    """Shares of the bins (-inf, e0], (e0, e1], ..., (e_last, inf), then nulls."""
    n = len(x)
    if n == 0:
        return [0.0] * (len(edges) + 2)
    null = np.isnan(x)
    idx = np.searchsorted(np.asarray(edges, dtype=float), x[~null], side="left")
    counts = np.bincount(idx, minlength=len(edges) + 1).astype(float)
    return [*(counts / n).tolist(), float(null.sum() / n)]


def level_shares(data: Any, name: str) -> dict[str, float]:
    """Share of each level of a categorical column (nulls as ``"__null__"``), computed in Arrow or
    pandas (a Python loop over a million strings takes seconds)."""
    if hasattr(data, "schema") and hasattr(data, "column_names"):  # pyarrow.Table
        import pyarrow as pa
        import pyarrow.compute as pc

        col = data.column(name)
        n = len(col)
        if n == 0:
            return {}
        if pa.types.is_dictionary(col.type):
            col = col.cast(col.type.value_type)
        if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
            col = col.cast(pa.string())
        pairs = pc.value_counts(col).to_pylist()
        out = {NULL_LEVEL if p["values"] is None else p["values"]: p["counts"] / n for p in pairs}
    else:
        s = data[name]
        n = len(s)
        if n == 0:
            return {}
        counts = s.astype(object).where(s.notna(), None).value_counts(dropna=False)
        out = {}
        for k, c in counts.items():
            key = NULL_LEVEL if k is None or (isinstance(k, float) and math.isnan(k)) else str(k)
            out[key] = out.get(key, 0.0) + c / n
    return dict(sorted(out.items()))


def feature_reference(data: Any, spec: Spec, *, bins: int = 10) -> dict[str, Any]:
    """The reference distribution of every feature of ``spec`` in ``data`` (a pyarrow Table or a
    pandas DataFrame of the features relation), JSON-able: store it with the production model and
    pass it to ``validate_features(..., reference=...)``.

    Numeric features: decile cut points (``edges``), the share of each bin and of nulls, min/max and
    a few quantiles (for the outlier check). Categorical features: the share of each level (nulls as
    ``"__null__"``).
    """
    n = data.num_rows if hasattr(data, "num_rows") else len(data)
    columns = data.column_names if hasattr(data, "column_names") else list(data.columns)
    features: dict[str, Any] = {}
    for f in spec.features:
        if f.name not in columns:
            raise KeyError(f"feature_reference: column {f.name!r} of spec {spec.name!r} is not in the data ({columns})")
        if f.type == "categorical":
            levels = level_shares(data, f.name)
            features[f.name] = {
                "kind": "categorical",
                "type": f.type,
                "levels": levels,
                "null_share": levels.get(NULL_LEVEL, 0.0),
            }
        else:
            x = _column(data, f.name).astype(float)
            features[f.name] = {"type": f.type, **_numeric_reference(x, bins)}
    return {
        "version": REFERENCE_VERSION,
        "spec": spec.name,
        "rows": int(n),
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "features": features,
    }


def psi(expected: list[float], actual: list[float], eps: float = EPS) -> float:
    """Population stability index of two share vectors over the same bins."""
    e = np.maximum(np.asarray(expected, dtype=float), eps)
    a = np.maximum(np.asarray(actual, dtype=float), eps)
    return float(np.sum((a - e) * np.log(a / e)))


def feature_psi(ref: dict[str, Any], data: Any, name: str) -> tuple[float, dict[str, Any]]:
    """(PSI of column ``name`` of ``data`` against its reference, detail for the check record)."""
    if ref["kind"] == "categorical":
        levels: dict[str, float] = ref["levels"]
        actual = level_shares(data, name)
        new = {k: v for k, v in actual.items() if k not in levels}
        keys = list(levels)
        e = [levels[k] for k in keys] + [0.0]
        a = [actual.get(k, 0.0) for k in keys] + [sum(new.values())]
        value = psi(e, a)
        top = sorted(keys, key=lambda k: -abs(actual.get(k, 0.0) - levels[k]))[:3]
        detail = {
            "largest_changes": {k: [round(levels[k], 4), round(actual.get(k, 0.0), 4)] for k in top},
            "new_levels": sorted(new)[:10],
            "new_share": round(sum(new.values()), 4),
        }
        return value, detail
    x = _column(data, name).astype(float)
    shares = _numeric_shares(x, ref["edges"])
    value = psi(ref["shares"], shares)
    finite = x[np.isfinite(x)]
    detail = {
        "reference_median": (ref.get("quantiles") or {}).get("0.5"),
        "median": float(np.median(finite)) if len(finite) else None,
        "reference_null_share": ref.get("null_share"),
        "null_share": float(np.isnan(x).mean()) if len(x) else None,
    }
    return value, detail
