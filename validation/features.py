"""Validation of the features relation (``spec.features_relation``), and drift against a reference."""
from __future__ import annotations

import datetime as dt
import logging
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from segmentation.spec import Spec
from validation._common import (
    FEATURE_COLUMN_TYPE,
    describe_type,
    example_ids,
    for_pandas,
    missing_hint,
    nan_mask,
    pct,
    type_compatible,
    utc_naive,
)
from validation._gx import Planned, check_dict, finish
from validation.drift import DEFAULT_PSI_THRESHOLD, NULL_LEVEL, feature_psi
from validation.result import ValidationResult, fmt_value, rows_text

log = logging.getLogger(__name__)

DEFAULT_MAX_CATEGORICAL_LEVELS = 100
DEFAULT_OUTLIER_FACTOR = 10.0
DEFAULT_REFERENCE_ROW_BAND = 0.5


def validate_features(
    url: str,
    spec: Spec,
    *,
    as_of: dt.datetime,
    reference: dict | None = None,
    out_dir: str | Path | None = None,
    psi_threshold: float = DEFAULT_PSI_THRESHOLD,
    max_categorical_levels: int = DEFAULT_MAX_CATEGORICAL_LEVELS,
    min_rows: int | None = None,
    outlier_factor: float = DEFAULT_OUTLIER_FACTOR,
    data: pa.Table | None = None,
) -> ValidationResult:
    """Validate the features relation of ``spec`` in the warehouse at ``url`` (built as of ``as_of``).

    Errors (the run stops): the relation is missing or has fewer than ``min_rows`` rows (default: the
    model's ``n_segments``, at least 1: GX row-level expectations pass on an empty table); a spec
    column is missing, of the wrong type, or a column not in the spec is present; the entity key is
    null or duplicated; per feature, the spec's ``checks`` (min, max, max_null_share, allowed: with
    the feature's ``severity``); NaN or inf in a numeric feature.
    Warnings: a constant feature; a categorical feature with more than ``max_categorical_levels``.

    With ``reference`` (``feature_reference`` of the production model's training features), drift
    checks follow, all warnings: PSI per feature above ``psi_threshold``; categorical levels the
    reference never saw; values more than ``outlier_factor`` times the reference range outside it;
    a row count more than 50% away from the reference's. ``res.drift`` holds the PSI per feature and
    ``res.drift_detected`` whether any exceeds the threshold (the pipeline retrains on drift).

    ``data``: validate this Arrow table (the relation's rows) instead of reading it; for callers that
    already hold the rows.
    """
    started = time.perf_counter()
    started_at = dt.datetime.now(dt.UTC)
    relation = spec.features_relation
    table = relation.qualified
    key = spec.entity_key
    if min_rows is None:
        min_rows = max(1, int(spec.model.get("n_segments", 1) or 1))
    res = ValidationResult(
        stage="features",
        started_at=started_at.isoformat(timespec="seconds"),
        context={
            "spec": spec.name,
            "as_of": utc_naive(as_of).isoformat(sep=" "),
            "table": table,
            "psi_threshold": psi_threshold,
            "min_rows": min_rows,
            "reference": {k: reference.get(k) for k in ("spec", "rows", "created_at")} if reference else None,
        },
    )
    timings = {"read_s": 0.0, "gx_s": 0.0, "drift_s": 0.0}
    t0 = time.perf_counter()
    if data is None:
        from segmentation.warehouse import connect

        wh = connect(url)
        try:
            res.context["warehouse"] = wh.safe_url
            if not wh.columns(relation.schema, relation.table):
                res.checks.append(check_dict(
                    stage="features", table=table, column=None, check="exists", severity="error", success=False,
                    observed="missing", expected="table exists", label="table exists",
                    observed_text=f"no table or view {table} in {wh.safe_url}",
                ))
                res.duration_s = time.perf_counter() - started
                finish(res, None, out_dir)
                log.info("%s", res.summary())
                return res
            data = wh.query(f"select * from {wh.qualified(relation.schema, relation.table)}")
        finally:
            wh.close()
    timings["read_s"] = time.perf_counter() - t0
    res.row_counts[table] = data.num_rows

    from validation._gx import Runner
    from validation._plans import column_value_checks

    runner = Runner("features")
    gxe = runner.gxe
    planned: list[Planned] = [
        Planned(gxe.ExpectTableRowCountToBeBetween(min_value=min_rows), table, None, "row_count", "error",
                f">= {min_rows}",
                f"row count >= {min_rows}" + (" (the model's n_segments)" if min_rows > 1 else ""),
                lambda r, df: (r.get("observed_value"), rows_text(r.get("observed_value")))),
    ]
    expected_cols = [key, *spec.feature_names]
    present = data.column_names
    extra = [c for c in present if c not in expected_cols]
    res.checks.append(check_dict(
        stage="features", table=table, column=None, check="columns", severity="error", success=not extra,
        observed=extra or None, expected=expected_cols, label="only the spec's columns",
        observed_text=f"column(s) not in the spec: {', '.join(extra)}" if extra else None,
    ))
    ids = [key] if key in present else []
    usable: dict[str, Any] = {}
    # entity key
    if _exists(res, table, key, present, extra):
        t = data.schema.field(key).type
        ok = type_compatible("categorical", t)
        res.checks.append(check_dict(stage="features", table=table, column=key, check="type", severity="error",
                                     success=ok, observed=describe_type(t), expected="text or integer",
                                     label="type text or integer (entity key)"))
        if ok:
            planned += column_value_checks(gxe, table=table, column=key, severity="error", unique=True)
    # features
    for f in spec.features:
        if not _exists(res, table, f.name, present, extra):
            continue
        t = data.schema.field(f.name).type
        want = FEATURE_COLUMN_TYPE[f.type]
        ok = type_compatible(want, t)
        res.checks.append(check_dict(
            stage="features", table=table, column=f.name, check="type", severity="error", success=ok,
            observed=describe_type(t), expected=want if want != "categorical" else "text, integer or boolean",
            label=f"type {'numeric' if want == 'number' else 'text, integer or boolean'} ({f.type} feature)",
        ))
        if not ok:
            continue  # range checks on text would only add noise: the type error says it all
        usable[f.name] = f
        c = f.checks
        sev = c.severity
        nan = nan_mask(data.column(f.name))
        if nan is not None:
            n_nan = int(pc.sum(nan).as_py() or 0)
            res.checks.append(check_dict(
                stage="features", table=table, column=f.name, check="not_nan", severity=sev, success=n_nan == 0,
                observed=n_nan, expected=0, label="no NaN", observed_text=f"NaN on {n_nan} rows" if n_nan else "none",
                unexpected_count=n_nan, examples=example_ids(data, nan, ids) if n_nan else [],
            ))
        numeric = want == "number"
        planned += column_value_checks(
            gxe, table=table, column=f.name, severity=sev, max_null_share=c.max_null_share,
            min=c.min if numeric else None, max=c.max if numeric else None, allowed=c.allowed,
            numeric=numeric, floating=pa.types.is_floating(t),
        )
        planned.append(Planned(
            gxe.ExpectColumnUniqueValueCountToBeBetween(column=f.name, min_value=2), table, f.name, "constant",
            "warning", ">= 2 distinct values", "not constant",
            lambda r, df, col=f.name: (r.get("observed_value"), _constant_text(df, col)),
        ))
        if f.type == "categorical":
            planned.append(Planned(
                gxe.ExpectColumnUniqueValueCountToBeBetween(column=f.name, max_value=max_categorical_levels), table,
                f.name, "cardinality", "warning", f"<= {max_categorical_levels} levels",
                f"at most {max_categorical_levels} distinct levels",
                lambda r, df: (r.get("observed_value"), f"{r.get('observed_value')} distinct levels"),
            ))

    drift_checks: list[dict[str, Any]] = []
    if reference is not None:
        t1 = time.perf_counter()
        drift_checks, drift_planned = _drift(res, gxe, table, data, usable, reference, psi_threshold,
                                             outlier_factor, ids)
        planned += drift_planned
        timings["drift_s"] = time.perf_counter() - t1

    t2 = time.perf_counter()
    df = for_pandas(data)
    checks = runner.run(table, df, planned, ids)
    timings["gx_s"] = time.perf_counter() - t2
    for c in checks:
        if c["check"] in ("new_levels", "outlier_range"):
            c["stage"] = "drift"
    res.checks += checks + drift_checks
    res.duration_s = time.perf_counter() - started
    res.timings = timings
    finish(res, runner, out_dir)
    log.info("%s", res.summary())
    return res


