"""Faults found by trying to break the product, each turned into a test."""
import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from segmentation.model.preprocessing import DataError, TablePreprocessor, infer_feature_types
from segmentation.warehouse.base import _secrets_of, redact_url


@pytest.mark.parametrize("url, secret", [
    ("postgresql://postgres:Hash#Secret9@127.0.0.1:5432/db", "Hash#Secret9"),
    ("postgresql://u:p/w?x@h:5432/db", "p/w?x"),
    ("postgresql://u:pa%40ss@h/db", "pa@ss"),
    ("postgresql://postgres@h:5432/db?password=Secret3&application_name=x", "Secret3"),
])
def test_passwords_never_survive_redaction(url, secret):
    shown = redact_url(url)
    assert secret not in shown and "***" in shown
    assert secret in _secrets_of(url) or secret in {s.replace("%40", "@") for s in _secrets_of(url)}


def test_a_run_for_a_day_that_has_not_ended_is_refused(tmp_path):
    from segmentation.pipeline import PipelineError, start_run

    tomorrow = dt.datetime.now(dt.timezone.utc).date() + dt.timedelta(days=1)
    with pytest.raises(PipelineError, match="in the future"):
        start_run(tomorrow, artifacts=str(tmp_path))
    with pytest.raises(PipelineError, match="at least 2"):
        start_run("2011-12-09", n_segments=0, artifacts=str(tmp_path))


def test_integer_category_read_as_float_keeps_its_level():
    train = pd.DataFrame({"store": pd.array([1, 2, 3] * 20, dtype="int64"), "x": np.arange(60.0)})
    pre = TablePreprocessor({"store": "categorical", "x": "continuous"}, min_level_count=1).fit(train)
    night2 = pd.DataFrame({"store": [1.0, 2.0, np.nan], "x": [1.0, 2.0, 3.0]})  # one empty cell -> floats
    codes = pre.transform(night2)["categorical"][:, 0].tolist()
    levels = pre.params["store"]["levels"]
    assert [levels[c] for c in codes[:2]] == ["1", "2"]


def test_numbers_with_a_typo_are_an_error_not_a_dropped_feature():
    df = pd.DataFrame({"spend": [str(v) for v in range(50)] + ["abc"], "k": range(51)})
    with pytest.raises(DataError, match="'spend' holds numbers and some text"):
        infer_feature_types(df)


@pytest.mark.parametrize("param, value", [("epochs", 0), ("batch_size", 0), ("n_segments", 2.7)])
def test_nonsense_settings_are_refused(param, value):
    from segmentation import ConcreteGMVAE

    df = pd.DataFrame({"x": np.arange(40.0)})
    with pytest.raises(ValueError, match=param):
        ConcreteGMVAE(**{param: value}).fit(df, {"x": "continuous"})


def test_single_column_csv_is_read_by_comma(tmp_path):
    path = tmp_path / "onecol.csv"
    path.write_text("spend\n" + "\n".join(str(v) for v in range(30)) + "\n")
    from segmentation.cli import _read_table

    assert list(_read_table(str(path)).columns) == ["spend"]


def test_rerun_keeps_the_ids_its_date_was_published_with(tmp_path):
    from segmentation.artifacts import LocalArtifactStore
    from segmentation.pipeline import _earlier_mapping

    store = LocalArtifactStore(tmp_path)
    run = {"run_date": "2011-12-09", "artifacts": str(tmp_path)}
    (store.run_dir("2011-12-09") / "segment_mapping.json").write_text(
        json.dumps({"model_version": "v1", "mapping": {"0": 3, "1": 1, "2": 2}}))
    assert _earlier_mapping(store, run, "v1") == {0: 3, 1: 1, 2: 2}
    assert _earlier_mapping(store, run, "v2") is None  # another model: match afresh


