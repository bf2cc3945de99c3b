"""The artifact store: local folder and S3 through boto3 against moto's server on 127.0.0.1."""
import datetime as dt
import json
import socket

import numpy as np
import pytest

from segmentation import ConcreteGMVAE
from segmentation.artifacts import ArtifactStoreError, LocalArtifactStore, S3ArtifactStore, open_store
from segmentation.model.artifact import ArtifactError
from segmentation.synthetic import FEATURE_TYPES, planted_customers

D1, D2, D3 = dt.date(2011, 12, 1), dt.date(2011, 12, 2), dt.date(2011, 12, 3)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def moto_endpoint():
    """A real moto S3 server on 127.0.0.1 (HTTP), as a stand-in for AWS that boto3 talks to over the wire."""
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3_url(moto_endpoint, monkeypatch, request):
    import boto3

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    bucket = f"seg-{abs(hash(request.node.name)) % 10**8}"
    boto3.client("s3", endpoint_url=moto_endpoint).create_bucket(Bucket=bucket)
    return f"s3://{bucket}/team/segments?endpoint_url={moto_endpoint}&sse=AES256"


@pytest.fixture(scope="module")
def small_model():
    df, _ = planted_customers(n=400, k=2, seed=5)
    m = ConcreteGMVAE(n_segments=2, epochs=3, progress=False, hidden=(16, 8), latent_dim=2).fit(df, FEATURE_TYPES)
    return m, df


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return LocalArtifactStore(tmp_path / "art")
    return S3ArtifactStore(request.getfixturevalue("s3_url"), cache=tmp_path / "cache")


def _add(store, small_model, version):
    model, _ = small_model
    tmp = store.new_model_dir()
    model.save(str(tmp), extra={"run_date": "2011-12-01"})
    store.add_model(version, tmp)


def test_model_round_trip_gives_identical_predictions(store, small_model, tmp_path):
    model, df = small_model
    _add(store, small_model, "v1")
    assert store.has_model("v1") and not store.has_model("v2")
    assert [m["version"] for m in store.models()] == ["v1"]
    # a fresh store object (another worker, an empty cache) sees the same model
    fresh = open_store(str(store.root) if isinstance(store, LocalArtifactStore) else _url_of(store))
    if isinstance(fresh, S3ArtifactStore):
        fresh.cache = tmp_path / "other-cache"
    loaded = ConcreteGMVAE.load(str(fresh.model_dir("v1")))
    np.testing.assert_array_equal(loaded.predict_proba(df), model.predict_proba(df))


def _url_of(store: S3ArtifactStore) -> str:
    return f"s3://{store.bucket}/{store.prefix}?endpoint_url={store.endpoint_url}&sse={store.sse}"


def test_production_pointer_and_backfills(store, small_model):
    for v in ("v1", "v2", "v3"):
        _add(store, small_model, v)
    assert store.production() is None
    store.promote("v1", D1)
    store.promote("v3", D3)
    assert store.production() == "v3"
    # a backfill of D2 is promoted for its date but never demotes tonight's model
    store.promote("v2", D2)
    assert store.production() == "v3"
    assert store.production_as_of(D3) == "v2"   # what was in production for D3's run: D2's model
    assert store.production_as_of(D2) == "v1"
    assert store.production_as_of(D1) is None
    with pytest.raises(ArtifactStoreError, match="no such model"):
        store.promote("nope", D3)


def test_run_files_travel_between_workers(store, tmp_path):
    d = store.run_dir("2011-12-01")
    (d / "features.parquet").write_bytes(b"PAR1 not really")
    store.put_run_file("2011-12-01", d / "features.parquet")
    assert store.run_dates() == ["2011-12-01"]
    if isinstance(store, S3ArtifactStore):
        other = S3ArtifactStore(_url_of(store), cache=tmp_path / "worker2")
        assert other.run_file("2011-12-01", "features.parquet").read_bytes() == b"PAR1 not really"
        assert other.run_file("2011-12-01", "missing.json") is None


