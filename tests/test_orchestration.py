"""``segmentation.orchestration`` (what the DAG needs from the library) and keeping secrets secret.

- ``url_from_connection`` on real Airflow Connections (built in a subprocess from URIs, as
  ``AIRFLOW_CONN_*`` variables are, and from fields): PostgreSQL with a password full of characters
  that need percent-encoding, DuckDB by path or extra; the URL parses back and really connects.
- ``resolve_warehouse_url``: the Connection wins, else $SEGMENT_WAREHOUSE_URL.
- ``run_window``: a scheduled run covers its data interval [D, D+1); a manual run's ``as_of_date``
  wins; a run without either is refused.
- A whole run on a PostgreSQL login with a password: the password is never in the run record, the
  logs (caplog), the step return values (what the DAG passes through XCom) or the artifacts; nor in
  the failure record and logs of runs that fail on that warehouse.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import pytest

from segmentation.orchestration import run_window
from segmentation.warehouse import WarehouseError, connect

PASSWORD = "S3cr3t!pw@:/?#%"      # every character that needs percent-encoding in a URI
SECRET_TOKEN = "S3cr3t"           # any spelling of the password (raw, encoded) contains it
UTC = dt.UTC


def _admin() -> Any:
    return urlsplit(os.environ.get("SEGMENT_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"))


@pytest.fixture(scope="module")
def secret_role(_postgres_admin: Any) -> Iterator[dict[str, str]]:
    """A fresh role with a password, owning two fresh databases (trust auth ignores the password,
    which is fine: what matters is that it never leaks)."""
    suffix = uuid.uuid4().hex[:10]
    role = f"seg_user_{suffix}"
    dbs = {"main": f"seg_test_{suffix}", "empty": f"seg_test_{suffix}_empty"}
    _postgres_admin.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{PASSWORD}'")
    for db in dbs.values():
        _postgres_admin.execute(f'CREATE DATABASE "{db}" OWNER {role}')
    admin = _admin()
    host, port = admin.hostname or "127.0.0.1", admin.port or 5432
    try:
        yield {"role": role, "host": host, "port": str(port), **dbs,
               **{f"{k}_url": f"postgresql://{role}:{quote(PASSWORD, safe='')}@{host}:{port}/{db}" for k, db in dbs.items()}}
    finally:
        for db in dbs.values():
            _postgres_admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        _postgres_admin.execute(f"DROP ROLE IF EXISTS {role}")


# ---------------------------------------------------------------------------------------------
# url_from_connection / resolve_warehouse_url with real Airflow Connections (subprocess)
# ---------------------------------------------------------------------------------------------
CONNECTIONS_SCRIPT = textwrap.dedent("""
    import json, os, sys
    from airflow.models import Connection as ModelConnection
    from airflow.sdk import Connection
    from segmentation.orchestration import resolve_warehouse_url, url_from_connection

    args = json.loads(sys.argv[1])
    out = {}
    def attempt(name, make):
        try:
            out[name] = {"url": url_from_connection(make())}
        except Exception as exc:
            out[name] = {"error": f"{type(exc).__name__}: {exc}"}
    attempt("pg_uri", lambda: Connection.from_uri(args["pg_uri"], conn_id="segment_warehouse"))
    attempt("pg_fields", lambda: Connection(conn_id="w", conn_type="postgres", host=args["host"], port=int(args["port"]),
                                             login=args["role"], password=args["password"], schema=args["db"]))
    attempt("pg_no_password", lambda: Connection(conn_id="w", conn_type="postgres", host="db.internal", login="reader",
                                                  schema="crm"))
    attempt("pg_defaults", lambda: Connection(conn_id="w", conn_type="postgres"))
    attempt("duckdb_uri", lambda: Connection.from_uri(args["duckdb_uri"], conn_id="w"))
    attempt("duckdb_extra", lambda: Connection(conn_id="w", conn_type="duckdb", extra=json.dumps({"path": args["duckdb_path"]})))
    attempt("duckdb_nothing", lambda: Connection(conn_id="lake", conn_type="duckdb"))
    attempt("mysql", lambda: Connection.from_uri("mysql://u:p@h:3306/db", conn_id="mysql_wh"))
    # resolve_warehouse_url with Airflow's own lookup (environment AIRFLOW_CONN_*, then secrets backends)
    get = ModelConnection.get_connection_from_secrets
    out["resolved"] = resolve_warehouse_url(get)
    os.environ["SEGMENT_WAREHOUSE_CONN_ID"] = "not_defined"
    out["resolved_fallback"] = resolve_warehouse_url(get)
    print("CONN-JSON " + json.dumps(out))
