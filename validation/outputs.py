"""Validation of the scored segment assignments before they are published."""
from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from validation._common import example_ids, for_pandas
from validation._gx import Planned, check_dict, finish
from validation.result import ValidationResult, fmt_value

log = logging.getLogger(__name__)

OUTPUT_COLUMNS = ("customer_id", "segment_id", "segment_probability", "runner_up_segment_id")


def validate_outputs(
    assignments: pa.Table,
    *,
    customer_ids: pa.Array | pa.ChunkedArray | Sequence[Any],
    n_segments_known: Sequence[int],
    out_dir: str | Path | None = None,
    table: str = "segments.segment_assignments",
    key: str = "customer_id",
) -> ValidationResult:
    """Validate tonight's assignments (``customer_id, segment_id, segment_probability,
    runner_up_segment_id``) against the customers that were scored (``customer_ids``).

    All errors: exactly one row per customer and the same set of customers (none missing, none
    extra, no duplicates, no null ids); ``segment_probability`` in [0, 1] and not null;
    ``segment_id`` and ``runner_up_segment_id`` are ids in ``n_segments_known`` (the segment ids
    the matching step may issue); the runner-up differs from the segment; segment sizes add up to the
    number of customers.
    """
    started = time.perf_counter()
    res = ValidationResult(stage="outputs", started_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                           context={"table": table, "known_segments": sorted(int(s) for s in n_segments_known)})
    if not isinstance(assignments, pa.Table):
        raise TypeError(f"validate_outputs expects a pyarrow.Table, got {type(assignments).__name__}")
    expected_ids = _as_text_array(customer_ids)
    known = sorted({int(s) for s in n_segments_known})
    res.row_counts[table] = assignments.num_rows
    ids = [key] if key in assignments.column_names else []

    from validation._gx import Runner
    from validation._plans import column_value_checks

    runner = Runner("outputs")
    gxe = runner.gxe
    planned: list[Planned] = [
        Planned(gxe.ExpectTableRowCountToEqual(value=len(expected_ids)), table, None, "row_count", "error",
                len(expected_ids), f"one row per scored customer ({len(expected_ids)})",
                lambda r, df: (r.get("observed_value"), f"{r.get('observed_value')} rows")),
    ]
    usable = []
    for col in OUTPUT_COLUMNS:
        ok = col in assignments.column_names
        res.checks.append(check_dict(stage="outputs", table=table, column=col, check="exists", severity="error",
                                     success=ok, observed=None if ok else "missing", expected="column exists",
                                     label="column exists"))
        if ok:
            usable.append(col)
    if key in usable:
        planned += column_value_checks(gxe, table=table, column=key, severity="error", unique=True)
        got = _as_text_array(assignments.column(key))
        missing_mask = pc.invert(pc.is_in(expected_ids, value_set=got))
        extra_mask = pc.fill_null(pc.invert(pc.is_in(got, value_set=expected_ids)), False)
        n_missing = int(pc.sum(missing_mask).as_py() or 0)
        n_extra = int(pc.sum(extra_mask).as_py() or 0)
        missing_eg = pc.filter(expected_ids, missing_mask).slice(0, 5).to_pylist()
        res.checks.append(check_dict(
            stage="outputs", table=table, column=key, check="all_customers", severity="error",
            success=n_missing == 0, observed=n_missing, expected=0, label="every scored customer assigned",
            observed_text=f"{n_missing} customers without an assignment", examples=missing_eg,
            unexpected_count=n_missing,
        ))
        res.checks.append(check_dict(
            stage="outputs", table=table, column=key, check="known_customers", severity="error",
            success=n_extra == 0, observed=n_extra, expected=0, label="only scored customers",
            observed_text=f"{n_extra} rows for customers that were not scored", unexpected_count=n_extra,
            examples=example_ids(assignments.set_column(assignments.column_names.index(key), key, got), extra_mask, [key]),
        ))
    if "segment_probability" in usable:
        planned += column_value_checks(gxe, table=table, column="segment_probability", severity="error",
                                       min=0.0, max=1.0, numeric=True, floating=True)
    for col in ("segment_id", "runner_up_segment_id"):
        if col in usable:
            if col == "runner_up_segment_id" and len(set(known)) == 1:
                # one segment holds everyone: no other segment exists to be a runner-up, which is
                # then null (the contract's column is nullable)
                n_set = assignments.num_rows - assignments.column(col).null_count
                res.checks.append(check_dict(
                    stage="outputs", table=table, column=col, check="runner_up_null_for_one_segment",
                    severity="error", success=n_set == 0, observed=n_set, expected=0,
                    label="no runner-up when one segment holds everyone",
                    observed_text=f"{n_set} rows name a runner-up although only segment {known[0]} exists"))
                continue
            planned += column_value_checks(gxe, table=table, column=col, severity="error", allowed=tuple(known))
    if "segment_id" in usable and "runner_up_segment_id" in usable:
        same = pc.fill_null(pc.equal(assignments.column("segment_id"), assignments.column("runner_up_segment_id")),
                            False)
        n_same = int(pc.sum(same).as_py() or 0)
        res.checks.append(check_dict(
            stage="outputs", table=table, column="runner_up_segment_id", check="runner_up_differs",
            severity="error", success=n_same == 0, observed=n_same, expected=0,
            label="runner-up differs from the segment", observed_text=f"same as segment_id on {n_same} rows",
            examples=example_ids(assignments, same, ids) if n_same else [], unexpected_count=n_same,
        ))
    if "segment_id" in usable:
        sizes = pc.value_counts(assignments.column("segment_id")).to_pylist()
        size_map = {s["values"]: s["counts"] for s in sizes if s["values"] is not None}
        total = sum(size_map.values())
        res.context["segment_sizes"] = {str(k): int(v) for k, v in sorted(size_map.items())}
        res.checks.append(check_dict(
            stage="outputs", table=table, column="segment_id", check="sizes_add_up", severity="error",
            success=total == len(expected_ids), observed=total, expected=len(expected_ids),
            label=f"segment sizes add up to the {len(expected_ids)} customers",
            observed_text=f"sizes {fmt_value(list(size_map.values()))} add up to {total}",
        ))

    t = time.perf_counter()
    checks = runner.run(table, for_pandas(assignments.select(usable)) if usable else _empty_frame(assignments),
                        planned, ids)
    res.timings = {"gx_s": time.perf_counter() - t}
    res.checks = checks + res.checks
    res.duration_s = time.perf_counter() - started
    finish(res, runner, out_dir)
    log.info("%s", res.summary())
    return res


def _empty_frame(table: pa.Table) -> Any:
    import pandas as pd

    return pd.DataFrame(index=range(table.num_rows))


def _as_text_array(values: Any) -> pa.Array:
    """Customer ids as one Arrow string array (ids may come as text or integers)."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if not isinstance(values, pa.Array):
        values = pa.array(list(values))
    if pa.types.is_dictionary(values.type):
        values = values.cast(values.type.value_type)
    if not pa.types.is_string(values.type):
        values = values.cast(pa.string())
    return values
