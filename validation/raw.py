"""Validation of the raw source tables (``spec.sources``), before the features are built."""
from __future__ import annotations

import datetime as dt
import logging
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from segmentation.spec import Spec
from validation._common import (
    describe_type,
    example_ids,
    for_pandas,
    missing_hint,
    nan_mask,
    type_compatible,
    utc_aware,
    utc_naive,
)
from validation._gx import Planned, check_dict, finish
from validation.result import ValidationResult, fmt_value, rows_text
from validation.rules import (
    SourceRules,
    all_source_rules,
    source_rules,
    describe_where,
    row_condition,
)

log = logging.getLogger(__name__)

DEFAULT_ROW_COUNT_BAND = 0.5
DEFAULT_FUTURE_TOLERANCE = dt.timedelta(days=1)


def _rules_for(spec: Spec, rules: Any) -> dict[str, tuple[Any, str]]:
    """{source name: (parsed rules, where they come from)}. Per source, in order: the ``rules``
    argument, the spec's own ``sources.<name>.rules``, and (only without a ``rules`` argument) the
    built-in Online Retail rules for a source of that name (the demo's). The origin is recorded and logged: a table checked with the demo's rules, or with
    none (only that it exists and its row count), should never be a surprise."""
    from validation.rules import DEMO_SOURCE_RULES

    given = all_source_rules(rules) if rules is not None else {}
    out: dict[str, tuple[Any, str]] = {}
    for name, relation in spec.sources.items():
        if name in given:
            out[name] = (given[name], "rules argument")
        elif relation.rules is not None:
            out[name] = (source_rules(relation.rules, name), "spec")
        elif rules is None and name in DEMO_SOURCE_RULES:
            out[name] = (source_rules(DEMO_SOURCE_RULES[name], name), "built-in Online Retail rules")
            if spec.name != "online_retail" or relation.qualified != f"raw.{name}":
                log.warning("validate raw: %s is checked with the built-in Online Retail rules for a source named "
                            "%r; declare sources.%s.rules in the spec %s to check it by your own rules",
                            relation.qualified, name, name, spec.path or spec.name)
        else:
            out[name] = (None, "none")
            log.info("validate raw: no rules declared for source %r (%s): only that it exists and its row count are "
                     "checked; declare sources.%s.rules in the spec for column checks", name, relation.qualified, name)
    return out