def test_corrupt_pointer_is_a_clear_error(store):
    store._write("production.json", b"{half a json")
    with pytest.raises(ArtifactStoreError, match="production.json is corrupt"):
        store.production()


def test_corrupt_model_is_refused(store, small_model):
    _add(store, small_model, "v1")
    store._write("models/v1/weights.safetensors", b"garbage")
    if isinstance(store, S3ArtifactStore):
        import shutil

        shutil.rmtree(store.cache / "models" / "v1")
    with pytest.raises(ArtifactError, match="corrupt"):
        ConcreteGMVAE.load(str(store.model_dir("v1")))


def test_s3_objects_are_encrypted_and_pointer_is_one_object(s3_url, small_model, tmp_path):
    import boto3

    store = S3ArtifactStore(s3_url, cache=tmp_path / "c")
    _add(store, small_model, "v1")
    store.promote("v1", D1)
    s3 = boto3.client("s3", endpoint_url=store.endpoint_url)
    head = s3.head_object(Bucket=store.bucket, Key="team/segments/models/v1/weights.safetensors")
    assert head["ServerSideEncryption"] == "AES256"
    ptr = json.loads(s3.get_object(Bucket=store.bucket, Key="team/segments/production.json")["Body"].read())
    assert ptr["version"] == "v1" and ptr["history"][0]["run_date"] == "2011-12-01"


def test_bad_s3_options_are_refused():
    with pytest.raises(ArtifactStoreError, match="sse must be"):
        S3ArtifactStore("s3://b/p?sse=rot13", client=object())
    with pytest.raises(ArtifactStoreError, match="not an S3 URL"):
        S3ArtifactStore("s3:///nobucket", client=object())


# ---------------------------------------------------------------------------------------------
# valid JSON of the wrong shape (issue 5): the error names the file and what is wrong
# ---------------------------------------------------------------------------------------------
def _where(store, key: str) -> str:
    return f"{store.root}/{key}"


@pytest.mark.parametrize("payload, problem", [
    (b"[]", "it holds a list, not an object"),
    (b'"v1"', "it holds a string, not an object"),
    (b'{"version": "v1"}', "it has no 'history'"),
    (b'{"version": "v1", "history": {"v1": "2011-12-01"}}', "'history' is an object, not a list"),
    (b'{"version": 3, "history": []}', "'version' is a number"),
    (b'{"version": "v1", "history": ["v1"]}', "history[0] is a string, not an object"),
    (b'{"version": "v1", "history": [{"version": "v1"}]}', "history[0] has no 'run_date'"),
    (b'{"version": "v1", "history": [{"version": "v1", "run_date": "last night"}]}', "is not a date"),
])
def test_wrong_shaped_pointer_is_a_clear_error(store, payload, problem):
    store._write("production.json", payload)
    for read in (store.production, store.production_history, lambda: store.production_as_of(D2)):
        with pytest.raises(ArtifactStoreError) as info:
            read()
        message = str(info.value)
        assert message.startswith(f"{_where(store, 'production.json')} is corrupt: ") and problem in message, message


def test_promote_over_an_unreadable_pointer_keeps_it_aside_when_asked(store, small_model):
    _add(store, small_model, "v1")
    store._write("production.json", b'{"history": [1]}')
    with pytest.raises(ArtifactStoreError, match="history\\[0\\] is a number"):
        store.promote("v1", D1)
    assert store.promote("v1", D1, replace_unreadable=True) is True
    assert store.production() == "v1" and [h["run_date"] for h in store.production_history()] == ["2011-12-01"]
    (aside,) = [k for k in _keys(store) if k.startswith("production.json.corrupt-")]
    assert store._read(aside) == b'{"history": [1]}'
    before = store._read("production.json")
    assert store.promote("v1", D1) is False          # already so: nothing rewritten
    assert store._read("production.json") == before


def _keys(store) -> list[str]:
    if isinstance(store, LocalArtifactStore):
        return sorted(p.name for p in store.root.iterdir())
    got = store.s3.list_objects_v2(Bucket=store.bucket, Prefix=f"{store.prefix}/")
    return sorted(o["Key"][len(store.prefix) + 1:] for o in got.get("Contents", []))


