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
