"""Declarative rules for the raw source tables, keyed by the spec's source names.

The spec (``segmentation/spec.py``) declares where the sources live (``sources: {transactions:
{schema, table}}``) but not yet their columns, so the raw suites are built from these rules.
``DEMO_SOURCE_RULES`` describes the demo's Online Retail tables; pass your own to
``validate_raw(..., rules=...)`` (plain dicts in the same shape, ready to move into the spec YAML):

    rules = {
        "transactions": {                       # the key of spec.sources
            "id_columns": ["invoice_no"],       # shown as examples of offending rows
            "freshness": {"column": "invoice_date", "max_age_days": 2, "severity": "warning"},
            "columns": {
                # type: text | integer | float | number | timestamp | date | boolean
                "invoice_no": {"type": "text", "regex": "^[CA]?[0-9]{6}$"},
                "customer_id": {"type": "text", "max_null_share": 0.5},  # nulls allowed, up to 50%
                "unit_price": {"type": "float", "max": 100000},
                "invoice_date": {"type": "timestamp", "max_future": "2h"},
            },
            "row_rules": [                      # a value rule on a subset of rows
                {"name": "unit_price_non_negative", "column": "unit_price", "min": 0,
                 "where": {"column": "stock_code", "not_in": ["B"]}},
            ],
        },
    }

Column keys: ``type`` (required); ``max_null_share`` (default 0: no nulls; 1: any number of nulls,
but not all; ``nullable: true`` is short for 1);
``unique``; ``min`` / ``max``; ``allowed`` / ``forbidden`` (value lists); ``regex``; ``max_future``
(timestamps only: the latest value allowed relative to wall-clock now, e.g. "2h", "1d"; default the
``future_tolerance`` of ``validate_raw``, one day); ``severity`` (error, default, or warning: the
severity of every value check of the column; a missing column or a wrong type is always an error).

Row rule keys: ``name``, ``column``, one or more of ``min`` / ``max`` / ``regex`` / ``allowed``,
``where`` (``{"column": c, <op>: value}`` with op one of eq, ne, lt, le, gt, ge, in, not_in,
is_null, not_null), ``severity`` (default error) and ``description``.

A source without rules gets the table-level checks only (exists, not empty, row-count band).
"""
from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from segmentation.spec import SEVERITIES

COLUMN_TYPES = ("text", "integer", "float", "number", "timestamp", "date", "boolean")
WHERE_OPS = ("eq", "ne", "lt", "le", "gt", "ge", "in", "not_in", "is_null", "not_null")


class RulesError(ValueError):
    """Source rules are malformed; the message names the source, the column and what to fix."""


@dataclass(frozen=True)
class ColumnRule:
    type: str
    max_null_share: float = 0.0
    unique: bool = False
    min: float | None = None
    max: float | None = None
    allowed: tuple | None = None
    forbidden: tuple | None = None
    regex: str | None = None
    max_future: dt.timedelta | None = None
    severity: str = "error"


@dataclass(frozen=True)
class RowRule:
    name: str
    column: str
    min: float | None = None
    max: float | None = None
    regex: str | None = None
    allowed: tuple | None = None
    where: dict[str, Any] | None = None
    severity: str = "error"
    description: str = ""


@dataclass(frozen=True)
class Freshness:
    column: str
    max_age_days: float = 2.0
    severity: str = "warning"


@dataclass(frozen=True)
class SourceRules:
    columns: dict[str, ColumnRule] = field(default_factory=dict)
    id_columns: tuple[str, ...] = ()
    row_rules: tuple[RowRule, ...] = ()
    freshness: Freshness | None = None
    min_rows: int = 1


