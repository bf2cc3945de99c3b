"""Shared helpers: read a warehouse table as Arrow, check column types on the Arrow schema,
hand the rows to pandas in the shape GX handles well, and small formatting helpers."""
from __future__ import annotations

import datetime as dt
import math
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

# Logical column types and the Arrow types that are compatible with each.
TYPE_NAMES = ("text", "integer", "float", "number", "timestamp", "date", "boolean", "categorical")


def arrow_kind(t: pa.DataType) -> str:
    """A coarse name for an Arrow type: text, integer, float, decimal, timestamp, date, boolean, other."""
    if pa.types.is_dictionary(t):
        t = t.value_type
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return "text"
    if pa.types.is_boolean(t):
        return "boolean"
    if pa.types.is_integer(t):
        return "integer"
    if pa.types.is_floating(t):
        return "float"
    if pa.types.is_decimal(t):
        return "decimal" if t.scale else "integer-decimal"
    if pa.types.is_timestamp(t):
        return "timestamp"
    if pa.types.is_date(t):
        return "date"
    if pa.types.is_null(t):
        return "null"
    return "other"


_COMPATIBLE = {
    "text": {"text"},
    "integer": {"integer", "integer-decimal"},
    "float": {"float", "decimal", "integer", "integer-decimal"},
    "number": {"float", "decimal", "integer", "integer-decimal"},
    "timestamp": {"timestamp"},
    "date": {"date", "timestamp"},
    "boolean": {"boolean", "integer"},
    "categorical": {"text", "boolean", "integer", "integer-decimal"},
}

# Feature types of the spec -> the logical column type they need.
FEATURE_COLUMN_TYPE = {
    "continuous": "number",
    "money": "number",
    "count": "number",
    "binary": "number",
    "categorical": "categorical",
}


def type_compatible(expected: str, t: pa.DataType) -> bool:
    """True if an Arrow column of type ``t`` can hold the logical ``expected`` type.

    A column of nulls only (Arrow type null, e.g. DuckDB ``select null as x``) is accepted: the null
    checks report it with the right words ("all null") instead of a confusing type error.
    """
    kind = arrow_kind(t)
    if kind == "null":
        return True
    if expected == "number" and kind == "boolean":
        return True
    return kind in _COMPATIBLE[expected]


def describe_type(t: pa.DataType) -> str:
    kind = arrow_kind(t)
    return f"{kind} ({t})" if kind not in ("text",) else f"text ({t})"


def for_pandas(table: pa.Table) -> Any:
    """``table`` as a pandas DataFrame GX handles well: decimals as float64, timestamps tz-aware UTC
    (GX's vectorised datetime path; naive timestamps are taken as UTC), nulls as NaN/NaT/None."""
    cols = []
    for col, f in zip(table.columns, table.schema):
        t = f.type
        if pa.types.is_dictionary(t):
            col, t = col.cast(t.value_type), t.value_type
        if pa.types.is_decimal(t):
            col = col.cast(pa.float64())
        elif pa.types.is_timestamp(t):
            if t.tz is None or t.tz != "UTC":
                col = col.cast(pa.timestamp(t.unit, tz="UTC"))
        elif pa.types.is_date(t):
            col = col.cast(pa.timestamp("us")).cast(pa.timestamp("us", tz="UTC"))
        elif pa.types.is_null(t):
            col = col.cast(pa.float64())
        elif pa.types.is_string_view(t) or pa.types.is_large_string(t):
            col = col.cast(pa.string())
        cols.append(col)
    return pa.table(cols, names=table.column_names).to_pandas()


def utc_naive(value: dt.datetime | dt.date) -> dt.datetime:
    """``value`` as a naive UTC datetime (aware -> converted; naive -> taken as UTC; date -> midnight)."""
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None and value.utcoffset() is not None:
            return value.astimezone(dt.UTC).replace(tzinfo=None)
        return value
    if isinstance(value, dt.date):
        return dt.datetime.combine(value, dt.time())
    raise TypeError(f"expected a datetime or date, got {type(value).__name__}")


def utc_aware(value: dt.datetime | dt.date) -> dt.datetime:
    return utc_naive(value).replace(tzinfo=dt.UTC)


def pct(share: float) -> str:
    """0.0123 -> '1.2%'."""
    if share is None or (isinstance(share, float) and math.isnan(share)):
        return "?"
    v = 100 * share
    if v == 0 or v >= 10:
        return f"{v:.0f}%"
    return f"{v:.2g}%"


def example_ids(table: pa.Table, mask: pa.ChunkedArray | pa.Array, id_columns: list[str], limit: int = 5) -> list[str]:
    """Up to ``limit`` distinct id values (``id_columns`` joined by "/") of the rows where ``mask`` holds."""
    ids = [c for c in id_columns if c in table.column_names]
    if not ids:
        return []
    mask = pc.fill_null(mask, False)
    picked = table.select(ids).filter(mask).slice(0, limit * 4)
    out: list[str] = []
    for row in picked.to_pylist():
        vals = [row[c] for c in ids]
        if all(v is None for v in vals):
            continue
        text = "/".join("null" if v is None else str(v) for v in vals)
        if text not in out:
            out.append(text)
        if len(out) >= limit:
            break
    return out


def nan_mask(col: pa.ChunkedArray) -> pa.ChunkedArray | None:
    """True where a float column holds NaN (a value, not a null), None for other types."""
    if not pa.types.is_floating(col.type):
        return None
    return pc.fill_null(pc.is_nan(col), False)


def missing_hint(column: str, unexpected: list[str], what: str) -> str:
    """'missing' plus a hint: a likely rename among ``unexpected`` columns, or the list of them."""
    import difflib

    close = difflib.get_close_matches(column, unexpected, n=2, cutoff=0.6)
    if close:
        return f"missing (renamed? {what}: {', '.join(close)})"
    if unexpected:
        shown = ", ".join(unexpected[:8]) + (", ..." if len(unexpected) > 8 else "")
        return f"missing; {what}: {shown}"
    return "missing"