""")


@pytest.fixture(scope="module")
def connections(secret_role: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    home = tmp_path_factory.mktemp("airflow_conn")
    duck = home / "lake dir" / "w.duckdb"     # a space in the path, to be safe
    pg_uri = secret_role["main_url"]
    args = {"pg_uri": pg_uri, "host": secret_role["host"], "port": secret_role["port"], "role": secret_role["role"],
            "password": PASSWORD, "db": secret_role["main"], "duckdb_uri": "duckdb://" + quote(str(duck), safe=""),
            "duckdb_path": str(duck)}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "SEGMENT_"))}
    env.update(AIRFLOW_HOME=str(home), AIRFLOW__CORE__LOAD_EXAMPLES="False", AIRFLOW_CONN_SEGMENT_WAREHOUSE=pg_uri,
               SEGMENT_WAREHOUSE_URL=f"duckdb:///{home}/fallback.duckdb")
    proc = subprocess.run([sys.executable, "-c", CONNECTIONS_SCRIPT, json.dumps(args)], env=env,
                          capture_output=True, text=True, check=False, timeout=300)
    line = [x for x in proc.stdout.splitlines() if x.startswith("CONN-JSON ")]
    assert proc.returncode == 0 and line, f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    out = json.loads(line[-1][len("CONN-JSON "):])
    out["_duck"] = str(duck)
    out["_fallback"] = env["SEGMENT_WAREHOUSE_URL"]
    return out


@pytest.mark.postgres
@pytest.mark.parametrize("case", ["pg_uri", "pg_fields"])
def test_postgres_connection_url_round_trips_and_connects(connections: dict[str, Any], secret_role: dict[str, str],
                                                          case: str) -> None:
    url = connections[case]["url"]
    parts = urlsplit(url)
    assert parts.scheme == "postgresql"
    assert parts.username == secret_role["role"]
    assert unquote(parts.password) == PASSWORD            # percent-encoded, and decodes to the original
    assert (parts.hostname, str(parts.port)) == (secret_role["host"], secret_role["port"])
    assert parts.path == f"/{secret_role['main']}"
    with connect(url) as wh:
        got = wh.query("SELECT current_user AS u, current_database() AS d").to_pylist()
        assert got == [{"u": secret_role["role"], "d": secret_role["main"]}]
        assert SECRET_TOKEN not in str(wh) and SECRET_TOKEN not in repr(wh)


def test_postgres_connection_without_password_or_fields(connections: dict[str, Any]) -> None:
    assert connections["pg_no_password"] == {"url": "postgresql://reader@db.internal/crm"}
    assert connections["pg_defaults"] == {"url": "postgresql://127.0.0.1/postgres"}


@pytest.mark.parametrize("case", ["duckdb_uri", "duckdb_extra"])
def test_duckdb_connection_names_the_file(connections: dict[str, Any], case: str) -> None:
    url = connections[case]["url"]
    assert url == f"duckdb:///{connections['_duck']}"        # duckdb:////abs/path: four slashes
    Path(connections["_duck"]).parent.mkdir(parents=True, exist_ok=True)
    with connect(url) as wh:
        wh.execute(f"CREATE TABLE IF NOT EXISTS t_{case} AS SELECT 1 AS x")
    assert Path(connections["_duck"]).is_file()


def test_unusable_connections_are_refused_by_name(connections: dict[str, Any]) -> None:
    assert "'mysql_wh'" in connections["mysql"]["error"] and "'postgres' or 'duckdb'" in connections["mysql"]["error"]
    assert "'lake'" in connections["duckdb_nothing"]["error"] and "path" in connections["duckdb_nothing"]["error"]


@pytest.mark.postgres
def test_resolve_prefers_the_connection_then_the_environment(connections: dict[str, Any], secret_role: dict[str, str]) -> None:
    assert connections["resolved"] == connections["pg_uri"]["url"]
    assert connections["resolved_fallback"] == connections["_fallback"]


def test_resolve_does_not_hide_a_failing_lookup(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only "not defined" falls back to the environment: a lookup that fails (a secrets backend
    down) must fail the task, not send the run to a worker's local DuckDB file."""
    from segmentation.orchestration import resolve_warehouse_url

    monkeypatch.delenv("SEGMENT_WAREHOUSE_CONN_ID", raising=False)
    monkeypatch.setenv("SEGMENT_WAREHOUSE_URL", "duckdb:////srv/fallback.duckdb")
    asked: list[str] = []

    def backend_down(conn_id: str) -> Any:
        asked.append(conn_id)
        raise ConnectionError("secrets backend unreachable")

    def not_defined(conn_id: str) -> Any:
        raise KeyError(conn_id)

    with pytest.raises(ConnectionError, match="unreachable"):
        resolve_warehouse_url(backend_down)
    assert asked == ["segment_warehouse"]
    assert resolve_warehouse_url(not_defined) == "duckdb:////srv/fallback.duckdb"
    assert resolve_warehouse_url(None) == "duckdb:////srv/fallback.duckdb"


