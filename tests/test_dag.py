"""The Airflow 3 DAG ``customer_segmentation`` with the real Airflow, in subprocesses.

Airflow reads ``AIRFLOW_HOME`` and its configuration when it is first imported, and ``airflow dags
test`` needs a migrated metadata database: every Airflow call here runs in a subprocess with its own
environment (AIRFLOW_HOME, DAGS_FOLDER, LOAD_EXAMPLES=False, SEGMENT_DATA_DIR, SEGMENT_TASK_RETRIES=0),
and the metadata database is migrated once per module, then copied for each DAG run so that every
run's XComs and task states can be read back from its own SQLite file.

- DagBag integrity and policy (tags, owner, retries with exponential backoff, catchup off, a
  data-interval timetable, the params, an Asset outlet), parse time, no heavy imports at parse time.
- ``airflow dags test customer_segmentation 2011-12-10`` on the demo in DuckDB (the interval
  [2011-12-09, 2011-12-10), run_date 2011-12-09): published tables, run record, small XComs.
- The same DAG on PostgreSQL through an ``AIRFLOW_CONN_SEGMENT_WAREHOUSE`` Connection whose login has
  a password: the password never shows in task logs, XComs, the run record or the artifacts.
- A failing DAG run (a source table dropped): the run fails, the failure is recorded, and every
  published table is exactly as before.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import pytest

REPO = Path(__file__).resolve().parents[1]
DAGS = REPO / "dags"
AIRFLOW = str(Path(sys.executable).parent / "airflow")
DAG_ID = "customer_segmentation"
LOGICAL_DATE = "2011-12-10"       # Airflow 3: the run at D covers [D - 1 day, D)
RUN_DATE = "2011-12-09"
RUN_ID = f"online_retail-{RUN_DATE}"
SCHEMA = "segments"
CONTRACT = ("segment_assignments", "segment_assignments_current", "segments", "segment_profiles",
            "segmentation_runs")
PASSWORD = "S3cr3t!pw@:/?#%"      # every character that needs percent-encoding in a URI
SECRET_TOKEN = "S3cr3t"           # any spelling of the password (raw, encoded) contains it
# the pipeline chain, in order (tasks after publish, such as the report, may follow)
TASKS = ("start", "extract", "features", "validate", "train", "score", "publish")
HEAVY = ("torch", "great_expectations", "dbt", "pandas")


def airflow_env(home: Path, data_dir: Path, **extra: str) -> dict[str, str]:
    """The environment of an Airflow subprocess: nothing inherited that names Airflow or the product."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "SEGMENT_"))}
    env.update(
        AIRFLOW_HOME=str(home),
        # explicit: a copied airflow.cfg would otherwise point at the database it was written for
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{home}/airflow.db",
        AIRFLOW__CORE__DAGS_FOLDER=str(DAGS),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        SEGMENT_DATA_DIR=str(data_dir),
        DBT_SEND_ANONYMOUS_USAGE_STATS="False",
        DO_NOT_TRACK="1",
    )
    env.update(extra)
    return env


# ---------------------------------------------------------------------------------------------
# DagBag: integrity and policy (one subprocess, no metadata database needed)
# ---------------------------------------------------------------------------------------------
DAGBAG_SCRIPT = textwrap.dedent("""
    import json, sys, time, datetime as dt
    from pathlib import Path
    from airflow.dag_processing.dagbag import DagBag
    from airflow.sdk import Asset

    folder = sys.argv[1]
    heavy = sys.argv[2].split(",")
    def loaded(mods):
        return sorted(h for h in heavy if any(m == h or m.startswith(h + ".") for m in mods))
    before = set(sys.modules)
    t = time.perf_counter()
    bag = DagBag(dag_folder=folder, safe_mode=True)   # safe_mode as the DAG processor parses
    parse_s = time.perf_counter() - t
    out = {
        "parse_s": parse_s,
        "import_errors": {str(k): str(v) for k, v in bag.import_errors.items()},
        "files_parsed": sorted(Path(s.file).name for s in bag.dagbag_stats),
        "heavy_imported_by_parse": loaded(set(sys.modules) - before),
        "heavy_loaded": loaded(sys.modules),
        "dags": {},
    }
    after = dt.datetime(2011, 12, 10, tzinfo=dt.timezone.utc)
    for dag_id, dag in bag.dags.items():
        interval = dag.timetable.infer_manual_data_interval(run_after=after)
        out["dags"][dag_id] = {
            "tags": sorted(dag.tags or []),
            "catchup": dag.catchup,
            "timetable": type(dag.timetable).__name__,
            "interval": [interval.start.isoformat(), interval.end.isoformat()],
            "params": sorted(dag.params.keys()),
            "tasks": {
                t.task_id: {
                    "owner": t.owner,
                    "retries": t.retries,
                    "exponential_backoff": bool(t.retry_exponential_backoff),
                    "has_failure_callback": bool(t.on_failure_callback),
                    "asset_outlets": [o.name for o in t.outlets if isinstance(o, Asset)],
                }
                for t in dag.tasks
            },
        }
    print("DAGBAG-JSON " + json.dumps(out))
""")