# The demo's Online Retail tables (segmentation/demo.py). Every rule passes on the real data at
# any as_of and each one catches a fault seen in real extracts; see segmentation/demo_data/README.md.
DEMO_SOURCE_RULES: dict[str, dict[str, Any]] = {
    "transactions": {
        "id_columns": ["invoice_no"],
        # Online Retail does not trade on Saturdays: two days without lines is normal, more is not.
        "freshness": {"column": "invoice_date", "max_age_days": 2, "severity": "warning"},
        "columns": {
            # six digits; "C" = cancellation (the features rely on it), "A" = bad-debt adjustment
            "invoice_no": {"type": "text", "regex": r"^[CA]?[0-9]{6}$"},
            "stock_code": {"type": "text"},
            # real range -80,995..80,995; 0 never occurs (a line of nothing is an extract fault)
            "quantity": {"type": "integer", "min": -1_000_000, "max": 1_000_000, "forbidden": [0]},
            # naive UK times (UTC+0/+1): anything more than 2 h ahead of now is a timezone or clock fault
            "invoice_date": {"type": "timestamp", "max_future": "2h"},
            # real max 38,970 (a manual line); 100,000 for a unit price is a unit or parsing fault
            "unit_price": {"type": "float", "max": 100_000},
            # guest checkouts have no customer id: 25% of the lines; half or more is a broken join
            "customer_id": {"type": "text", "max_null_share": 0.5},
            "country": {"type": "text"},
        },
        "row_rules": [
            {
                "name": "unit_price_non_negative",
                "column": "unit_price",
                "min": 0,
                "where": {"column": "stock_code", "not_in": ["B"]},
                "description": "unit price >= 0 except on bad-debt adjustment lines (stock code B)",
            },
            {
                # the real data has exactly two such lines (A563186, A563187: "Adjust bad debt"),
                # so this one only warns: a new negative price anywhere is worth a look
                "name": "unit_price_non_negative_all_lines",
                "column": "unit_price",
                "min": 0,
                "severity": "warning",
                "description": "unit price >= 0 on every line (bad-debt adjustments are legitimate exceptions)",
            },
            {
                # a cancellation line is never a positive quantity: flipped signs double-count spend
                "name": "positive_quantity_not_cancelled",
                "column": "invoice_no",
                "regex": r"^A?[0-9]{6}$",
                "where": {"column": "quantity", "gt": 0},
                "description": "lines with a positive quantity are not on a cancellation (C) invoice",
            },
        ],
    },
    "customers": {
        "id_columns": ["customer_id"],
        "columns": {
            "customer_id": {"type": "text", "unique": True},
            "country": {"type": "text"},
            # null for the 33 customers (0.75%) whose lines are all cancellations
            "first_purchase_at": {"type": "timestamp", "max_null_share": 0.05, "max_future": "2h"},
        },
    },
}


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)\s*$")