def _exists(res: ValidationResult, table: str, column: str, present: list[str], extra: list[str]) -> bool:
    ok = column in present
    res.checks.append(check_dict(
        stage="features", table=table, column=column, check="exists", severity="error", success=ok,
        observed=None if ok else "missing", expected="column exists", label="column exists",
        observed_text=None if ok else missing_hint(column, extra, "columns not in the spec"),
    ))
    return ok


def _constant_text(df: Any, column: str) -> str:
    s = df[column].dropna()
    if s.empty:
        return "no non-null value"
    return f"every non-null value is {fmt_value(s.iloc[0])} ({len(s)} rows)"


def _drift(
    res: ValidationResult,
    gxe: Any,
    table: str,
    data: pa.Table,
    usable: dict[str, Any],
    reference: dict,
    threshold: float,
    outlier_factor: float,
    ids: list[str],
) -> tuple[list[dict[str, Any]], list[Planned]]:
    """PSI checks (computed here) and the GX expectations of the drift stage."""
    checks: list[dict[str, Any]] = []
    planned: list[Planned] = []
    ref_features = reference.get("features") or {}
    ref_rows = reference.get("rows")
    if ref_rows:
        lo, hi = ref_rows * (1 - DEFAULT_REFERENCE_ROW_BAND), ref_rows * (1 + DEFAULT_REFERENCE_ROW_BAND)
        n = data.num_rows
        checks.append(check_dict(
            stage="drift", table=table, column=None, check="reference_row_count", severity="warning",
            success=lo <= n <= hi, observed=n, expected=[int(lo), int(hi)],
            label=f"row count within ±{DEFAULT_REFERENCE_ROW_BAND:.0%} of the reference's {ref_rows}",
            observed_text=f"{n} rows",
        ))
    for name in usable:
        ref = ref_features.get(name)
        if ref is None:
            checks.append(check_dict(
                stage="drift", table=table, column=name, check="psi", severity="warning", success=False,
                observed=None, expected=f"<= {threshold}", label="in the reference",
                observed_text="the reference has no distribution for this feature (retrain to record one)",
            ))
            res.drift_detected = True
            continue
        value, detail = feature_psi(ref, data, name)
        res.drift[name] = round(value, 6)
        ok = value <= threshold
        text = f"PSI {value:.3f}"
        if ref["kind"] == "numeric" and detail.get("median") is not None:
            text += f" (median {fmt_value(detail['reference_median'])} -> {fmt_value(detail['median'])}"
            text += f", null share {pct(detail['reference_null_share'])} -> {pct(detail['null_share'])})"
        elif ref["kind"] == "categorical":
            moves = ", ".join(f"{k} {pct(a)} -> {pct(b)}" for k, (a, b) in detail["largest_changes"].items())
            text += f" ({moves}" + (f"; new levels {pct(detail['new_share'])}" if detail["new_levels"] else "") + ")"
        c = check_dict(
            stage="drift", table=table, column=name, check="psi", severity="warning", success=ok,
            observed=round(value, 6), expected=f"<= {threshold}", label=f"PSI <= {threshold}",
            observed_text=text,
        )
        c["detail"] = detail
        checks.append(c)
        if ref["kind"] == "categorical":
            known = [k for k in ref["levels"] if k != NULL_LEVEL]
            if known:
                planned.append(Planned(
                    gxe.ExpectColumnValuesToBeInSet(column=name, value_set=known), table, name, "new_levels",
                    "warning", f"one of the {len(known)} reference levels", "levels seen in the reference",
                    lambda r, df: _new_levels(r),
                ))
        elif ref.get("min") is not None and ref.get("max") is not None:
            span = ref["max"] - ref["min"] or max(abs(ref["max"]), 1.0)
            lo, hi = ref["min"] - outlier_factor * span, ref["max"] + outlier_factor * span
            planned.append(Planned(
                gxe.ExpectColumnValuesToBeBetween(column=name, min_value=lo, max_value=hi), table, name,
                "outlier_range", "warning", [lo, hi],
                f"within {fmt_value(outlier_factor)}x the reference range [{fmt_value(ref['min'])}, "
                f"{fmt_value(ref['max'])}]",
                lambda r, df, col=name, lo=lo, hi=hi: _outliers(r, df, col, lo, hi),
            ))
    res.drift_detected = res.drift_detected or any(v > threshold for v in res.drift.values())
    res.context["drift_features"] = sorted(k for k, v in res.drift.items() if v > threshold)
    return checks, planned


def _new_levels(r: dict) -> tuple[Any, str]:
    n = int(r.get("unexpected_count") or 0)
    levels = list(dict.fromkeys(str(v) for v in r.get("partial_unexpected_list") or []))
    return levels, f"new level(s) {', '.join(levels)} on {n} row{'s' if n != 1 else ''}"


def _outliers(r: dict, df: Any, col: str, lo: float, hi: float) -> tuple[Any, str]:
    n = int(r.get("unexpected_count") or 0)
    s = df[col]
    worst = s.max() if (s > hi).any() else s.min()
    worst = worst.item() if hasattr(worst, "item") else worst
    return worst, f"{fmt_value(worst)} on {n} row{'s' if n != 1 else ''}"
