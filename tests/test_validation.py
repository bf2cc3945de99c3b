"""Validation (``validation/``): Great Expectations suites from the spec, on real DuckDB and PostgreSQL.

- The real Online Retail demo passes (no error-severity failure) as of 2011-12-10 and 2011-06-01 on
  both backends. The demo is loaded and its features built once per backend per module.
- Each GX trap is guarded: an empty table, an all-null column, ``mostly`` ignoring nulls, set
  membership ignoring nulls.
- Real-world faults applied to a copy of the demo warehouse with SQL; each asserts that the outcome
  names the table, the column and the problem (and the severity: error or warning).
- PSI drift (same data: none; shifted data: detected), outputs, evidence files, the cheap import.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pyarrow as pa
import pytest

from segmentation.demo import init_demo_warehouse
from segmentation.features import build_features
from segmentation.spec import Checks, load_spec
from segmentation.warehouse import connect
from validation import (
    ValidationFailed,
    ValidationResult,
    feature_reference,
    validate_features,
    validate_outputs,
    validate_raw,
)

SPEC = load_spec()
DEC = dt.datetime(2011, 12, 10)  # the day after the last invoice line
JUNE = dt.datetime(2011, 6, 1)
FEATURES = "features.customer_features"
TX = "raw.transactions"
CU = "raw.customers"
ADMIN_URL = os.environ.get("SEGMENT_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


def _read_features(url: str) -> pa.Table:
    with connect(url) as wh:
        return wh.query(f"select * from {FEATURES} order by customer_id")


def _validate_demo(url: str) -> dict[str, Any]:
    """Build and validate both dates; the warehouse is left with the December features."""
    out: dict[str, Any] = {"url": url}
    for as_of in (JUNE, DEC):  # December last: the state the fault tests start from
        build_features(url, as_of)
        out[as_of] = {
            "raw": validate_raw(url, SPEC, as_of=as_of),
            "features": validate_features(url, SPEC, as_of=as_of),
            "table": _read_features(url),
        }
    out["row_counts"] = out[DEC]["raw"].row_counts
    return out


@pytest.fixture(scope="module")
def demo_duckdb(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("validation_demo")
    url = f"duckdb:///{folder}/warehouse.duckdb"
    init_demo_warehouse(url)
    return {**_validate_demo(url), "path": folder / "warehouse.duckdb", "backend": "duckdb"}


@pytest.fixture(scope="module")
def demo_postgres(_postgres_admin: Any) -> Any:
    name = f"seg_test_{uuid.uuid4().hex[:12]}"
    _postgres_admin.execute(f'CREATE DATABASE "{name}"')
    url = urlunsplit(urlsplit(ADMIN_URL)._replace(path=f"/{name}"))
    try:
        init_demo_warehouse(url)
        yield {**_validate_demo(url), "db": name, "backend": "postgres"}
    finally:
        _postgres_admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["duckdb", pytest.param("postgres", marks=pytest.mark.postgres)])
def demo(request: pytest.FixtureRequest) -> dict[str, Any]:
    return request.getfixturevalue(f"demo_{request.param}")


@pytest.fixture(scope="module")
def reference(demo_duckdb: dict[str, Any]) -> dict:
    """The December features as the production model's reference."""
    return feature_reference(demo_duckdb[DEC]["table"], SPEC)


@pytest.fixture
def copy_duckdb(demo_duckdb: dict[str, Any], tmp_path: Path) -> str:
    """A private copy of the demo warehouse (December features) for a test to break."""
    src: Path = demo_duckdb["path"]
    shutil.copy(src, tmp_path / "warehouse.duckdb")
    if Path(f"{src}.wal").exists():
        shutil.copy(f"{src}.wal", tmp_path / "warehouse.duckdb.wal")
    return f"duckdb:///{tmp_path}/warehouse.duckdb"