def parse_duration(value: Any, where: str) -> dt.timedelta:
    if isinstance(value, dt.timedelta):
        return value
    if isinstance(value, (int, float)):
        return dt.timedelta(days=float(value))
    m = _DURATION.match(str(value))
    if not m:
        raise RulesError(f"{where}: {value!r} is not a duration; write e.g. '2h', '30m', '1d'")
    n, unit = float(m.group(1)), m.group(2)
    return dt.timedelta(**{{"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[unit]: n})


def _severity(value: Any, where: str) -> str:
    sev = value or "error"
    if sev not in SEVERITIES:
        raise RulesError(f"{where}: severity {sev!r} must be 'error' or 'warning'")
    return sev


def _column_rule(raw: Any, where: str) -> ColumnRule:
    if isinstance(raw, ColumnRule):
        return raw
    if not isinstance(raw, Mapping) or "type" not in raw:
        raise RulesError(f"{where}: expected a mapping with at least 'type'")
    unknown = set(raw) - {"type", "max_null_share", "unique", "min", "max", "allowed", "forbidden", "regex",
                          "max_future", "severity", "nullable"}
    if unknown:
        raise RulesError(f"{where}: unknown key(s) {sorted(unknown)}")
    if raw["type"] not in COLUMN_TYPES:
        raise RulesError(f"{where}: type {raw['type']!r} is not one of {', '.join(COLUMN_TYPES)}")
    share = raw.get("max_null_share", 1.0 if raw.get("nullable") else 0.0)
    if not 0 <= float(share) <= 1:
        raise RulesError(f"{where}: max_null_share {share!r} must be between 0 and 1")
    if raw.get("regex") is not None:
        try:
            re.compile(raw["regex"])
        except re.error as exc:
            raise RulesError(f"{where}: regex {raw['regex']!r} does not compile: {exc}") from None
    return ColumnRule(
        type=raw["type"],
        max_null_share=float(share),
        unique=bool(raw.get("unique", False)),
        min=raw.get("min"),
        max=raw.get("max"),
        allowed=tuple(raw["allowed"]) if raw.get("allowed") is not None else None,
        forbidden=tuple(raw["forbidden"]) if raw.get("forbidden") is not None else None,
        regex=raw.get("regex"),
        max_future=parse_duration(raw["max_future"], f"{where}.max_future") if raw.get("max_future") is not None else None,
        severity=_severity(raw.get("severity"), where),
    )


def _row_rule(raw: Any, where: str) -> RowRule:
    if isinstance(raw, RowRule):
        return raw
    if not isinstance(raw, Mapping) or "name" not in raw or "column" not in raw:
        raise RulesError(f"{where}: a row rule needs 'name' and 'column'")
    if all(raw.get(k) is None for k in ("min", "max", "regex", "allowed")):
        raise RulesError(f"{where}: row rule {raw['name']!r} needs one of min, max, regex, allowed")
    cond = raw.get("where")
    if cond is not None:
        ops = [k for k in cond if k != "column"] if isinstance(cond, Mapping) else []
        if not isinstance(cond, Mapping) or "column" not in cond or len(ops) != 1 or ops[0] not in WHERE_OPS:
            raise RulesError(
                f"{where}: 'where' must be {{column: <name>, <op>: <value>}} with one op of {', '.join(WHERE_OPS)}"
            )
    return RowRule(
        name=str(raw["name"]),
        column=str(raw["column"]),
        min=raw.get("min"),
        max=raw.get("max"),
        regex=raw.get("regex"),
        allowed=tuple(raw["allowed"]) if raw.get("allowed") is not None else None,
        where=dict(cond) if cond is not None else None,
        severity=_severity(raw.get("severity"), where),
        description=str(raw.get("description", "")),
    )


def source_rules(raw: Any, name: str = "?") -> SourceRules:
    """Parse one source's rules (a dict as in ``DEMO_SOURCE_RULES``, or a ``SourceRules``)."""
    if isinstance(raw, SourceRules):
        return raw
    where = f"source rules {name!r}"
    if not isinstance(raw, Mapping):
        raise RulesError(f"{where}: expected a mapping")
    unknown = set(raw) - {"columns", "id_columns", "row_rules", "freshness", "min_rows"}
    if unknown:
        raise RulesError(f"{where}: unknown key(s) {sorted(unknown)}")
    columns = {c: _column_rule(r, f"{where}.columns.{c}") for c, r in (raw.get("columns") or {}).items()}
    fresh = raw.get("freshness")
    freshness = None
    if fresh is not None:
        if isinstance(fresh, Freshness):
            freshness = fresh
        elif not isinstance(fresh, Mapping) or "column" not in fresh:
            raise RulesError(f"{where}.freshness: expected {{column, max_age_days, severity}}")
        else:
            freshness = Freshness(
                column=fresh["column"],
                max_age_days=float(fresh.get("max_age_days", 2.0)),
                severity=_severity(fresh.get("severity", "warning"), f"{where}.freshness"),
            )
    return SourceRules(
        columns=columns,
        id_columns=tuple(raw.get("id_columns") or ()),
        row_rules=tuple(_row_rule(r, f"{where}.row_rules[{i}]") for i, r in enumerate(raw.get("row_rules") or [])),
        freshness=freshness,
        min_rows=int(raw.get("min_rows", 1)),
    )


def all_source_rules(rules: Mapping[str, Any] | None) -> dict[str, SourceRules]:
    """Parse a mapping of source name -> rules (default ``DEMO_SOURCE_RULES``)."""
    raw = DEMO_SOURCE_RULES if rules is None else rules
    return {name: source_rules(r, name) for name, r in raw.items()}


def row_condition(where: Mapping[str, Any] | None) -> Any:
    """A GX 1.x row condition (``great_expectations.expectations.row_conditions``) for ``where``."""
    if where is None:
        return None
    from great_expectations.expectations.row_conditions import Column

    col = Column(where["column"])
    op = next(k for k in where if k != "column")
    value = where[op]
    return {
        "eq": lambda: col == value,
        "ne": lambda: col != value,
        "lt": lambda: col < value,
        "le": lambda: col <= value,
        "gt": lambda: col > value,
        "ge": lambda: col >= value,
        "in": lambda: col.is_in(value),
        "not_in": lambda: col.is_not_in(value),
        "is_null": lambda: col.is_null(),
        "not_null": lambda: col.is_not_null(),
    }[op]()


def describe_where(where: Mapping[str, Any] | None) -> str:
    if where is None:
        return ""
    op = next(k for k in where if k != "column")
    words = {"eq": "=", "ne": "!=", "lt": "<", "le": "<=", "gt": ">", "ge": ">=", "in": "in", "not_in": "not in",
             "is_null": "is null", "not_null": "is not null"}[op]
    if op in ("is_null", "not_null"):
        return f" where {where['column']} {words}"
    return f" where {where['column']} {words} {where[op]!r}"
