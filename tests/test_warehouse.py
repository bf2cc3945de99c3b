"""Warehouse adapters against real DuckDB files and a real PostgreSQL server (see conftest)."""
from __future__ import annotations

import datetime as dt
import subprocess
import sys
import traceback

import pyarrow as pa
import pytest

from segmentation.warehouse import Warehouse, WarehouseError, connect, default_url, redact_url

UTC = dt.timezone.utc
BERLIN = dt.timezone(dt.timedelta(hours=1))


def every_type() -> pa.Table:
    """One column per supported Arrow type, with nulls and awkward values (CSV- and SQL-hostile)."""
    return pa.table(
        {
            "s": pa.array(['a,"b"\nc', "", None, "ünï ? % ' \\ \t"], pa.string()),
            "ls": pa.array(["x", None, "", "y" * 10_000], pa.large_string()),
            "i8": pa.array([-128, 127, None, 0], pa.int8()),
            "i16": pa.array([-32768, 32767, None, 1], pa.int16()),
            "i32": pa.array([-(2**31), 2**31 - 1, None, 2], pa.int32()),
            "i64": pa.array([-(2**63), 2**63 - 1, None, 3], pa.int64()),
            "f32": pa.array([1.5, -0.25, None, 3.0], pa.float32()),
            "f64": pa.array([0.1, float("nan"), float("-inf"), 1e-300], pa.float64()),
            "b": pa.array([True, False, None, True], pa.bool_()),
            "d": pa.array([dt.date(2024, 2, 29), dt.date(1, 1, 1), None, dt.date(9999, 12, 31)], pa.date32()),
            "ts": pa.array(
                [dt.datetime(2024, 1, 1, 1, 2, 3, 456789), None, dt.datetime(1970, 1, 1), dt.datetime(2000, 2, 29)],
                pa.timestamp("us"),
            ),
            "tz": pa.array(
                [
                    dt.datetime(2024, 1, 1, 1, 2, 3, 456789, tzinfo=BERLIN),
                    None,
                    dt.datetime(1970, 1, 1, tzinfo=UTC),
                    dt.datetime(2038, 1, 19, 3, 14, 8, tzinfo=UTC),
                ],
                pa.timestamp("us", tz="Europe/Berlin"),
            ),
            "ts_ns": pa.array([1_700_000_000_123_456_789, None, 0, 1], pa.timestamp("ns")),
        }
    )


# What each column reads back as, on both backends.
READ_TYPES = {
    "s": pa.string(),
    "ls": pa.string(),
    "i8": pa.int32(),
    "i16": pa.int32(),
    "i32": pa.int32(),
    "i64": pa.int64(),
    "f32": pa.float64(),
    "f64": pa.float64(),
    "b": pa.bool_(),
    "d": pa.date32(),
    "ts": pa.timestamp("us"),
    "tz": pa.timestamp("us", tz="UTC"),
    "ts_ns": pa.timestamp("us"),
}

SQL_TYPES = {
    "duckdb": {
        "s": "VARCHAR", "ls": "VARCHAR", "i8": "INTEGER", "i16": "INTEGER", "i32": "INTEGER",
        "i64": "BIGINT", "f32": "DOUBLE", "f64": "DOUBLE", "b": "BOOLEAN", "d": "DATE",
        "ts": "TIMESTAMP", "tz": "TIMESTAMP WITH TIME ZONE", "ts_ns": "TIMESTAMP",
    },
    "postgres": {
        "s": "text", "ls": "text", "i8": "integer", "i16": "integer", "i32": "integer",
        "i64": "bigint", "f32": "double precision", "f64": "double precision", "b": "boolean",
        "d": "date", "ts": "timestamp without time zone", "tz": "timestamp with time zone",
        "ts_ns": "timestamp without time zone",
    },
}


def expected_read(data: pa.Table) -> pa.Table:
    """``data`` as it should come back: the mapped types (ns truncated to us, zones to UTC)."""
    return pa.table(
        [data[c].cast(READ_TYPES[c], safe=False) for c in data.column_names], names=data.column_names
    )


def read_sorted(wh: Warehouse, schema: str, table: str, key: str) -> pa.Table:
    return wh.query(f"SELECT * FROM {wh.qualified(schema, table)} ORDER BY {wh.ident(key)} NULLS FIRST")