@pytest.fixture
def copy_postgres(demo_postgres: dict[str, Any], _postgres_admin: Any) -> Any:
    name = f"seg_test_{uuid.uuid4().hex[:12]}"
    _postgres_admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{demo_postgres["db"]}"')
    try:
        yield urlunsplit(urlsplit(ADMIN_URL)._replace(path=f"/{name}"))
    finally:
        _postgres_admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _sql(url: str, *statements: str) -> None:
    with connect(url) as wh:
        for s in statements:
            wh.execute(s)


def _failed(res: ValidationResult, table: str, column: str | None, check: str) -> dict[str, Any]:
    found = [c for c in res.checks if not c["success"] and c["table"] == table and c["column"] == column
             and c["check"] == check]
    assert found, f"no failed check {table}.{column}:{check} in\n{res.summary()}"
    return found[0]


# ---------------------------------------------------------------------------------------------
# The real demo data passes
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("as_of", [DEC, JUNE], ids=["2011-12-10", "2011-06-01"])
def test_demo_data_passes(demo: dict[str, Any], as_of: dt.datetime) -> None:
    raw, feats = demo[as_of]["raw"], demo[as_of]["features"]
    assert raw.status != "failed", raw.summary()
    assert feats.status != "failed", feats.summary()
    raw.raise_if_failed()
    feats.raise_if_failed()
    # the one legitimate exception of the real data: two bad-debt adjustment lines, a warning
    assert [(c["table"], c["column"], c["check"]) for c in raw.warnings] == [
        (TX, "unit_price", "unit_price_non_negative_all_lines")
    ]
    assert "A563186" in raw.warnings[0]["message"] and "-11062.06" in raw.warnings[0]["message"]
    assert feats.warnings == [], feats.summary()
    assert raw.row_counts == {TX: 541_909, CU: 4_372}
    assert feats.row_counts == {FEATURES: demo[as_of]["table"].num_rows}
    assert len(feats.checks) > 60 and len(raw.checks) > 40
    # a row-count band against itself passes
    again = validate_raw(demo["url"], dataclasses.replace(SPEC, sources={"customers": SPEC.sources["customers"]}),
                         as_of=as_of, previous_row_counts=raw.row_counts)
    assert again.status == "passed" and any(c["check"] == "row_count_band" and c["success"] for c in again.checks)


# ---------------------------------------------------------------------------------------------
# GX traps
# ---------------------------------------------------------------------------------------------
def test_empty_features_table_fails(copy_duckdb: str) -> None:
    _sql(copy_duckdb, f"delete from {FEATURES}")
    res = validate_features(copy_duckdb, SPEC, as_of=DEC)
    assert res.status == "failed"
    check = _failed(res, FEATURES, None, "row_count")
    assert check["severity"] == "error" and check["observed"] == 0
    assert "features.customer_features: row count >= 8" in check["message"] and "0 rows" in check["message"]
    # the trap itself: every row-level expectation passed on the empty table
    row_level = [c for c in res.checks if c["check"] in ("min", "max", "not_null", "unique", "finite")]
    assert row_level and all(c["success"] for c in row_level)
    with pytest.raises(ValidationFailed, match="row count >= 8"):
        res.raise_if_failed()


def test_all_null_column_fails_even_when_nulls_are_allowed(copy_duckdb: str) -> None:
    # days_between_purchases allows 99% nulls (warning severity); monetary allows none
    _sql(copy_duckdb, f"update {FEATURES} set days_between_purchases = null, monetary = null")
    res = validate_features(copy_duckdb, SPEC, as_of=DEC)
    gaps = _failed(res, FEATURES, "days_between_purchases", "null_share")
    assert gaps["severity"] == "warning" and gaps["observed"] == 1.0
    assert "null share <= 99% — observed 100% null" in gaps["message"]
    money = _failed(res, FEATURES, "monetary", "not_null")
    assert money["severity"] == "error" and "100% null" in money["message"]
    # with any share of nulls allowed, an all-null column still fails
    lax = dataclasses.replace(SPEC, features=tuple(
        dataclasses.replace(f, checks=Checks(min=0, max_null_share=1.0)) if f.name == "days_between_purchases" else f
        for f in SPEC.features))
    res = validate_features(copy_duckdb, lax, as_of=DEC)
    check = _failed(res, FEATURES, "days_between_purchases", "not_all_null")
    assert check["severity"] == "error" and "every value is null" in check["message"]