def test_cli_error_is_one_line_for_an_empty_csv(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    out = subprocess.run([sys.executable, "-m", "segmentation.cli", "fit", str(empty), "--k", "2", "--out",
                          str(tmp_path / "m")], capture_output=True, text=True)
    assert out.returncode != 0
    assert "empty.csv" in out.stderr and "Traceback" not in out.stderr


# ---- the estimator (second break-it review of the engine) ----------------------------------------
def _tiny_fit(**kw):
    from segmentation import ConcreteGMVAE
    from segmentation.synthetic import FEATURE_TYPES, planted_customers

    df, _ = planted_customers(n=300, k=3, seed=12, missing=0.0)
    params = dict(n_segments=3, seed=0, epochs=2, pretrain_epochs=2, hidden=(16, 8), latent_dim=3, progress=False)
    return ConcreteGMVAE(**{**params, **kw}).fit(df, FEATURE_TYPES), df, FEATURE_TYPES


@pytest.mark.parametrize("change", [dict(prior_covariance="diagonal"), dict(n_segments=5), dict(latent_dim=6),
                                    dict(hidden=(32, 8))])
def test_save_refuses_a_shape_changed_after_fit(tmp_path, change):
    """set_params of a shape setting after fit, then save, wrote metadata that did not match the weights:
    an artifact that saved but would not load. save now says what to do, and usage counts the
    network's segments, not the changed setting's."""
    from segmentation import ConcreteGMVAE

    model, df, _ = _tiny_fit(prior_covariance="full")
    model.set_params(**change)
    assert len(model.evaluate(df, iw_samples=2)["usage"]["sizes"]) == 3
    with pytest.raises(ValueError, match=f"save cannot change {next(iter(change))} .*fit again before saving"):
        model.save(tmp_path / "m")
    assert not (tmp_path / "m").exists()
    fresh, _, _ = _tiny_fit(prior_covariance="full")
    fresh.save(tmp_path / "ok")
    np.testing.assert_array_equal(ConcreteGMVAE.load(tmp_path / "ok").predict(df), fresh.predict(df))


def test_a_loaded_model_fits_from_scratch_and_a_refresh_refuses_other_features(tmp_path):
    """A refreshed model used to be saved with warm_start=True: loading it and calling fit with other
    feature_types refreshed silently with the old features. Saved models now load with
    warm_start=False, and a refresh given other features or an anchor says why it cannot."""
    from segmentation import ConcreteGMVAE

    model, df, types = _tiny_fit()
    model.set_params(warm_start=True).fit(df)            # a refresh, as the nightly job does
    model.save(tmp_path / "m")
    loaded = ConcreteGMVAE.load(tmp_path / "m")
    assert loaded.warm_start is False
    fewer = {k: v for k, v in types.items() if k != "region"}
    loaded.fit(df, fewer)                                  # from scratch, with the features asked for
    assert set(loaded.feature_types_) == set(fewer)
    loaded.set_params(warm_start=True)
    with pytest.raises(ValueError, match="warm_start refresh keeps the features the model was fitted with"):
        loaded.fit(df, types)
    with pytest.raises(ValueError, match="anchor sets the start of a fit from scratch"):
        loaded.fit(df, anchor=np.zeros(len(df)))


def test_a_skipped_start_trains_like_a_random_start(caplog):
    """With fewer than 2 x K training rows the data-driven start is skipped; training then used to run
    as if it had happened: no KL annealing and the fine-tuning learning rate (1e-6 here)."""
    import logging

    from segmentation import ConcreteGMVAE
    from segmentation.synthetic import FEATURE_TYPES, planted_customers

    df, _ = planted_customers(n=25, k=3, seed=1, missing=0.0)
    kw = dict(n_segments=12, epochs=4, pretrain_epochs=2, hidden=(16, 8), latent_dim=3, progress=False,
              kl_anneal_epochs=10, finetune_learning_rate=1e-6)
    m = ConcreteGMVAE(**kw).fit(df, FEATURE_TYPES)
    assert m.metrics_["init"]["init"] == "random"
    assert [r["kl_weight"] for r in m.history_] == [0.0, 0.1, 0.2, 0.3]
    plain = ConcreteGMVAE(**{**kw, "finetune_learning_rate": None}).fit(df, FEATURE_TYPES)
    np.testing.assert_array_equal(m.predict_proba(df), plain.predict_proba(df))  # same lr: same fit
    with caplog.at_level(logging.WARNING, logger="segmentation.model.estimator"):
        ConcreteGMVAE(**{**kw, "n_segments": 3, "init": "random"}).fit(df, FEATURE_TYPES, anchor=np.zeros(len(df)))
    assert any("anchor ignored" in r.getMessage() for r in caplog.records)


def test_a_random_start_says_which_start_settings_it_ignores(caplog):
    """--finetune-lr, --start-clusters and --pretrain-noise only shape the data-driven start; with
    --init random they used to be dropped without a word."""
    import logging

    from segmentation import ConcreteGMVAE
    from segmentation.synthetic import FEATURE_TYPES, planted_customers

    df, _ = planted_customers(n=60, k=3, seed=1, missing=0.0)
    kw = dict(n_segments=3, epochs=1, hidden=(16, 8), latent_dim=3, progress=False, init="random")
    with caplog.at_level(logging.WARNING, logger="segmentation.model.estimator"):
        ConcreteGMVAE(**kw).fit(df, FEATURE_TYPES)
    assert not any("ignored" in r.getMessage() for r in caplog.records)
    with caplog.at_level(logging.WARNING, logger="segmentation.model.estimator"):
        ConcreteGMVAE(**kw, finetune_learning_rate=1e-4, start_clusters="kmeans").fit(df, FEATURE_TYPES)
    msg = " ".join(r.getMessage() for r in caplog.records)
    assert "finetune_learning_rate=0.0001" in msg and "start_clusters='kmeans'" in msg and "ignored" in msg
    assert "pretrain_noise" not in msg


def test_the_ignored_start_settings_warning_holds_for_subclasses_skipped_starts_and_ddp(tmp_path, caplog):
    """Break-it findings: a subclass taking **kwargs made every random-start fit raise KeyError; a
    start skipped for too few rows, and the distributed fit, ignored the settings without a word."""
    import logging

    from segmentation import ConcreteGMVAE
    from segmentation.distributed import ParquetSnapshot, fit_distributed, init_distributed, shutdown
    from segmentation.synthetic import FEATURE_TYPES, planted_customers

    class Tuned(ConcreteGMVAE):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)

    df, _ = planted_customers(n=60, k=3, seed=1, missing=0.0)
    small = dict(epochs=1, hidden=(16, 8), latent_dim=3, progress=False, device="cpu")

    def warnings_of(make_and_fit) -> str:
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            make_and_fit()
        return " ".join(r.getMessage() for r in caplog.records if "ignored" in r.getMessage())

    assert warnings_of(lambda: Tuned(n_segments=3, init="random", **small).fit(df, FEATURE_TYPES)) == ""
    msg = warnings_of(lambda: Tuned(n_segments=3, init="random", start_clusters="kmeans", **small).fit(df, FEATURE_TYPES))
    assert "start_clusters='kmeans' ignored" in msg
    # 25 rows, 12 segments: the start is skipped
    tiny, _ = planted_customers(n=25, k=3, seed=1, missing=0.0)
    msg = warnings_of(lambda: ConcreteGMVAE(n_segments=12, pretrain_epochs=2, finetune_learning_rate=1e-6, **small)
                      .fit(tiny, FEATURE_TYPES, anchor=np.zeros(len(tiny))))
    assert "anchor ignored" in msg and "finetune_learning_rate=1e-06 ignored" in msg and "too few" in msg
    path = tmp_path / "rows.parquet"
    df.to_parquet(path)
    ctx = init_distributed(device="cpu")
    try:
        model = ConcreteGMVAE(n_segments=3, init="random", finetune_learning_rate=1e-4, **small)
        msg = warnings_of(lambda: fit_distributed(model, ParquetSnapshot(str(path)), ctx, feature_types=FEATURE_TYPES))
    finally:
        shutdown(ctx)
    assert "finetune_learning_rate=0.0001 ignored" in msg