# ---------------------------------------------------------------------------------------------
# run_window
# ---------------------------------------------------------------------------------------------
def test_scheduled_run_covers_its_data_interval() -> None:
    start, end = dt.datetime(2011, 12, 9, tzinfo=UTC), dt.datetime(2011, 12, 10, tzinfo=UTC)
    assert run_window({"as_of_date": None, "n_segments": None}, start, end) == (dt.date(2011, 12, 9), end)
    assert run_window({}, start, end) == (dt.date(2011, 12, 9), end)


def test_manual_run_as_of_date_wins_over_the_interval() -> None:
    start, end = dt.datetime(2026, 1, 1, tzinfo=UTC), dt.datetime(2026, 1, 2, tzinfo=UTC)
    d, as_of = run_window({"as_of_date": "2011-12-09"}, start, end)
    assert d == dt.date(2011, 12, 9)
    assert as_of == dt.datetime(2011, 12, 10, tzinfo=UTC)   # the end of that day: the same as a scheduled run
    assert run_window({"as_of_date": "2011-12-09"}, None, None) == (d, as_of)
    assert run_window({"as_of_date": dt.date(2011, 12, 9)}, None, None) == (d, as_of)


def test_manual_run_without_interval_or_date_is_refused() -> None:
    with pytest.raises(ValueError, match="as_of_date"):
        run_window({"as_of_date": None}, None, None)
    with pytest.raises(ValueError):
        run_window({"as_of_date": "09/12/2011"}, None, None)