def test_null_share_counts_nulls_that_mostly_ignores(copy_duckdb: str) -> None:
    # 3% nulls and one value out of range in share_of_spend_last_90d (max 1% nulls, range [0, 1])
    _sql(copy_duckdb,
         f"update {FEATURES} set share_of_spend_last_90d = null where customer_id in "
         f"(select customer_id from {FEATURES} order by customer_id limit 130)",
         f"update {FEATURES} set share_of_spend_last_90d = 1.5 where customer_id = '18287'")
    res = validate_features(copy_duckdb, SPEC, as_of=DEC)
    nulls = _failed(res, FEATURES, "share_of_spend_last_90d", "null_share")
    assert 0.029 < nulls["observed"] < 0.032 and "null share <= 1%" in nulls["message"]
    high = _failed(res, FEATURES, "share_of_spend_last_90d", "max")
    assert "max 1 — observed 1.5 on 1 row (e.g. 18287)" in high["message"]

    # the trap: GX's `mostly` computes its share over the non-null values only, so a range check
    # with mostly=0.99 passes although 3% of the rows are null and one is out of range
    from validation._common import for_pandas
    from validation._gx import Planned, Runner

    runner = Runner("trap")
    df = for_pandas(_read_features(copy_duckdb))
    [check] = runner.run(FEATURES, df, [Planned(runner.gxe.ExpectColumnValuesToBeBetween(
        column="share_of_spend_last_90d", min_value=0, max_value=1, mostly=0.99), FEATURES,
        "share_of_spend_last_90d", "range_mostly", "error", "[0, 1]", "range, mostly 0.99")], ["customer_id"])
    assert check["success"] is True


def test_set_membership_ignores_nulls_not_null_check_does_not(copy_duckdb: str) -> None:
    levels = tuple(sorted(set(_read_features(copy_duckdb).column("country").to_pylist())))
    strict = dataclasses.replace(SPEC, features=tuple(
        dataclasses.replace(f, checks=Checks(allowed=levels)) if f.name == "country" else f for f in SPEC.features))
    _sql(copy_duckdb, f"update {FEATURES} set country = null where customer_id in ('12347', '12348')")
    res = validate_features(copy_duckdb, strict, as_of=DEC)
    allowed = [c for c in res.checks if c["column"] == "country" and c["check"] == "allowed"]
    assert allowed and allowed[0]["success"] is True  # GX: nulls are never outside a set
    check = _failed(res, FEATURES, "country", "not_null")
    assert check["severity"] == "error" and "2 of 4339 rows" in check["message"]


# ---------------------------------------------------------------------------------------------
# Real-world faults
# ---------------------------------------------------------------------------------------------
NOW = dt.datetime(2026, 1, 15, 12, 0)  # a fixed wall clock for the timezone fault
LAST_LINE = dt.datetime(2011, 12, 9, 12, 50)


@dataclasses.dataclass(frozen=True)
class Fault:
    id: str
    stage: str  # raw | features
    sql: tuple[str, ...]
    table: str
    column: str | None
    check: str
    severity: str  # of the check that must fail; the result's status follows from it
    words: tuple[str, ...]  # must all appear in the check's message
    source: str | None = None  # raw: validate only this source (faster)
    kwargs: Callable[[dict], dict] = lambda ctx: {}
    postgres: bool = False  # also run on PostgreSQL