def test_every_arrow_type_round_trips(warehouse: Warehouse) -> None:
    data = every_type().append_column("k", pa.array([1, 2, 3, 4], pa.int64()))
    assert warehouse.write_table("rt", "every_type", data) == 4
    got = read_sorted(warehouse, "rt", "every_type", "k")
    want = expected_read(data.drop_columns("k")).append_column("k", data["k"])
    assert got.schema == want.schema
    # Arrow equality treats NaN != NaN: compare it separately, and everything else exactly.
    assert got["f64"][1].as_py() != got["f64"][1].as_py()
    assert got.drop_columns("f64").equals(want.drop_columns("f64"))
    assert got["f64"].to_pylist()[2:] == [float("-inf"), 1e-300]
    assert got["f64"][0].as_py() == 0.1
    # Null and empty string stay distinct (the Postgres CSV load must not merge them).
    assert got["s"].to_pylist()[1:3] == ["", None]
    cols = warehouse.columns("rt", "every_type")
    assert cols == [(c, SQL_TYPES[warehouse.dialect][c]) for c in data.column_names if c != "k"] + [
        ("k", SQL_TYPES[warehouse.dialect]["i64"])
    ]


def test_large_table_round_trips_across_batches(warehouse: Warehouse) -> None:
    n = 150_000  # more than one COPY / fetch batch
    data = pa.table(
        {
            "customer_id": pa.array([f"c{i:07d}" for i in range(n)]),
            "segment_id": pa.array([i % 13 for i in range(n)], pa.int32()),
            "p": pa.array([(i % 1000) / 999 for i in range(n)], pa.float64()),
            "runner_up": pa.array([None if i % 7 == 0 else i % 11 for i in range(n)], pa.int32()),
        }
    )
    assert warehouse.write_table("rt", "big", data) == n
    got = read_sorted(warehouse, "rt", "big", "customer_id")
    assert got.equals(data)


def test_empty_table_is_created_with_its_columns(warehouse: Warehouse) -> None:
    empty = every_type().slice(0, 0)
    assert warehouse.write_table("rt", "empty", empty) == 0
    assert warehouse.table_exists("rt", "empty")
    assert [c for c, _ in warehouse.columns("rt", "empty")] == empty.column_names
    got = warehouse.query("SELECT * FROM rt.empty")
    assert got.num_rows == 0 and got.schema == expected_read(empty).schema


def test_replace_drops_old_rows_and_columns(warehouse: Warehouse) -> None:
    warehouse.write_table("rt", "t", pa.table({"a": [1, 2, 3], "old": ["x", "y", "z"]}))
    warehouse.write_table("rt", "t", pa.table({"a": [9], "new": [True]}), mode="replace")
    assert warehouse.query("SELECT * FROM rt.t").to_pylist() == [{"a": 9, "new": True}]


def test_append_inserts_by_column_name(warehouse: Warehouse) -> None:
    warehouse.write_table("rt", "t", pa.table({"a": pa.array([1], pa.int64()), "b": ["x"]}))
    # Columns in another order, and a subset: matched by name, the rest left NULL.
    assert warehouse.write_table("rt", "t", pa.table({"b": ["y"], "a": pa.array([2], pa.int64())}), mode="append") == 1
    warehouse.write_table("rt", "t", pa.table({"a": pa.array([3], pa.int64())}), mode="append")
    got = warehouse.query("SELECT a, b FROM rt.t ORDER BY a").to_pylist()
    assert got == [{"a": 1, "b": "x"}, {"a": 2, "b": "y"}, {"a": 3, "b": None}]


def test_append_errors_name_the_table_and_column(warehouse: Warehouse) -> None:
    with pytest.raises(WarehouseError, match=r"rt\.missing does not exist"):
        warehouse.write_table("rt", "missing", pa.table({"a": [1]}), mode="append")
    warehouse.write_table("rt", "t", pa.table({"a": [1]}))
    with pytest.raises(WarehouseError, match=r"rt\.t has no column\(s\) \['zz'\]"):
        warehouse.write_table("rt", "t", pa.table({"a": [2], "zz": [1]}), mode="append")
    with pytest.raises(ValueError, match="mode"):
        warehouse.write_table("rt", "t", pa.table({"a": [2]}), mode="upsert")  # type: ignore[arg-type]


def test_unsupported_arrow_type_is_refused_by_column(warehouse: Warehouse) -> None:
    with pytest.raises(WarehouseError, match=r"column 'tags'.*list"):
        warehouse.write_table("rt", "t", pa.table({"a": [1], "tags": [["x", "y"]]}))
    assert not warehouse.table_exists("rt", "t")