# ---------------------------------------------------------------------------------------------
# credentials never leak
# ---------------------------------------------------------------------------------------------
def _small_demo(path: Path) -> Path:
    """A quarter of the Online Retail customers (every line of theirs): the real data, a cheaper run."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from segmentation.demo import DEFAULT_DATA_PATH

    lines = pq.read_table(DEFAULT_DATA_PATH)
    ids = pc.cast(pc.fill_null(lines["customer_id"], 1.0), "int64")
    pq.write_table(lines.filter(pc.equal(pc.bit_wise_and(ids, 3), 0)), path)
    return path


def _assert_no_secret(where: str, text: str) -> None:
    assert SECRET_TOKEN not in text, f"the password shows in {where}"


@pytest.mark.slow
@pytest.mark.postgres
def test_a_run_never_shows_the_password(secret_role: dict[str, str], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from segmentation import pipeline
    from segmentation.demo import init_demo_warehouse

    os.environ.setdefault("DBT_SEND_ANONYMOUS_USAGE_STATS", "False")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    url = secret_role["main_url"]
    init_demo_warehouse(url, data_path=_small_demo(tmp_path / "small.parquet"))
    caplog.set_level(logging.DEBUG)

    # the steps as the DAG calls them; each return value is what goes through XCom
    run = pipeline.start_run("2011-12-09", n_segments=4, artifacts=str(tmp_path / "artifacts"), trigger="test")
    returned: dict[str, Any] = {"start": run}
    returned["extract"] = pipeline.extract(url, run)
    returned["features"] = pipeline.features(url, run)
    returned["validate"] = pipeline.validate(url, run, returned["extract"])
    returned["train"] = pipeline.train(url, run, returned["validate"])
    returned["score"] = pipeline.score(url, run, returned["train"])
    returned["publish"] = pipeline.publish(url, run, returned["train"], returned["score"], returned["validate"])
    assert returned["publish"]["n_customers"] > 500

    _assert_no_secret("step return values (XCom)", json.dumps(returned, default=str))
    _assert_no_secret("logs", caplog.text)
    with connect(url) as wh:
        records = wh.query("SELECT * FROM segments.segmentation_runs").to_pylist()
    assert [r["status"] for r in records] == ["success"]
    _assert_no_secret("the run record", json.dumps(records, default=str))
    for path in (tmp_path / "artifacts").rglob("*"):
        if path.is_file():
            assert SECRET_TOKEN.encode() not in path.read_bytes(), f"{path} holds the password"


@pytest.mark.postgres
def test_failed_runs_never_show_the_password(secret_role: dict[str, str], tmp_path: Path,
                                             caplog: pytest.LogCaptureFixture) -> None:
    from segmentation import pipeline

    caplog.set_level(logging.DEBUG)
    # 1. the database is there but holds no CRM tables: extract fails, the failure is recorded
    url = secret_role["empty_url"]
    with pytest.raises(pipeline.PipelineError) as info:
        pipeline.run_all(url, "2011-12-09", artifacts=str(tmp_path / "artifacts"))
    _assert_no_secret("the error", str(info.value))
    assert "raw.transactions" in str(info.value)
    with connect(url) as wh:
        (record,) = wh.query("SELECT * FROM segments.segmentation_runs").to_pylist()
    assert record["status"] == "failed" and record["message"].startswith("extract: ")
    assert secret_role["role"] in record["message"]            # the login may show, the password not
    _assert_no_secret("the failed run record", json.dumps(record, default=str))

    # 2. a database that does not exist: the run and its failure record both fail to connect
    missing = urlunsplit(urlsplit(url)._replace(path=f"/no_such_db_{uuid.uuid4().hex[:6]}"))
    with pytest.raises(WarehouseError) as info:
        pipeline.run_all(missing, "2011-12-09", artifacts=str(tmp_path / "artifacts"))
    assert "does not exist" in str(info.value)
    _assert_no_secret("the connection error", str(info.value))
    assert "could not record the failed run" in caplog.text
    _assert_no_secret("logs", caplog.text)


def test_connection_extras_and_password_only_login_reach_the_url():
    from types import SimpleNamespace

    from segmentation.orchestration import url_from_connection

    conn = SimpleNamespace(conn_id="w", conn_type="postgres", login=None, password="p@ss", host="db.internal",
                           port=5432, schema="analytics", extra_dejson={"sslmode": "require", "unrelated": "x"})
    assert url_from_connection(conn) == "postgresql://:p%40ss@db.internal:5432/analytics?sslmode=require"
    duck = SimpleNamespace(conn_id="d", conn_type="duckdb", login=None, password=None, host=None, port=None,
                           schema=None, extra_dejson={"path": "/data/w.duckdb"})
    assert url_from_connection(duck) == "duckdb:////data/w.duckdb"
    with pytest.raises(ValueError, match="must be a 'postgres' or 'duckdb' connection"):
        url_from_connection(SimpleNamespace(conn_id="m", conn_type="mysql", extra_dejson={}))
