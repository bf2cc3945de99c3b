"""Expectations for one column, built from declarative rules (spec checks or source rules).

Every function returns ``Planned`` items (GX expectation + the words of our check); nothing runs here.
"""
from __future__ import annotations

import datetime as dt
import sys
from typing import Any

from validation._common import pct
from validation._gx import Planned
from validation.result import fmt_value

FLOAT_MAX = sys.float_info.max


def _rows(n: int) -> str:
    return f"{n} row{'s' if n != 1 else ''}"


def _extreme(column: str, which: str, condition: Any = None):
    """describe(): the most extreme offending value (min or max of the column) and the row count."""

    def describe(result: dict, df: Any) -> tuple[Any, str]:
        n = int(result.get("unexpected_count") or 0)
        s = df[column]
        if condition is not None:
            s = s[condition(df)]
        try:
            v = s.min() if which == "min" else s.max()
            v = v.item() if hasattr(v, "item") else v
        except TypeError:
            v = (result.get("partial_unexpected_list") or [None])[0]
        return v, f"{fmt_value(v)} on {_rows(n)}"

    return describe


def _nulls(column: str):
    def describe(result: dict, df: Any) -> tuple[Any, str]:
        n = int(result.get("unexpected_count") or 0)
        total = int(result.get("element_count") or len(df))
        share = n / total if total else 0.0
        return share, f"{pct(share)} null ({n} of {total} rows)"

    return describe


def _finite(column: str):
    def describe(result: dict, df: Any) -> tuple[Any, str]:
        import numpy as np

        n = int(result.get("unexpected_count") or 0)
        s = df[column]
        pos, neg = int(np.isposinf(s).sum()), int(np.isneginf(s).sum())
        parts = [f"{k} {w}" for k, w in ((pos, "inf"), (neg, "-inf")) if k]
        return ", ".join(parts) or f"{n} non-finite", f"{' and '.join(parts) or 'non-finite values'} on {_rows(n)}"

    return describe


def _unique(column: str):
    def describe(result: dict, df: Any) -> tuple[Any, str]:
        n = int(result.get("unexpected_count") or 0)
        values = list(dict.fromkeys(fmt_value(v) for v in result.get("partial_unexpected_list") or []))[:5]
        return values, f"{n} rows share a value with another row: {', '.join(values)}"

    return describe


def column_value_checks(
    gxe: Any,
    *,
    table: str,
    column: str,
    severity: str,
    max_null_share: float = 0.0,
    unique: bool = False,
    min: float | None = None,
    max: float | None = None,
    allowed: tuple | None = None,
    forbidden: tuple | None = None,
    regex: str | None = None,
    not_after: dt.datetime | None = None,
    not_after_label: str = "",
    numeric: bool = False,
    floating: bool = False,
    key_severity: str | None = None,
) -> list[Planned]:
    """The value expectations of one column.

    Nulls: GX's ``mostly`` and its set / range expectations ignore nulls, so the share of nulls is
    always checked on its own (``not_null`` when none are allowed, ``null_share`` against all rows
    otherwise, ``not_all_null`` when any share is allowed). Ranges and sets are then strict on the
    non-null values.
    """
    p: list[Planned] = []
    key_sev = key_severity or severity
    if max_null_share <= 0:
        p.append(Planned(gxe.ExpectColumnValuesToNotBeNull(column=column), table, column, "not_null", key_sev,
                         "no nulls", "not null", _nulls(column)))
    elif max_null_share < 1:
        p.append(Planned(gxe.ExpectColumnValuesToNotBeNull(column=column, mostly=1 - max_null_share), table, column,
                         "null_share", severity, f"<= {pct(max_null_share)} null",
                         f"null share <= {pct(max_null_share)}", _nulls(column)))
    else:
        p.append(Planned(gxe.ExpectColumnProportionOfNonNullValuesToBeBetween(column=column, min_value=0, strict_min=True),
                         table, column, "not_all_null", severity, "at least one non-null value", "not all null",
                         lambda r, df: (1.0, "every value is null")))
    if unique:
        p.append(Planned(gxe.ExpectColumnValuesToBeUnique(column=column), table, column, "unique", key_sev,
                         "unique", "unique", _unique(column)))
    if min is not None:
        p.append(Planned(gxe.ExpectColumnValuesToBeBetween(column=column, min_value=min), table, column, "min",
                         severity, min, f"min {fmt_value(min)}", _extreme(column, "min")))
    if max is not None:
        p.append(Planned(gxe.ExpectColumnValuesToBeBetween(column=column, max_value=max), table, column, "max",
                         severity, max, f"max {fmt_value(max)}", _extreme(column, "max")))
    if floating:
        # inf passes a one-sided range (and a missing one): check it explicitly. NaN is a null to
        # pandas, so NaN values are counted on the Arrow data (check "not_nan").
        p.append(Planned(gxe.ExpectColumnValuesToBeBetween(column=column, min_value=-FLOAT_MAX, max_value=FLOAT_MAX),
                         table, column, "finite", severity, "finite", "finite (no inf)", _finite(column)))
    if allowed is not None:
        p.append(Planned(gxe.ExpectColumnValuesToBeInSet(column=column, value_set=list(allowed)), table, column,
                         "allowed", severity, list(allowed), f"allowed values {fmt_value(list(allowed))}"))
    if forbidden is not None:
        p.append(Planned(gxe.ExpectColumnValuesToNotBeInSet(column=column, value_set=list(forbidden)), table, column,
                         "forbidden", severity, list(forbidden), f"never {fmt_value(list(forbidden))}"))
    if regex is not None:
        p.append(Planned(gxe.ExpectColumnValuesToMatchRegex(column=column, regex=regex), table, column, "regex",
                         severity, regex, f"matches {regex}"))
    if not_after is not None:
        p.append(Planned(gxe.ExpectColumnValuesToBeBetween(column=column, max_value=not_after), table, column,
                         "not_future", severity, not_after.isoformat(sep=" ", timespec="seconds"),
                         not_after_label or f"not after {fmt_value(not_after)}", _extreme(column, "max")))
    return p
