"""Publish a run's segments to the warehouse contract (see DESIGN.md, "Warehouse contract").

Tables in ``<schema>`` (default ``segments``):

- ``segment_assignments``: history, one row per (run_date, customer_id).
- ``segment_assignments_current``: view, the rows of the latest run_date that has a successful run.
- ``segments``: one row per segment id ever issued, with first/last run date and active/retired.
- ``segment_profiles``: per (run_date, segment_id): label, size, share, JSON summary.
- ``segmentation_runs``: one row per run_id.

``publish_run`` validates everything first, then replaces the run date's rows, upserts segments
and writes the run record in ONE transaction: a failure anywhere leaves every table as it was,
and a rerun of the same date with the same inputs leaves identical rows.
"""
from __future__ import annotations

import datetime as dt
import json
import math
import operator
from collections.abc import Mapping
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from segmentation.spec import check_identifier
from segmentation.warehouse import Transaction, Warehouse, WarehouseError

DEFAULT_SCHEMA = "segments"
ASSIGNMENTS = "segment_assignments"
CURRENT_VIEW = "segment_assignments_current"
SEGMENTS = "segments"
PROFILES = "segment_profiles"
RUNS = "segmentation_runs"

RUN_SUCCESS = "success"
RUN_FAILED = "failed"
RUN_RUNNING = "running"
RUN_STATUSES = (RUN_RUNNING, RUN_SUCCESS, RUN_FAILED)
SEGMENT_ACTIVE = "active"
SEGMENT_RETIRED = "retired"

# Column order of segment_assignments (and of the current view).
ASSIGNMENT_COLUMNS = (
    "run_date",
    "customer_id",
    "segment_id",
    "segment_probability",
    "runner_up_segment_id",
    "model_version",
    "run_id",
)
SEGMENT_COLUMNS = ("segment_id", "label", "first_run_date", "last_run_date", "status")
PROFILE_COLUMNS = ("run_date", "run_id", "segment_id", "label", "size", "share", "summary")
RUN_COLUMNS = (
    "run_id",
    "run_date",
    "status",
    "started_at",
    "finished_at",
    "model_version",
    "n_segments",
    "n_customers",
    "metrics",
    "validation",
    "stability",
    "training",
    "message",
)
_RUN_JSON_KEYS = ("metrics", "validation", "stability", "training")
RUN_RECORD_KEYS = (
    "status",
    "started_at",
    "finished_at",
    "n_segments",
    "n_customers",
    *_RUN_JSON_KEYS,
    "message",
    "model_version",
)

Db = Warehouse | Transaction


# ---------------------------------------------------------------------------------------------
# Contract DDL
# ---------------------------------------------------------------------------------------------
def _table_ddl(db: Db, schema: str) -> dict[str, str]:
    text, integer, double = db.sql_type(pa.string()), db.sql_type(pa.int32()), db.sql_type(pa.float64())
    bigint, date = db.sql_type(pa.int64()), db.sql_type(pa.date32())
    tstz = db.sql_type(pa.timestamp("us", tz="UTC"))
    q = db.qualified
    # DuckDB: no declared key on the history table. Deleting a date's rows from an ART-indexed
    # DuckDB table costs ~35 s per 500k rows at commit (measured, DuckDB 2.0.1), which every
    # rerun would pay. Uniqueness there comes from publish_run itself: validated unique ids,
    # the date deleted before the insert, and a check inside the transaction (_check_unique).
    assignments_key = "" if db.dialect == "duckdb" else ",\n            PRIMARY KEY (run_date, customer_id)"
    return {
        ASSIGNMENTS: f"""CREATE TABLE IF NOT EXISTS {q(schema, ASSIGNMENTS)} (
            run_date {date} NOT NULL,
            customer_id {text} NOT NULL,
            segment_id {integer} NOT NULL,
            segment_probability {double} NOT NULL,
            runner_up_segment_id {integer},
            model_version {text} NOT NULL,
            run_id {text} NOT NULL{assignments_key})""",
        SEGMENTS: f"""CREATE TABLE IF NOT EXISTS {q(schema, SEGMENTS)} (
            segment_id {integer} PRIMARY KEY,
            label {text} NOT NULL,
            first_run_date {date} NOT NULL,
            last_run_date {date} NOT NULL,
            status {text} NOT NULL CHECK (status IN ('{SEGMENT_ACTIVE}', '{SEGMENT_RETIRED}')))""",
        PROFILES: f"""CREATE TABLE IF NOT EXISTS {q(schema, PROFILES)} (
            run_date {date} NOT NULL,
            run_id {text} NOT NULL,
            segment_id {integer} NOT NULL,
            label {text} NOT NULL,
            size {bigint} NOT NULL,
            share {double} NOT NULL,
            summary {text} NOT NULL,
            PRIMARY KEY (run_date, segment_id))""",
        RUNS: f"""CREATE TABLE IF NOT EXISTS {q(schema, RUNS)} (
            run_id {text} PRIMARY KEY,
            run_date {date} NOT NULL,
            status {text} NOT NULL,
            started_at {tstz},
            finished_at {tstz},
            model_version {text},
            n_segments {integer},
            n_customers {bigint},
            metrics {text},
            validation {text},
            stability {text},
            training {text},
            message {text})""",
    }


