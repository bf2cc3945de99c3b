"""The warehouse contract: publish_run / record_run on real DuckDB and PostgreSQL (see conftest)."""
from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pyarrow as pa
import pytest

from segmentation import publish
from segmentation.publish import (
    ASSIGNMENT_COLUMNS,
    ensure_contract,
    publish_run,
    record_run,
)
from segmentation.warehouse import Warehouse, WarehouseError
from segmentation.warehouse.base import Transaction

SCHEMA = "segs"
D = dt.date(2024, 3, 10)
UTC = dt.timezone.utc
CONTRACT = ("segment_assignments", "segment_assignments_current", "segments", "segment_profiles", "segmentation_runs")


def inputs(day: dt.date, seg_ids: tuple[int, ...] = (0, 1, 2), n: int = 30, shift: int = 0) -> dict[str, Any]:
    """A small, deterministic run: customers c000..c{n-1} spread over ``seg_ids``."""
    ids = [seg_ids[(i + shift) % len(seg_ids)] for i in range(n)]
    runner = [None if len(seg_ids) == 1 or i % 5 == 0 else seg_ids[(seg_ids.index(s) + 1) % len(seg_ids)]
              for i, s in enumerate(ids)]
    assignments = pa.table(
        {
            "customer_id": [f"c{i:03d}" for i in range(n)],
            "segment_id": pa.array(ids, pa.int64()),
            "segment_probability": [0.5 + (i % 50) / 100 for i in range(n)],
            "runner_up_segment_id": pa.array(runner, pa.int64()),
        }
    )
    labels = [f"segment {s} ({day.isoformat()})" for s in seg_ids]
    segments = pa.table({"segment_id": pa.array(seg_ids, pa.int32()), "label": labels})
    sizes = [ids.count(s) for s in seg_ids]
    profiles = pa.table(
        {
            "segment_id": pa.array(seg_ids, pa.int32()),
            "label": labels,
            "size": pa.array(sizes, pa.int64()),
            "share": [s / n for s in sizes],
            "summary": [json.dumps({"recency": {"median": s * 10}}) for s in seg_ids],
        }
    )
    started = dt.datetime.combine(day, dt.time(1, 0), tzinfo=UTC)
    return {
        "run_date": day,
        "run_id": f"run-{day.isoformat()}",
        "model_version": f"gmvae-{day.isoformat()}",
        "assignments": assignments,
        "segments": segments,
        "profiles": profiles,
        "run_record": {
            "status": "success",
            "started_at": started,
            "finished_at": started + dt.timedelta(minutes=12),
            "metrics": {"silhouette": 0.41, "elbo": float("nan")},
            "validation": {"passed": True},
            "stability": {"ari_vs_previous": 0.93},
            "training": {"estimator": "concrete", "epochs": 5},
            "message": "ok",
        },
    }


def do_publish(wh: Warehouse, **run: Any) -> None:
    publish_run(wh, schema=SCHEMA, **run)


def snapshot(wh: Warehouse) -> dict[str, list[dict[str, Any]]]:
    """Every contract table's full contents, sorted: equal snapshots mean identical tables."""
    out = {}
    for table in CONTRACT:
        if wh.table_exists(SCHEMA, table):
            rows = wh.query(f"SELECT * FROM {wh.qualified(SCHEMA, table)}").to_pylist()
            out[table] = sorted(rows, key=lambda r: json.dumps(r, sort_keys=True, default=str))
    return out


def current(wh: Warehouse) -> pa.Table:
    return wh.query(f"SELECT * FROM {SCHEMA}.segment_assignments_current ORDER BY customer_id")


def segments_by_id(wh: Warehouse) -> dict[int, dict[str, Any]]:
    return {r["segment_id"]: r for r in wh.query(f"SELECT * FROM {SCHEMA}.segments").to_pylist()}