def _rebase_and_shift() -> str:
    # make the demo a live shop (newest line an hour before NOW), then a +10 h timezone shift:
    # the extract wrote Australian local time into a UTC column
    seconds = int(((NOW - dt.timedelta(hours=1)) - LAST_LINE + dt.timedelta(hours=10)).total_seconds())
    return f"update {TX} set invoice_date = invoice_date + interval '{seconds} seconds'"


FAULTS = [
    Fault("missing_column", "raw", (f"alter table {TX} drop column unit_price",),
          TX, "unit_price", "exists", "error", ("raw.transactions.unit_price: column exists — observed missing",),
          source="transactions"),
    Fault("renamed_raw_column", "raw", (f"alter table {TX} rename column unit_price to price",),
          TX, "unit_price", "exists", "error", ("raw.transactions.unit_price", "renamed? columns not in the rules: price"),
          source="transactions"),
    Fault("missing_customer_column", "raw", (f"alter table {CU} drop column country",),
          CU, "country", "exists", "error", ("raw.customers.country", "column exists", "missing"),
          source="customers", postgres=True),
    Fault("renamed_column", "features", (f"alter table {FEATURES} rename column monetary to monetary_gbp",),
          FEATURES, "monetary", "exists", "error",
          ("features.customer_features.monetary", "missing (renamed? columns not in the spec: monetary_gbp)"), postgres=True),
    Fault("wrong_type", "raw", (f"alter table {TX} alter column invoice_date type text",),
          TX, "invoice_date", "type", "error", ("raw.transactions.invoice_date", "type timestamp", "observed text"),
          source="transactions"),
    Fault("wrong_type_customers", "raw", (f"alter table {CU} alter column first_purchase_at type text",),
          CU, "first_purchase_at", "type", "error",
          ("raw.customers.first_purchase_at", "type timestamp", "observed text"), source="customers", postgres=True),
    Fault("all_null_column", "features", (f"update {FEATURES} set share_of_spend_last_90d = null",),
          FEATURES, "share_of_spend_last_90d", "null_share", "error",
          ("features.customer_features.share_of_spend_last_90d", "null share <= 1%", "100% null"), postgres=True),
    Fault("all_null_raw_column", "raw", (f"update {TX} set customer_id = null",),
          TX, "customer_id", "null_share", "error", ("raw.transactions.customer_id", "null share <= 50%", "100% null"),
          source="transactions"),
    Fault("duplicate_customer_ids", "raw",
          (f"insert into {CU} select * from {CU} where customer_id in ('12347', '12350')",),
          CU, "customer_id", "unique", "error", ("raw.customers.customer_id", "unique", "12347", "12350"),
          source="customers", postgres=True),
    Fault("empty_table", "raw", (f"delete from {CU}",),
          CU, None, "row_count", "error", ("raw.customers", "row count >= 1", "0 rows"), source="customers"),
    Fault("null_ids", "features", (f"update {FEATURES} set customer_id = null where customer_id in ('12347', '12348')",),
          FEATURES, "customer_id", "not_null", "error",
          ("features.customer_features.customer_id", "not null", "2 of 4339 rows"), postgres=True),
    Fault("nan_values", "features",
          (f"update {FEATURES} set avg_basket_value = cast('NaN' as float8) where customer_id in ('12347', '12348')",),
          FEATURES, "avg_basket_value", "not_nan", "error",
          ("features.customer_features.avg_basket_value", "no NaN", "NaN on 2 rows", "12347", "12348"), postgres=True),
    Fault("inf_values", "features",
          (f"update {FEATURES} set monetary = cast('Infinity' as float8) where customer_id = '12349'",),
          FEATURES, "monetary", "finite", "error",
          ("features.customer_features.monetary", "finite", "1 inf on 1 row", "12349"), postgres=True),
    Fault("negative_amounts", "features",
          (f"update {FEATURES} set monetary = -12.5 where customer_id in ('12347', '12350', '12352')",),
          FEATURES, "monetary", "min", "error",
          ("features.customer_features.monetary: min 0 — observed -12.5 on 3 rows (e.g.", "12347", "12350", "12352"),
          postgres=True),
    Fault("negative_prices", "raw", (f"update {TX} set unit_price = -unit_price where invoice_no = '536365'",),
          TX, "unit_price", "unit_price_non_negative", "error",
          ("raw.transactions.unit_price", "except on bad-debt", "-7.65 on 7 rows", "536365"), source="transactions"),
    Fault("future_dates", "raw",
          (f"update {TX} set invoice_date = timestamp '2099-01-01 00:00:00' where invoice_no = '536365'",),
          TX, "invoice_date", "not_future", "error",
          ("raw.transactions.invoice_date", "not in the future", "2099-01-01", "on 7 rows", "536365"),
          source="transactions"),
    Fault("timezone_shift", "raw", (_rebase_and_shift(),),
          TX, "invoice_date", "not_future", "error",
          ("raw.transactions.invoice_date", "at most 2 h after now 2026-01-15 12:00", "2026-01-15 21:00", "581475"),
          source="transactions", kwargs=lambda ctx: {"now": NOW, "as_of": NOW.replace(hour=0)}),
    Fault("new_unseen_country", "features",
          (f"update {FEATURES} set country = 'Atlantis' where customer_id in ('12347', '12348', '12349')",),
          FEATURES, "country", "new_levels", "warning",
          ("features.customer_features.country", "Atlantis on 3 rows", "12347"),
          kwargs=lambda ctx: {"reference": ctx["reference"]}),
    Fault("extreme_outliers", "raw", (f"update {TX} set unit_price = 1e9 where invoice_no = '536366'",),
          TX, "unit_price", "max", "error", ("raw.transactions.unit_price: max 100000 — observed 1e+09 on 2 rows",
                                             "536366"), source="transactions"),
    Fault("extreme_feature_outlier", "features",
          (f"update {FEATURES} set avg_basket_value = 1e12 where customer_id = '12347'",),
          FEATURES, "avg_basket_value", "outlier_range", "warning",
          ("features.customer_features.avg_basket_value", "reference range", "1e+12 on 1 row", "12347"),
          kwargs=lambda ctx: {"reference": ctx["reference"]}),
    Fault("single_customer", "features", (f"delete from {FEATURES} where customer_id <> '12347'",),
          FEATURES, None, "row_count", "error", ("features.customer_features: row count >= 8", "observed 1 row"),
          postgres=True),
    Fault("constant_feature", "features", (f"update {FEATURES} set distinct_products = 5",),
          FEATURES, "distinct_products", "constant", "warning",
          ("features.customer_features.distinct_products", "not constant", "every non-null value is 5")),
    Fault("text_in_numeric_column", "features",
          (f"alter table {FEATURES} alter column avg_items_per_invoice type text",
           f"update {FEATURES} set avg_items_per_invoice = 'n/a' where customer_id = '12347'"),
          FEATURES, "avg_items_per_invoice", "type", "error",
          ("features.customer_features.avg_items_per_invoice", "type numeric", "observed text"), postgres=True),
    Fault("day_of_data_missing", "raw", (f"delete from {TX} where invoice_date >= timestamp '2011-12-09 00:00:00'",),
          TX, "invoice_date", "freshness", "warning",
          ("raw.transactions.invoice_date", "freshness", "newest 2011-12-08 20:01, 1.2 days old"),
          source="transactions", kwargs=lambda ctx: {"freshness_days": 1}),
    Fault("truncated_load", "raw", (f"delete from {TX} where invoice_date < timestamp '2011-09-01 00:00:00'",),
          TX, None, "row_count_band", "error", ("raw.transactions", "within ±50% of last run's 541909", "-59%"),
          source="transactions", kwargs=lambda ctx: {"previous_row_counts": ctx["row_counts"]}),
    Fault("cancellations_with_positive_quantity", "raw",
          (f"update {TX} set quantity = -quantity where invoice_no like 'C%'",),
          TX, "invoice_no", "positive_quantity_not_cancelled", "error",
          ("raw.transactions.invoice_no", "not on a cancellation (C) invoice", "C536379"), source="transactions"),
]