def test_failed_bulk_load_leaves_no_partial_rows(warehouse: Warehouse) -> None:
    warehouse.create_schema("rt")
    warehouse.execute("CREATE TABLE rt.strict (k BIGINT NOT NULL, v INTEGER NOT NULL)")
    warehouse.write_table("rt", "strict", pa.table({"k": pa.array([0], pa.int64()), "v": pa.array([0], pa.int32())}), mode="append")
    n = 100_000
    values = list(range(n - 1)) + [None]  # the very last row violates NOT NULL
    bad = pa.table({"k": pa.array(range(1, n + 1), pa.int64()), "v": pa.array(values, pa.int32())})
    with pytest.raises(WarehouseError, match=r"rt\.strict"):
        warehouse.write_table("rt", "strict", bad, mode="append")
    assert warehouse.query("SELECT count(*) AS n FROM rt.strict")["n"].to_pylist() == [1]


def test_query_params_use_question_marks(warehouse: Warehouse) -> None:
    warehouse.write_table("rt", "t", pa.table({"a": [1, 2, 3], "s": ["x?", "100%", "z"]}))
    got = warehouse.query(
        "SELECT a, s, 'lit?%' AS lit FROM rt.t WHERE a >= ? AND s <> ? AND s LIKE '%' ORDER BY a",
        [2, "z"],
    )
    assert got.to_pylist() == [{"a": 2, "s": "100%", "lit": "lit?%"}]
    assert warehouse.query("SELECT s FROM rt.t WHERE s = ?", ["x?"])["s"].to_pylist() == ["x?"]
    warehouse.execute("DELETE FROM rt.t WHERE a = ?", [1])
    assert warehouse.query("SELECT count(*) AS n FROM rt.t")["n"].to_pylist() == [2]


def test_query_result_types_are_consistent(warehouse: Warehouse) -> None:
    warehouse.write_table("rt", "t", pa.table({"a": pa.array([1, 2], pa.int32())}))
    got = warehouse.query("SELECT count(*) AS n, sum(a) AS s, avg(a) AS m FROM rt.t")
    assert got["n"].type == pa.int64() and got.to_pylist()[0]["n"] == 2
    assert got["m"].type == pa.float64() and got["m"].to_pylist() == [1.5]
    assert warehouse.query("SELECT 1 AS x WHERE 1 = 0").num_rows == 0


def test_table_exists_counts_views(warehouse: Warehouse) -> None:
    assert not warehouse.table_exists("rt", "t")
    warehouse.write_table("rt", "t", pa.table({"a": [1]}))
    warehouse.execute("CREATE VIEW rt.v AS SELECT a FROM rt.t")
    assert warehouse.table_exists("rt", "t")
    assert warehouse.table_exists("rt", "v")
    assert not warehouse.table_exists("rt", "nope")
    assert not warehouse.table_exists("nope", "t")
    assert warehouse.columns("rt", "v")[0][0] == "a"
    assert warehouse.columns("rt", "nope") == []


def test_identifiers_are_validated_and_quoted(warehouse: Warehouse) -> None:
    assert warehouse.ident("Mixed_Case") == '"Mixed_Case"'
    assert warehouse.qualified("segments", "select") == '"segments"."select"'
    for bad in ("x; drop table", 'a"b', "", "1abc", "a" * 64, "a.b"):
        with pytest.raises(ValueError):
            warehouse.ident(bad)
    with pytest.raises(ValueError):
        warehouse.write_table("rt", "x; drop table", pa.table({"a": [1]}))
    with pytest.raises(ValueError):
        warehouse.write_table("rt", "t", pa.table({"bad col": [1]}))
    with pytest.raises(ValueError):
        warehouse.table_exists("x; drop table", "t")
    with pytest.raises(ValueError):
        warehouse.create_schema("x; drop table")
    assert not warehouse.table_exists("rt", "t")
    # A reserved word works as a name because everything is quoted.
    warehouse.write_table("select", "from", pa.table({"order": [1]}))
    assert warehouse.query('SELECT "order" FROM "select"."from"')["order"].to_pylist() == [1]