def test_ensure_contract_is_idempotent_and_matches_the_contract(warehouse: Warehouse) -> None:
    ensure_contract(warehouse, SCHEMA)
    ensure_contract(warehouse, SCHEMA)
    for table in CONTRACT:
        assert warehouse.table_exists(SCHEMA, table), table
    assert [c for c, _ in warehouse.columns(SCHEMA, "segment_assignments")] == list(ASSIGNMENT_COLUMNS)
    assert [c for c, _ in warehouse.columns(SCHEMA, "segment_assignments_current")] == list(ASSIGNMENT_COLUMNS)
    assert [c for c, _ in warehouse.columns(SCHEMA, "segmentation_runs")] == list(publish.RUN_COLUMNS)
    assert current(warehouse).num_rows == 0
    row = "INSERT INTO segs.segment_assignments VALUES (?, 'c1', 1, 0.5, NULL, 'v', 'r')"
    warehouse.execute(row, [D])
    if warehouse.dialect == "postgres":  # the primary key is real
        with pytest.raises(WarehouseError):
            warehouse.execute(row, [D])


def test_duckdb_duplicates_from_another_writer_abort_the_publish(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """DuckDB declares no key on the history table (see publish._table_ddl); publish_run checks
    uniqueness inside its transaction instead, and rolls everything back if it is broken."""
    from segmentation.warehouse import connect

    with connect(f"duckdb:///{tmp_path}/w.duckdb") as wh:
        do_publish(wh, **inputs(D))
        before = snapshot(wh)
        original = Transaction.write_table

        def write_twice(self: Transaction, schema: str, table: str, data: pa.Table, mode: str = "replace") -> int:
            n = original(self, schema, table, data, mode)  # type: ignore[arg-type]
            if table == "segment_assignments":
                original(self, schema, table, data.slice(0, 2), mode)  # type: ignore[arg-type]
            return n

        monkeypatch.setattr(Transaction, "write_table", write_twice)
        with pytest.raises(WarehouseError, match="2 duplicate customer_id"):
            do_publish(wh, **inputs(D, n=10))
        assert snapshot(wh) == before


def test_ensure_contract_refuses_a_foreign_table(warehouse: Warehouse) -> None:
    warehouse.write_table(SCHEMA, "segments", pa.table({"segment_id": [1], "name": ["x"]}))
    with pytest.raises(ValueError, match=r"segs\.segments exists but lacks contract column"):
        ensure_contract(warehouse, SCHEMA)


def test_publish_writes_every_contract_table(warehouse: Warehouse) -> None:
    run = inputs(D)
    do_publish(warehouse, **run)
    got = warehouse.query(f"SELECT * FROM {SCHEMA}.segment_assignments ORDER BY customer_id")
    assert got.column_names == list(ASSIGNMENT_COLUMNS)
    assert got.num_rows == 30
    assert set(got["run_date"].to_pylist()) == {D}
    assert set(got["run_id"].to_pylist()) == {"run-2024-03-10"}
    assert got["segment_id"].type == pa.int32() and got["segment_probability"].type == pa.float64()
    assert got["customer_id"].to_pylist() == run["assignments"]["customer_id"].to_pylist()
    assert got["runner_up_segment_id"].to_pylist() == run["assignments"]["runner_up_segment_id"].to_pylist()
    assert current(warehouse).equals(got)

    profiles = warehouse.query(f"SELECT * FROM {SCHEMA}.segment_profiles ORDER BY segment_id").to_pylist()
    assert [(p["segment_id"], p["size"]) for p in profiles] == [(0, 10), (1, 10), (2, 10)]
    assert json.loads(profiles[1]["summary"]) == {"recency": {"median": 10}}

    (runrow,) = warehouse.query(f"SELECT * FROM {SCHEMA}.segmentation_runs").to_pylist()
    assert runrow["status"] == "success" and runrow["run_date"] == D
    assert runrow["n_customers"] == 30 and runrow["n_segments"] == 3
    assert runrow["model_version"] == "gmvae-2024-03-10"
    assert runrow["started_at"] == run["run_record"]["started_at"]
    assert runrow["finished_at"] - runrow["started_at"] == dt.timedelta(minutes=12)
    assert json.loads(runrow["metrics"]) == {"silhouette": 0.41, "elbo": None}  # NaN -> null
    assert json.loads(runrow["training"]) == {"estimator": "concrete", "epochs": 5}

    segs = segments_by_id(warehouse)
    assert sorted(segs) == [0, 1, 2]
    assert all(s["status"] == "active" and s["first_run_date"] == s["last_run_date"] == D for s in segs.values())


def test_rerun_of_the_same_date_is_identical(warehouse: Warehouse) -> None:
    do_publish(warehouse, **inputs(D))
    first = snapshot(warehouse)
    do_publish(warehouse, **inputs(D))
    assert snapshot(warehouse) == first
    counts = warehouse.query(
        f"SELECT count(*) AS n, count(DISTINCT customer_id) AS u FROM {SCHEMA}.segment_assignments"
    ).to_pylist()
    assert counts == [{"n": 30, "u": 30}]


def test_rerun_replaces_exactly_that_dates_rows(warehouse: Warehouse) -> None:
    do_publish(warehouse, **inputs(D - dt.timedelta(days=1)))
    do_publish(warehouse, **inputs(D, n=30))
    before_other_day = warehouse.query(
        f"SELECT * FROM {SCHEMA}.segment_assignments WHERE run_date = ? ORDER BY customer_id", [D - dt.timedelta(days=1)]
    )
    rerun = inputs(D, n=12, shift=1)
    rerun["run_id"] = "run-2024-03-10-retry"
    do_publish(warehouse, **rerun)
    on_d = warehouse.query(f"SELECT * FROM {SCHEMA}.segment_assignments WHERE run_date = ? ORDER BY customer_id", [D])
    assert on_d.num_rows == 12  # the 18 customers gone from the rerun are gone from D
    assert set(on_d["run_id"].to_pylist()) == {"run-2024-03-10-retry"}
    assert on_d["segment_id"].to_pylist() == rerun["assignments"]["segment_id"].to_pylist()
    assert warehouse.query(
        f"SELECT * FROM {SCHEMA}.segment_assignments WHERE run_date = ? ORDER BY customer_id", [D - dt.timedelta(days=1)]
    ).equals(before_other_day)
    assert current(warehouse).num_rows == 12


def test_next_day_moves_the_current_view(warehouse: Warehouse) -> None:
    do_publish(warehouse, **inputs(D, n=30))
    do_publish(warehouse, **inputs(D + dt.timedelta(days=1), n=25, shift=2))
    cur = current(warehouse)
    assert set(cur["run_date"].to_pylist()) == {D + dt.timedelta(days=1)}
    assert cur.num_rows == 25 == len(set(cur["customer_id"].to_pylist()))  # one row per customer
    hist = warehouse.query(f"SELECT run_date, count(*) AS n FROM {SCHEMA}.segment_assignments GROUP BY run_date ORDER BY run_date")
    assert hist.to_pylist() == [{"run_date": D, "n": 30}, {"run_date": D + dt.timedelta(days=1), "n": 25}]


def _fail_on_call(monkeypatch: pytest.MonkeyPatch, cls: type, name: str, when: Any) -> list[Any]:
    """Make ``cls.name`` raise on the first call for which ``when(args)`` is true; returns the calls."""
    original = getattr(cls, name)
    calls: list[Any] = []

    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        if when(args):
            raise RuntimeError(f"injected failure in {name}")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(cls, name, wrapper)
    return calls


@pytest.mark.parametrize(
    "failure",
    [
        "assignments_load",  # right after DELETE of D's assignments
        "profiles_load",  # after assignments were replaced
        "segments_upsert",  # after both loads
        "run_record",  # the very last statement
    ],
)
def test_failure_midway_leaves_every_table_untouched(
    warehouse: Warehouse, monkeypatch: pytest.MonkeyPatch, failure: str
) -> None:
    do_publish(warehouse, **inputs(D))
    do_publish(warehouse, **inputs(D + dt.timedelta(days=1), seg_ids=(0, 1, 3)))
    before = snapshot(warehouse)

    if failure == "assignments_load":
        calls = _fail_on_call(monkeypatch, Transaction, "write_table", lambda a: a[1] == "segment_assignments")
    elif failure == "profiles_load":
        calls = _fail_on_call(monkeypatch, Transaction, "write_table", lambda a: a[1] == "segment_profiles")
    elif failure == "segments_upsert":
        calls = _fail_on_call(monkeypatch, Transaction, "execute", lambda a: "UPDATE" in a[0] and "segments" in a[0])
    else:
        calls = _fail_on_call(monkeypatch, Transaction, "execute", lambda a: a[0].startswith("INSERT INTO") and "segmentation_runs" in a[0])

    # Rerun D+1 with other segments and fewer customers: every table would change if it landed.
    rerun = inputs(D + dt.timedelta(days=1), seg_ids=(0, 4), n=7)
    with pytest.raises(RuntimeError, match="injected failure"):
        do_publish(warehouse, **rerun)
    assert calls, "the failure point was never reached"
    monkeypatch.undo()
    assert snapshot(warehouse) == before
    # And the warehouse is fine afterwards: the same publish now goes through.
    do_publish(warehouse, **rerun)
    assert current(warehouse).num_rows == 7


def test_segments_activate_and_retire(warehouse: Warehouse) -> None:
    d1, d2, d3 = D, D + dt.timedelta(days=1), D + dt.timedelta(days=2)
    do_publish(warehouse, **inputs(d1, seg_ids=(0, 1, 2)))
    do_publish(warehouse, **inputs(d2, seg_ids=(0, 1, 3)))
    segs = segments_by_id(warehouse)
    assert {k: v["status"] for k, v in segs.items()} == {0: "active", 1: "active", 2: "retired", 3: "active"}
    assert (segs[2]["first_run_date"], segs[2]["last_run_date"]) == (d1, d1)
    assert (segs[3]["first_run_date"], segs[3]["last_run_date"]) == (d2, d2)
    assert (segs[0]["first_run_date"], segs[0]["last_run_date"]) == (d1, d2)
    assert segs[0]["label"] == "segment 0 (2024-03-11)"  # label follows the latest run

    do_publish(warehouse, **inputs(d3, seg_ids=(0, 2)))  # 2 comes back, 1 and 3 retire
    segs = segments_by_id(warehouse)
    assert {k: v["status"] for k, v in segs.items()} == {0: "active", 1: "retired", 2: "active", 3: "retired"}
    assert (segs[2]["first_run_date"], segs[2]["last_run_date"]) == (d1, d3)  # first seen is kept
    assert segs[1]["last_run_date"] == d2


def test_backfill_of_an_older_date_changes_nothing_current(warehouse: Warehouse) -> None:
    d1, d2 = D, D + dt.timedelta(days=1)
    do_publish(warehouse, **inputs(d1, seg_ids=(0, 1, 2)))
    do_publish(warehouse, **inputs(d2, seg_ids=(0, 1, 3)))
    cur_before, segs_before = current(warehouse), segments_by_id(warehouse)

    old = D - dt.timedelta(days=5)
    do_publish(warehouse, **inputs(old, seg_ids=(0, 5), n=9))
    assert current(warehouse).equals(cur_before)  # view still on d2
    segs = segments_by_id(warehouse)
    for seg_id in (1, 2, 3):
        assert segs[seg_id] == segs_before[seg_id]  # nobody retired or re-activated
    assert segs[0] == {**segs_before[0], "first_run_date": old}  # only "first seen" moves back
    assert segs[5] == {"segment_id": 5, "label": "segment 5 (2024-03-05)", "first_run_date": old,
                       "last_run_date": old, "status": "retired"}
    assert warehouse.query(f"SELECT count(*) AS n FROM {SCHEMA}.segment_assignments WHERE run_date = ?", [old])["n"].to_pylist() == [9]


def test_record_run_failed_touches_only_the_run_record(warehouse: Warehouse) -> None:
    do_publish(warehouse, **inputs(D))
    before = snapshot(warehouse)
    failed_at = dt.datetime(2024, 3, 12, 2, 0, tzinfo=dt.timezone(dt.timedelta(hours=-5)))
    record = {"status": "FAILED", "started_at": failed_at, "finished_at": failed_at,
              "validation": {"passed": False, "failed": ["recency_days not null"]}, "message": "validation failed"}
    record_run(warehouse, schema=SCHEMA, run_id="run-2024-03-11", run_date=D + dt.timedelta(days=1), run_record=record)
    after = snapshot(warehouse)
    assert {k: v for k, v in after.items() if k != "segmentation_runs"} == {
        k: v for k, v in before.items() if k != "segmentation_runs"
    }
    runs = {r["run_id"]: r for r in after["segmentation_runs"]}
    assert runs["run-2024-03-11"]["status"] == "failed"
    assert runs["run-2024-03-11"]["started_at"] == failed_at  # same instant, read back in UTC
    assert runs["run-2024-03-11"]["n_customers"] is None and runs["run-2024-03-11"]["model_version"] is None
    assert json.loads(runs["run-2024-03-11"]["validation"])["passed"] is False
    assert set(current(warehouse)["run_date"].to_pylist()) == {D}  # yesterday's segments stay current
    # Written again (an Airflow retry): replaced, not duplicated.
    record_run(warehouse, schema=SCHEMA, run_id="run-2024-03-11", run_date=D + dt.timedelta(days=1),
               run_record={**record, "message": "still failing"})
    runs = warehouse.query(f"SELECT run_id, message FROM {SCHEMA}.segmentation_runs ORDER BY run_id").to_pylist()
    assert runs == [{"run_id": "run-2024-03-10", "message": "ok"}, {"run_id": "run-2024-03-11", "message": "still failing"}]


def test_record_run_success_needs_published_rows(warehouse: Warehouse) -> None:
    ensure_contract(warehouse, SCHEMA)
    before = snapshot(warehouse)
    with pytest.raises(ValueError, match="has no rows in segs.segment_assignments"):
        record_run(warehouse, schema=SCHEMA, run_id="r", run_date=D, run_record={"status": "success"})
    assert snapshot(warehouse) == before


def _broken(field: str) -> dict[str, Any]:
    run = inputs(D)
    a, s, p = run["assignments"], run["segments"], run["profiles"]
    col = a.column_names.index
    if field == "missing_column":
        run["assignments"] = a.drop_columns("segment_probability")
    elif field == "null_customer":
        run["assignments"] = a.set_column(col("customer_id"), "customer_id", pa.array([None] + [f"x{i}" for i in range(29)], pa.string()))
    elif field == "duplicate_customer":
        run["assignments"] = a.set_column(col("customer_id"), "customer_id", pa.array(["dup", "dup"] + [f"x{i}" for i in range(28)]))
    elif field == "integer_customer":
        run["assignments"] = a.set_column(col("customer_id"), "customer_id", pa.array(range(30)))
    elif field == "probability_above_one":
        run["assignments"] = a.set_column(col("segment_probability"), "segment_probability", pa.array([1.5] + [0.5] * 29))
    elif field == "probability_nan":
        run["assignments"] = a.set_column(col("segment_probability"), "segment_probability", pa.array([float("nan")] + [0.5] * 29))
    elif field == "unknown_segment":
        run["assignments"] = a.set_column(col("segment_id"), "segment_id", pa.array([9] * 30))
    elif field == "runner_up_equals_segment":
        run["assignments"] = a.set_column(col("runner_up_segment_id"), "runner_up_segment_id", a["segment_id"])
    elif field == "empty_assignments":
        run["assignments"] = a.slice(0, 0)
    elif field == "duplicate_segment":
        run["segments"] = pa.table({"segment_id": [0, 1, 2, 2], "label": ["a", "b", "c", "d"]})
    elif field == "null_label":
        run["segments"] = s.set_column(1, "label", pa.array(["a", None, "c"]))
    elif field == "profile_summary_not_json":
        run["profiles"] = p.set_column(p.column_names.index("summary"), "summary", pa.array(["{", "{}", "{}"]))
    elif field == "profile_unknown_segment":
        run["profiles"] = p.set_column(0, "segment_id", pa.array([0, 1, 7], pa.int32()))
    elif field == "bad_status":
        run["run_record"] = {**run["run_record"], "status": "failed"}
    elif field == "naive_timestamp":
        run["run_record"] = {**run["run_record"], "started_at": dt.datetime(2024, 3, 10, 1)}
    elif field == "unknown_record_key":
        run["run_record"] = {**run["run_record"], "duration": 3}
    elif field == "datetime_run_date":
        run["run_date"] = dt.datetime(2024, 3, 10, 0, 0)
    return run


@pytest.mark.parametrize(
    ("field", "message"),
    [
        ("missing_column", r"assignments: missing required column\(s\) \['segment_probability'\]"),
        ("null_customer", r"assignments\.customer_id: 1 null value"),
        ("duplicate_customer", r"assignments\.customer_id: 1 duplicate value\(s\), e\.g\. \['dup'\]"),
        ("integer_customer", r"assignments\.customer_id: must be string"),
        ("probability_above_one", r"assignments\.segment_probability: 1 value\(s\) outside \[0, 1\]"),
        ("probability_nan", r"assignments\.segment_probability: 1 value\(s\) outside \[0, 1\]"),
        ("unknown_segment", r"assignments\.segment_id: segment id\(s\) \[9\] are not in the segments input"),
        ("runner_up_equals_segment", r"assignments\.runner_up_segment_id: equals segment_id in 30 row"),
        ("empty_assignments", r"assignments: has no rows"),
        ("duplicate_segment", r"segments\.segment_id: 1 duplicate"),
        ("null_label", r"segments\.label: 1 null"),
        ("profile_summary_not_json", r"profiles\.summary: row 0 is not valid JSON"),
        ("profile_unknown_segment", r"profiles\.segment_id: segment id\(s\) \[7\]"),
        ("bad_status", r"run_record\['status'\] must be 'success'"),
        ("naive_timestamp", r"run_record\['started_at'\] must be a timezone-aware datetime"),
        ("unknown_record_key", r"run_record has unknown key\(s\) \['duration'\]"),
        ("datetime_run_date", r"run_date must be a datetime\.date"),
    ],
)
def test_bad_input_is_refused_before_anything_is_written(warehouse: Warehouse, field: str, message: str) -> None:
    do_publish(warehouse, **inputs(D - dt.timedelta(days=1)))
    before = snapshot(warehouse)
    with pytest.raises(ValueError, match=message):
        do_publish(warehouse, **_broken(field))
    assert snapshot(warehouse) == before


def test_schema_is_configurable_and_validated(warehouse: Warehouse) -> None:
    run = inputs(D)
    publish_run(warehouse, schema="marketing_segments", **run)
    assert warehouse.query("SELECT count(*) AS n FROM marketing_segments.segment_assignments_current")["n"].to_pylist() == [30]
    assert not warehouse.table_exists("segments", "segment_assignments")
    with pytest.raises(ValueError, match="not a valid identifier"):
        publish_run(warehouse, schema="x; drop table", **run)
    with pytest.raises(ValueError, match="not a valid identifier"):
        ensure_contract(warehouse, "x; drop table")
    with pytest.raises(ValueError, match="not a valid identifier"):
        record_run(warehouse, schema="a.b", run_id="r", run_date=D, run_record={"status": "failed"})