def test_a_missing_features_table_logs_its_validation_summary(tmp_path, caplog):
    """The pipeline logs only the validation status ("checks above"): the early return for a missing
    table must log its summary like every other outcome."""
    import datetime as dt
    import logging

    from segmentation.spec import load_spec
    from validation.features import validate_features

    spec = load_spec(None)
    with caplog.at_level(logging.INFO, logger="validation.features"):
        res = validate_features(f"duckdb:///{tmp_path}/empty.duckdb", spec, as_of=dt.datetime(2011, 12, 10),
                                out_dir=tmp_path)
    assert res.status == "failed"
    assert any("table exists" in r.getMessage() and "validation features" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("edit, words", [
    (lambda m: m.pop("config"), "missing entry 'config'"),
    (lambda m: m["config"].pop("hidden"), "missing entry 'hidden'"),
    (lambda m: m["config"].update(hidden=None), "bad model setting"),
    (lambda m: m["config"].update(hidden=[]), "hidden must be one or more layer widths"),
    (lambda m: m["config"].update(hidden=[16.7, 8]), "hidden must be one or more layer widths"),
    (lambda m: m["config"].update(tau_min="0.5"), "temperatures must be positive finite numbers"),
    (lambda m: m["config"].update(n_threads=-1), "n_threads must be a whole number of at least 0"),
    (lambda m: m.pop("feature_types"), "missing entry 'feature_types'"),
    (lambda m: m.pop("preprocessing"), "missing entry 'preprocessing'"),
])
def test_a_tampered_artifact_is_an_artifact_error(tmp_path, edit, words):
    from segmentation import ConcreteGMVAE
    from segmentation.model.artifact import ArtifactError

    model, _, _ = _tiny_fit()
    model.save(tmp_path / "m")
    path = tmp_path / "m" / "metadata.json"
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="the artifact is corrupt") as err:
        ConcreteGMVAE.load(tmp_path / "m")
    assert words in str(err.value), str(err.value)