def _run_fault(fault: Fault, url: str, ctx: dict[str, Any]) -> ValidationResult:
    _sql(url, *fault.sql)
    kwargs = {"as_of": DEC, **fault.kwargs(ctx)}
    if fault.stage == "raw":
        spec = dataclasses.replace(SPEC, sources={fault.source: SPEC.sources[fault.source]}) if fault.source else SPEC
        return validate_raw(url, spec, **kwargs)
    return validate_features(url, SPEC, **kwargs)


def _assert_fault(fault: Fault, res: ValidationResult) -> None:
    check = _failed(res, fault.table, fault.column, fault.check)
    assert check["severity"] == fault.severity, check
    for w in fault.words:
        assert w in check["message"], f"{w!r} not in {check['message']!r}"
    summary = res.summary()
    assert check["message"] in summary
    if fault.severity == "error":
        assert res.status == "failed"
        with pytest.raises(ValidationFailed) as info:
            res.raise_if_failed()
        assert check["message"] in str(info.value)
    else:
        assert res.status == "warning", summary
        res.raise_if_failed()  # warnings never stop the run
    json.dumps(res.to_dict(), allow_nan=False)  # NaN / inf observations stay valid JSON


def test_at_least_15_distinct_faults() -> None:
    assert len({f.id for f in FAULTS}) == len(FAULTS) >= 15


