"""The demo warehouse loader and the dbt feature build, on real DuckDB files and real PostgreSQL.

- A tiny hand-made invoice table whose every feature value is worked out by hand (both backends).
- The full Online Retail data: counts, guests, as-of cut-off, every feature recomputed
  independently with pandas, and DuckDB versus PostgreSQL row by row. Loading and building the full
  data is done once per backend per module (a few seconds each).
- Failures: a failing dbt test, a missing source, a spec the model does not match, credentials.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import pyarrow as pa
import pytest
import yaml

from segmentation.demo import DEFAULT_DATA_PATH, DemoDataError, init_demo_warehouse, read_transactions
from segmentation.features import (
    DEFAULT_PROJECT_DIR,
    FeatureBuildError,
    as_of_text,
    build_features,
    check_features_relation,
)
from segmentation.spec import Feature, Relation, load_spec
from segmentation.warehouse import connect

AS_OF = dt.datetime(2011, 6, 1)
N_LINES = 541_909
N_CUSTOMERS = 4_372
N_GUEST_LINES = 135_080
UCI_ORIGINAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "online_retail" / "online_retail.parquet"


def _features(url: str) -> pa.Table:
    spec = load_spec()
    with connect(url) as wh:
        table = wh.query(f"select * from {spec.features_relation.qualified} order by customer_id")
    return table


def _non_product_codes() -> list[str]:
    project = yaml.safe_load((DEFAULT_PROJECT_DIR / "dbt_project.yml").read_text())
    return list(project["vars"]["non_product_stock_codes"])


# ---------------------------------------------------------------------------------------------
# A tiny invoice table, every expected value worked out by hand (as_of 2011-03-01 00:00)
# ---------------------------------------------------------------------------------------------
TINY_AS_OF = dt.datetime(2011, 3, 1)
_T = dt.datetime
TINY_LINES = [
    # InvoiceNo, StockCode, Quantity, InvoiceDate, UnitPrice, CustomerID, Country
    # customer 100: 4 purchases (one before the 90-day window), one cancellation, postage, one line on as_of
    ("500000", "P2", 1, _T(2010, 11, 15, 9, 0), 5.0, 100.0, "United Kingdom"),
    ("500001", "P1", 2, _T(2011, 1, 1, 10, 0), 5.0, 100.0, "United Kingdom"),
    ("500001", "POST", 1, _T(2011, 1, 1, 10, 1), 15.0, 100.0, "United Kingdom"),
    ("500002", "P2", 10, _T(2011, 1, 11, 9, 0), 1.0, 100.0, "United Kingdom"),
    ("C500003", "P1", -2, _T(2011, 1, 12, 9, 0), 5.0, 100.0, "United Kingdom"),
    ("500004", "P3", 4, _T(2011, 2, 20, 12, 0), 2.5, 100.0, "France"),
    ("500005", "P1", 100, _T(2011, 3, 1, 0, 0), 1.0, 100.0, "United Kingdom"),  # == as_of: excluded
    # customer 200: refunds more than bought (goods bought before our records): net spend -17
    ("500010", "P1", 1, _T(2011, 2, 1, 8, 0), 3.0, 200.0, "Germany"),
    ("C500011", "P9", -5, _T(2011, 2, 2, 8, 0), 4.0, 200.0, "Austria"),  # country tie: Austria < Germany
    # customer 300: one order of free items only
    ("500020", "P5", 3, _T(2011, 2, 27, 23, 59), 0.0, 300.0, "EIRE"),
    # customer 400: only a cancellation: no purchase, no feature row
    ("C500030", "P1", -1, _T(2011, 1, 5, 10, 0), 2.0, 400.0, "United Kingdom"),
    # customer 500: first purchase after as_of: no feature row
    ("500040", "P1", 1, _T(2011, 3, 2, 10, 0), 2.0, 500.0, "Spain"),
    # guest checkout: kept in raw.transactions, never a customer
    ("500050", "P1", 1, _T(2011, 1, 1, 10, 0), 1.0, None, "United Kingdom"),
]
TINY_EXPECTED = {
    "100": dict(
        recency_days=9,  # 2011-02-20 -> 2011-03-01
        frequency=4,
        monetary=40.0,  # 5 + 25 + 10 + 10 - 10
        tenure_days=106,  # 2010-11-15 -> 2011-03-01
        avg_basket_value=12.5,  # 50 / 4
        avg_items_per_invoice=4.5,  # (1 + 3 + 10 + 4) / 4
        distinct_products=3,  # P1, P2, P3; POST is not a product
        cancellation_rate=0.2,  # 1 of 5 invoices
        is_repeat_buyer=1,
        days_between_purchases=97 / 3,  # 2010-11-15 -> 2011-02-20, 3 gaps
        share_of_spend_last_90d=0.9,  # 45 of 50 on or after 2010-12-01
        country="United Kingdom",
    ),
    "200": dict(
        recency_days=28, frequency=1, monetary=0.0, tenure_days=28, avg_basket_value=3.0,
        avg_items_per_invoice=1.0, distinct_products=1, cancellation_rate=0.5, is_repeat_buyer=0,
        days_between_purchases=None, share_of_spend_last_90d=1.0, country="Austria",
    ),
    "300": dict(
        recency_days=2, frequency=1, monetary=0.0, tenure_days=2, avg_basket_value=0.0,
        avg_items_per_invoice=3.0, distinct_products=1, cancellation_rate=0.0, is_repeat_buyer=0,
        days_between_purchases=None, share_of_spend_last_90d=None, country="EIRE",
    ),
}


@pytest.fixture(scope="module")
def tiny_parquet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny table with the UCI file's own column names and float customer ids."""
    import pyarrow.parquet as pq

    cols = list(zip(*TINY_LINES))
    table = pa.table(
        {
            "InvoiceNo": pa.array(cols[0], pa.large_string()),
            "StockCode": pa.array(cols[1], pa.large_string()),
            "Description": pa.array([f"item {c}" for c in cols[1]], pa.large_string()),
            "Quantity": pa.array(cols[2], pa.int64()),
            "InvoiceDate": pa.array(cols[3], pa.timestamp("us")),
            "UnitPrice": pa.array(cols[4], pa.float64()),
            "CustomerID": pa.array(cols[5], pa.float64()),
            "Country": pa.array(cols[6], pa.large_string()),
        }
    )
    path = tmp_path_factory.mktemp("tiny") / "tiny.parquet"
    pq.write_table(table, path)
    return path