def validate_raw(
    url: str,
    spec: Spec,
    *,
    as_of: dt.datetime,
    previous_row_counts: Mapping[str, int] | None = None,
    out_dir: str | Path | None = None,
    rules: Mapping[str, Any] | None = None,
    row_count_band: float = DEFAULT_ROW_COUNT_BAND,
    freshness_days: float | None = None,
    future_tolerance: dt.timedelta = DEFAULT_FUTURE_TOLERANCE,
    now: dt.datetime | None = None,
) -> ValidationResult:
    """Validate the raw source tables of ``spec`` in the warehouse at ``url``.

    Per source (``spec.sources``) with rules (``rules``, default ``validation.rules.DEMO_SOURCE_RULES``):
    the table exists and has rows; the required columns exist with a compatible type; nulls, unique
    keys, ranges, allowed values, patterns and row rules as declared; no NaN or inf in float columns;
    no timestamp later than wall-clock ``now`` plus the column's ``max_future`` (default
    ``future_tolerance``, one day). Not "after as_of": a backfill of an old date legitimately sees
    rows after it, and the features only use rows before as_of.

    Row-count band: with ``previous_row_counts`` (last night's ``res.row_counts``), each table's rows
    must lie within ``±row_count_band`` (default 50%) of the previous count (error). Freshness: the
    newest value of the source's freshness column before ``as_of`` must be at most
    ``freshness_days`` (default: the rule's ``max_age_days``) old (warning by default).

    ``res.row_counts`` maps each table (``raw.transactions``) to its rows, for tomorrow's band.
    """
    started = time.perf_counter()
    started_at = dt.datetime.now(dt.UTC)
    as_of_naive = utc_naive(as_of)
    now_naive = utc_naive(now) if now is not None else started_at.replace(tzinfo=None)
    parsed = _rules_for(spec, rules)
    res = ValidationResult(
        stage="raw",
        started_at=started_at.isoformat(timespec="seconds"),
        context={
            "spec": spec.name,
            "as_of": as_of_naive.isoformat(sep=" "),
            "now": now_naive.isoformat(sep=" ", timespec="seconds"),
            "row_count_band": row_count_band,
            "previous_row_counts": dict(previous_row_counts or {}),
        },
    )
    from segmentation.warehouse import connect

    runner = None
    timings = {"read_s": 0.0, "gx_s": 0.0}
    wh = connect(url)
    try:
        res.context["warehouse"] = wh.safe_url
        for name, relation in spec.sources.items():
            table = relation.qualified
            src, origin = parsed.get(name, (None, "none"))
            res.context.setdefault("rules", {})[name] = f"{origin} ({table})"
            t0 = time.perf_counter()
            present = wh.columns(relation.schema, relation.table)
            if not present:
                res.checks.append(check_dict(
                    stage="raw", table=table, column=None, check="exists", severity="error", success=False,
                    observed="missing", expected="table exists", label="table exists",
                    observed_text=f"no table or view {table} in {wh.safe_url}",
                ))
                continue
            names = [c for c, _ in present]
            wanted = _wanted_columns(src, names) if src else []
            if wanted:
                cols = ", ".join(wh.ident(c) for c in wanted)
                data = wh.query(f"select {cols} from {wh.qualified(relation.schema, relation.table)}")
                n_rows = data.num_rows
            else:
                data = None
                n_rows = int(wh.query(f"select count(*) as n from {wh.qualified(relation.schema, relation.table)}")
                             .column(0)[0].as_py())
            timings["read_s"] += time.perf_counter() - t0
            res.row_counts[table] = n_rows

            if runner is None:
                from validation._gx import Runner

                runner = Runner("raw")
            gxe = runner.gxe
            planned: list[Planned] = []
            min_rows = max(1, src.min_rows if src else 1)
            planned.append(Planned(gxe.ExpectTableRowCountToBeBetween(min_value=min_rows), table, None, "row_count",
                                   "error", f">= {min_rows}", f"row count >= {min_rows}",
                                   lambda r, df: (r.get("observed_value"), rows_text(r.get("observed_value")))))
            prev = _previous(previous_row_counts, table, name)
            if prev is not None:
                lo = math.floor(prev * (1 - row_count_band))
                hi = math.ceil(prev * (1 + row_count_band))
                planned.append(Planned(
                    gxe.ExpectTableRowCountToBeBetween(min_value=lo, max_value=hi), table, None, "row_count_band",
                    "error", [lo, hi], f"row count within ±{row_count_band:.0%} of last run's {prev}",
                    lambda r, df, prev=prev: (r.get("observed_value"),
                                              f"{r.get('observed_value')} rows ({_change(r.get('observed_value'), prev)})"),
                ))
            if src is not None and data is not None:
                planned += _source_checks(res, gxe, table, src, data, names, now_naive, future_tolerance)
                df = for_pandas(data)
            else:
                import pandas as pd

                df = pd.DataFrame(index=range(n_rows))
            t1 = time.perf_counter()
            res.checks += runner.run(table, df, planned, list(src.id_columns) if src else [])
            timings["gx_s"] += time.perf_counter() - t1
            if src is not None and src.freshness is not None and data is not None:
                res.checks.append(_freshness(table, src, data, as_of_naive, freshness_days))
    finally:
        wh.close()

    res.duration_s = time.perf_counter() - started
    res.timings = timings
    finish(res, runner, out_dir)
    log.info("%s", res.summary())
    return res


def _previous(previous: Mapping[str, int] | None, table: str, name: str) -> int | None:
    if not previous:
        return None
    value = previous.get(table, previous.get(name))
    return int(value) if value is not None else None