def _view_ddl(db: Db, schema: str) -> str:
    cols = ", ".join(f"a.{c}" for c in ASSIGNMENT_COLUMNS)
    # Only a date with a *successful* run is current: a failed rerun never moves the view, and a
    # backfill of an older date does not either (max() still picks the newest date).
    return (
        f"CREATE VIEW {db.qualified(schema, CURRENT_VIEW)} AS SELECT {cols} "
        f"FROM {db.qualified(schema, ASSIGNMENTS)} a WHERE a.run_date = ("
        f"SELECT max(r.run_date) FROM {db.qualified(schema, RUNS)} r WHERE r.status = '{RUN_SUCCESS}')"
    )


_EXPECTED_COLUMNS = {
    ASSIGNMENTS: ASSIGNMENT_COLUMNS,
    SEGMENTS: SEGMENT_COLUMNS,
    PROFILES: PROFILE_COLUMNS,
    RUNS: RUN_COLUMNS,
}


def _ensure_contract(db: Db, schema: str) -> None:
    db.create_schema(schema)
    for table, ddl in _table_ddl(db, schema).items():
        db.execute(ddl)
        # A table left by an older or foreign layout must fail here, by name, not mid-publish.
        have = {name for name, _ in db.columns(schema, table)}
        missing = [c for c in _EXPECTED_COLUMNS[table] if c not in have]
        if missing:
            raise ValueError(
                f"table {schema}.{table} exists but lacks contract column(s) {missing}; "
                "migrate or drop it"
            )
    # Created only when absent: replacing a view on every run would take a lock that waits on
    # (and blocks) readers such as reverse-ETL syncs.
    if not db.table_exists(schema, CURRENT_VIEW):
        db.execute(_view_ddl(db, schema))


def ensure_contract(wh: Warehouse, schema: str = DEFAULT_SCHEMA) -> None:
    """Create the contract schema, tables and current view if they do not exist (idempotent)."""
    check_identifier(schema, "segments schema")
    with wh.transaction() as tx:
        _ensure_contract(tx, schema)


# ---------------------------------------------------------------------------------------------
# Input validation (before any transaction is opened)
# ---------------------------------------------------------------------------------------------
def _fail(table: str, column: str | None, problem: str) -> ValueError:
    where = f"{table}.{column}" if column else table
    return ValueError(f"publish input {where}: {problem}")


def _examples(values: pa.Array | pa.ChunkedArray, limit: int = 5) -> str:
    return repr(values.slice(0, limit).to_pylist())


def _require_columns(table: pa.Table, name: str, columns: tuple[str, ...]) -> None:
    if not isinstance(table, pa.Table):
        raise TypeError(f"publish input {name}: expected a pyarrow.Table, got {type(table).__name__}")
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise _fail(name, None, f"missing required column(s) {missing}; has {table.column_names}")


def _plain_type(t: pa.DataType) -> pa.DataType:
    return t.value_type if pa.types.is_dictionary(t) else t


