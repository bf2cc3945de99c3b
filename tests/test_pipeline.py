"""The nightly pipeline at library level (``segmentation.pipeline``), on the real Online Retail demo
in real DuckDB and real PostgreSQL: dbt builds the features, Great Expectations validates them,
the Concrete GMVAE trains, and the run is published to the warehouse contract.

One module-scoped first night per backend (the demo loaded, ``run_all`` for D = 2011-12-09: about a
minute); every test below runs on top of it, in file order:

- a rerun of D gives identical rows (every column) and no duplicates, in "reuse" mode;
- a failure injected inside the publish transaction (after it has deleted rows) leaves every
  published table exactly as it was and records a failed run under its own run id;
- an error-severity validation failure stops the run before training: no new model, tables
  unchanged, and the error names table and column;
- the second night (D + 1) keeps segment ids stable (the share of customers that moved is printed)
  and every segment's label.

A small synthetic run (no dbt: the features snapshot is put into the store) checks, in seconds,
that the production pointer moves only once the publish has committed, and that a production
pointer or model metadata of the wrong shape makes the night retrain instead of failing.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import math
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from segmentation import pipeline
from segmentation.spec import load_spec
from segmentation.warehouse import connect

D = dt.date(2011, 12, 9)          # the demo data's last day: the nightly run of the 10th covers it
SCHEMA = "segments"
ASSIGNMENTS = "segment_assignments"
CURRENT = "segment_assignments_current"
SEGMENTS = "segments"
PROFILES = "segment_profiles"
RUNS = "segmentation_runs"
CONTRACT = (ASSIGNMENTS, CURRENT, SEGMENTS, PROFILES, RUNS)
MAX_MOVED_SHARE = 0.20            # a sane bound for one night's churn between segments


# ---------------------------------------------------------------------------------------------
# helpers: read the contract tables, checksum them
# ---------------------------------------------------------------------------------------------
def rows(url: str, table: str, where: str = "", params: list[Any] | None = None) -> list[dict[str, Any]]:
    with connect(url) as wh:
        if not wh.table_exists(SCHEMA, table):
            return []
        return wh.query(f"SELECT * FROM {wh.qualified(SCHEMA, table)} {where}", params or []).to_pylist()


def _canon(row: dict[str, Any]) -> str:
    # floats through repr (json), dates and timestamps through str: exact, order-independent
    return json.dumps(row, sort_keys=True, default=str)


def checksum(table_rows: list[dict[str, Any]]) -> tuple[int, str]:
    lines = sorted(_canon(r) for r in table_rows)
    return len(lines), hashlib.sha256("\n".join(lines).encode()).hexdigest()


def snapshot(url: str) -> dict[str, list[dict[str, Any]]]:
    return {t: rows(url, t) for t in CONTRACT}


def checksums(snap: dict[str, list[dict[str, Any]]]) -> dict[str, tuple[int, str]]:
    return {t: checksum(r) for t, r in snap.items()}


def assignments_of(url: str, day: dt.date) -> list[dict[str, Any]]:
    return sorted(rows(url, ASSIGNMENTS, "WHERE run_date = ?", [day]), key=lambda r: r["customer_id"])


def feature_customers(url: str) -> list[str]:
    rel = load_spec().features_relation
    with connect(url) as wh:
        got = wh.query(f"SELECT customer_id FROM {wh.qualified(rel.schema, rel.table)}")
    return sorted(str(c) for c in got.column("customer_id").to_pylist())


def models(artifacts: Path) -> list[str]:
    d = artifacts / "models"
    return sorted(p.name for p in d.iterdir() if (p / "metadata.json").is_file()) if d.is_dir() else []


def production(artifacts: Path) -> str | None:
    p = artifacts / "production.json"
    return p.read_text() if p.exists() else None


def duplicates(url: str) -> list[dict[str, Any]]:
    with connect(url) as wh:
        return wh.query(
            f"SELECT run_date, customer_id, count(*) AS n FROM {wh.qualified(SCHEMA, ASSIGNMENTS)} "
            "GROUP BY run_date, customer_id HAVING count(*) > 1"
        ).to_pylist()


def new_runs(before: list[dict[str, Any]], after: list[dict[str, Any]]) -> list[dict[str, Any]]:
    seen = {_canon(r) for r in before}
    return [r for r in after if _canon(r) not in seen]


def assert_unchanged_except_one_failed_run(before: dict, after: dict, run_date: dt.date, step: str) -> dict[str, Any]:
    """Every contract table identical; segmentation_runs holds exactly one new row: a failed run of
    ``run_date`` under its own run id, every earlier record unchanged. Returns that row."""
    for t in (ASSIGNMENTS, CURRENT, SEGMENTS, PROFILES):
        assert checksum(after[t]) == checksum(before[t]), f"{SCHEMA}.{t} changed"
    old = {_canon(r) for r in before[RUNS]}
    assert old <= {_canon(r) for r in after[RUNS]}, "an earlier run record was changed or removed"
    added = new_runs(before[RUNS], after[RUNS])
    assert len(added) == 1, added
    failed = added[0]
    assert failed["status"] == "failed"
    assert failed["run_date"] == run_date
    assert failed["run_id"].startswith(f"online_retail-{run_date.isoformat()}-failed-")
    assert failed["run_id"] not in {r["run_id"] for r in before[RUNS]}
    assert failed["message"].startswith(f"{step}: "), failed["message"]
    assert json.loads(failed["training"])["failed_step"] == step
    return failed


# ---------------------------------------------------------------------------------------------
# failed attempts on a warehouse without CRM tables (cheap: extract fails at once)
# ---------------------------------------------------------------------------------------------
def test_every_failed_attempt_keeps_its_own_record(warehouse_url: str, tmp_path: Path) -> None:
    """Failures retried within the same second (extract fails in ~0.1 s) each get a record."""
    for _ in range(3):
        with pytest.raises(pipeline.PipelineError, match="source table raw.transactions .* does not exist"):
            pipeline.run_all(warehouse_url, D, artifacts=str(tmp_path / "artifacts"))
    records = rows(warehouse_url, RUNS)
    ids = sorted(r["run_id"] for r in records)
    assert len(ids) == len(set(ids)) == 3, ids
    assert all(i.startswith(f"online_retail-{D.isoformat()}-failed-") for i in ids)
    assert all(r["status"] == "failed" and r["message"].startswith("extract: ") for r in records)
    assert rows(warehouse_url, ASSIGNMENTS) == [] and rows(warehouse_url, CURRENT) == []


# ---------------------------------------------------------------------------------------------
# the first night, once per backend
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Night:
    backend: str
    url: str
    artifacts: Path
    result: dict[str, Any]
    seconds: float
    snapshot: dict[str, list[dict[str, Any]]]
    customers: list[str]

    def run(self, day: dt.date, **options: Any) -> dict[str, Any]:
        return pipeline.run_all(self.url, day, artifacts=str(self.artifacts), **options)


@pytest.fixture(scope="module")
def _module_postgres(_postgres_admin: Any) -> Iterator[str]:
    """One fresh database for the whole module (conftest's ``postgres_url`` is per test)."""
    name = f"seg_test_{uuid.uuid4().hex[:12]}"
    _postgres_admin.execute(f'CREATE DATABASE "{name}"')
    admin = os.environ.get("SEGMENT_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
    try:
        yield urlunsplit(urlsplit(admin)._replace(path=f"/{name}"))
    finally:
        _postgres_admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module", params=["duckdb", pytest.param("postgres", marks=pytest.mark.postgres)])
def night(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Night:
    from segmentation.demo import init_demo_warehouse

    os.environ.setdefault("DBT_SEND_ANONYMOUS_USAGE_STATS", "False")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    root = tmp_path_factory.mktemp(f"pipeline-{request.param}")
    if request.param == "duckdb":
        url = f"duckdb:///{root}/warehouse.duckdb"
    else:
        url = request.getfixturevalue("_module_postgres")
    init_demo_warehouse(url)
    artifacts = root / "artifacts"
    started = time.perf_counter()
    result = pipeline.run_all(url, D, artifacts=str(artifacts))
    seconds = time.perf_counter() - started
    print(f"\n[{request.param}] first night {D}: {seconds:.0f} s, {result['n_customers']} customers, "
          f"mode {result['training']['mode']}")
    return Night(request.param, url, artifacts, result, seconds, snapshot(url), feature_customers(url))


# ---------------------------------------------------------------------------------------------
# tests
# ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_first_night_publishes_one_row_per_customer(night: Night) -> None:
    res = night.result
    assert res["training"]["mode"] == "retrain"
    assert res["run_id"] == f"online_retail-{D.isoformat()}"
    current = night.snapshot[CURRENT]
    assert sorted(r["customer_id"] for r in current) == night.customers
    assert res["n_customers"] == len(night.customers) > 4000
    assert {r["run_date"] for r in current} == {D}
    segments = {r["segment_id"]: r for r in night.snapshot[SEGMENTS]}
    assert {r["segment_id"] for r in current} <= set(segments)
    assert all(segments[s]["label"].strip() and segments[s]["status"] == "active" for s in {r["segment_id"] for r in current})
    assert all(0.0 <= r["segment_probability"] <= 1.0 for r in current)
    assert all(r["runner_up_segment_id"] != r["segment_id"] for r in current)
    profiles = [p for p in night.snapshot[PROFILES] if p["run_date"] == D]
    assert sum(p["size"] for p in profiles) == len(night.customers)
    (record,) = [r for r in night.snapshot[RUNS] if r["run_id"] == res["run_id"]]
    assert record["status"] == "success" and record["n_customers"] == len(night.customers)
    assert (night.artifacts / "runs" / D.isoformat() / "features.parquet").is_file()
    assert models(night.artifacts) == [res["training"]["model_version"]]


@pytest.mark.slow
def test_rerun_of_the_same_date_is_identical(night: Night) -> None:
    before = snapshot(night.url)
    models_before = models(night.artifacts)
    result = night.run(D)

    assert result["training"]["mode"] == "reuse"
    assert result["training"]["scoring_version"] == night.result["training"]["scoring_version"]
    assert result["run_id"] == night.result["run_id"]
    # every column of D's rows, ids included (a rerun must not issue new segment ids)
    assert assignments_of(night.url, D) == sorted(
        (r for r in night.snapshot[ASSIGNMENTS] if r["run_date"] == D), key=lambda r: r["customer_id"])
    assert duplicates(night.url) == []
    after = snapshot(night.url)
    for t in (ASSIGNMENTS, CURRENT, SEGMENTS, PROFILES):
        assert checksum(after[t]) == checksum(before[t]), f"{SCHEMA}.{t} changed on a rerun"
    # D's run record is replaced, not duplicated: same id, same outcome
    records = [r for r in after[RUNS] if r["run_date"] == D and r["status"] == "success"]
    assert [r["run_id"] for r in records] == [night.result["run_id"]]
    assert records[0]["model_version"] == night.result["training"]["scoring_version"]
    assert models(night.artifacts) == models_before


@pytest.mark.slow
def test_failure_inside_the_publish_transaction_changes_nothing(night: Night, monkeypatch: pytest.MonkeyPatch) -> None:
    from segmentation import publish

    def fail_midway(tx: Any, schema: str, run_date: dt.date, segments: Any) -> None:
        # by now D's rows were deleted and re-inserted; wreck more, then fail: all must roll back
        got = tx.query(f"SELECT count(*) AS n FROM {tx.qualified(schema, ASSIGNMENTS)} WHERE run_date = ?", [run_date])
        assert got.column("n")[0].as_py() == len(night.customers)
        tx.execute(f"DELETE FROM {tx.qualified(schema, ASSIGNMENTS)}")
        tx.execute(f"DELETE FROM {tx.qualified(schema, SEGMENTS)}")
        raise RuntimeError("injected failure inside the publish transaction")

    before = snapshot(night.url)
    models_before, pointer_before = models(night.artifacts), production(night.artifacts)
    monkeypatch.setattr(publish, "_upsert_segments", fail_midway)
    with pytest.raises(RuntimeError, match="injected failure"):
        night.run(D)
    monkeypatch.undo()

    after = snapshot(night.url)
    failed = assert_unchanged_except_one_failed_run(before, after, D, "publish")
    assert "injected failure" in failed["message"]
    # the success of D keeps its own record (and so the current view)
    assert [r for r in after[RUNS] if r["run_id"] == night.result["run_id"]] == \
        [r for r in before[RUNS] if r["run_id"] == night.result["run_id"]]
    assert models(night.artifacts) == models_before
    assert production(night.artifacts) == pointer_before


@pytest.mark.slow
@pytest.mark.parametrize("night", ["duckdb"], indirect=True)  # the suites themselves: test_validation.py, both backends
def test_validation_error_stops_before_training(night: Night) -> None:
    from validation import ValidationFailed

    day = D + dt.timedelta(days=2)  # a night never run: a passing one would train a model
    before = snapshot(night.url)
    models_before, pointer_before = models(night.artifacts), production(night.artifacts)
    with connect(night.url) as wh:  # a broken CRM extract: customers without an id
        wh.execute("INSERT INTO raw.customers (customer_id, country) VALUES (NULL, 'United Kingdom'), (NULL, 'France')")
    try:
        with pytest.raises(ValidationFailed) as info:
            night.run(day)
    finally:
        with connect(night.url) as wh:
            wh.execute("DELETE FROM raw.customers WHERE customer_id IS NULL")
    message = str(info.value)
    assert "raw.customers.customer_id" in message and "null" in message, message
    after = snapshot(night.url)
    failed = assert_unchanged_except_one_failed_run(before, after, day, "extract")
    assert "raw.customers.customer_id" in failed["message"]
    assert models(night.artifacts) == models_before, "a model was trained on data that failed validation"
    assert production(night.artifacts) == pointer_before
    assert not (night.artifacts / "runs" / day.isoformat() / "assignments.parquet").exists()


@pytest.mark.slow
def test_second_night_keeps_segment_ids_stable(night: Night) -> None:
    day = D + dt.timedelta(days=1)
    started = time.perf_counter()
    result = night.run(day)
    seconds = time.perf_counter() - started
    mode = result["training"]["mode"]
    st = result["stability"]
    print(f"\n[{night.backend}] second night {day}: mode {mode} ({result['training']['reason']}), "
          f"{st.get('moved_share', float('nan')):.2%} of customers moved ({st.get('moved_customers')} of "
          f"{st.get('common_customers')}), ARI {st.get('ari_vs_previous', float('nan')):.3f}, {seconds:.0f} s")

    # a nightly refresh of the production model, or (since 75cd90c) keeping it when it still fits;
    # never a retrain from scratch on an ordinary night
    assert mode in ("refresh", "keep"), result["training"]
    assert st["common_customers"] == len(night.customers)
    assert st["moved_share"] <= MAX_MOVED_SHARE
    assert st["new_segment_ids"] == [] and st["retired_segment_ids"] == []
    first_ids = {r["segment_id"] for r in night.snapshot[CURRENT]}
    current = rows(night.url, CURRENT)
    assert {r["run_date"] for r in current} == {day}
    assert sorted(r["customer_id"] for r in current) == feature_customers(night.url)
    assert {r["segment_id"] for r in current} <= first_ids
    # the history keeps D exactly as published; D + 1 is a partition of its own
    assert assignments_of(night.url, D) == sorted(
        (r for r in night.snapshot[ASSIGNMENTS] if r["run_date"] == D), key=lambda r: r["customer_id"])
    assert duplicates(night.url) == []
    segments = {r["segment_id"]: r for r in rows(night.url, SEGMENTS)}
    assert all(segments[s]["last_run_date"] == day and segments[s]["status"] == "active" for s in first_ids)
    profiles = [p for p in rows(night.url, PROFILES) if p["run_date"] == day]
    assert sum(p["size"] for p in profiles) == len(current)
    # the same customers a day later: every segment keeps its label (issue 8)
    first_labels = {r["segment_id"]: r["label"] for r in night.snapshot[SEGMENTS]}
    assert {s: segments[s]["label"] for s in first_ids} == {s: first_labels[s] for s in first_ids}
    assert {s["label_status"] for s in result["segments"]} == {"kept"}, result["segments"]


@pytest.mark.slow
@pytest.mark.parametrize("night", ["duckdb"], indirect=True)
def test_refresh_night_keeps_segment_ids_stable(night: Night, monkeypatch: pytest.MonkeyPatch) -> None:
    """A night that fine-tunes the production model (the case where ids could drift): the clusters
    of the refreshed model are matched onto the published ids."""
    day = D + dt.timedelta(days=3)
    previous = {r["customer_id"]: r["segment_id"] for r in rows(night.url, CURRENT)}
    # policy, not a mock: never keep the production model as it is, so this night refreshes it
    monkeypatch.setattr(pipeline, "KEEP_MARGIN", -math.inf)
    started = time.perf_counter()
    result = night.run(day)
    seconds = time.perf_counter() - started
    training, st = result["training"], result["stability"]
    print(f"\n[{night.backend}] refresh night {day}: mode {training['mode']} ({training['reason']}), promoted "
          f"{training['promoted']} {training.get('gate')}, {st['moved_share']:.2%} of customers moved "
          f"({st['moved_customers']} of {st['common_customers']}), ARI {st['ari_vs_previous']:.3f}, {seconds:.0f} s")

    assert training["mode"] == "refresh", training
    assert training["base_version"] == night.result["training"]["model_version"]
    assert st["common_customers"] == len(previous)
    assert st["moved_share"] <= MAX_MOVED_SHARE
    assert st["new_segment_ids"] == [] and st["retired_segment_ids"] == []
    current = rows(night.url, CURRENT)
    assert {r["run_date"] for r in current} == {day}
    moved = sum(previous[r["customer_id"]] != r["segment_id"] for r in current if r["customer_id"] in previous)
    assert moved == st["moved_customers"]          # the reported share is what the tables show
    assert {r["segment_id"] for r in current} <= set(previous.values())
    assert duplicates(night.url) == []


# ---------------------------------------------------------------------------------------------
# a small synthetic run (no dbt, no demo): the features snapshot is put straight into the store,
# then the real train, score and publish steps run. Seconds, not minutes; also used by
# test_labels.py and test_artifacts.py.
# ---------------------------------------------------------------------------------------------
SYNTHETIC_SPEC = {
    "name": "synthetic",
    "entity_key": "customer_id",
    "features_relation": {"schema": "features", "table": "customer_features"},
    "output_schema": SCHEMA,
    "model": {"n_segments": 3, "latent_dim": 3, "hidden": [32], "epochs": 15, "kl_anneal_epochs": 3,
              "batch_size": 128, "seed": 0, "device": "cpu"},
    "features": [
        {"name": "spend", "type": "money", "high_label": "big spenders", "low_label": "small spenders"},
        {"name": "visits", "type": "count", "high_label": "frequent", "low_label": "rare visitors"},
        {"name": "satisfaction", "type": "continuous", "high_label": "happy", "low_label": "unhappy"},
        {"name": "promo_opt_in", "type": "binary", "high_label": "promo fans", "low_label": "promo-averse"},
        {"name": "region", "type": "categorical"},
    ],
}
S1, S2, S3 = dt.date(2024, 3, 1), dt.date(2024, 3, 2), dt.date(2024, 3, 3)


def synthetic_customers(n: int = 900, k: int = 3, seed: int = 3) -> Any:
    from segmentation.synthetic import planted_customers

    df, _ = planted_customers(n=n, k=k, seed=seed, missing=0.05)
    return df


def synthetic_run(root: Path, day: dt.date, df: Any, *, artifacts: str | None = None, **options: Any) -> dict[str, Any]:
    """``start_run`` for ``day`` with the synthetic spec, and ``df`` as the run's features snapshot."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    spec = root / "synthetic.json"
    if not spec.exists():
        spec.write_text(json.dumps(SYNTHETIC_SPEC))
    run = pipeline.start_run(day, spec_path=str(spec), artifacts=artifacts or str(root / "artifacts"), **options)
    store = pipeline._store(run)
    path = store.run_dir(run["run_date"]) / "features.parquet"
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), path)
    store.put_run_file(run["run_date"], path)
    return run


def synthetic_night(url: str, run: dict[str, Any]) -> dict[str, Any]:
    """train, score and publish (no drift seen): the steps the DAG runs after validation."""
    trained = pipeline.train(url, run, {"status": "passed", "drift_detected": False})
    scored = pipeline.score(url, run, trained)
    published = pipeline.publish(url, run, trained, scored, {"status": "passed", "drift_detected": False})
    return {"training": trained, "stability": scored["stability"], **published}


def test_production_moves_only_after_the_publish_commits(warehouse_url: str, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 5: a model that passed the gate but whose run failed to publish never becomes the
    production model: the pointer and every published table stay as they were, the next night scores
    with the old production model, and a rerun of the failed date publishes and promotes it then."""
    from segmentation import publish as publish_module

    df = synthetic_customers()
    first = synthetic_night(warehouse_url, synthetic_run(tmp_path, S1, df))
    store = pipeline._store(synthetic_run(tmp_path, S1, df))
    v1 = first["training"]["model_version"]
    assert first["training"]["mode"] == "retrain" and first["training"]["promoted"]
    assert store.production() == v1          # moved by publish (nothing else promotes)
    pointer_before = production(tmp_path / "artifacts")
    tables_before = checksums(snapshot(warehouse_url))

    # night 2: a refresh that passes the gate, then the publish transaction fails
    monkeypatch.setattr(pipeline, "KEEP_MARGIN", -math.inf)
    run2 = synthetic_run(tmp_path, S2, df)
    trained = pipeline.train(warehouse_url, run2, {"drift_detected": False})
    assert trained["mode"] == "refresh" and trained["promoted"] and trained["gate"] == [], trained
    v2 = trained["model_version"]
    assert v2 != v1 and store.production() == v1, "train moved the production pointer"
    scored = pipeline.score(warehouse_url, run2, trained)

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("injected failure inside the publish transaction")

    monkeypatch.setattr(publish_module, "_write_run_row", broken)  # the last write of the transaction
    with pytest.raises(RuntimeError, match="injected failure"):
        pipeline.publish(warehouse_url, run2, trained, scored)
    monkeypatch.undo()
    assert production(tmp_path / "artifacts") == pointer_before
    assert checksums(snapshot(warehouse_url)) == tables_before

    # night 3 scores with the old production model (kept or refreshed from it)
    third = synthetic_night(warehouse_url, synthetic_run(tmp_path, S3, df))
    assert third["training"]["base_version"] == v1, third["training"]
    assert store.production_as_of(S3) == v1

    # the failed date, rerun: the model it trained is reused, published, and only now promoted for
    # its date; night 3, published since with the old model, keeps it (production is not demoted)
    rerun = synthetic_night(warehouse_url, synthetic_run(tmp_path, S2, df))
    assert rerun["training"]["mode"] == "reuse" and rerun["training"]["model_version"] == v2
    history = {h["run_date"]: h["version"] for h in store.production_history()}
    assert history[S2.isoformat()] == v2 and history[S3.isoformat()] == third["training"]["scoring_version"]
    assert store.production() == third["training"]["scoring_version"]
    record = rows(warehouse_url, RUNS, "WHERE run_id = ?", [f"synthetic-{S2.isoformat()}"])[0]
    assert json.loads(record["training"])["promoted"] is True
    pointer = production(tmp_path / "artifacts")
    synthetic_night(warehouse_url, synthetic_run(tmp_path, S2, df))  # a second rerun leaves the pointer as it is
    assert production(tmp_path / "artifacts") == pointer


@pytest.mark.parametrize("payload", [b"[]", b'{"version": "v1"}', b'{"version": "v1", "history": [{"version": "v1"}]}'])
def test_unreadable_production_pointer_falls_back_to_a_retrain(tmp_path: Path, payload: bytes) -> None:
    """Issue 5: a production.json of the wrong shape is named in the log and the run record; the
    night retrains from scratch (as for an unreadable model), and publishing writes a new pointer,
    keeping the broken one aside."""
    url = f"duckdb:///{tmp_path}/warehouse.duckdb"
    df = synthetic_customers()
    synthetic_night(url, synthetic_run(tmp_path, S1, df))
    artifacts = tmp_path / "artifacts"
    (artifacts / "production.json").write_bytes(payload)
    second = synthetic_night(url, synthetic_run(tmp_path, S2, df))
    training = second["training"]
    assert training["mode"] == "retrain" and "production pointer unreadable" in training["reason"], training
    assert str(artifacts / "production.json") in training["reason"]
    store = pipeline._store(synthetic_run(tmp_path, S2, df))
    assert store.production() == training["model_version"]
    (aside,) = artifacts.glob("production.json.corrupt-*")
    assert aside.read_bytes() == payload


def test_model_metadata_of_the_wrong_shape_falls_back_to_a_retrain(tmp_path: Path) -> None:
    """Issue 5: the production model's metadata.json is valid JSON but not model metadata: the next
    night says which file and what is wrong, and retrains instead of crashing."""
    url = f"duckdb:///{tmp_path}/warehouse.duckdb"
    df = synthetic_customers()
    first = synthetic_night(url, synthetic_run(tmp_path, S1, df))
    meta = tmp_path / "artifacts" / "models" / first["training"]["model_version"] / "metadata.json"
    good = json.loads(meta.read_text())
    meta.write_text(json.dumps({k: v for k, v in good.items() if k != "config"}))
    second = synthetic_night(url, synthetic_run(tmp_path, S2, df))
    training = second["training"]
    assert training["mode"] == "retrain", training
    assert f"{meta} is not model metadata: it has no 'config'" in training["reason"], training["reason"]


def test_retrain_starts_from_last_nights_segments(tmp_path: Path) -> None:
    """Issue 5: a retrain (here a manual full retrain of unchanged data) starts its mixture from the
    published segments (init 'anchored'), so customers keep their segment ids."""
    url = f"duckdb:///{tmp_path / 'wh.duckdb'}"
    df = synthetic_customers()
    first = synthetic_night(url, synthetic_run(tmp_path, S1, df))
    assert first["training"]["mode"] == "retrain"
    second = synthetic_night(url, synthetic_run(tmp_path, S2, df, full_retrain=True))
    training = second["training"]
    assert training["mode"] == "retrain" and training["reason"] == "full retrain requested", training
    store = pipeline._store(synthetic_run(tmp_path, S2, df))
    meta = store.model_metadata(training["model_version"])
    assert meta["metrics"]["init"]["init"] == "anchored"
    assert meta["metrics"]["init"]["anchored_rows"] > 0.85 * len(df)  # the 10% validation rows aside
    assert meta["run"]["init"] == "anchored"
    assert second["stability"]["moved_share"] <= 0.05, second["stability"]


def test_unchanged_data_keeps_customers_in_their_segment_ids(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 5: two consecutive nights on unchanged data keep at least 99% of customers in the same
    segment id, on a night that keeps the production model and on one forced to fine-tune it."""
    url = f"duckdb:///{tmp_path / 'wh.duckdb'}"
    df = synthetic_customers()
    synthetic_night(url, synthetic_run(tmp_path, S1, df))
    kept = synthetic_night(url, synthetic_run(tmp_path, S2, df))
    # policy, not a mock: never keep the production model as it is, so the third night refreshes it
    monkeypatch.setattr(pipeline, "KEEP_MARGIN", -math.inf)
    refreshed = synthetic_night(url, synthetic_run(tmp_path, S3, df))
    assert refreshed["training"]["mode"] == "refresh", refreshed["training"]
    for night in (kept, refreshed):
        st = night["stability"]
        assert st["common_customers"] == len(df)
        assert st["moved_share"] <= 0.01, (night["training"]["mode"], st)
        assert st["new_segment_ids"] == [] and st["retired_segment_ids"] == [], st


@pytest.mark.parametrize("features", ["mixed", "categorical_only"])
def test_a_night_of_new_customers_keeps_ids_by_prototype(tmp_path: Path, features: str) -> None:
    """Issue 5: when tonight's clusters share no customers with last night's segments (here every
    customer id is new, the behaviour the same), the ids carry over by the similarity of cluster
    prototypes to the published profiles instead of all being issued anew. A spec of categorical
    features only matches on the shares of their levels (the break-it review found such a spec
    reissued every id)."""
    url = f"duckdb:///{tmp_path / 'wh.duckdb'}"
    df = synthetic_customers()
    if features == "categorical_only":
        spec = json.loads(json.dumps(SYNTHETIC_SPEC))
        spec["features"] = [f for f in spec["features"] if f["type"] == "categorical"]
        (tmp_path / "synthetic.json").write_text(json.dumps(spec))
        df = df[["customer_id", "region"]]
    first = synthetic_night(url, synthetic_run(tmp_path, S1, df))
    first_ids = {s["segment_id"] for s in first["segments"]}
    renamed = df.assign(customer_id="new-" + df["customer_id"].astype(str))
    second = synthetic_night(url, synthetic_run(tmp_path, S2, renamed))
    st = second["stability"]
    assert st["common_customers"] == 0
    by_prototype = st["matched_by_prototype"]
    tonight = {s["segment_id"] for s in second["segments"]}
    assert {v["segment_id"] for v in by_prototype.values()} == tonight == first_ids, (by_prototype, first_ids)
    assert st["new_segment_ids"] == [], st
    assert all(v["distance"] <= 0.5 for v in by_prototype.values())


@pytest.mark.parametrize("poison", ["weights", "one_segment"])
def test_a_broken_retrain_is_never_promoted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, poison: str) -> None:
    """Issue 5: a retrain whose model has NaN weights, or puts every customer in one segment, fails
    the promotion gate: production keeps scoring, the run is published as degraded with the reason,
    and the production pointer stays where it was."""
    import torch

    from segmentation import ConcreteGMVAE

    url = f"duckdb:///{tmp_path / 'wh.duckdb'}"
    df = synthetic_customers()
    first = synthetic_night(url, synthetic_run(tmp_path, S1, df))
    v1 = first["training"]["model_version"]
    before = {r["customer_id"]: r["segment_id"] for r in rows(url, CURRENT)}
    real_fit = ConcreteGMVAE.fit

    def broken_fit(self, *args: Any, **kwargs: Any) -> Any:
        real_fit(self, *args, **kwargs)
        with torch.no_grad():
            if poison == "weights":
                self.network_.decoder_out.weight[0, 0] = float("nan")
            else:  # q(y|x) sends every row to segment 0
                self.network_.y_logits.weight.zero_()
                self.network_.y_logits.bias.copy_(torch.tensor([50.0] + [0.0] * (self.network_.K - 1)))
        return self

    monkeypatch.setattr(ConcreteGMVAE, "fit", broken_fit)
    second = synthetic_night(url, synthetic_run(tmp_path, S2, df, full_retrain=True))
    monkeypatch.undo()
    training = second["training"]
    assert training["mode"] == "retrain" and training["promoted"] is False, training
    assert training["scoring_version"] == v1, training
    reasons = "; ".join(training["gate"])
    assert ("weights are not finite" in reasons) if poison == "weights" else ("one segment holds 100%" in reasons), reasons
    assert pipeline._store(synthetic_run(tmp_path, S2, df)).production() == v1
    (record,) = rows(url, RUNS, "WHERE run_id = ?", [f"synthetic-{S2.isoformat()}"])
    # published (status success, the marketers' tables move on), but marked degraded with the reason
    assert record["status"] == "success" and record["model_version"] == v1, record
    assert record["message"].startswith("degraded: new model") and training["gate"][0] in record["message"], record["message"]
    after = {r["customer_id"]: r["segment_id"] for r in rows(url, CURRENT)}
    assert after == before  # the production model scored the same customers the same way


def _sharded(url: str, run: dict[str, Any], trained: dict[str, Any], rows_per_shard: int) -> dict[str, Any]:
    from segmentation.scoring import finalize_scores, plan_run_shards, score_shard

    plan = plan_run_shards(run, rows_per_shard=rows_per_shard)
    assert len(plan) > 1
    return finalize_scores(url, run, trained, [score_shard(run, trained, s) for s in plan])


def _assignments(scored: dict[str, Any]) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    return sorted(pq.read_table(scored["assignments"]).to_pylist(), key=lambda r: r["customer_id"])


def test_a_kept_model_whose_segment_emptied_publishes_without_it(tmp_path: Path) -> None:
    """Found by the break-it review: a night that keeps the production model while one of its
    segments has no customer left named that cluster as some customers' runner-up, under an id
    never published, and output validation failed the night. The runner-up is now taken among the
    segments published tonight, on both scoring paths; the emptied segment is retired."""
    url = f"duckdb:///{tmp_path / 'wh.duckdb'}"
    df = synthetic_customers()
    synthetic_night(url, synthetic_run(tmp_path, S1, df))
    current = {r["customer_id"]: r["segment_id"] for r in rows(url, CURRENT)}
    gone = max(set(current.values()), key=lambda s: sum(v == s for v in current.values()))
    tonight = df[~df["customer_id"].astype(str).map(current).eq(gone)].reset_index(drop=True)
    run = synthetic_run(tmp_path, S2, tonight)
    trained = pipeline.train(url, run, {"status": "passed", "drift_detected": False})
    assert trained["mode"] == "keep", trained
    whole = pipeline.score(url, run, trained)
    expected = _assignments(whole)
    assert _assignments(_sharded(url, run, trained, rows_per_shard=200)) == expected
    published_ids = {r["segment_id"] for r in expected}
    assert gone not in published_ids
    assert {r["runner_up_segment_id"] for r in expected} <= published_ids
    assert all(r["runner_up_segment_id"] != r["segment_id"] for r in expected)
    result = pipeline.publish(url, run, trained, whole, {"status": "passed", "drift_detected": False})
    assert whole["stability"]["retired_segment_ids"] == [gone], whole["stability"]
    assert {s["segment_id"] for s in result["segments"]} == published_ids
    segments = {r["segment_id"]: r["status"] for r in rows(url, SEGMENTS)}
    assert segments[gone] == "retired"


def test_float_customer_keys_read_the_same_on_both_scoring_paths(tmp_path: Path) -> None:
    """Found by the break-it review: a DOUBLE customer key was '10000.0' from whole-table scoring and
    '10000' from sharded scoring, so a sharded night could not publish (and would match nobody).
    Every path writes Arrow's text of the key."""
    url = f"duckdb:///{tmp_path / 'wh.duckdb'}"
    df = synthetic_customers(n=600)
    df["customer_id"] = (10000 + df.index).astype("float64")
    run = synthetic_run(tmp_path, S1, df)
    trained = pipeline.train(url, run, {"status": "passed", "drift_detected": False})
    whole = pipeline.score(url, run, trained)
    expected = _assignments(whole)
    assert expected[0]["customer_id"] == "10000"
    sharded = _sharded(url, run, trained, rows_per_shard=250)
    assert _assignments(sharded) == expected
    published = pipeline.publish(url, run, trained, sharded, {"status": "passed", "drift_detected": False})
    assert published["n_customers"] == len(df)


def test_a_diverged_retrain_keeps_production(tmp_path: Path) -> None:
    """Found by the break-it review: a retrain whose loss blew up raised and failed the whole night,
    although a good production model existed. It is now a degraded night scored with production."""
    url = f"duckdb:///{tmp_path / 'wh.duckdb'}"
    df = synthetic_customers()
    first = synthetic_night(url, synthetic_run(tmp_path, S1, df))
    v1 = first["training"]["model_version"]
    before = {r["customer_id"]: r["segment_id"] for r in rows(url, CURRENT)}
    spec = json.loads((tmp_path / "synthetic.json").read_text())
    spec["model"]["learning_rate"] = 1e3      # a real divergence, not a mock
    (tmp_path / "synthetic.json").write_text(json.dumps(spec))
    second = synthetic_night(url, synthetic_run(tmp_path, S2, df, full_retrain=True))
    training = second["training"]
    assert training["promoted"] is False and training["scoring_version"] == v1, training
    assert training["gate"] and training["gate"][0].startswith("training diverged"), training["gate"]
    assert second["degraded"] is True
    (record,) = rows(url, RUNS, "WHERE run_id = ?", [f"synthetic-{S2.isoformat()}"])
    assert record["status"] == "success" and record["message"].startswith("degraded: no new model (training diverged")
    assert pipeline._store(synthetic_run(tmp_path, S2, df)).production() == v1
    assert {r["customer_id"]: r["segment_id"] for r in rows(url, CURRENT)} == before


def test_no_fallback_on_a_model_that_cannot_score_tonights_spec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by the break-it review: when the spec dropped a feature and the retrain failed the gate,
    the run fell back on the old model, which then crashed at scoring for the missing column. The
    fallback must fit tonight's spec; otherwise the error says there is none."""
    url = f"duckdb:///{tmp_path / 'wh.duckdb'}"
    df = synthetic_customers()
    synthetic_night(url, synthetic_run(tmp_path, S1, df))
    spec = json.loads((tmp_path / "synthetic.json").read_text())
    spec["features"] = [f for f in spec["features"] if f["name"] != "visits"]
    (tmp_path / "synthetic.json").write_text(json.dumps(spec))
    monkeypatch.setattr(pipeline, "MAX_DOMINANT_SHARE", 0.0)  # policy: any segment is too big, so the gate fails
    run = synthetic_run(tmp_path, S2, df.drop(columns=["visits"]))
    with pytest.raises(pipeline.PipelineError, match="no usable production model to fall back on"):
        pipeline.train(url, run, {"status": "passed", "drift_detected": False})


def test_a_rerun_that_keeps_its_ids_reports_the_published_movers(tmp_path: Path) -> None:
    """Found by the break-it review: a rerun keeping the ids it was first published with reported
    stability computed for the discarded fresh match (0% moved while the tables showed 68%)."""
    url = f"duckdb:///{tmp_path / 'wh.duckdb'}"
    df = synthetic_customers()
    synthetic_night(url, synthetic_run(tmp_path, S1, df))
    synthetic_night(url, synthetic_run(tmp_path, S2, df, full_retrain=True))
    spec = json.loads((tmp_path / "synthetic.json").read_text())
    spec["model"]["seed"] = 7                 # a backfill of S1 with another model
    (tmp_path / "synthetic.json").write_text(json.dumps(spec))
    synthetic_night(url, synthetic_run(tmp_path, S1, df, full_retrain=True))
    spec["model"]["seed"] = 0
    (tmp_path / "synthetic.json").write_text(json.dumps(spec))
    again = synthetic_night(url, synthetic_run(tmp_path, S2, df))
    st = again["stability"]
    s1 = {r["customer_id"]: r["segment_id"] for r in assignments_of(url, S1)}
    s2 = {r["customer_id"]: r["segment_id"] for r in assignments_of(url, S2)}
    moved = sum(s1[c] != s2[c] for c in s2 if c in s1)
    assert st["moved_customers"] == moved, (st, moved)
    assert st["moved_share"] == pytest.approx(moved / len(s2))


def test_a_model_that_learnt_nothing_is_never_promoted_even_on_a_first_night(tmp_path: Path) -> None:
    """Found by the break-it review: with learning_rate 5 the first night's fit ended at an ELBO of
    about -6e23 with a finite loss and plausible segment sizes, and was promoted: there was no
    production model to compare with. The gate now also holds the ELBO against a model of
    independent features; with nothing to fall back on the night fails, saying why, and nothing is
    published."""
    url = f"duckdb:///{tmp_path / 'wh.duckdb'}"
    spec = json.loads(json.dumps(SYNTHETIC_SPEC))
    spec["model"].update(learning_rate=5.0, epochs=4)
    (tmp_path / "synthetic.json").write_text(json.dumps(spec))
    df = synthetic_customers()
    run = synthetic_run(tmp_path, S1, df)
    with pytest.raises(pipeline.PipelineError) as info:
        pipeline.train(url, run, {"status": "passed", "drift_detected": False})
    message = str(info.value)
    assert "far below that of a model of independent features" in message or "training diverged" in message, message
    assert "no usable production model" in message
    assert pipeline._store(run).production() is None
    assert rows(url, CURRENT) == []


def test_the_independent_baseline_is_below_a_healthy_model_and_above_a_broken_one(tmp_path: Path) -> None:
    import torch

    from segmentation.model.evaluation import independent_log_likelihood

    url = f"duckdb:///{tmp_path / 'wh.duckdb'}"
    df = synthetic_customers()
    first = synthetic_night(url, synthetic_run(tmp_path, S1, df))
    model = pipeline._store(synthetic_run(tmp_path, S1, df)).load_model(first["training"]["model_version"])
    baseline = independent_log_likelihood(model, df)
    assert math.isfinite(baseline) and model.score(df) > baseline     # planted segments: correlated features
    assert pipeline._gate(model, df, model.score(df)) == []
    with torch.no_grad():                                             # a decoder that forgot everything
        model.network_.decoder_out.weight.mul_(40.0)
    broken = model.score(df)
    assert broken < baseline
    assert any("model of independent features" in p for p in pipeline._gate(model, df, broken)), broken


def test_a_night_where_one_segment_holds_everyone_publishes_without_runner_ups(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by the second break-it review: when tonight's customers all fall in one segment of the
    kept model there is no other published segment to be their runner-up; the runner-up is null on
    both scoring paths (the contract allows it) instead of an id nobody published."""
    url = f"duckdb:///{tmp_path / 'wh.duckdb'}"
    df = synthetic_customers()
    synthetic_night(url, synthetic_run(tmp_path, S1, df))
    current = {r["customer_id"]: r["segment_id"] for r in rows(url, CURRENT)}
    only = min(current.values())
    tonight = df[df["customer_id"].astype(str).map(current).eq(only)].reset_index(drop=True)
    monkeypatch.setattr(pipeline, "KEEP_MARGIN", math.inf)   # policy: keep the production model
    run = synthetic_run(tmp_path, S2, tonight)
    trained = pipeline.train(url, run, {"status": "passed", "drift_detected": False})
    assert trained["mode"] == "keep"
    whole = pipeline.score(url, run, trained)
    expected = _assignments(whole)
    assert {r["segment_id"] for r in expected} == {only}
    assert {r["runner_up_segment_id"] for r in expected} == {None}
    assert _assignments(_sharded(url, run, trained, rows_per_shard=100)) == expected
    pipeline.publish(url, run, trained, whole, {"status": "passed", "drift_detected": False})
    assert {r["runner_up_segment_id"] for r in rows(url, CURRENT)} == {None}


def test_the_gate_floor_allows_a_feature_constant_tonight() -> None:
    """Found by the second break-it review: a continuous feature constant on tonight's rows gave the
    independent baseline a density no decoder can reach (its variance is bounded), and a healthy
    model was refused."""
    import numpy as np
    import pandas as pd

    from segmentation import ConcreteGMVAE

    rng = np.random.default_rng(0)
    n = 600
    df = pd.DataFrame({"a": rng.normal(size=n), "b": rng.normal(size=n) + np.repeat([0.0, 3.0], n // 2),
                       "c": np.ones(n)})
    model = ConcreteGMVAE(n_segments=2, epochs=15, latent_dim=2, hidden=(16,), seed=0, device="cpu", progress=None)
    model.fit(df, feature_types={"a": "continuous", "b": "continuous", "c": "continuous"})
    problems = pipeline._gate(model, df, model.score(df))
    assert not any("independent features" in p for p in problems), problems


def test_the_gate_judges_on_the_rows_the_fit_held_out(tmp_path: Path) -> None:
    """Issue 5 asks for the held-out ELBO: the gate scores the new model (and production) on the rows
    the fit held out for early stopping, which the new model never trained on."""
    url = f"duckdb:///{tmp_path / 'wh.duckdb'}"
    df = synthetic_customers()
    first = synthetic_night(url, synthetic_run(tmp_path, S1, df))
    second = synthetic_night(url, synthetic_run(tmp_path, S2, df, full_retrain=True))
    store = pipeline._store(synthetic_run(tmp_path, S2, df))
    run_meta = store.model_metadata(second["training"]["model_version"])["run"]
    assert run_meta["heldout_rows"] == round(0.1 * len(df))
    assert math.isfinite(run_meta["heldout_score"]) and run_meta["heldout_score"] != run_meta["train_score"]
    assert math.isfinite(run_meta["production_heldout_score"])  # production judged on the same rows
    first_meta = store.model_metadata(first["training"]["model_version"])["run"]
    assert first_meta["production_heldout_score"] is None        # nothing to compare with on a first night


def test_a_spec_that_reshapes_the_network_is_a_retrain_not_a_refresh():
    """A nightly refresh continues the production network, whose shape it cannot change: a spec whose
    latent_dim, hidden or prior_covariance differ from production's (set to another value, or left
    out where production has another than the default) must retrain from scratch (it used to be
    ignored until the weekly retrain)."""
    from segmentation import ConcreteGMVAE
    from segmentation.pipeline import _shape_changes

    prod = ConcreteGMVAE(latent_dim=10, hidden=(256, 128))
    assert _shape_changes(prod, {"latent_dim": 10, "hidden": (256, 128), "epochs": 5}) == ""
    assert _shape_changes(prod, {}) == ""  # the spec says nothing and production has the defaults
    # a key dropped from the spec means the default, which is what a retrain would build (found by the
    # break-it review: refreshes kept a full prior that the weekly retrain then silently dropped)
    assert _shape_changes(ConcreteGMVAE(prior_covariance="full"), {}) == "prior_covariance 'full' -> 'diagonal'"
    assert _shape_changes(prod, {"prior_covariance": "full", "hidden": (64, 32)}) == \
        "hidden (256, 128) -> (64, 32), prior_covariance 'diagonal' -> 'full'"
    assert _shape_changes(prod, {"latent_dim": 4}) == "latent_dim 10 -> 4"


def test_a_backfill_before_the_first_night_continues_its_ids_and_labels(tmp_path: Path, caplog) -> None:
    """Found by the README walk-through: after `make demo` (one night, S2 here) a backfill of an
    earlier date (S1) had no earlier run to match, issued ids of its own (retired at once), and a
    rerun of S2, now preceded by it, reported 100% of customers moved and rewrote six labels to tell
    them from the backfill's. A backfill earlier than every published run now takes its ids and
    labels from the first night after it, so the history reads as one segmentation."""
    url = f"duckdb:///{tmp_path / 'wh.duckdb'}"
    df = synthetic_customers()
    synthetic_night(url, synthetic_run(tmp_path, S2, df))
    segments_before = {r["segment_id"]: r for r in rows(url, SEGMENTS)}
    current_before = {r["customer_id"]: r["segment_id"] for r in rows(url, CURRENT)}

    spec = json.loads((tmp_path / "synthetic.json").read_text())
    spec["model"]["seed"] = 7                 # the backfill trains a model of its own
    (tmp_path / "synthetic.json").write_text(json.dumps(spec))
    with caplog.at_level("INFO", logger="segmentation.pipeline"):
        backfill = synthetic_night(url, synthetic_run(tmp_path, S1, df))
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("publish:")]
    assert any("(a backfill); the production model stays" in m for m in said), said  # not "is now production"
    assert backfill["stability"]["reference_run_date"] == S2.isoformat()
    assert backfill["stability"]["moved_share"] < 0.1, backfill["stability"]   # same customers, same groups
    s1 = {r["customer_id"]: r["segment_id"] for r in assignments_of(url, S1)}
    assert set(s1.values()) <= set(segments_before), "the backfill issued ids the history never had"
    assert {r["customer_id"]: r["segment_id"] for r in rows(url, CURRENT)} == current_before  # current untouched

    spec["model"]["seed"] = 0
    (tmp_path / "synthetic.json").write_text(json.dumps(spec))
    again = synthetic_night(url, synthetic_run(tmp_path, S2, df))   # a rerun of the later night
    st = again["stability"]
    assert st["reference_run_date"] == S1.isoformat() and st["moved_share"] < 0.1, st
    after = {r["segment_id"]: r for r in rows(url, SEGMENTS)}
    assert {k: v["label"] for k, v in after.items()} == {k: v["label"] for k, v in segments_before.items()}
    assert all(v["status"] == "active" and v["first_run_date"] == S1 for v in after.values()), after
    assert {r["customer_id"]: r["segment_id"] for r in rows(url, CURRENT)} == current_before


def test_a_refresh_takes_tonights_training_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by the break-it review: a refresh applied only its own epochs and learning rate, so a spec
    switching the estimator (valid) was ignored until the weekly retrain. Training settings that do not
    shape the network now apply on the night they are set."""
    url = f"duckdb:///{tmp_path / 'wh.duckdb'}"
    df = synthetic_customers()
    synthetic_night(url, synthetic_run(tmp_path, S1, df))
    spec = json.loads((tmp_path / "synthetic.json").read_text())
    spec["model"].update(estimator="exact", tau_min=0.3)
    (tmp_path / "synthetic.json").write_text(json.dumps(spec))
    monkeypatch.setattr(pipeline, "KEEP_MARGIN", -math.inf)  # production never "still fits": refresh
    run = synthetic_run(tmp_path, S2, df)
    trained = pipeline.train(url, run, {"status": "passed", "drift_detected": False})
    assert trained["mode"] == "refresh", trained
    model = pipeline._store(run).load_model(trained["model_version"])
    assert model.estimator == "exact" and model.tau_min == 0.3
    assert model.metrics_["refresh"] is True
    # and a setting deleted from the spec goes back to its default the same night (second break-it round)
    for key in ("estimator", "tau_min"):
        del spec["model"][key]
    (tmp_path / "synthetic.json").write_text(json.dumps(spec))
    run = synthetic_run(tmp_path, S3, df)
    trained = pipeline.train(url, run, {"status": "passed", "drift_detected": False})
    assert trained["mode"] == "refresh", trained
    model = pipeline._store(run).load_model(trained["model_version"])
    assert model.estimator == "concrete" and model.tau_min == 0.5