def test_tiny_features_by_hand(warehouse_url: str, tiny_parquet: Path) -> None:
    counts = init_demo_warehouse(warehouse_url, data_path=tiny_parquet)
    assert counts == {"transactions": len(TINY_LINES), "customers": 5, "guest_lines": 1, "loaded": True}

    assert build_features(warehouse_url, TINY_AS_OF) == "features.customer_features"
    rows = {r["customer_id"]: r for r in _features(warehouse_url).to_pylist()}
    assert sorted(rows) == ["100", "200", "300"]  # 400: no purchase; 500: after as_of; no guest
    for cid, expected in TINY_EXPECTED.items():
        got = {k: v for k, v in rows[cid].items() if k != "customer_id"}
        assert got.keys() == expected.keys()
        for name, value in expected.items():
            if isinstance(value, float):
                assert got[name] == pytest.approx(value, rel=1e-12), (cid, name)
            else:
                assert got[name] == value, (cid, name)

    with connect(warehouse_url) as wh:
        customers = {r["customer_id"]: r for r in wh.query("select * from raw.customers").to_pylist()}
    assert customers["400"]["first_purchase_at"] is None
    assert customers["100"]["first_purchase_at"] == dt.datetime(2010, 11, 15, 9, 0)
    assert customers["200"]["country"] == "Austria"


def test_as_of_text() -> None:
    assert as_of_text(dt.datetime(2011, 6, 1)) == "2011-06-01 00:00:00"
    assert as_of_text(dt.date(2011, 6, 1)) == "2011-06-01 00:00:00"
    assert as_of_text("2011-06-01T12:30:00+02:00") == "2011-06-01 10:30:00"
    assert as_of_text(dt.datetime(2011, 6, 1, 0, 0, 0, 5)) == "2011-06-01 00:00:00.000005"
    with pytest.raises(FeatureBuildError, match="not an ISO"):
        as_of_text("yesterday; drop table raw.transactions")