def test_transaction_commits_everything_together(warehouse: Warehouse) -> None:
    with warehouse.transaction() as tx:
        tx.write_table("rt", "a", pa.table({"x": [1, 2]}))
        tx.write_table("rt", "b", pa.table({"y": ["q"]}))
        tx.execute("DELETE FROM rt.a WHERE x = ?", [1])
        assert tx.query("SELECT x FROM rt.a")["x"].to_pylist() == [2]  # reads its own writes
        assert tx.table_exists("rt", "b")
    assert warehouse.query("SELECT x FROM rt.a")["x"].to_pylist() == [2]
    assert warehouse.query("SELECT y FROM rt.b")["y"].to_pylist() == ["q"]


def test_transaction_rolls_back_on_exception(warehouse: Warehouse) -> None:
    warehouse.write_table("rt", "a", pa.table({"x": [1, 2, 3]}))
    before = warehouse.query("SELECT * FROM rt.a ORDER BY x")

    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        with warehouse.transaction() as tx:
            tx.execute("DELETE FROM rt.a")
            tx.write_table("rt", "a", pa.table({"x": [42], "extra": ["replaced"]}))  # drop + create
            tx.write_table("rt", "new_table", pa.table({"z": [1]}))
            raise Boom
    assert warehouse.query("SELECT * FROM rt.a ORDER BY x").equals(before)
    assert not warehouse.table_exists("rt", "new_table")
    with pytest.raises(WarehouseError, match="already finished"):
        tx.query("SELECT 1")
    # The connection is usable afterwards, also after a failed statement inside a transaction.
    with pytest.raises(WarehouseError):
        with warehouse.transaction() as tx:
            tx.execute("INSERT INTO rt.a (x) VALUES (?)", [7])
            tx.execute("SELECT * FROM rt.no_such_table")
    assert warehouse.query("SELECT count(*) AS n FROM rt.a")["n"].to_pylist() == [3]


def test_nested_transaction_is_refused(warehouse: Warehouse) -> None:
    with warehouse.transaction():
        with pytest.raises(WarehouseError, match="already open"):
            with warehouse.transaction():
                pass


def test_close_then_reuse_reopens(warehouse: Warehouse) -> None:
    warehouse.write_table("rt", "t", pa.table({"a": [1]}))
    warehouse.close()
    warehouse.close()  # idempotent
    assert warehouse.query("SELECT a FROM rt.t")["a"].to_pylist() == [1]
    with connect(warehouse.url) as wh2:
        assert wh2.query("SELECT a FROM rt.t")["a"].to_pylist() == [1]


# --- DuckDB specifics ---------------------------------------------------------------------------
def _other_process_writes(path: str) -> subprocess.CompletedProcess[str]:
    code = (
        "import duckdb, sys; c = duckdb.connect(sys.argv[1]); "
        "c.execute('CREATE TABLE IF NOT EXISTS outside (v INTEGER)'); c.execute('INSERT INTO outside VALUES (7)')"
    )
    return subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True, timeout=60)


def test_duckdb_opens_lazily_and_close_releases_the_file_lock(tmp_path) -> None:
    path = tmp_path / "sub" / "wh.duckdb"
    wh = connect(f"duckdb:///{path}")
    assert wh.dialect == "duckdb"
    assert not path.exists()  # nothing opened yet
    wh.write_table("main", "t", pa.table({"a": [1]}))
    assert path.exists()
    held = _other_process_writes(str(path))
    assert held.returncode != 0 and "lock" in held.stderr.lower()
    wh.close()
    free = _other_process_writes(str(path))
    assert free.returncode == 0, free.stderr
    # Our next call reopens and sees what the other process (dbt, say) wrote.
    assert wh.query("SELECT v FROM outside")["v"].to_pylist() == [7]
    wh.close()


