"""What a validation returns: ``ValidationResult`` (checks, status, summary, evidence) and
``ValidationFailed``. No Great Expectations import here: the DAG and the run record use these types.

A check is a plain dict with these keys (JSON-able, see ``ValidationResult.to_dict``):

    stage       "raw" | "features" | "drift" | "outputs"
    table       "features.customer_features" (schema.table as the spec names it)
    column      "monetary", or None for a table-level check
    check       short name: "min", "max", "null_share", "unique", "type", "exists", "finite", "psi", ...
    severity    "error" | "warning"
    success     bool
    observed    what was found (a number, text or list), None when the check passed without one
    expected    what the rule asks for, in words or as a number
    examples    a few offending ids (entity key values, or the table's id column), [] if none
    message     one readable line naming table, column, check, observed value and example ids
    expectation the Great Expectations expectation type that ran it, or None (computed directly)
    unexpected_count  offending rows, when the check is row-level
"""
from __future__ import annotations

import datetime as dt
import html
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STATUSES = ("passed", "warning", "failed")


def jsonable(value: Any) -> Any:
    """``value`` with numpy/pandas scalars, datetimes and non-finite floats made JSON-safe."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return value
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in value]
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    # numpy / pandas scalars without importing them
    item = getattr(value, "item", None)
    if callable(item):
        try:
            return jsonable(item())
        except (TypeError, ValueError):
            pass
    iso = getattr(value, "isoformat", None)
    if callable(iso):
        return iso()
    return str(value)


def fmt_value(value: Any) -> str:
    """A short human rendering of an observed or expected value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) or type(value).__name__.startswith("float"):
        v = float(value)
        if math.isnan(v):
            return "NaN"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        if v == int(v) and abs(v) < 1e7:
            return str(int(v))
        if abs(v) >= 1e7 or abs(v) < 1e-3:
            return f"{v:.4g}"
        return f"{v:.4f}".rstrip("0").rstrip(".")
    if hasattr(value, "isoformat"):
        text = value.isoformat(sep=" ") if isinstance(value, dt.datetime) else value.isoformat()
        return str(text)
    if isinstance(value, (list, tuple)):
        shown = ", ".join(fmt_value(v) for v in list(value)[:8])
        return f"[{shown}{', ...' if len(value) > 8 else ''}]"
    return str(value)


def rows_text(n: Any) -> str:
    """3 -> '3 rows', 1 -> '1 row'."""
    return f"{fmt_value(n)} row{'' if n == 1 else 's'}"


class ValidationFailed(RuntimeError):
    """Raised by ``ValidationResult.raise_if_failed``: error-severity checks failed.

    ``str(exc)`` is the summary of the failed error-severity checks; ``exc.result`` is the result.
    """

    def __init__(self, result: ValidationResult) -> None:
        self.result = result
        super().__init__(result.summary(severity="error"))