@pytest.mark.parametrize("kw, match", [
    (dict(hidden=()), "hidden must be one or more layer widths"),
    (dict(hidden=(-3,)), "hidden must be one or more layer widths"),
    (dict(hidden=(0,)), "hidden must be one or more layer widths"),
    (dict(hidden="32"), "hidden must be one or more layer widths"),
    (dict(hidden=(32.5,)), "hidden must be one or more layer widths"),
    (dict(tau_min=None), "temperatures must be positive finite numbers"),
    (dict(tau_start=float("inf")), "temperatures must be positive finite numbers"),
    (dict(tau_decay=1.5), "tau_decay must be at most 1"),
    (dict(bf16="no"), "bf16 must be True or False"),
    (dict(patience=-1), "patience must be a whole number of at least 0"),
    (dict(learning_rate=float("inf")), "learning_rate must be a positive number"),
    (dict(device="tpu"), "device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"),
    (dict(n_threads=-1), "n_threads must be a whole number of at least 0"),
    (dict(seed=2**40), r"seed must be a whole number in \[0, 2\*\*32\)"),
    (dict(seed=-1), r"seed must be a whole number in \[0, 2\*\*32\)"),
    (dict(kl_anneal_epochs=-2), "kl_anneal_epochs must be a whole number of at least 0"),
])
def test_bad_estimator_settings_are_named_before_training(kw, match):
    from segmentation import ConcreteGMVAE

    df = pd.DataFrame({"a": np.arange(40.0), "b": np.arange(40.0) % 5})
    with pytest.raises(ValueError, match=match):
        ConcreteGMVAE(**kw).fit(df)


def test_numpy_values_are_settings_and_save_as_json(tmp_path):
    """NumPy scalars are valid settings (second break-it round: np.float32 learning rates were refused,
    an np.bool_ bf16 was accepted and then broke save's JSON), and 0 threads / patience 0 still mean
    what they meant (torch's default; stop at the first epoch without improvement)."""
    from segmentation import ConcreteGMVAE

    df = pd.DataFrame({"a": np.arange(60.0), "b": np.arange(60.0) % 7})
    m = ConcreteGMVAE(n_segments=np.int64(3), latent_dim=np.int64(2), epochs=np.int64(1), pretrain_epochs=np.int64(1),
                      hidden=np.array([8]), learning_rate=np.float32(1e-3), pretrain_noise=np.float32(0.2),
                      bf16=np.bool_(False), n_threads=0, patience=0, progress=False).fit(df)
    assert m.network_.K == 3
    m.save(tmp_path / "m")
    loaded = ConcreteGMVAE.load(tmp_path / "m")
    assert loaded.hidden == (8,) and loaded.n_threads == 0 and loaded.bf16 is False
    np.testing.assert_array_equal(loaded.predict(df), m.predict(df))


def test_a_large_seed_keeps_the_mixture_start():
    """Each mixture of the start is seeded seed * 1000 + i, which scikit-learn refuses past 2**32: every
    start was skipped and the fit fell back on k-means without a word."""
    from segmentation.synthetic import FEATURE_TYPES

    model, _, _ = _tiny_fit(seed=4_294_968)
    assert model.metrics_["init"]["start"] == "gmm-consensus", model.metrics_["init"]


def test_metadata_that_is_not_an_object_is_an_artifact_error(tmp_path):
    from segmentation import ConcreteGMVAE
    from segmentation.model.artifact import ArtifactError

    model, _, _ = _tiny_fit()
    model.save(tmp_path / "m")
    (tmp_path / "m" / "metadata.json").write_text("[1, 2]")
    with pytest.raises(ArtifactError, match="holds a JSON list, not an object"):
        ConcreteGMVAE.load(tmp_path / "m")