def _change(now: Any, prev: int) -> str:
    if now is None or not prev:
        return f"last run {prev}"
    return f"{(now - prev) / prev:+.0%} vs last run's {prev}"


def _wanted_columns(src: SourceRules, present: list[str]) -> list[str]:
    wanted: list[str] = []
    for c in [*src.id_columns, *src.columns]:
        if c not in wanted:
            wanted.append(c)
    for r in src.row_rules:
        for c in (r.column, (r.where or {}).get("column")):
            if c and c not in wanted:
                wanted.append(c)
    if src.freshness and src.freshness.column not in wanted:
        wanted.append(src.freshness.column)
    return [c for c in wanted if c in present]


def _source_checks(
    res: ValidationResult,
    gxe: Any,
    table: str,
    src: SourceRules,
    data: pa.Table,
    present: list[str],
    now: dt.datetime,
    future_tolerance: dt.timedelta,
) -> list[Planned]:
    """Arrow-level checks (exists, type, NaN) straight into ``res``; the GX plan for the rest."""
    from validation._plans import column_value_checks

    planned: list[Planned] = []
    usable: set[str] = set()
    extra = [c for c in present if c not in src.columns]
    for column, rule in src.columns.items():
        if column not in present:
            res.checks.append(check_dict(
                stage="raw", table=table, column=column, check="exists", severity="error", success=False,
                observed="missing", expected="column exists", label="column exists",
                observed_text=missing_hint(column, extra, "columns not in the rules"),
            ))
            continue
        res.checks.append(check_dict(
            stage="raw", table=table, column=column, check="exists", severity="error", success=True,
            observed=None, expected="column exists", label="column exists",
        ))
        t = data.schema.field(column).type
        ok = type_compatible(rule.type, t)
        res.checks.append(check_dict(
            stage="raw", table=table, column=column, check="type", severity="error", success=ok,
            observed=describe_type(t), expected=rule.type, label=f"type {rule.type}",
        ))
        if not ok:
            continue  # value checks on a column of the wrong type would only add noise
        usable.add(column)
        col = data.column(column)
        nan = nan_mask(col)
        if nan is not None:
            n_nan = int(pc.sum(nan).as_py() or 0)
            res.checks.append(check_dict(
                stage="raw", table=table, column=column, check="not_nan", severity=rule.severity,
                success=n_nan == 0, observed=n_nan, expected=0, label="no NaN",
                observed_text=f"NaN on {n_nan} rows" if n_nan else "none", unexpected_count=n_nan,
                examples=example_ids(data, nan, list(src.id_columns)) if n_nan else [],
            ))
        not_after = None
        label = ""
        if rule.type in ("timestamp", "date"):
            tol = rule.max_future if rule.max_future is not None else future_tolerance
            not_after = utc_aware(now + tol)
            label = f"not in the future (at most {_td(tol)} after now {now:%Y-%m-%d %H:%M} UTC)"
        numeric = rule.type in ("integer", "float", "number")
        planned += column_value_checks(
            gxe, table=table, column=column, severity=rule.severity, max_null_share=rule.max_null_share,
            unique=rule.unique, min=rule.min if numeric else None, max=rule.max if numeric else None,
            allowed=rule.allowed, forbidden=rule.forbidden, regex=rule.regex, not_after=not_after,
            not_after_label=label, numeric=numeric, floating=pa.types.is_floating(data.schema.field(column).type),
        )
    for rr in src.row_rules:
        cond_col = (rr.where or {}).get("column")
        if rr.column not in present or (cond_col and cond_col not in present):
            continue  # the missing column is already reported
        if rr.column in src.columns and rr.column not in usable:
            continue
        cond = row_condition(rr.where)
        where = describe_where(rr.where)
        kw = {"row_condition": cond} if cond is not None else {}
        mask = _where_mask(rr.where)
        from validation._plans import _extreme

        if rr.min is not None:
            planned.append(Planned(gxe.ExpectColumnValuesToBeBetween(column=rr.column, min_value=rr.min, **kw), table,
                                   rr.column, rr.name, rr.severity, f">= {fmt_value(rr.min)}{where}",
                                   rr.description or f"min {fmt_value(rr.min)}{where}", _extreme(rr.column, "min", mask)))
        if rr.max is not None:
            planned.append(Planned(gxe.ExpectColumnValuesToBeBetween(column=rr.column, max_value=rr.max, **kw), table,
                                   rr.column, rr.name, rr.severity, f"<= {fmt_value(rr.max)}{where}",
                                   rr.description or f"max {fmt_value(rr.max)}{where}", _extreme(rr.column, "max", mask)))
        if rr.regex is not None:
            planned.append(Planned(gxe.ExpectColumnValuesToMatchRegex(column=rr.column, regex=rr.regex, **kw), table,
                                   rr.column, rr.name, rr.severity, f"matches {rr.regex}{where}",
                                   rr.description or f"matches {rr.regex}{where}"))
        if rr.allowed is not None:
            planned.append(Planned(gxe.ExpectColumnValuesToBeInSet(column=rr.column, value_set=list(rr.allowed), **kw),
                                   table, rr.column, rr.name, rr.severity, f"in {list(rr.allowed)}{where}",
                                   rr.description or f"allowed values {list(rr.allowed)}{where}"))
    return planned