@dataclass
class ValidationResult:
    """The outcome of one validation stage. ``status``: failed if any error-severity check failed,
    warning if only warning-severity checks failed, else passed."""

    stage: str
    checks: list[dict[str, Any]] = field(default_factory=list)
    row_counts: dict[str, int] = field(default_factory=dict)
    drift: dict[str, float] = field(default_factory=dict)
    drift_detected: bool = False
    started_at: str = ""
    duration_s: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)
    evidence: dict[str, str] = field(default_factory=dict)
    context: dict[str, Any] = field(default_factory=dict)

    # -- views -----------------------------------------------------------------------------------
    @property
    def failures(self) -> list[dict[str, Any]]:
        """Failed checks of error severity: any of these fails the run."""
        return [c for c in self.checks if not c["success"] and c["severity"] == "error"]

    @property
    def warnings(self) -> list[dict[str, Any]]:
        """Failed checks of warning severity: reported, the run goes on."""
        return [c for c in self.checks if not c["success"] and c["severity"] == "warning"]

    @property
    def status(self) -> str:
        if self.failures:
            return "failed"
        if self.warnings:
            return "warning"
        return "passed"

    @property
    def success(self) -> bool:
        return not self.failures

    def failed(self, check: str | None = None, column: str | None = None, table: str | None = None) -> list[dict]:
        """Failed checks (either severity), optionally filtered by check name, column and table."""
        return [
            c
            for c in self.checks
            if not c["success"]
            and (check is None or c["check"] == check)
            and (column is None or c["column"] == column)
            and (table is None or c["table"] == table)
        ]

    # -- rendering -------------------------------------------------------------------------------
    def summary(self, severity: str | None = None) -> str:
        """Readable text for a task log: a header line, then one line per failed check (errors first).

        ``severity="error"`` lists only the error-severity failures (what ``ValidationFailed`` shows).
        """
        n_pass = sum(1 for c in self.checks if c["success"])
        head = (
            f"validation {self.stage}: {self.status} — {len(self.failures)} error(s), "
            f"{len(self.warnings)} warning(s), {n_pass} of {len(self.checks)} checks passed"
        )
        if self.drift_detected:
            head += f"; drift detected in {', '.join(k for k, v in self.drift.items() if v > self.context.get('psi_threshold', 0.2))}"
        if severity == "error":
            chosen = self.failures
        elif severity == "warning":
            chosen = self.warnings
        else:
            chosen = self.failures + self.warnings
        lines = [head]
        for c in chosen:
            lines.append(f"  {c['severity'].upper():7s} {c['message']}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()

    def raise_if_failed(self) -> ValidationResult:
        """Raise ``ValidationFailed`` if any error-severity check failed; else return self."""
        if self.failures:
            raise ValidationFailed(self)
        return self

    def to_dict(self) -> dict[str, Any]:
        """Everything, JSON-able (for the run record and ``validation_<stage>.json``)."""
        return jsonable(
            {
                "stage": self.stage,
                "status": self.status,
                "started_at": self.started_at,
                "duration_s": round(self.duration_s, 3),
                "timings": {k: round(v, 3) for k, v in self.timings.items()},
                "counts": {
                    "checks": len(self.checks),
                    "passed": sum(1 for c in self.checks if c["success"]),
                    "errors": len(self.failures),
                    "warnings": len(self.warnings),
                },
                "row_counts": self.row_counts,
                "drift": self.drift,
                "drift_detected": self.drift_detected,
                "context": self.context,
                "evidence": self.evidence,
                "checks": self.checks,
            }
        )

    def to_html(self) -> str:
        """A self-contained HTML page (no external assets): failed checks first, then the rest."""
        order = {"error": 0, "warning": 1}
        rows = sorted(self.checks, key=lambda c: (c["success"], order.get(c["severity"], 2)))
        colour = {"failed": "#c0392b", "warning": "#d68910", "passed": "#1e8449"}
        body = []
        for c in rows:
            state = "passed" if c["success"] else ("failed" if c["severity"] == "error" else "warning")
            cells = [
                f'<td style="color:{colour[state]};font-weight:bold">{state}</td>',
                *(
                    f"<td>{html.escape(fmt_value(c.get(k)) if k not in ('table', 'column', 'check', 'severity') else str(c.get(k) or ''))}</td>"
                    for k in ("severity", "table", "column", "check", "expected", "observed")
                ),
                f"<td>{html.escape(', '.join(str(e) for e in c.get('examples') or []))}</td>",
                f"<td>{html.escape(c['message'])}</td>",
            ]
            body.append("<tr>" + "".join(cells) + "</tr>")
        d = self.to_dict()
        meta = html.escape(json.dumps({k: d[k] for k in ("started_at", "duration_s", "counts", "row_counts", "drift_detected", "context")}, indent=1))
        return (
            "<!DOCTYPE html><html><head><meta charset='utf-8'>"
            f"<title>validation {html.escape(self.stage)}: {self.status}</title>"
            "<style>body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse;font-size:13px}"
            "td,th{border:1px solid #ccc;padding:3px 6px;text-align:left;vertical-align:top}"
            "th{background:#eee}</style></head><body>"
            f"<h1>validation {html.escape(self.stage)}: "
            f"<span style='color:{colour[self.status]}'>{self.status}</span></h1>"
            f"<pre>{meta}</pre>"
            "<table><tr><th>result</th><th>severity</th><th>table</th><th>column</th><th>check</th>"
            "<th>expected</th><th>observed</th><th>examples</th><th>message</th></tr>"
            + "".join(body)
            + "</table></body></html>"
        )

    def write(self, out_dir: str | Path) -> dict[str, str]:
        """Write ``validation_<stage>.json`` and ``validation_<stage>.html`` into ``out_dir``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        js = out / f"validation_{self.stage}.json"
        page = out / f"validation_{self.stage}.html"
        self.evidence.setdefault("json", str(js))
        self.evidence.setdefault("html", str(page))
        js.write_text(json.dumps(self.to_dict(), indent=1, allow_nan=False))
        page.write_text(self.to_html())
        return dict(self.evidence)