@pytest.fixture(scope="module")
def dagbag(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    home = tmp_path_factory.mktemp("airflow_parse")
    # no SEGMENT_TASK_RETRIES here: the policy applies to the DAG as deployed
    env = airflow_env(home, home / "data")
    proc = subprocess.run([sys.executable, "-c", DAGBAG_SCRIPT, str(DAGS), ",".join(HEAVY)], env=env,
                          capture_output=True, text=True, check=False, timeout=300)
    line = [x for x in proc.stdout.splitlines() if x.startswith("DAGBAG-JSON ")]
    assert proc.returncode == 0 and line, f"DagBag subprocess failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return json.loads(line[-1][len("DAGBAG-JSON "):])


def test_dagbag_has_no_import_errors(dagbag: dict[str, Any]) -> None:
    assert dagbag["import_errors"] == {}
    assert DAG_ID in dagbag["dags"]
    # a DAG file that never says "airflow" is skipped silently in safe mode: every file must parse
    assert dagbag["files_parsed"] == sorted(p.name for p in DAGS.glob("*.py") if not p.name.startswith("_"))


def test_dag_parsing_is_fast_and_imports_nothing_heavy(dagbag: dict[str, Any]) -> None:
    print(f"\nDagBag parse: {dagbag['parse_s']:.2f} s")
    assert dagbag["parse_s"] < 2.0
    assert dagbag["heavy_imported_by_parse"] == []
    assert dagbag["heavy_loaded"] == []


def test_every_dag_follows_the_policy(dagbag: dict[str, Any]) -> None:
    assert dagbag["dags"]
    for dag_id, dag in dagbag["dags"].items():
        assert dag["tags"], f"{dag_id}: no tags"
        assert dag["catchup"] is False, f"{dag_id}: catchup must be off"
        # a data-interval timetable: the run after D covers [D - 1 day, D), not a zero-width interval
        assert dag["timetable"] == "CronDataIntervalTimetable", dag["timetable"]
        start, end = dag["interval"]
        assert start < end, f"{dag_id}: zero-width data interval {start} .. {end}"
        for task_id, task in dag["tasks"].items():
            where = f"{dag_id}.{task_id}"
            assert task["owner"] not in (None, "", "airflow"), f"{where}: owner {task['owner']!r}"
            assert task["retries"] >= 1, f"{where}: no retries"
            assert task["exponential_backoff"], f"{where}: retries without exponential backoff"
            assert task["has_failure_callback"], f"{where}: a final failure would not be recorded"


def test_segmentation_dag_shape(dagbag: dict[str, Any]) -> None:
    dag = dagbag["dags"][DAG_ID]
    assert dag["interval"] == ["2011-12-09T00:00:00+00:00", "2011-12-10T00:00:00+00:00"]
    assert {"as_of_date", "n_segments", "full_retrain"} <= set(dag["params"])
    order = list(dag["tasks"])
    assert [t for t in order if t in TASKS] == list(TASKS), order
    assert order[:len(TASKS)] == list(TASKS), order
    assert dag["tasks"]["publish"]["asset_outlets"] == ["segment_assignments_current"]
    assert all(not t["asset_outlets"] for tid, t in dag["tasks"].items() if tid != "publish")


# ---------------------------------------------------------------------------------------------
# End-to-end runs: `airflow dags test` in a subprocess
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class DagRun:
    rc: int
    seconds: float
    home: Path
    data_dir: Path
    log: str
    state: str | None
    interval: tuple[str, str] | None
    task_states: dict[str, str]
    xcoms: dict[str, dict[str, Any]]     # task_id -> key -> decoded value


@pytest.fixture(scope="module")
def airflow_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An AIRFLOW_HOME with a migrated metadata database, copied for every DAG run."""
    home = tmp_path_factory.mktemp("airflow_template")
    proc = subprocess.run([AIRFLOW, "db", "migrate"], env=airflow_env(home, home / "data"),
                          capture_output=True, text=True, check=False, timeout=600)
    assert proc.returncode == 0, f"airflow db migrate failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert (home / "airflow.db").is_file()
    return home


def run_dag(template: Path, root: Path, data_dir: Path, **extra_env: str) -> DagRun:
    home = root / "airflow_home"
    home.mkdir()
    shutil.copy2(template / "airflow.db", home / "airflow.db")   # Airflow writes a fresh airflow.cfg
    env = airflow_env(home, data_dir, SEGMENT_TASK_RETRIES="0", **extra_env)
    started = time.perf_counter()
    proc = subprocess.run([AIRFLOW, "dags", "test", DAG_ID, LOGICAL_DATE], env=env, cwd=root,
                          capture_output=True, text=True, check=False, timeout=900)
    seconds = time.perf_counter() - started
    log = proc.stdout + "\n" + proc.stderr
    (root / "dags-test.log").write_text(log)
    db = sqlite3.connect(home / "airflow.db")
    try:
        runs = db.execute("SELECT state, data_interval_start, data_interval_end FROM dag_run WHERE dag_id = ?",
                          [DAG_ID]).fetchall()
        tis = dict(db.execute("SELECT task_id, state FROM task_instance WHERE dag_id = ?", [DAG_ID]).fetchall())
        xcoms: dict[str, dict[str, Any]] = {}
        for task_id, key, value in db.execute("SELECT task_id, key, value FROM xcom WHERE dag_id = ?", [DAG_ID]):
            xcoms.setdefault(task_id, {})[key] = json.loads(value) if isinstance(value, (str, bytes)) else value
    finally:
        db.close()
    assert len(runs) <= 1, runs
    state, start, end = runs[0] if runs else (None, None, None)
    return DagRun(proc.returncode, seconds, home, data_dir, log, state, (start, end) if runs else None, tis, xcoms)


def _rows(url: str, table: str) -> list[dict[str, Any]]:
    from segmentation.warehouse import connect

    with connect(url) as wh:
        if not wh.table_exists(SCHEMA, table):
            return []
        return wh.query(f"SELECT * FROM {wh.qualified(SCHEMA, table)}").to_pylist()


def _canon(row: dict[str, Any]) -> str:
    return json.dumps(row, sort_keys=True, default=str)


def snapshot(url: str) -> dict[str, tuple[int, str, list[dict[str, Any]]]]:
    """Per contract table: row count, sha256 of the sorted rows, and the rows."""
    out = {}
    for t in CONTRACT:
        rows = _rows(url, t)
        lines = sorted(_canon(r) for r in rows)
        out[t] = (len(lines), hashlib.sha256("\n".join(lines).encode()).hexdigest(), rows)
    return out


def _describe(run: DagRun) -> str:
    interesting = [x for x in run.log.splitlines() if "error" in x.lower() or "Traceback" in x]
    return f"rc={run.rc} state={run.state} tasks={run.task_states}\n" + "\n".join(interesting[-40:])


def assert_published(url: str, run: DagRun) -> None:
    """The checks every successful DAG run must pass, whatever the warehouse."""
    from segmentation.warehouse import connect

    assert run.rc == 0 and run.state == "success", _describe(run)
    assert set(TASKS) <= set(run.task_states)
    assert run.task_states == {t: "success" for t in run.task_states}
    assert run.interval is not None
    assert run.interval[0].startswith("2011-12-09 00:00:00") and run.interval[1].startswith("2011-12-10 00:00:00")
    with connect(url) as wh:
        customers = wh.query("SELECT customer_id FROM features.customer_features").column("customer_id").to_pylist()
    current = _rows(url, "segment_assignments_current")
    assert len(customers) > 4000
    assert sorted(r["customer_id"] for r in current) == sorted(str(c) for c in customers)  # one row each
    assert {str(r["run_date"]) for r in current} == {RUN_DATE}
    assert all(0.0 <= r["segment_probability"] <= 1.0 for r in current)
    assert all(r["runner_up_segment_id"] != r["segment_id"] for r in current)
    segments = {r["segment_id"]: r for r in _rows(url, "segments")}
    for seg in {r["segment_id"] for r in current}:
        assert seg in segments and segments[seg]["label"].strip() and segments[seg]["status"] == "active"
    profiles = [p for p in _rows(url, "segment_profiles") if str(p["run_date"]) == RUN_DATE]
    assert {p["segment_id"] for p in profiles} == {r["segment_id"] for r in current}
    assert sum(p["size"] for p in profiles) == len(current)
    assert all(p["run_id"] == RUN_ID and json.loads(p["summary"]) for p in profiles)
    (record,) = [r for r in _rows(url, "segmentation_runs") if r["run_id"] == RUN_ID]
    assert record["status"] == "success" and record["n_customers"] == len(current)
    assert json.loads(record["training"])["trigger"].startswith("airflow:")
    assert record["model_version"] == run.xcoms["score"]["return_value"]["model_version"]
    assert run.xcoms["publish"]["return_value"]["n_customers"] == len(current)


def _small_json(value: Any, path: str = "") -> None:
    """A value that is plain JSON of references and counts: no frames, no rows, no binary."""
    if isinstance(value, dict):
        assert not any(str(k).startswith("__") for k in value), f"{path}: a serialized object {list(value)}"
        for k, v in value.items():
            _small_json(v, f"{path}.{k}")
    elif isinstance(value, list):
        assert len(value) <= 100, f"{path}: a list of {len(value)} items (rows through XCom?)"
        for i, v in enumerate(value):
            _small_json(v, f"{path}[{i}]")
    else:
        assert value is None or isinstance(value, (str, int, float, bool)), f"{path}: {type(value).__name__}"
        assert not isinstance(value, str) or len(value) < 2000, f"{path}: a {len(value)}-character string"


@pytest.fixture(scope="module")
def duckdb_run(airflow_template: Path, tmp_path_factory: pytest.TempPathFactory) -> DagRun:
    from segmentation.demo import init_demo_warehouse

    root = tmp_path_factory.mktemp("dag_duckdb")
    data = root / "data"
    data.mkdir()
    # no Connection: the tasks fall back to the default warehouse, $SEGMENT_DATA_DIR/warehouse.duckdb
    init_demo_warehouse(f"duckdb:///{data}/warehouse.duckdb")
    run = run_dag(airflow_template, root, data)
    print(f"\nDAG run on DuckDB: {run.seconds:.0f} s wall (airflow dags test), state {run.state}")
    return run


@pytest.mark.slow
@pytest.mark.airflow
def test_dag_run_on_duckdb_publishes_every_customer(duckdb_run: DagRun) -> None:
    assert_published(f"duckdb:///{duckdb_run.data_dir}/warehouse.duckdb", duckdb_run)


@pytest.mark.slow
@pytest.mark.airflow
def test_dag_passes_only_small_references_through_xcom(duckdb_run: DagRun) -> None:
    assert duckdb_run.state == "success", _describe(duckdb_run)
    assert set(duckdb_run.xcoms) == set(duckdb_run.task_states)
    for task_id, values in duckdb_run.xcoms.items():
        assert isinstance(values["return_value"], dict), task_id
        _small_json(values, task_id)
        assert len(json.dumps(values)) < 8000, f"{task_id}: {len(json.dumps(values))} bytes of XCom"
    # the data itself stays in the artifact store; XCom only points at it
    run_dir = duckdb_run.data_dir / "artifacts" / "runs" / RUN_DATE
    assert (run_dir / "features.parquet").is_file() and (run_dir / "assignments.parquet").is_file()
    assert Path(duckdb_run.xcoms["features"]["return_value"]["snapshot"]).resolve() == (run_dir / "features.parquet").resolve()
    assert Path(duckdb_run.xcoms["score"]["return_value"]["assignments"]).resolve() == (run_dir / "assignments.parquet").resolve()
    start = duckdb_run.xcoms["start"]["return_value"]
    assert start["run_date"] == RUN_DATE and start["as_of"] == "2011-12-10T00:00:00+00:00"
    assert not any("warehouse" in k or "url" in k for k in start), "the warehouse URL must not travel through XCom"


@pytest.fixture(scope="module")
def secret_postgres(_postgres_admin: Any) -> Iterator[str]:
    """A fresh database owned by a fresh role that has a password: the URL carries a secret."""
    suffix = uuid.uuid4().hex[:10]
    role, db = f"seg_user_{suffix}", f"seg_test_{suffix}"
    admin = urlsplit(os.environ.get("SEGMENT_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"))
    _postgres_admin.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{PASSWORD}'")
    _postgres_admin.execute(f'CREATE DATABASE "{db}" OWNER {role}')
    try:
        yield f"postgresql://{role}:{quote(PASSWORD, safe='')}@{admin.hostname}:{admin.port or 5432}/{db}"
    finally:
        _postgres_admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        _postgres_admin.execute(f"DROP ROLE IF EXISTS {role}")


@pytest.fixture(scope="module")
def postgres_run(airflow_template: Path, secret_postgres: str, tmp_path_factory: pytest.TempPathFactory) -> DagRun:
    from segmentation.demo import init_demo_warehouse

    root = tmp_path_factory.mktemp("dag_postgres")
    data = root / "data"
    data.mkdir()
    init_demo_warehouse(secret_postgres)
    # Airflow parses the Connection URI: the scheme gives conn_type "postgres", the path the database
    run = run_dag(airflow_template, root, data, AIRFLOW_CONN_SEGMENT_WAREHOUSE=secret_postgres)
    print(f"\nDAG run on PostgreSQL: {run.seconds:.0f} s wall (airflow dags test), state {run.state}")
    return run


@pytest.mark.slow
@pytest.mark.airflow
@pytest.mark.postgres
def test_dag_run_on_postgres_through_the_connection(postgres_run: DagRun, secret_postgres: str) -> None:
    assert_published(secret_postgres, postgres_run)
    # the run really used the Connection's database, not the DuckDB fallback
    assert not (postgres_run.data_dir / "warehouse.duckdb").exists()
    assert "postgres" in postgres_run.log and "127.0.0.1" in postgres_run.log


@pytest.mark.slow
@pytest.mark.airflow
@pytest.mark.postgres
def test_dag_run_never_shows_the_password(postgres_run: DagRun, secret_postgres: str) -> None:
    assert postgres_run.state == "success", _describe(postgres_run)
    assert SECRET_TOKEN not in postgres_run.log, "task logs show the password"
    assert SECRET_TOKEN not in json.dumps(postgres_run.xcoms), "XCom holds the password"
    for row in _rows(secret_postgres, "segmentation_runs"):
        assert SECRET_TOKEN not in _canon(row), "the run record holds the password"
    for folder in (postgres_run.home, postgres_run.data_dir):  # Airflow logs and metadata DB, artifacts
        for path in folder.rglob("*"):
            if path.is_file():
                assert SECRET_TOKEN.encode() not in path.read_bytes(), f"{path} holds the password"


@pytest.mark.slow
@pytest.mark.airflow
def test_failed_dag_run_is_recorded_and_changes_nothing(duckdb_run: DagRun, airflow_template: Path, tmp_path: Path) -> None:
    from segmentation.warehouse import connect

    assert duckdb_run.state == "success", _describe(duckdb_run)
    data = tmp_path / "data"
    shutil.copytree(duckdb_run.data_dir, data)   # warehouse and artifacts after a good night
    url = f"duckdb:///{data}/warehouse.duckdb"
    before = snapshot(url)
    with connect(url) as wh:  # the CRM extract lost a table
        wh.execute("DROP TABLE raw.customers")

    run = run_dag(airflow_template, tmp_path, data)
    print(f"\nfailing DAG run on DuckDB: {run.seconds:.0f} s wall")
    assert run.rc != 0 and run.state == "failed", _describe(run)
    assert run.task_states["start"] == "success" and run.task_states["extract"] == "failed"
    downstream = set(run.task_states) - {"start", "extract"}
    assert downstream >= set(TASKS[2:])
    assert all(run.task_states[t] == "upstream_failed" for t in downstream), run.task_states
    assert "publish" not in run.xcoms

    after = snapshot(url)
    for t in CONTRACT[:-1]:
        assert after[t][:2] == before[t][:2], f"{SCHEMA}.{t} changed"
    old = {_canon(r) for r in before["segmentation_runs"][2]}
    added = [r for r in after["segmentation_runs"][2] if _canon(r) not in old]
    assert old <= {_canon(r) for r in after["segmentation_runs"][2]}
    assert len(added) == 1, added
    (failed,) = added
    assert failed["status"] == "failed" and str(failed["run_date"]) == RUN_DATE
    assert failed["run_id"].startswith(f"{RUN_ID}-failed-")
    assert failed["message"].startswith("extract: ") and "raw.customers" in failed["message"], failed["message"]
    assert "does not exist" in failed["message"]
    assert json.loads(failed["training"])["trigger"].startswith("airflow:")