# ---------------------------------------------------------------------------------------------
# Failures are loud and name the problem
# ---------------------------------------------------------------------------------------------
def test_failing_dbt_test_names_the_node(tmp_path: Path, tiny_parquet: Path) -> None:
    url = f"duckdb:///{tmp_path}/w.duckdb"
    init_demo_warehouse(url, data_path=tiny_parquet)
    with connect(url) as wh:  # the CRM lists customer 100 twice: the join duplicates the row
        wh.execute("insert into raw.customers values ('100', 'France', null)")
    with pytest.raises(FeatureBuildError) as info:
        build_features(url, TINY_AS_OF)
    assert "unique_customer_features_customer_id" in info.value.node
    assert "Got 1 result" in info.value.dbt_message
    assert "unique_customer_features_customer_id" in str(info.value)


def test_missing_source_names_the_model(tmp_path: Path) -> None:
    with pytest.raises(FeatureBuildError) as info:
        build_features(f"duckdb:///{tmp_path}/empty.duckdb", AS_OF)
    assert info.value.node == "model.segmentation.customer_features"
    assert "transactions" in str(info.value)


def test_spec_the_model_does_not_match(retail_duckdb: dict[str, Any]) -> None:
    spec = load_spec()
    check_features_relation(retail_duckdb["url"], spec)  # the built table matches the demo spec
    extended = dataclasses.replace(spec, features=(*spec.features, Feature("lifetime_value", "money")))
    with pytest.raises(FeatureBuildError, match=r"missing \['lifetime_value'\]"):
        check_features_relation(retail_duckdb["url"], extended)
    shuffled = dataclasses.replace(spec, features=tuple(reversed(spec.features)))
    with pytest.raises(FeatureBuildError, match="order differs"):
        check_features_relation(retail_duckdb["url"], shuffled)
    elsewhere = dataclasses.replace(spec, features_relation=Relation("features", "nope"))
    with pytest.raises(FeatureBuildError, match="does not exist"):
        check_features_relation(retail_duckdb["url"], elsewhere)


def test_bad_inputs_are_refused(tmp_path: Path) -> None:
    with pytest.raises(DemoDataError, match="does not exist"):
        init_demo_warehouse(f"duckdb:///{tmp_path}/w.duckdb", data_path=tmp_path / "nope.parquet")
    with pytest.raises(FeatureBuildError, match="in-memory"):
        build_features("duckdb:///:memory:", AS_OF)
    with pytest.raises(FeatureBuildError, match="dbt project not found"):
        build_features(f"duckdb:///{tmp_path}/w.duckdb", AS_OF, project_dir=tmp_path)
    # a project of one's own whose features model has another name (found by the README walk-through:
    # dbt said only that the selection matched nothing)
    import shutil

    from segmentation.features import DEFAULT_PROJECT_DIR

    own = tmp_path / "own"
    shutil.copytree(DEFAULT_PROJECT_DIR, own, ignore=shutil.ignore_patterns("target", "logs", "dbt_packages"))
    model = next(own.glob("**/customer_features.sql"))
    model.rename(model.with_name("my_features.sql"))
    with pytest.raises(FeatureBuildError, match="has no model named customer_features"):
        build_features(f"duckdb:///{tmp_path}/w.duckdb", AS_OF, project_dir=own)


@pytest.mark.postgres
def test_credentials_never_logged(postgres_url: str, tiny_parquet: Path, tmp_path: Path,
                                  caplog: pytest.LogCaptureFixture) -> None:
    parts = urlsplit(postgres_url)
    secret = parts.password
    if not secret:  # the test server trusts local connections: any password is accepted, and must not leak
        secret = "Sekr3t-" + uuid.uuid4().hex[:8]
        host = parts.netloc.rpartition("@")[2]
        postgres_url = urlunsplit(parts._replace(netloc=f"{parts.username or 'postgres'}:{secret}@{host}"))
    try:
        init_demo_warehouse(postgres_url, data_path=tiny_parquet)
    except Exception as exc:  # pragma: no cover - a server that checks passwords
        pytest.skip(f"server refuses the made-up password: {type(exc).__name__}")
    caplog.set_level(logging.DEBUG)
    build_features(postgres_url, TINY_AS_OF, work_dir=tmp_path / "dbt")
    broken = urlunsplit(urlsplit(postgres_url)._replace(path="/no_such_database_" + uuid.uuid4().hex[:6]))
    with pytest.raises(FeatureBuildError) as info:
        build_features(broken, TINY_AS_OF, work_dir=tmp_path / "dbt2")
    assert "does not exist" in str(info.value)
    assert secret not in str(info.value)
    assert secret not in caplog.text
    logs = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == "dbt.log" for p in logs)
    for p in logs:
        assert secret not in p.read_text(errors="replace"), p


