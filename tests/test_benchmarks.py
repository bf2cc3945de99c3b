"""Smoke tests of the benchmark helpers (benchmarks/): seconds, no timing claims.

- the synthetic CRM generator is deterministic, has the declared mixed types and missing values, and
  its SQL features model gives exactly the spec's columns (the pipeline's feature check);
- the roofline's matmul recorder sees the same FLOPs as torch's FlopCounterMode;
- the peers' target logic and the RESULTS.md generator run on small inputs (an empty results folder
  included: every section says what to run instead of failing).
"""
from __future__ import annotations

import datetime as dt
import json
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))

AS_OF = dt.datetime(2026, 12, 1)


def test_crm_generator_is_deterministic_and_mixed_type() -> None:
    import crm_synth

    a, seg_a = crm_synth.generate_chunk(0, 5000, as_of=AS_OF, seed=3)
    b, seg_b = crm_synth.generate_chunk(0, 5000, as_of=AS_OF, seed=3)
    assert a.equals(b) and np.array_equal(seg_a, seg_b)
    assert a.schema == crm_synth.RAW_SCHEMA_ARROW
    assert a.column("customer_id").to_pylist()[:2] == ["C000000000", "C000000001"]
    assert len(set(a.column("customer_id").to_pylist())) == 5000
    df = a.to_pandas()
    assert set(np.unique(seg_a)) == set(range(crm_synth.N_PLANTED))
    assert 0.1 < df["email_open_rate"].isna().mean() < 0.3          # missing at random
    assert (df["discount_share"].isna() == (df["orders_12m"] == 0)).all()  # missing for a reason
    spend = df.loc[df["orders_12m"] > 0, "total_spend_12m"]
    assert spend.max() > 20 * spend.median()                          # heavy-tailed money
    assert df["country"].nunique() > 30 and df["acquisition_channel"].isna().any()
    later, _ = crm_synth.generate_chunk(5000, 10, as_of=AS_OF, seed=3)
    assert later.column("customer_id")[0].as_py() == "C000005000"


def test_crm_spec_and_features_sql_match(tmp_path: Path) -> None:
    import duckdb

    import crm_synth
    from segmentation.spec import load_spec

    path = tmp_path / "spec.yaml"
    path.write_text(crm_synth.spec_yaml(n_segments=5, output_schema="seg_bench"))
    spec = load_spec(path)
    assert spec.feature_types == crm_synth.FEATURE_TYPES
    assert spec.model["n_segments"] == 5 and spec.output_schema == "seg_bench"
    raw, _ = crm_synth.generate_chunk(0, 2000, as_of=AS_OF)
    con = duckdb.connect()
    con.register("raw_arrow", raw)
    con.execute("CREATE TABLE raw_t AS SELECT * FROM raw_arrow")
    con.execute(crm_synth.features_sql(AS_OF, raw="raw_t", features="feat_t"))
    feats = con.sql("SELECT * FROM feat_t").to_arrow_table()
    assert feats.column_names == [spec.entity_key, *spec.feature_names]
    assert feats.num_rows == 2000
    df = feats.to_pandas()
    both = df[["recency_days", "tenure_days"]].dropna()
    assert (both["recency_days"] >= 0).all() and (both["recency_days"] <= both["tenure_days"]).all()
    assert df["avg_order_value"].isna().sum() == (df["orders_12m"] == 0).sum()


def test_roofline_recorder_counts_the_same_flops_as_flop_counter() -> None:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    import roofline
    from segmentation.model.network import GMVAENetwork
    from segmentation.model.preprocessing import TablePreprocessor
    from segmentation.model.training import compute_loss
    from segmentation.synthetic import FEATURE_TYPES, planted_customers

    df, _ = planted_customers(n=300, k=3)
    pre = TablePreprocessor(FEATURE_TYPES).fit(df)
    batch = pre.transform(df.iloc[:64])
    torch.manual_seed(0)
    for est in ("concrete", "exact"):
        net = GMVAENetwork(pre.layout, 4, 3, (16, 8))
        calls = roofline.record_matmuls(net, est, batch)
        with FlopCounterMode(display=False) as fc:
            compute_loss(net, est, batch, tau=1.0, kl_weight=1.0).loss.backward()
        assert sum(c["flops"] for c in calls) == fc.get_total_flops() > 0
    assert roofline.time_matmul(1, 8, 8, 8, min_seconds=0.01, repeats=2) > 0


def test_peer_targets_count_wins_per_covariance_type() -> None:
    import peers

    def summ(c, d, f):
        return {"concrete": {"ari": {"mean": c}}, "gmm_diag": {"ari": {"mean": d}}, "gmm_full": {"ari": {"mean": f}}}

    res = {"tabular": {"a": {"summary": summ(0.5, 0.4, 0.6)}, "b": {"summary": summ(0.1, 0.2, 0.0)},
                       "c": {"summary": summ(0.3, 0.3, 0.9)}}}
    t = peers.targets(res)
    assert t["concrete_ari>=gmm_diag_on_at_least_half"] == {"wins": 2, "sets": 3, "met": True}
    assert t["concrete_ari>=gmm_full_on_at_least_half"] == {"wins": 1, "sets": 3, "met": False}


def test_results_md_on_an_empty_folder_says_what_to_run(tmp_path: Path) -> None:
    import results_md

    out = tmp_path / "RESULTS.md"
    (tmp_path / "empty").mkdir()
    assert results_md.main(["--results", str(tmp_path / "empty"), "--out", str(out)]) == 0
    text = out.read_text()
    assert "# Benchmark results" in text and "not measured yet" in text
    assert "python benchmarks/scale.py" in text and "python benchmarks/roofline.py" in text
    # a mistyped folder is an error, not a page of "not run yet" written over the real one
    with pytest.raises(SystemExit) as info:
        results_md.main(["--results", str(tmp_path / "typo"), "--out", str(out)])
    assert info.value.code == 2


def test_results_md_names_unreadable_and_partial_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Found by the break-it review: a truncated file read as "not run yet", and a file lacking an
    entry crashed the whole page. Both are now named on the page and in the exit status."""
    import results_md

    res = tmp_path / "res"
    res.mkdir()
    committed = (BENCH / "results" / "k_scaling.json").read_text()
    (res / "k_scaling.json").write_text(committed[: len(committed) // 2])
    (res / "roofline.json").write_text(json.dumps({"command": "python benchmarks/roofline.py"}))
    out = tmp_path / "R.md"
    assert results_md.main(["--results", str(res), "--out", str(out), "--plots", str(tmp_path)]) == 1
    text = out.read_text()
    assert "_Unreadable: " in text and "k_scaling.json is not readable JSON" in text
    assert "Could not render the roofline section" in text
    assert "## 2. Quality against peers" in text   # the rest of the page is still there
    err = capsys.readouterr().err
    assert "k_scaling.json" in err and "roofline" in err


def test_results_md_renders_the_committed_results(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    import results_md

    results = BENCH / "results"
    if not (results / "k_scaling.json").exists():
        pytest.skip("no committed k_scaling.json")
    out = tmp_path / "R.md"
    assert results_md.main(["--results", str(results), "--out", str(out), "--plots", str(tmp_path)]) == 0
    text = out.read_text()
    assert "## 1. K-scaling" in text and "| target | measured | met |" in text
    assert (tmp_path / "k_scaling.png").stat().st_size > 1000
    for line in text.splitlines():  # every image link points at a file that exists
        if line.startswith("!["):
            assert (out.parent / line.split("(")[1].rstrip(")")).exists(), line
    json.dumps(text)  # plain text only
