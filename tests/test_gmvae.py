"""ConcreteGMVAE end to end: recovery of planted segments, persistence, scoring edge cases, bad input."""
import json
import logging

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import adjusted_rand_score

from segmentation import ConcreteGMVAE
from segmentation.model.artifact import ArtifactError
from segmentation.model.preprocessing import DataError
from segmentation.synthetic import FEATURE_TYPES, planted_customers

FAST = dict(epochs=30, kl_anneal_epochs=5, patience=5, progress=False, n_threads=1, hidden=(64, 32), latent_dim=4)
# the library defaults for the network and schedules, with a bounded number of epochs
FULL = dict(epochs=100, progress=False)


@pytest.fixture(scope="module")
def planted():
    df, seg = planted_customers(n=3000, k=4, seed=1, missing=0.1)
    return df, seg


@pytest.fixture(scope="module")
def fitted(planted):
    df, _ = planted
    return ConcreteGMVAE(n_segments=4, seed=0, **FULL).fit(df, FEATURE_TYPES)


def test_planted_segments_recovered_with_missing_values(planted, fitted):
    df, seg = planted
    assert df[list(FEATURE_TYPES)].isna().mean().min() > 0.05  # the data really has holes
    ari = adjusted_rand_score(seg, fitted.predict(df))
    assert ari >= 0.9, ari


def test_history_records_both_schedules(planted, fitted):
    h = fitted.history_
    # after the data-driven start (the default) the KL weight is 1 from the first epoch
    assert all(r["kl_weight"] == 1.0 for r in h)
    assert h[0]["tau"] == pytest.approx(1.0) and h[-1]["tau"] < h[0]["tau"]
    assert all(np.isfinite(r["loss"]) for r in h)
    assert sum(r["best"] for r in h) == 1
    df, _ = planted
    rnd = ConcreteGMVAE(n_segments=4, seed=0, init="random", **dict(FAST, epochs=8, kl_anneal_epochs=4)).fit(df, FEATURE_TYPES)
    w = [r["kl_weight"] for r in rnd.history_]
    assert w[0] == 0.0 and w[2] == pytest.approx(0.5) and w[-1] == 1.0
    assert [r["tau"] for r in rnd.history_][1] == pytest.approx(0.95)


def test_exact_estimator_also_trains(planted):
    df, seg = planted
    m = ConcreteGMVAE(n_segments=4, estimator="exact", seed=0, **dict(FULL, epochs=40)).fit(df, FEATURE_TYPES)
    assert np.isfinite(m.score(df))
    assert adjusted_rand_score(seg, m.predict(df)) > 0.5


def test_deterministic_for_a_seed(planted):
    df, _ = planted
    small = df.iloc[:600]
    a = ConcreteGMVAE(n_segments=3, seed=7, **dict(FAST, epochs=4)).fit(small, FEATURE_TYPES)
    b = ConcreteGMVAE(n_segments=3, seed=7, **dict(FAST, epochs=4)).fit(small, FEATURE_TYPES)
    np.testing.assert_array_equal(a.predict_proba(small), b.predict_proba(small))


def test_save_load_identical_predictions(tmp_path, planted, fitted):
    df, _ = planted
    path = fitted.save(str(tmp_path / "model"))
    loaded = ConcreteGMVAE.load(path)
    np.testing.assert_array_equal(fitted.predict_proba(df), loaded.predict_proba(df))
    meta = json.loads((tmp_path / "model" / "metadata.json").read_text())
    assert meta["fingerprint"]["rows"] == len(df)
    assert set(meta["versions"]) >= {"torch", "numpy", "pandas", "segmentation"}
    assert meta["preprocessing"]["feature_types"] == FEATURE_TYPES
    assert meta["history"] and meta["config"]["n_segments"] == 4
    # the artifact holds no pickle: only safetensors and JSON
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["metadata.json", "weights.safetensors"]