@pytest.mark.parametrize("fault", FAULTS, ids=[f.id for f in FAULTS])
def test_fault_duckdb(fault: Fault, copy_duckdb: str, demo_duckdb: dict, request: pytest.FixtureRequest) -> None:
    ctx = {"row_counts": demo_duckdb["row_counts"]}
    if "reference" in fault.kwargs({"reference": None, "row_counts": None}):
        ctx["reference"] = request.getfixturevalue("reference")
    _assert_fault(fault, _run_fault(fault, copy_duckdb, ctx))


# PostgreSQL: the faults whose SQL or types differ by dialect, on small tables (reading the 541,909
# raw lines through psycopg takes seconds, so raw.transactions faults run on DuckDB only).
PG_FAULTS = [f for f in FAULTS if f.postgres]


@pytest.mark.postgres
@pytest.mark.parametrize("fault", PG_FAULTS, ids=[f.id for f in PG_FAULTS])
def test_fault_postgres(fault: Fault, copy_postgres: str, demo_postgres: dict) -> None:
    _assert_fault(fault, _run_fault(fault, copy_postgres, {"row_counts": demo_postgres["row_counts"]}))


# ---------------------------------------------------------------------------------------------
# Drift
# ---------------------------------------------------------------------------------------------
def test_no_drift_on_the_same_data(demo_duckdb: dict, reference: dict) -> None:
    res = validate_features(demo_duckdb["url"], SPEC, as_of=DEC, reference=reference)
    assert res.status == "passed", res.summary()
    assert set(res.drift) == set(SPEC.feature_names)
    assert max(res.drift.values()) < 1e-9 and res.drift_detected is False
    json.loads(json.dumps(reference))  # the reference is JSON-able: it is stored with the model


def test_shifted_distribution_is_drift_not_failure(copy_duckdb: str, reference: dict) -> None:
    _sql(copy_duckdb, f"update {FEATURES} set monetary = monetary * 3, recency_days = recency_days + 60")
    res = validate_features(copy_duckdb, SPEC, as_of=DEC, reference=reference)
    assert res.drift_detected is True
    assert res.drift["monetary"] > 0.2 and res.drift["recency_days"] > 0.2
    assert res.drift["frequency"] < 1e-9
    assert res.status == "warning" and not res.failures  # the pipeline retrains instead of failing
    check = _failed(res, FEATURES, "monetary", "psi")
    assert check["stage"] == "drift" and "PSI" in check["message"] and "median 654.92 -> 1964.76" in check["message"]
    assert res.to_dict()["drift_detected"] is True and "drift detected in" in res.summary()