def _is_string(t: pa.DataType) -> bool:
    t = _plain_type(t)
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def _typed(table: pa.Table, name: str, column: str, kind: str, target: pa.DataType) -> pa.ChunkedArray:
    """``table[column]`` cast to ``target`` after checking it is of ``kind``: no silent coercion
    of, say, integer customer ids to text or float segment ids to int."""
    col = table[column]
    t = _plain_type(col.type)
    ok = {
        "string": _is_string(t),
        "integer": pa.types.is_integer(t) or pa.types.is_null(t),
        "number": pa.types.is_integer(t) or pa.types.is_floating(t),
    }[kind]
    if not ok:
        raise _fail(name, column, f"must be {kind}, got Arrow type {col.type}")
    try:
        return col.cast(target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise _fail(name, column, f"cannot be stored as {target}: {exc}") from None


def _no_nulls(col: pa.ChunkedArray, name: str, column: str) -> None:
    if col.null_count:
        raise _fail(name, column, f"{col.null_count} null value(s); every row needs one")


def _unique(col: pa.ChunkedArray, name: str, column: str) -> None:
    counts = pc.value_counts(col)
    dupes = counts.filter(pc.greater(counts.field("counts"), 1)).field("values")
    if len(dupes):
        raise _fail(name, column, f"{len(dupes)} duplicate value(s), e.g. {_examples(dupes)}")


def _within_unit(col: pa.ChunkedArray, name: str, column: str) -> None:
    bad = pc.or_kleene(pc.is_nan(col), pc.or_(pc.less(col, 0.0), pc.greater(col, 1.0)))
    offending = col.filter(pc.fill_null(bad, False))
    if len(offending):
        raise _fail(
            name, column, f"{len(offending)} value(s) outside [0, 1], e.g. {_examples(offending)}"
        )


def _subset(col: pa.ChunkedArray, known: pa.ChunkedArray, name: str, column: str) -> None:
    unknown = pc.unique(col.filter(pc.invert(pc.is_in(col, value_set=known.combine_chunks()))))
    unknown = unknown.filter(pc.is_valid(unknown))
    if len(unknown):
        raise _fail(
            name, column,
            f"segment id(s) {sorted(unknown.to_pylist())[:10]} are not in the segments input",
        )


def _check_run_date(run_date: Any) -> dt.date:
    # datetime is a date subclass; a timestamp here would silently pick a zone's calendar day.
    if not isinstance(run_date, dt.date) or isinstance(run_date, dt.datetime):
        raise ValueError(f"run_date must be a datetime.date, got {run_date!r}")
    return run_date


def _check_text(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{what} must be a non-empty string, got {value!r}")
    return value


def _prepare_assignments(
    assignments: pa.Table, segment_ids: pa.ChunkedArray, run_date: dt.date, run_id: str, model_version: str
) -> pa.Table:
    name = "assignments"
    _require_columns(
        assignments, name, ("customer_id", "segment_id", "segment_probability", "runner_up_segment_id")
    )
    if assignments.num_rows == 0:
        # An empty run would publish an empty current view: every customer "unsegmented".
        raise _fail(name, None, "has no rows; refusing to publish an empty run")
    customer = _typed(assignments, name, "customer_id", "string", pa.string())
    segment = _typed(assignments, name, "segment_id", "integer", pa.int32())
    prob = _typed(assignments, name, "segment_probability", "number", pa.float64())
    runner = _typed(assignments, name, "runner_up_segment_id", "integer", pa.int32())
    _no_nulls(customer, name, "customer_id")
    _unique(customer, name, "customer_id")
    _no_nulls(segment, name, "segment_id")
    _no_nulls(prob, name, "segment_probability")
    _within_unit(prob, name, "segment_probability")
    _subset(segment, segment_ids, name, "segment_id")
    same = pc.sum(pc.cast(pc.fill_null(pc.equal(segment, runner), False), pa.int64())).as_py() or 0
    if same:
        raise _fail(name, "runner_up_segment_id", f"equals segment_id in {same} row(s)")
    n = assignments.num_rows
    return pa.table(
        {
            "run_date": pa.repeat(pa.scalar(run_date, pa.date32()), n),
            "customer_id": customer,
            "segment_id": segment,
            "segment_probability": prob,
            "runner_up_segment_id": runner,
            "model_version": pa.repeat(pa.scalar(model_version, pa.string()), n),
            "run_id": pa.repeat(pa.scalar(run_id, pa.string()), n),
        }
    )


def _prepare_segments(segments: pa.Table) -> pa.Table:
    name = "segments"
    _require_columns(segments, name, ("segment_id", "label"))
    if segments.num_rows == 0:
        raise _fail(name, None, "has no rows")
    ids = _typed(segments, name, "segment_id", "integer", pa.int32())
    labels = _typed(segments, name, "label", "string", pa.string())
    _no_nulls(ids, name, "segment_id")
    _unique(ids, name, "segment_id")
    _no_nulls(labels, name, "label")
    return pa.table({"segment_id": ids, "label": labels})


def _prepare_profiles(
    profiles: pa.Table, segment_ids: pa.ChunkedArray, run_date: dt.date, run_id: str
) -> pa.Table:
    name = "profiles"
    _require_columns(profiles, name, ("segment_id", "label", "size", "share", "summary"))
    ids = _typed(profiles, name, "segment_id", "integer", pa.int32())
    labels = _typed(profiles, name, "label", "string", pa.string())
    size = _typed(profiles, name, "size", "integer", pa.int64())
    share = _typed(profiles, name, "share", "number", pa.float64())
    summary = _typed(profiles, name, "summary", "string", pa.string())
    for col, column in ((ids, "segment_id"), (labels, "label"), (size, "size"), (share, "share"),
                        (summary, "summary")):
        _no_nulls(col, name, column)
    _unique(ids, name, "segment_id")
    _subset(ids, segment_ids, name, "segment_id")
    if len(profiles) and pc.min(size).as_py() < 0:
        raise _fail(name, "size", "negative sizes")
    _within_unit(share, name, "share")
    for i, text in enumerate(summary.to_pylist()):  # K rows: cheap, and a report reads this JSON
        try:
            json.loads(text)
        except ValueError as exc:
            raise _fail(name, "summary", f"row {i} is not valid JSON text ({exc})") from None
    n = profiles.num_rows
    return pa.table(
        {
            "run_date": pa.repeat(pa.scalar(run_date, pa.date32()), n),
            "run_id": pa.repeat(pa.scalar(run_id, pa.string()), n),
            "segment_id": ids,
            "label": labels,
            "size": size,
            "share": share,
            "summary": summary,
        }
    )


def _jsonable(value: Any) -> Any:
    """Plain JSON values: NaN/inf -> null (strict JSON has none), numpy scalars and arrays ->
    Python, dates -> ISO text, sets sorted so reruns serialize identically."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted((_jsonable(v) for v in value), key=repr)
    if isinstance(value, (dt.date, dt.datetime, dt.time)):
        return value.isoformat()
    if hasattr(value, "tolist"):  # numpy scalar or array, without importing numpy
        return _jsonable(value.tolist())
    return str(value)


def _to_json(value: Any, key: str) -> str:
    if value is None:
        value = {}
    if not isinstance(value, Mapping):
        raise ValueError(f"run_record[{key!r}] must be a dict, got {type(value).__name__}")
    return json.dumps(_jsonable(value), sort_keys=True, allow_nan=False)


def _check_timestamp(value: Any, key: str) -> dt.datetime | None:
    if value is None:
        return None
    if not isinstance(value, dt.datetime) or value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"run_record[{key!r}] must be a timezone-aware datetime, got {value!r}")
    return value


def _optional_int(value: Any, key: str) -> int | None:
    if value is None:
        return None
    try:
        if isinstance(value, bool):
            raise TypeError
        return operator.index(value)  # int or numpy integer; floats are refused
    except TypeError:
        raise ValueError(f"run_record[{key!r}] must be an int, got {value!r}") from None


def _run_row(run_id: str, run_date: dt.date, record: Mapping[str, Any]) -> dict[str, Any]:
    """The segmentation_runs row (keyed by RUN_COLUMNS) for a run record, validated."""
    if not isinstance(record, Mapping):
        raise ValueError(f"run_record must be a dict, got {type(record).__name__}")
    unknown = sorted(set(record) - set(RUN_RECORD_KEYS))
    if unknown:
        raise ValueError(f"run_record has unknown key(s) {unknown}; allowed: {list(RUN_RECORD_KEYS)}")
    status = record.get("status")
    if not isinstance(status, str) or status.lower() not in RUN_STATUSES:
        raise ValueError(f"run_record['status'] must be one of {list(RUN_STATUSES)}, got {status!r}")
    message = record.get("message")
    if message is not None and not isinstance(message, str):
        raise ValueError(f"run_record['message'] must be a string, got {type(message).__name__}")
    model_version = record.get("model_version")
    if model_version is not None:
        _check_text(model_version, "run_record['model_version']")
    row = {
        "run_id": run_id,
        "run_date": run_date,
        "status": status.lower(),
        "started_at": _check_timestamp(record.get("started_at"), "started_at"),
        "finished_at": _check_timestamp(record.get("finished_at"), "finished_at"),
        "model_version": model_version,
        "n_segments": _optional_int(record.get("n_segments"), "n_segments"),
        "n_customers": _optional_int(record.get("n_customers"), "n_customers"),
        **{k: _to_json(record.get(k), k) for k in _RUN_JSON_KEYS},
        "message": message or "",
    }
    assert tuple(row) == RUN_COLUMNS
    return row


# ---------------------------------------------------------------------------------------------
# Writes (inside one transaction)
# ---------------------------------------------------------------------------------------------
def _write_run_row(tx: Transaction, schema: str, row: dict[str, Any]) -> None:
    table = tx.qualified(schema, RUNS)
    tx.execute(f"DELETE FROM {table} WHERE run_id = ?", [row["run_id"]])
    placeholders = ", ".join("?" for _ in RUN_COLUMNS)
    tx.execute(
        f"INSERT INTO {table} ({', '.join(RUN_COLUMNS)}) VALUES ({placeholders})",
        [row[c] for c in RUN_COLUMNS],
    )


def _check_unique(tx: Transaction, schema: str, run_date: dt.date) -> None:
    """(run_date, customer_id) is unique after the load: the key DuckDB does not declare."""
    if tx.dialect != "duckdb":
        return  # the primary key enforces it
    got = tx.query(
        f"SELECT count(*) - count(DISTINCT customer_id) AS dupes FROM {tx.qualified(schema, ASSIGNMENTS)} "
        "WHERE run_date = ?",
        [run_date],
    )
    dupes = got.column("dupes")[0].as_py()
    if dupes:
        raise WarehouseError(
            f"{schema}.{ASSIGNMENTS} would hold {dupes} duplicate customer_id(s) for {run_date} "
            "(another writer?); nothing was published"
        )


def _latest_success(tx: Transaction, schema: str) -> dt.date | None:
    got = tx.query(
        f"SELECT max(run_date) AS d FROM {tx.qualified(schema, RUNS)} WHERE status = ?", [RUN_SUCCESS]
    )
    return got.column("d")[0].as_py()


def _upsert_segments(tx: Transaction, schema: str, run_date: dt.date, segments: pa.Table) -> None:
    """Ids in this run become active with the run's label (first/last run dates widened); active
    ids missing from it retire. A backfill (run_date before a segment's last_run_date, or before
    the latest successful run) only widens first_run_date: today's state is not rewound."""
    table = tx.qualified(schema, SEGMENTS)
    existing = {
        r["segment_id"]: r
        for r in tx.query(f"SELECT {', '.join(SEGMENT_COLUMNS)} FROM {table}").to_pylist()
    }
    latest = _latest_success(tx, schema)
    is_backfill = latest is not None and run_date < latest
    in_run = dict(zip(segments["segment_id"].to_pylist(), segments["label"].to_pylist()))
    for seg_id, label in sorted(in_run.items()):
        old = existing.get(seg_id)
        if old is None:
            status = SEGMENT_RETIRED if is_backfill else SEGMENT_ACTIVE
            tx.execute(
                f"INSERT INTO {table} ({', '.join(SEGMENT_COLUMNS)}) VALUES (?, ?, ?, ?, ?)",
                [seg_id, label, run_date, run_date, status],
            )
        elif run_date >= old["last_run_date"] and not is_backfill:
            tx.execute(
                f"UPDATE {table} SET label = ?, first_run_date = ?, last_run_date = ?, status = ? "
                "WHERE segment_id = ?",
                [label, min(old["first_run_date"], run_date), run_date, SEGMENT_ACTIVE, seg_id],
            )
        elif run_date < old["first_run_date"]:
            tx.execute(
                f"UPDATE {table} SET first_run_date = ? WHERE segment_id = ?", [run_date, seg_id]
            )
    for seg_id, old in sorted(existing.items()):
        if (
            seg_id not in in_run
            and old["status"] == SEGMENT_ACTIVE
            and old["last_run_date"] <= run_date
            and not is_backfill
        ):
            tx.execute(f"UPDATE {table} SET status = ? WHERE segment_id = ?", [SEGMENT_RETIRED, seg_id])


def publish_run(
    wh: Warehouse,
    *,
    schema: str = DEFAULT_SCHEMA,
    run_date: dt.date,
    run_id: str,
    model_version: str,
    assignments: pa.Table,
    segments: pa.Table,
    profiles: pa.Table,
    run_record: Mapping[str, Any],
) -> None:
    """Publish one successful run of ``run_date`` atomically (see the module docstring).

    ``assignments``: customer_id (string), segment_id (int), segment_probability (float in [0, 1]),
    runner_up_segment_id (int, nullable); extra columns are ignored. ``segments``: segment_id,
    label of the segments in this run. ``profiles``: segment_id, label, size, share, summary (JSON
    text). ``run_record``: see ``RUN_RECORD_KEYS``; status must be "success"; n_customers and
    n_segments default to the input sizes. Bad input raises ValueError naming table, column and
    problem before anything is written.
    """
    check_identifier(schema, "segments schema")
    run_date = _check_run_date(run_date)
    _check_text(run_id, "run_id")
    _check_text(model_version, "model_version")
    seg_rows = _prepare_segments(segments)
    seg_ids = seg_rows["segment_id"]
    assign_rows = _prepare_assignments(assignments, seg_ids, run_date, run_id, model_version)
    profile_rows = _prepare_profiles(profiles, seg_ids, run_date, run_id)
    record = dict(run_record)
    if record.get("model_version", model_version) != model_version:
        raise ValueError(
            f"run_record['model_version'] {record['model_version']!r} differs from "
            f"model_version {model_version!r}"
        )
    record["model_version"] = model_version
    record.setdefault("n_customers", assign_rows.num_rows)
    record.setdefault("n_segments", seg_rows.num_rows)
    run_row = _run_row(run_id, run_date, record)
    if run_row["status"] != RUN_SUCCESS:
        raise ValueError(
            f"publish_run publishes a successful run: run_record['status'] must be "
            f"{RUN_SUCCESS!r}, got {record.get('status')!r} (use record_run for other outcomes)"
        )

    with wh.transaction() as tx:
        _ensure_contract(tx, schema)
        if tx.dialect == "postgres":
            # Serialize concurrent publishers (e.g. parallel backfills): the segments upsert
            # reads then writes. Readers of the tables are not blocked by this mode.
            tx.execute(f"LOCK TABLE {tx.qualified(schema, SEGMENTS)} IN SHARE ROW EXCLUSIVE MODE")
        # Replace exactly this date's partition; the PK makes a duplicate impossible anyway.
        tx.execute(f"DELETE FROM {tx.qualified(schema, ASSIGNMENTS)} WHERE run_date = ?", [run_date])
        tx.write_table(schema, ASSIGNMENTS, assign_rows, mode="append")
        _check_unique(tx, schema, run_date)
        tx.execute(f"DELETE FROM {tx.qualified(schema, PROFILES)} WHERE run_date = ?", [run_date])
        tx.write_table(schema, PROFILES, profile_rows, mode="append")
        # Segments before the run row: the upsert compares with the latest *earlier* success.
        _upsert_segments(tx, schema, run_date, seg_rows)
        _write_run_row(tx, schema, run_row)


def record_run(
    wh: Warehouse,
    *,
    schema: str = DEFAULT_SCHEMA,
    run_id: str,
    run_date: dt.date,
    run_record: Mapping[str, Any],
) -> None:
    """Write (or replace) only the run record of ``run_id``: for failed or running runs, whose
    segment tables stay untouched. A "success" record is accepted only for a run that already
    published assignments for ``run_date`` (else the current view would point at a date with
    no rows). Note: a failed record for a run_id that had published makes its date not current.
    """
    check_identifier(schema, "segments schema")
    run_date = _check_run_date(run_date)
    _check_text(run_id, "run_id")
    row = _run_row(run_id, run_date, run_record)
    with wh.transaction() as tx:
        _ensure_contract(tx, schema)
        if row["status"] == RUN_SUCCESS:
            got = tx.query(
                f"SELECT count(*) AS n FROM {tx.qualified(schema, ASSIGNMENTS)} "
                "WHERE run_date = ? AND run_id = ?",
                [run_date, run_id],
            )
            if not got.column("n")[0].as_py():
                raise ValueError(
                    f"record_run: run {run_id!r} has no rows in {schema}.{ASSIGNMENTS} for "
                    f"{run_date}; publish it with publish_run"
                )
        _write_run_row(tx, schema, row)
