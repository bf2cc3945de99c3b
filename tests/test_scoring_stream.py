"""Streaming scorer: identical to predict_proba on the whole table, bounded batches, shards that
cover the table exactly once, atomic parts, and the sharded path of a run equal to pipeline.score."""
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from segmentation import ConcreteGMVAE
from segmentation.scoring import (
    finalize_scores,
    merge_parts,
    plan_shards,
    score_parquet,
    shard_ranges,
)
from segmentation.synthetic import FEATURE_TYPES, planted_customers

FAST = dict(epochs=6, kl_anneal_epochs=3, patience=3, progress=False, n_threads=1, hidden=(32, 16), latent_dim=4)
N = 3000


@pytest.fixture(scope="module")
def table():
    df, _ = planted_customers(n=N, k=4, seed=5, missing=0.1)
    return df


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, table):
    m = ConcreteGMVAE(n_segments=4, seed=0, **FAST).fit(table, FEATURE_TYPES)
    return m.save(str(tmp_path_factory.mktemp("model") / "m"))


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory, table):
    path = tmp_path_factory.mktemp("data") / "features.parquet"
    pq.write_table(pa.Table.from_pandas(table, preserve_index=False), path, row_group_size=500)
    return path


def test_shard_ranges_cover_rows_once():
    for n, k in [(10, 3), (7, 7), (5, 9), (1_000_003, 8), (0, 4)]:
        r = shard_ranges(n, k)
        assert r[0][0] == 0 and r[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(r, r[1:]))
        sizes = [b - a for a, b in r]
        assert max(sizes) - min(sizes) <= 1 and (n == 0 or min(sizes) >= 1)
    with pytest.raises(ValueError):
        shard_ranges(10, 0)


def test_streamed_scores_equal_predict_proba_on_whole_table(tmp_path, table, model_dir, snapshot):
    model = ConcreteGMVAE.load(model_dir)
    expected = model.predict_proba(table)
    out = tmp_path / "scored.parquet"
    stats = score_parquet(model_dir, snapshot, out, batch_rows=700, id_column="customer_id", probabilities=True)
    got = pq.read_table(out)
    assert stats["rows"] == got.num_rows == N
    # bounded: no batch above batch_rows (iter_batches also stops at row-group ends)
    assert stats["max_batch_rows"] <= 700 and stats["batches"] >= N // 700
    assert got.column("customer_id").to_pylist() == table["customer_id"].tolist()
    proba = np.stack([got.column(f"p_cluster_{k}").to_numpy() for k in range(4)], 1)
    np.testing.assert_allclose(proba, expected, rtol=0, atol=1e-6)
    order = np.argsort(-expected, axis=1)
    np.testing.assert_array_equal(got.column("cluster").to_numpy(), order[:, 0])
    np.testing.assert_array_equal(got.column("runner_up_cluster").to_numpy(), order[:, 1])
    np.testing.assert_allclose(got.column("probability").to_numpy(), expected[np.arange(N), order[:, 0]], atol=1e-6)
    assert stats["cluster_counts"] == np.bincount(order[:, 0], minlength=4).tolist()
    assert not list(tmp_path.glob(".*tmp"))  # the temporary file was renamed into place


def test_shards_together_equal_the_whole(tmp_path, model_dir, snapshot):
    plan = plan_shards(snapshot, rows_per_shard=700)  # 5 shards of 600 rows across row groups of 500
    assert len(plan) == 5 and sum(s["rows"] for s in plan) == N
    assert [(s["start"], s["stop"]) for s in plan] == [(i * 600, (i + 1) * 600) for i in range(5)]
    assert json.loads(json.dumps(plan)) == plan  # small and JSON-able: fit for XCom / task mapping
    whole = score_parquet(model_dir, snapshot, tmp_path / "whole.parquet", id_column="customer_id")
    parts = []
    for s in plan:
        st = score_parquet(model_dir, snapshot, tmp_path / f"p{s['shard']}.parquet", id_column="customer_id",
                           row_range=(s["start"], s["stop"]), batch_rows=256)
        assert st["rows"] == s["rows"]
        parts.append(tmp_path / f"p{s['shard']}.parquet")
    merged = merge_parts(parts, tmp_path / "merged.parquet", id_column="customer_id")
    assert merged["rows"] == whole["rows"] == N
    assert pq.read_table(tmp_path / "merged.parquet").equals(pq.read_table(tmp_path / "whole.parquet"))