def test_real_drift_between_june_and_december(demo_duckdb: dict) -> None:
    june = feature_reference(demo_duckdb[JUNE]["table"].to_pandas(), SPEC)  # pandas works too
    res = validate_features(demo_duckdb["url"], SPEC, as_of=DEC, reference=june)
    assert res.drift_detected and res.drift["tenure_days"] > 0.2
    assert not res.failures


# ---------------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------------
def _assignments(n: int = 50) -> pa.Table:
    seg = [i % 4 for i in range(n)]
    return pa.table({
        "customer_id": [str(10000 + i) for i in range(n)],
        "segment_id": pa.array(seg, pa.int64()),
        "segment_probability": [0.5 + (i % 5) / 10 for i in range(n)],
        "runner_up_segment_id": pa.array([(s + 1) % 4 for s in seg], pa.int64()),
    })


def _set(table: pa.Table, column: str, row: int, value: Any) -> pa.Table:
    values = table.column(column).to_pylist()
    values[row] = value
    return table.set_column(table.column_names.index(column), column, pa.array(values, table.schema.field(column).type))


OUTPUT_FAULTS = {
    "duplicate_customer": (lambda t: pa.concat_tables([t, t.slice(3, 1)]), "customer_id", "unique", "10003"),
    "missing_customer": (lambda t: t.slice(1), "customer_id", "all_customers", "10000"),
    "unknown_customer": (lambda t: _set(t, "customer_id", 5, "99999"), "customer_id", "known_customers", "99999"),
    "probability_above_one": (lambda t: _set(t, "segment_probability", 7, 1.2), "segment_probability", "max", "10007"),
    "runner_up_equals_segment": (lambda t: _set(t, "runner_up_segment_id", 9, 1), "runner_up_segment_id",
                                 "runner_up_differs", "10009"),
    "unknown_segment": (lambda t: _set(t, "segment_id", 11, 17), "segment_id", "allowed", "10011"),
    "null_segment": (lambda t: _set(t, "segment_id", 12, None), "segment_id", "sizes_add_up", ""),
}


def test_outputs_pass(tmp_path: Path) -> None:
    t = _assignments()
    res = validate_outputs(t, customer_ids=t.column("customer_id"), n_segments_known=[0, 1, 2, 3], out_dir=tmp_path)
    assert res.status == "passed", res.summary()
    assert res.context["segment_sizes"] == {"0": 13, "1": 13, "2": 12, "3": 12}
    assert (tmp_path / "validation_outputs.json").exists()


@pytest.mark.parametrize("name", list(OUTPUT_FAULTS))
def test_outputs_faults(name: str) -> None:
    change, column, check, example = OUTPUT_FAULTS[name]
    ids = [str(10000 + i) for i in range(50)]
    res = validate_outputs(change(_assignments()), customer_ids=ids, n_segments_known=[0, 1, 2, 3])
    found = _failed(res, "segments.segment_assignments", column, check)
    assert found["severity"] == "error" and example in found["message"]
    assert f"segments.segment_assignments.{column}" in found["message"]
    with pytest.raises(ValidationFailed):
        res.raise_if_failed()


# ---------------------------------------------------------------------------------------------
# Evidence, result API, import cost, rules
# ---------------------------------------------------------------------------------------------
def test_evidence_files(copy_duckdb: str, tmp_path: Path) -> None:
    _sql(copy_duckdb, f"update {FEATURES} set monetary = -1 where customer_id = '12347'")
    out = tmp_path / "run"
    res = validate_features(copy_duckdb, SPEC, as_of=DEC, out_dir=out)
    record = json.loads((out / "validation_features.json").read_text())
    assert record["status"] == "failed" and record["counts"]["errors"] == 1
    assert record == json.loads(json.dumps(res.to_dict()))
    page = (out / "validation_features.html").read_text()
    assert "monetary" in page and "12347" in page and "http" not in page  # self-contained
    docs = Path(res.evidence["data_docs"])
    assert docs.name == "index.html" and docs.exists()
    assert list((out / "data_docs" / "features" / "validations").rglob("*.html"))
    assert sum(f.stat().st_size for f in (out / "data_docs").rglob("*") if f.is_file()) < 2_000_000