@pytest.mark.parametrize("edit, problem", [
    (lambda meta: [meta], "it holds a list, not an object"),
    (lambda meta: {k: v for k, v in meta.items() if k != "config"}, "it has no 'config'"),
    (lambda meta: dict(meta, config=dict(meta["config"], n_segments="two")), "config['n_segments'] is a string"),
    (lambda meta: dict(meta, preprocessing=None), "'preprocessing' is null"),
    (lambda meta: dict(meta, kind="SomethingElse"), "'kind' is 'SomethingElse'"),
    (lambda meta: dict(meta, run=["2011-12-01"]), "'run' is a list"),
])
def test_wrong_shaped_model_metadata_is_a_clear_error(store, small_model, edit, problem, caplog):
    from segmentation.artifacts import ModelArtifactError

    _add(store, small_model, "v1")
    meta = json.loads(store._read("models/v1/metadata.json"))
    store._write("models/v1/metadata.json", json.dumps(edit(meta)).encode())
    if isinstance(store, S3ArtifactStore):
        import shutil

        shutil.rmtree(store.cache / "models" / "v1")  # another worker: nothing cached yet
    where = _where(store, "models/v1/metadata.json")
    for use in (store.load_model, store.model_metadata):
        with pytest.raises(ModelArtifactError) as info:
            use("v1")
        assert isinstance(info.value, ArtifactError)  # what the pipeline falls back on
        message = str(info.value)
        assert message.startswith(f"{where} is not model metadata: ") and problem in message, message
    # the registry listing leaves it out, saying which file and why
    with caplog.at_level("WARNING", logger="segmentation.artifacts"):
        assert store.models() == []
    assert where in caplog.text and problem in caplog.text


def test_missing_model_is_a_clear_error(store):
    from segmentation.artifacts import ModelArtifactError

    with pytest.raises(ModelArtifactError, match="models/nope/metadata.json is missing"):
        store.load_model("nope")


def test_pipeline_on_s3_falls_back_when_the_pointer_or_the_model_is_wrong_shaped(s3_url, tmp_path, monkeypatch):
    """The small synthetic run of test_pipeline.py with its artifacts on S3 (moto): a production.json
    of the wrong shape, then a production model whose metadata.json is a list: each night retrains
    and publishes, and the reason names the S3 object."""
    from test_pipeline import S1, S2, S3, synthetic_customers, synthetic_night, synthetic_run

    monkeypatch.setenv("SEGMENT_DATA_DIR", str(tmp_path / "data"))  # the S3 store's local cache
    url = f"duckdb:///{tmp_path}/warehouse.duckdb"
    df = synthetic_customers()
    first = synthetic_night(url, synthetic_run(tmp_path, S1, df, artifacts=s3_url))
    store = open_store(s3_url)
    assert store.production() == first["training"]["model_version"]
    # every step reached the store with the URL's options (they used to be dropped after start_run)
    head = store.s3.head_object(Bucket=store.bucket, Key=f"{store.prefix}/runs/{S1.isoformat()}/assignments.parquet")
    assert head["ServerSideEncryption"] == "AES256"

    store._write("production.json", b'{"version": "x", "history": "x"}')
    second = synthetic_night(url, synthetic_run(tmp_path, S2, df, artifacts=s3_url))["training"]
    assert second["mode"] == "retrain" and "production pointer unreadable" in second["reason"]
    assert f"{store.root}/production.json is corrupt: 'history' is a string" in second["reason"], second["reason"]
    assert store.production() == second["model_version"]

    v2 = second["model_version"]
    store._write(f"models/{v2}/metadata.json", b"[]")
    import shutil

    shutil.rmtree(store.cache / "models" / v2)
    third = synthetic_night(url, synthetic_run(tmp_path, S3, df, artifacts=s3_url))["training"]
    assert third["mode"] == "retrain", third
    assert f"{store.root}/models/{v2}/metadata.json is not model metadata: it holds a list" in third["reason"]
    assert store.production() == third["model_version"]