def test_corrupt_or_missing_artifact_is_a_clear_error(tmp_path, fitted):
    with pytest.raises(ArtifactError, match="does not exist"):
        ConcreteGMVAE.load(str(tmp_path / "nope"))
    path = tmp_path / "m"
    fitted.save(str(path))
    (path / "weights.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ArtifactError, match="corrupt"):
        ConcreteGMVAE.load(str(path))
    fitted.save(str(path))
    (path / "metadata.json").unlink()
    with pytest.raises(ArtifactError, match="metadata.json is missing"):
        ConcreteGMVAE.load(str(path))


def test_nan_weights_are_refused(tmp_path, fitted):
    import torch
    from safetensors.torch import load_file, save_file

    path = tmp_path / "m"
    fitted.save(str(path))
    state = load_file(str(path / "weights.safetensors"))
    state["prior_mean"] = torch.full_like(state["prior_mean"], float("nan"))
    save_file(state, str(path / "weights.safetensors"))
    with pytest.raises(ArtifactError, match="NaN"):
        ConcreteGMVAE.load(str(path))


def test_unseen_category_and_nan_at_scoring(planted, fitted, caplog):
    df, _ = planted
    new = df.iloc[:5].copy()
    new.loc[new.index[0], "region"] = "mars"          # never seen in training
    new.loc[new.index[1], "region"] = "antarctica"    # seen, but pooled as rare
    new.loc[new.index[2], ["spend", "visits", "satisfaction", "promo_opt_in", "region"]] = [np.nan, np.nan, np.nan, np.nan, None]
    with caplog.at_level(logging.INFO):
        p = fitted.predict_proba(new)
    assert p.shape == (5, 4) and np.all(np.isfinite(p))
    np.testing.assert_allclose(p.sum(1), 1.0, rtol=1e-5)
    assert "__unknown__" in caplog.text
    codes = fitted.preprocessor_.transform(new)["categorical"][:, 0].tolist()
    levels = fitted.preprocessor_.params["region"]["levels"]
    assert levels[codes[0]] == "__unknown__" and levels[codes[1]] == "__other__"


def test_feature_types_inferred_and_reported(caplog):
    df, _ = planted_customers(n=400, k=2, seed=3, missing=0.0)
    df["promo_opt_in"] = df["promo_opt_in"].astype(bool)
    with caplog.at_level(logging.INFO):
        m = ConcreteGMVAE(n_segments=2, **dict(FAST, epochs=2)).fit(df)
    assert m.feature_types_ == {"spend": "continuous", "visits": "count", "satisfaction": "continuous",
                                "promo_opt_in": "binary", "region": "categorical"}
    assert "customer_id" not in m.feature_types_  # an identifier is not a feature
    assert "inferred feature types" in caplog.text


@pytest.mark.parametrize(
    "mutate, types, match",
    [
        (lambda d: d.iloc[0:0], FEATURE_TYPES, "no rows"),
        (lambda d: d.assign(spend=np.nan), FEATURE_TYPES, "'spend' is null on all"),
        (lambda d: d, dict(FEATURE_TYPES, spend="currency"), "unknown feature type 'currency'"),
        (lambda d: d.assign(visits=d["visits"].astype(object).where(d.index != 3, "lots")), FEATURE_TYPES,
         "'visits' is declared numeric but holds text"),
        (lambda d: d.drop(columns=["region"]), FEATURE_TYPES, "missing feature column"),
        (lambda d: d.assign(visits=-d["visits"]), FEATURE_TYPES, "negative"),
        (lambda d: d.assign(promo_opt_in=d["promo_opt_in"] * 3), FEATURE_TYPES, "other than 0/1"),
        (lambda d: d.assign(satisfaction=np.inf), FEATURE_TYPES, "inf"),
    ],
    ids=["no-rows", "all-null", "unknown-type", "text-in-numeric", "missing-column", "negative-count",
         "non-binary", "inf"],
)
def test_bad_input_gives_clear_error(planted, mutate, types, match):
    df, _ = planted
    with pytest.raises(DataError, match=match) as exc:
        ConcreteGMVAE(n_segments=2, **dict(FAST, epochs=1)).fit(mutate(df.iloc[:200].copy()), types, table_name="crm.customers")
    assert "crm.customers" in str(exc.value)


def test_nan_loss_stops_training_with_clear_error(planted, monkeypatch):
    """Whatever makes the loss non-finite (here: injected at the 3rd step), training stops loudly."""
    import torch

    from segmentation.model.network import GMVAENetwork
    from segmentation.model.training import TrainingDiverged

    real = GMVAENetwork.loss_concrete
    calls = {"n": 0}

    def poisoned(self, *a, **k):
        terms = real(self, *a, **k)
        calls["n"] += 1
        if calls["n"] == 3:
            terms.loss = terms.loss * torch.tensor(float("nan"))
        return terms

    monkeypatch.setattr(GMVAENetwork, "loss_concrete", poisoned)
    df, _ = planted
    with pytest.raises(TrainingDiverged, match="loss became nan at epoch 1, step 3"):
        ConcreteGMVAE(n_segments=2, **dict(FAST, epochs=2, batch_size=50)).fit(df.iloc[:300], FEATURE_TYPES)


def test_warm_start_refresh_keeps_preprocessing_and_continues(planted, fitted):
    import copy

    df, seg = planted
    m = copy.deepcopy(fitted).set_params(warm_start=True, epochs=3)
    levels_before = m.preprocessor_.params["region"]["levels"]
    m.fit(df.iloc[:1500])
    assert m.preprocessor_.params["region"]["levels"] == levels_before
    assert m.metrics_["refresh"] is True
    assert adjusted_rand_score(seg, m.predict(df)) >= 0.85


def test_pretrained_start_already_finds_the_planted_segments(planted):
    """init='pretrain' (autoencoder, then k-means on the latent space -> p(z|y), q(y|x)) gives a start
    that holds the planted segments after one GMVAE epoch; a random start does not yet."""
    df, seg = planted
    one_epoch = dict(FAST, epochs=1, validation_fraction=0.0)
    pre = ConcreteGMVAE(n_segments=4, seed=0, pretrain_epochs=10, **one_epoch).fit(df, FEATURE_TYPES)
    rnd = ConcreteGMVAE(n_segments=4, seed=0, init="random", **one_epoch).fit(df, FEATURE_TYPES)
    ari_pre, ari_rnd = adjusted_rand_score(seg, pre.predict(df)), adjusted_rand_score(seg, rnd.predict(df))
    assert ari_pre >= 0.75 and ari_pre > ari_rnd + 0.3, (ari_pre, ari_rnd)
    info = pre.metrics_["init"]
    assert info["init"] == "pretrain" and info["pretrain_epochs"] == 10 and sum(info["kmeans_cluster_sizes"]) == len(df)
    assert rnd.metrics_["init"] == {"init": "random"}
    with pytest.raises(ValueError, match="init must be 'pretrain' or 'random'"):
        ConcreteGMVAE(init="kmeans").fit(df, FEATURE_TYPES)


def test_anchored_start_reproduces_an_existing_segmentation():
    """fit(..., anchor=labels): on one Gaussian blob (no natural segments, so nothing but the anchor
    says where to cut), the start reproduces the given 3-way split; rows without an anchor follow
    the nearest component; labels can be any values."""
    rng = np.random.default_rng(0)
    n = 1500
    df = pd.DataFrame({"a": rng.normal(0, 1, n), "b": rng.normal(0, 1, n), "c": rng.normal(0, 1, n)})
    types = {c: "continuous" for c in df}
    sector = np.floor((np.arctan2(df.b, df.a) + np.pi) / (2 * np.pi / 3)).astype(int).clip(0, 2).to_numpy()
    anchor = np.array([f"seg-{s}" for s in sector], dtype=object)
    anchor[:100] = None  # new customers: no segment yet
    kw = dict(n_segments=3, epochs=1, validation_fraction=0.0, progress=False, hidden=(32, 16), latent_dim=2, seed=0)
    anchored = ConcreteGMVAE(**kw).fit(df, types, anchor=anchor)
    assert anchored.metrics_["init"]["init"] == "anchored"
    assert anchored.metrics_["init"]["anchored_rows"] == n - 100
    assert adjusted_rand_score(sector, anchored.predict(df)) >= 0.8
    with pytest.raises(ValueError, match="anchor has 3 labels for 1500 rows"):
        ConcreteGMVAE(**kw).fit(df, types, anchor=[1, 2, 3])


def test_anchor_with_fewer_groups_than_segments_fills_every_segment():
    """K raised from 3 to 5: the anchor has 3 groups; the two new components start from the k-means
    centres farthest from them and take the rows nearest them, so no segment starts (and stays)
    empty and the planted 5 groups are still found."""
    df, seg = planted_customers(n=1500, k=5, seed=2, missing=0.05)
    coarse = np.minimum(seg, 2)
    m = ConcreteGMVAE(n_segments=5, seed=0, **dict(FAST, epochs=15, pretrain_epochs=5)).fit(df, FEATURE_TYPES, anchor=coarse)
    sizes = np.bincount(m.predict(df), minlength=5)
    assert sizes.min() > 0.1 * len(df), sizes
    assert adjusted_rand_score(seg, m.predict(df)) >= 0.85


def test_anchor_labels_are_normalised():
    from segmentation.model.estimator import _anchor_codes

    codes = _anchor_codes([1, 1.0, "1", 2, None, float("nan"), -1, 2.0, "b"], 9, 3, "t")
    assert codes.tolist() == [0, 0, 0, 1, -1, -1, -1, 1, 2]
    assert _anchor_codes([None, -1, float("nan")], 3, 3, "t") is None  # nothing anchored: plain pretrain
    assert _anchor_codes(["a", "b", "b", "c", "c", "c"], 6, 2, "t").tolist() == [-1, 1, 1, 0, 0, 0]  # K largest