def test_duckdb_urls(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with connect("duckdb:///rel/dir/x.duckdb") as wh:
        wh.execute("CREATE TABLE t (a INTEGER)")
    assert (tmp_path / "rel" / "dir" / "x.duckdb").exists()
    with connect("duckdb:///:memory:") as mem:
        assert mem.query("SELECT 42 AS v")["v"].to_pylist() == [42]
    with pytest.raises(WarehouseError, match="not a DuckDB URL"):
        connect("duckdb://x.duckdb").query("SELECT 1")
    with pytest.raises(WarehouseError, match="unsupported warehouse URL 'mysql://u:\\*\\*\\*@h/db'"):
        connect("mysql://u:topsecret@h/db")


def test_duckdb_schema_named_like_the_file_is_refused_clearly(tmp_path) -> None:
    with connect(f"duckdb:///{tmp_path}/Segments.v2.duckdb") as wh:
        with pytest.raises(WarehouseError, match="same name as the DuckDB database file"):
            wh.write_table("segments", "t", pa.table({"a": [1]}))
        with pytest.raises(WarehouseError, match="same name"):
            wh.create_schema("SEGMENTS")
        wh.write_table("other", "t", pa.table({"a": [1]}))
        assert wh.query("SELECT current_database() AS c")["c"].to_pylist() == [wh.catalog]  # type: ignore[attr-defined]


def test_default_url_from_environment(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SEGMENT_WAREHOUSE_URL", raising=False)
    monkeypatch.delenv("SEGMENT_DATA_DIR", raising=False)
    assert default_url() == "duckdb:///.data/warehouse.duckdb"
    monkeypatch.setenv("SEGMENT_DATA_DIR", str(tmp_path))
    assert default_url() == f"duckdb:///{tmp_path}/warehouse.duckdb"
    with connect() as wh:
        wh.execute("CREATE TABLE t (a INTEGER)")
    assert (tmp_path / "warehouse.duckdb").exists()
    monkeypatch.setenv("SEGMENT_WAREHOUSE_URL", "duckdb:///:memory:")
    assert connect().url == "duckdb:///:memory:"


# --- credentials --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("url", "safe"),
    [
        ("postgresql://user:hunter2@db:5432/x", "postgresql://user:***@db:5432/x"),
        ("postgres://u:p%40ss%3Aw@h/db?sslmode=require", "postgres://u:***@h/db?sslmode=require"),
        ("postgresql://user@db/x", "postgresql://user@db/x"),
        ("duckdb:///.data/w.duckdb", "duckdb:///.data/w.duckdb"),
        ("postgresql+psycopg://a:b@c/d", "postgresql+psycopg://a:***@c/d"),
    ],
)
def test_redact_url(url: str, safe: str) -> None:
    assert redact_url(url) == safe


def _assert_no_secret(exc: BaseException, *secrets: str) -> None:
    shown = "".join(traceback.format_exception(exc)) + str(exc) + repr(exc)
    for secret in secrets:
        assert secret not in shown


@pytest.mark.postgres
def test_bad_connections_never_show_the_password(postgres_url: str) -> None:
    secret, encoded = "s3cr@t:pw", "s3cr%40t%3Apw"
    good = postgres_url.replace("postgresql://postgres@", f"postgresql://postgres:{encoded}@")
    bad_port = good.replace(":5432/", ":1/")
    bad_db = good.rsplit("/", 1)[0] + "/no_such_database"
    bad_user = good.replace("postgres:", "nobody_here:", 1).replace("postgresql", "postgres", 1)
    for url in (bad_port, bad_db, bad_user):
        with pytest.raises(WarehouseError, match=r"cannot connect .*:\*\*\*@") as info:
            connect(url)
        _assert_no_secret(info.value, secret, encoded)
        assert info.value.__context__ is None and info.value.__cause__ is None


@pytest.mark.postgres
def test_postgres_str_repr_and_errors_are_redacted(postgres_url: str) -> None:
    secret = "Tr0ub4dor"  # trust auth on the test server accepts any password
    url = postgres_url.replace("postgresql://postgres@", f"postgresql+psycopg://postgres:{secret}@")
    with connect(url) as wh:
        assert wh.dialect == "postgres"
        assert wh.url == url  # the private form is still there for drivers
        for shown in (str(wh), repr(wh), wh.safe_url):
            assert secret not in shown and "***" in shown
        with pytest.raises(WarehouseError, match="no_such_table") as info:
            wh.query("SELECT * FROM no_such_table WHERE a = ?", [1])
        _assert_no_secret(info.value, secret)
        with pytest.raises(WarehouseError) as info:
            with wh.transaction() as tx:
                tx.write_table("s", "t", pa.table({"a": [1]}))
                tx.write_table("s", "t", pa.table({"b": [1]}), mode="append")
        _assert_no_secret(info.value, secret)
        assert "s.t" in str(info.value)


def test_duckdb_str_and_repr(tmp_path) -> None:
    wh = connect(f"duckdb:///{tmp_path}/w.duckdb")
    assert str(wh) == f"duckdb:///{tmp_path}/w.duckdb"
    assert repr(wh) == f"DuckDBWarehouse('duckdb:///{tmp_path}/w.duckdb')"
    with pytest.raises(WarehouseError, match=r"query failed: SELECT \* FROM nope"):
        wh.query("SELECT * FROM nope")
    wh.close()