def test_dbt_tests_follow_the_spec_checks() -> None:
    """The dbt model's range and not-null tests say what the spec's checks say."""
    spec = load_spec()
    model = yaml.safe_load((DEFAULT_PROJECT_DIR / "models" / "features" / "customer_features.yml").read_text())
    columns = {c["name"]: c.get("data_tests", []) for c in model["models"][0]["columns"]}
    assert list(columns) == [spec.entity_key, *spec.feature_names]
    assert {"unique", "not_null"} <= set(t for t in columns[spec.entity_key] if isinstance(t, str))
    for f in spec.features:
        tests = columns[f.name]
        assert ("not_null" in tests) == (f.checks.max_null_share == 0.0), f.name
        ranges = [t["accepted_range"]["arguments"] for t in tests if isinstance(t, dict) and "accepted_range" in t]
        bounds = (ranges[0].get("min_value"), ranges[0].get("max_value")) if ranges else (None, None)
        assert bounds == (f.checks.min, f.checks.max), f.name


# ---------------------------------------------------------------------------------------------
# The full Online Retail data: loaded and built once per backend
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def retail_duckdb(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    url = f"duckdb:///{tmp_path_factory.mktemp('retail')}/warehouse.duckdb"
    return _load_and_build(url)


@pytest.fixture(scope="module")
def retail_postgres(_postgres_admin: Any) -> Any:
    name = f"seg_test_{uuid.uuid4().hex[:12]}"
    _postgres_admin.execute(f'CREATE DATABASE "{name}"')
    # like conftest's postgres_url, but one database for the whole module
    admin_url = os.environ.get("SEGMENT_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
    url = urlunsplit(urlsplit(admin_url)._replace(path=f"/{name}"))
    try:
        yield _load_and_build(url)
    finally:
        _postgres_admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _load_and_build(url: str) -> dict[str, Any]:
    first = init_demo_warehouse(url)
    again = init_demo_warehouse(url)  # idempotent: same tables again
    kept = init_demo_warehouse(url, replace=False)  # leaves them alone
    relation = build_features(url, AS_OF)
    with connect(url) as wh:
        raw_types = {t: dict(wh.columns("raw", t)) for t in ("transactions", "customers")}
        customers = wh.query("select * from raw.customers order by customer_id")
        id_shapes = wh.query(
            "select count(*) as n, min(length(customer_id)) as lo, max(length(customer_id)) as hi "
            "from raw.transactions where customer_id is not null"
        ).to_pylist()[0]
    return dict(url=url, loads=(first, again, kept), relation=relation, features=_features(url),
                raw_types=raw_types, customers=customers, id_shapes=id_shapes)


@pytest.fixture(params=["duckdb", pytest.param("postgres", marks=pytest.mark.postgres)])
def retail(request: pytest.FixtureRequest) -> dict[str, Any]:
    return request.getfixturevalue(f"retail_{request.param}")


@pytest.fixture(scope="module")
def retail_lines() -> Any:
    """The shipped demo file read with pandas: the independent reference."""
    import pandas as pd

    df = pd.read_parquet(DEFAULT_DATA_PATH)
    df["cid"] = df["customer_id"].map(lambda v: None if pd.isna(v) else str(int(v)))
    return df


def test_raw_tables(retail: dict[str, Any]) -> None:
    first, again, kept = retail["loads"]
    expected = {"transactions": N_LINES, "customers": N_CUSTOMERS, "guest_lines": N_GUEST_LINES}
    assert first == {**expected, "loaded": True}
    assert again == {**expected, "loaded": True}
    assert kept == {**expected, "loaded": False}
    tx = retail["raw_types"]["transactions"]
    assert list(tx) == ["invoice_no", "stock_code", "description", "quantity", "invoice_date",
                        "unit_price", "customer_id", "country"]
    assert tx["quantity"].lower() == "bigint"
    assert tx["invoice_date"].lower() in ("timestamp", "timestamp without time zone")
    assert tx["unit_price"].lower() in ("double", "double precision")
    assert tx["customer_id"].lower() in ("varchar", "text")
    # "12346", not "12346.0": five digits on every non-guest line
    assert retail["id_shapes"] == {"n": N_LINES - N_GUEST_LINES, "lo": 5, "hi": 5}


def test_raw_customers(retail: dict[str, Any], retail_lines: Any) -> None:
    customers = retail["customers"].to_pandas().set_index("customer_id")
    known = retail_lines[retail_lines["cid"].notna()]
    assert len(customers) == N_CUSTOMERS and customers.index.is_unique
    assert set(customers.index) == set(known["cid"])
    # the most frequent country of the customer's lines (8 customers have two)
    assert customers.loc["12370", "country"] == "Cyprus"  # 159 lines Cyprus, 8 Austria
    assert customers.loc["12455", "country"] == "Spain"  # 48 Spain, 42 Cyprus
    assert customers["country"].notna().all()
    # first purchase: the first non-cancelled line; 33 customers only ever cancelled
    purchases = known[~known["invoice_no"].str.startswith("C")]
    firsts = purchases.groupby("cid")["invoice_date"].min()
    assert customers["first_purchase_at"].isna().sum() == N_CUSTOMERS - len(firsts) == 33
    assert (customers.loc[firsts.index, "first_purchase_at"] == firsts).all()


def test_features_columns_match_spec(retail: dict[str, Any]) -> None:
    spec = load_spec()
    assert retail["relation"] == spec.features_relation.qualified == "features.customer_features"
    assert retail["features"].column_names == [spec.entity_key, *spec.feature_names]


def test_one_row_per_customer_without_guests(retail: dict[str, Any], retail_lines: Any) -> None:
    ids = retail["features"].column("customer_id").to_pylist()
    assert None not in ids and len(ids) == len(set(ids))
    before = retail_lines[retail_lines["cid"].notna() & (retail_lines["invoice_date"] < AS_OF)]
    buyers = set(before.loc[~before["invoice_no"].str.startswith("C"), "cid"])
    assert set(ids) == buyers and len(ids) == 2_718
    # guest lines are in raw.transactions (checked above) but never become a customer
    assert not any(i in ("", "nan", "None") for i in ids)


def test_features_as_of_exclude_later_lines(retail: dict[str, Any], retail_lines: Any) -> None:
    rows = {r["customer_id"]: r for r in retail["features"].to_pylist()}
    cust = retail_lines[retail_lines["cid"] == "12347"]
    before = cust[cust["invoice_date"] < AS_OF]
    orders = before[~before["invoice_no"].str.startswith("C")]
    assert cust["invoice_no"].nunique() > orders["invoice_no"].nunique()  # it ordered after as_of too
    assert rows["12347"]["frequency"] == orders["invoice_no"].nunique() == 3
    assert rows["12347"]["recency_days"] == (AS_OF.date() - orders["invoice_date"].max().date()).days == 55
    assert rows["12347"]["tenure_days"] == (AS_OF.date() - orders["invoice_date"].min().date()).days
    # a customer whose first order came after as_of has no row
    first_seen = retail_lines.groupby("cid")["invoice_date"].min()
    later = first_seen[first_seen >= AS_OF].index
    assert len(later) > 1000 and not set(later) & set(rows)


def _reference_features(lines: Any, as_of: dt.datetime) -> Any:
    """Every feature of the spec recomputed with pandas, from the definitions in the spec."""
    import pandas as pd

    known = lines[lines["cid"].notna()]
    df = known[known["invoice_date"] < as_of].copy()
    df["value"] = df["quantity"] * df["unit_price"]
    df["cancel"] = df["invoice_no"].str.startswith("C")
    inv = df.groupby(["cid", "invoice_no"]).agg(
        cancel=("cancel", "max"), at=("invoice_date", "min"), value=("value", "sum"), items=("quantity", "sum")
    ).reset_index()
    orders = inv[~inv["cancel"]]
    g = orders.groupby("cid")
    out = pd.DataFrame({"n": g.size(), "first": g["at"].min(), "last": g["at"].max(),
                        "gross": g["value"].sum(), "items": g["items"].sum()})
    recent = orders[orders["at"] >= as_of - dt.timedelta(days=90)].groupby("cid")["value"].sum()
    cancels = inv[inv["cancel"]].groupby("cid").size()
    net = df.groupby("cid")["value"].sum()
    goods = df[~df["cancel"] & ~df["stock_code"].isin(_non_product_codes())]
    products = goods.groupby("cid")["stock_code"].nunique()
    per_country = known.groupby(["cid", "country"]).size().rename("k").reset_index()
    country = per_country.sort_values(["cid", "k", "country"], ascending=[True, False, True]).groupby("cid").first()
    day = pd.Timestamp(as_of.date())
    ref = pd.DataFrame(index=out.index)
    ref["recency_days"] = (day - out["last"].dt.normalize()).dt.days
    ref["frequency"] = out["n"]
    ref["monetary"] = net.reindex(out.index).clip(lower=0)
    ref["tenure_days"] = (day - out["first"].dt.normalize()).dt.days
    ref["avg_basket_value"] = out["gross"] / out["n"]
    ref["avg_items_per_invoice"] = out["items"] / out["n"]
    ref["distinct_products"] = products.reindex(out.index).fillna(0).astype("int64")
    nc = cancels.reindex(out.index).fillna(0)
    ref["cancellation_rate"] = nc / (out["n"] + nc)
    ref["is_repeat_buyer"] = (out["n"] >= 2).astype("int64")
    gap_days = (out["last"].dt.normalize() - out["first"].dt.normalize()).dt.days
    ref["days_between_purchases"] = (gap_days / (out["n"] - 1)).where(out["n"] >= 2)
    ref["share_of_spend_last_90d"] = (recent.reindex(out.index).fillna(0) / out["gross"]).where(out["gross"] > 0)
    ref["country"] = country["country"].reindex(out.index)
    return ref.sort_index()


def test_every_feature_matches_pandas(retail_duckdb: dict[str, Any], retail_lines: Any) -> None:
    ref = _reference_features(retail_lines, AS_OF)
    got = retail_duckdb["features"].to_pandas().set_index("customer_id").sort_index()
    assert list(got.index) == list(ref.index)
    for name in ref.columns:
        a, b = got[name], ref[name]
        if name == "country":
            assert (a == b).all(), name
        else:
            a, b = a.to_numpy(dtype="float64", na_value=np.nan), b.to_numpy(dtype="float64", na_value=np.nan)
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-6, equal_nan=True, err_msg=name)
    # the real missing values: single-order customers have no gap between orders
    assert got["days_between_purchases"].isna().sum() == (got["frequency"] == 1).sum() > 1000


@pytest.mark.postgres
def test_duckdb_and_postgres_agree(retail_duckdb: dict[str, Any], retail_postgres: dict[str, Any]) -> None:
    a, b = retail_duckdb["features"], retail_postgres["features"]
    assert a.schema == b.schema  # same column names and Arrow types
    assert a.num_rows == b.num_rows
    for name in a.column_names:
        x, y = a.column(name), b.column(name)
        if pa.types.is_floating(x.type):
            np.testing.assert_allclose(
                x.to_numpy(zero_copy_only=False), y.to_numpy(zero_copy_only=False),
                rtol=1e-9, atol=1e-9, equal_nan=True, err_msg=name,
            )
        else:
            assert x.to_pylist() == y.to_pylist(), name
    assert retail_duckdb["customers"].equals(retail_postgres["customers"])


@pytest.mark.skipif(not UCI_ORIGINAL.is_file(), reason="the shared original data set is not on this machine")
def test_shipped_copy_equals_the_original() -> None:
    """The shipped file (snake_case, zstd) reads exactly like the UCI original (CamelCase)."""
    assert read_transactions().equals(read_transactions(UCI_ORIGINAL))
    assert DEFAULT_DATA_PATH.stat().st_size < 6 * 1024 * 1024