def test_result_api() -> None:
    from validation._gx import check_dict

    def check(sev: str, ok: bool, col: str) -> dict:
        return check_dict(stage="features", table="s.t", column=col, check="min", severity=sev, success=ok,
                          observed=float("-inf"), expected=0, label="min 0", examples=["1", "2"])

    res = ValidationResult("features", checks=[check("error", False, "a"), check("warning", False, "b"),
                                               check("error", True, "c")])
    assert res.status == "failed" and len(res.failures) == 1 and len(res.warnings) == 1
    assert res.failures[0]["message"] == "s.t.a: min 0 — observed -inf (e.g. 1, 2)"
    with pytest.raises(ValidationFailed) as info:
        res.raise_if_failed()
    assert "s.t.a: min 0" in str(info.value) and "s.t.b" not in str(info.value)
    assert info.value.result is res
    lines = res.summary().splitlines()
    assert lines[0].startswith("validation features: failed — 1 error(s), 1 warning(s), 1 of 3")
    assert lines[1].lstrip().startswith("ERROR") and lines[2].lstrip().startswith("WARNING")
    assert json.loads(json.dumps(res.to_dict(), allow_nan=False))["checks"][0]["observed"] == "-inf"
    assert ValidationResult("raw", checks=[check("warning", False, "b")]).status == "warning"
    assert ValidationResult("raw").status == "passed"


def test_import_is_cheap_and_gx_is_quiet() -> None:
    code = (
        "import logging, sys\n"
        "logging.basicConfig(level=logging.INFO)\n"
        "import validation\n"
        "from validation import validate_raw, validate_features, validate_outputs, ValidationResult\n"
        "assert 'great_expectations' not in sys.modules, 'validation imported GX at import time'\n"
        "from validation._gx import Runner\n"
        "Runner('probe')\n"
        "assert 'great_expectations' in sys.modules\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"
    assert "Skipping registering" not in proc.stderr and "great_expectations" not in proc.stderr, proc.stderr[:2000]


def test_rules_are_validated() -> None:
    from validation.rules import RulesError, all_source_rules, parse_duration

    assert parse_duration("2h", "x") == dt.timedelta(hours=2)
    with pytest.raises(RulesError, match="transactions.*type 'money'"):
        all_source_rules({"transactions": {"columns": {"unit_price": {"type": "money"}}}})
    with pytest.raises(RulesError, match="where"):
        all_source_rules({"t": {"row_rules": [{"name": "r", "column": "c", "min": 0, "where": {"column": "x"}}]}})
    with pytest.raises(RulesError, match="severity"):
        all_source_rules({"t": {"columns": {"c": {"type": "text", "severity": "fatal"}}}})


def test_custom_rules_and_missing_source(copy_duckdb: str) -> None:
    rules = {"customers": {"id_columns": ["customer_id"],
                           "columns": {"country": {"type": "text", "allowed": ["United Kingdom"], "severity": "warning"}}}}
    spec = dataclasses.replace(SPEC, sources={"customers": SPEC.sources["customers"],
                                              "orders": dataclasses.replace(SPEC.sources["customers"], table="orders")})
    res = validate_raw(copy_duckdb, spec, as_of=DEC, rules=rules)
    country = _failed(res, CU, "country", "allowed")
    assert country["severity"] == "warning" and "e.g." in country["message"]
    missing = _failed(res, "raw.orders", None, "exists")
    assert missing["severity"] == "error" and "no table or view raw.orders" in missing["message"]