def test_merge_with_mapping_and_failure_leaves_old_file(tmp_path, model_dir, snapshot):
    part = tmp_path / "p.parquet"
    score_parquet(model_dir, snapshot, part, id_column="customer_id")
    out = tmp_path / "assignments.parquet"
    merge_parts([part], out, {0: 10, 1: 11, 2: 12, 3: 13})
    t = pq.read_table(out)
    assert t.column_names == ["customer_id", "segment_id", "segment_probability", "runner_up_segment_id"]
    assert set(t.column("segment_id").to_pylist()) <= {10, 11, 12, 13}
    before = out.read_bytes()
    with pytest.raises(ValueError, match="no segment id"):
        merge_parts([part], out, {0: 10})  # clusters 1..3 unmapped
    assert out.read_bytes() == before  # the published file is untouched
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_missing_feature_column_is_a_clear_error(tmp_path, model_dir, table):
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.Table.from_pandas(table.drop(columns=["visits"]), preserve_index=False), path)
    with pytest.raises(ValueError, match="visits"):
        score_parquet(model_dir, path, tmp_path / "out.parquet")
    assert not (tmp_path / "out.parquet").exists()


def test_sharded_run_scoring_equals_pipeline_score(tmp_path, table, model_dir):
    """plan -> score_shard (mapped) -> finalize_scores writes what pipeline.score writes."""
    import shutil

    from segmentation import pipeline
    from segmentation.scoring import plan_run_shards, score_shard

    spec = tmp_path / "spec.yaml"
    spec.write_text(json.dumps({
        "name": "synthetic", "entity_key": "customer_id",
        "features_relation": {"schema": "features", "table": "customer_features"},
        "features": [{"name": k, "type": v} for k, v in FEATURE_TYPES.items()],
    }))
    run = pipeline.start_run("2024-01-02", spec_path=str(spec), n_segments=4, artifacts=str(tmp_path / "store"))
    store = pipeline._store(run)
    pq.write_table(pa.Table.from_pandas(table, preserve_index=False),
                   store.run_dir(run["run_date"]) / "features.parquet", row_group_size=400)
    src = store.new_model_dir()
    shutil.rmtree(src)
    shutil.copytree(model_dir, src)
    store.add_model("v1", src)
    trained = {"scoring_version": "v1"}
    url = f"duckdb:///{tmp_path}/wh.duckdb"

    reference = pipeline.score(url, run, trained)
    expected = pq.read_table(reference["assignments"])
    expected_map = json.loads((store.run_dir(run["run_date"]) / "segment_mapping.json").read_text())

    plan = plan_run_shards(run, rows_per_shard=1200)
    assert len(plan) == 3
    results = [score_shard(run, trained, s, batch_rows=512) for s in reversed(plan)]  # any order
    got = finalize_scores(url, run, trained, results)
    assert got["n_customers"] == reference["n_customers"] == N
    assert got["model_version"] == "v1" and got["stability"] == reference["stability"]
    assert pq.read_table(got["assignments"]).equals(expected)
    assert json.loads((store.run_dir(run["run_date"]) / "segment_mapping.json").read_text()) == expected_map
    with pytest.raises(pipeline.PipelineError, match="do not cover"):
        finalize_scores(url, run, trained, results[:2])
    # a wrong-shaped metadata.json is an error naming the file on the sharded path too, not a KeyError
    from segmentation.artifacts import ModelArtifactError

    meta_file = store.model_dir("v1") / "metadata.json"
    meta_file.write_text(json.dumps(["not", "an", "object"]))
    with pytest.raises(ModelArtifactError, match="metadata.json"):
        score_shard(run, trained, plan[0], batch_rows=512)
    with pytest.raises(ModelArtifactError, match="metadata.json"):
        finalize_scores(url, run, trained, results)