def _where_mask(where: Mapping[str, Any] | None):
    """The pandas mask of a row rule's ``where`` (for describing the offending values)."""
    if where is None:
        return None
    col = where["column"]
    op = next(k for k in where if k != "column")
    v = where[op]

    def mask(df: Any) -> Any:
        s = df[col]
        return {
            "eq": lambda: s == v, "ne": lambda: s != v, "lt": lambda: s < v, "le": lambda: s <= v,
            "gt": lambda: s > v, "ge": lambda: s >= v, "in": lambda: s.isin(list(v)),
            "not_in": lambda: ~s.isin(list(v)), "is_null": lambda: s.isna(), "not_null": lambda: s.notna(),
        }[op]()

    return mask


def _td(delta: dt.timedelta) -> str:
    secs = delta.total_seconds()
    if secs % 86400 == 0:
        d = int(secs // 86400)
        return f"{d} day{'s' if d != 1 else ''}"
    if secs % 3600 == 0:
        return f"{int(secs // 3600)} h"
    return f"{secs / 60:.0f} min"


def _freshness(table: str, src: SourceRules, data: pa.Table, as_of: dt.datetime, days: float | None) -> dict:
    """The newest value of the freshness column before as_of is at most ``max_age_days`` old."""
    f = src.freshness
    assert f is not None
    max_age = float(days if days is not None else f.max_age_days)
    label = f"freshness: newest value before as_of {as_of:%Y-%m-%d %H:%M} at most {fmt_value(max_age)} day(s) old"
    if f.column not in data.column_names or not pa.types.is_timestamp(data.schema.field(f.column).type):
        return check_dict(stage="raw", table=table, column=f.column, check="freshness", severity=f.severity,
                          success=False, observed="no timestamp column", expected=f"<= {max_age} days", label=label,
                          observed_text=f"cannot be measured: {f.column} is missing or not a timestamp")
    col = data.column(f.column)
    if col.type.tz:
        col = col.cast(pa.timestamp(col.type.unit, tz="UTC")).cast(pa.timestamp(col.type.unit))
    before = pc.filter(col, pc.fill_null(pc.less(col, pa.scalar(as_of, col.type)), False))
    newest = pc.max(before).as_py() if len(before) else None
    if newest is None:
        return check_dict(stage="raw", table=table, column=f.column, check="freshness", severity=f.severity,
                          success=False, observed=None, expected=f"<= {max_age} days", label=label,
                          observed_text="no rows before as_of")
    age = (as_of - newest).total_seconds() / 86400
    return check_dict(
        stage="raw", table=table, column=f.column, check="freshness", severity=f.severity,
        success=age <= max_age, observed=newest, expected=f"<= {fmt_value(max_age)} days", label=label,
        observed_text=f"newest {newest:%Y-%m-%d %H:%M}, {age:.1f} days old",
    )
