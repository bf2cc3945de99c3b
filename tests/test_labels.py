"""Segment labels kept from night to night (issue 8): a segment id keeps its published label unless
the segment really changed (the rules: ``segmentation/profiles.py``, above ``_label_all``); labels
stay unique among active segments; each profile and the report say whether a label was kept or
renamed, and why.

The profile tests run ``profile_segments`` on planted synthetic customers (milliseconds); the
last test runs real nights of the pipeline on the small synthetic run of ``test_pipeline.py`` and
reads the published tables and the report."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from segmentation.profiles import profile_segments, profiles_tables
from segmentation.spec import load_spec
from test_pipeline import (PROFILES, RUNS, S1, S2, S3, SEGMENTS, SYNTHETIC_SPEC, rows, synthetic_customers,
                           synthetic_night, synthetic_run)

COLUMNS = ["spend", "visits", "satisfaction", "promo_opt_in", "region"]


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory) -> Any:
    path = tmp_path_factory.mktemp("labels") / "spec.json"
    path.write_text(json.dumps(SYNTHETIC_SPEC))
    return load_spec(path)


@pytest.fixture(scope="module")
def customers() -> tuple[pd.DataFrame, np.ndarray]:
    from segmentation.synthetic import planted_customers

    df, seg = planted_customers(n=2000, k=4, seed=1, missing=0.05)
    return df, seg + 1  # segment ids 1..4


def published(profiles: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """What the next night reads back from segment_profiles (label, share, parsed summary)."""
    _, table = profiles_tables(profiles)
    return {r["segment_id"]: {"label": r["label"], "share": r["share"], "summary": json.loads(r["summary"])}
            for r in table.to_pylist()}


def like(df: pd.DataFrame, seg: np.ndarray, target: int, source: int, seed: int = 0) -> pd.DataFrame:
    """``df`` where the customers of segment ``target`` take on the make-up of segment ``source``."""
    out = df.copy()
    donors = df[seg == source].sample(n=int((seg == target).sum()), replace=True, random_state=seed)
    out.loc[seg == target, COLUMNS] = donors[COLUMNS].to_numpy()
    return out


def by_id(profiles: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    return {p["segment_id"]: p for p in profiles}


def assert_unique(profiles: list[dict[str, Any]]) -> None:
    from segmentation.profiles import _label_key

    keys = [_label_key(p["label"]) for p in profiles]
    assert len(set(keys)) == len(keys), [p["label"] for p in profiles]


def test_first_night_labels_are_new_and_carry_their_traits(spec, customers) -> None:
    df, seg = customers
    night1 = profile_segments(df, seg, spec)
    assert [p["label_change"] for p in night1] == [{"status": "new", "previous_label": None, "reason": "first run"}] * 4
    assert all(p["label_traits"] for p in night1)
    assert_unique(night1)
    summary = json.loads(profiles_tables(night1)[1]["summary"][0].as_py())
    assert summary["label_traits"] == night1[0]["label_traits"] and summary["label_change"]["status"] == "new"


def test_unchanged_nights_keep_every_label(spec, customers) -> None:
    df, seg = customers
    night1 = profile_segments(df, seg, spec)
    night2 = profile_segments(df, seg, spec, previous=published(night1))
    night3 = profile_segments(df.sample(frac=1.0, random_state=2).reset_index(drop=True),  # same customers, reordered
                              pd.Series(seg, index=df.index).sample(frac=1.0, random_state=2).to_numpy(), spec,
                              previous=published(night2))
    for night in (night2, night3):
        assert [p["label"] for p in night] == [p["label"] for p in night1]
        assert {p["label_change"]["status"] for p in night} == {"kept"}


def test_a_label_survives_a_rewording_when_the_segment_did_not_change(spec, customers) -> None:
    """Segment 1 changes completely, which moves the whole base: tonight's own wording for the
    other segments differs, but they did not change themselves, so they keep their labels."""
    df, seg = customers
    night1 = profile_segments(df, seg, spec)
    night2 = profile_segments(like(df, seg, target=1, source=4), seg, spec, previous=published(night1))
    fresh = profile_segments(like(df, seg, target=1, source=4), seg, spec)  # tonight's labels from scratch
    before, after, reworded = by_id(night1), by_id(night2), by_id(fresh)
    unchanged = [sid for sid in (2, 3, 4) if reworded[sid]["label"] != before[sid]["label"]]
    assert unchanged, "the scenario should reword at least one unchanged segment"
    for sid in (2, 3, 4):
        assert after[sid]["label"] == before[sid]["label"]
        assert after[sid]["label_change"]["status"] == "kept"
    for sid in unchanged:
        assert "has not really changed" in after[sid]["label_change"]["reason"]


def test_a_segment_whose_make_up_changed_is_renamed(spec, customers) -> None:
    df, seg = customers
    night1 = profile_segments(df, seg, spec)
    night2 = profile_segments(like(df, seg, target=1, source=2), seg, spec, previous=published(night1))
    before, after = by_id(night1), by_id(night2)
    change = after[1]["label_change"]
    assert change["status"] == "renamed" and change["previous_label"] == before[1]["label"]
    assert after[1]["label"] != before[1]["label"]
    assert change["reason"].startswith("its label no longer fits"), change
    # it now looks like segment 2, which keeps its label: the renamed one must read differently
    assert after[2]["label"] == before[2]["label"] and after[2]["label_change"]["status"] == "kept"
    assert_unique(night2)
    # the next night, unchanged, keeps the new label
    night3 = profile_segments(like(df, seg, target=1, source=2), seg, spec, previous=published(night2))
    assert [p["label"] for p in night3] == [p["label"] for p in night2]


def test_a_segment_that_merely_grew_keeps_its_label(spec, customers) -> None:
    df, seg = customers
    night1 = profile_segments(df, seg, spec)
    # a few of segment 3's customers move to 4 (same make-up as 4): 4 grows by under half
    moved = seg.copy()
    idx = np.flatnonzero(seg == 3)[:40]
    moved[idx] = 4
    night2 = profile_segments(like(df, moved, target=4, source=4), moved, spec, previous=published(night1))
    assert [p["label"] for p in night2] == [p["label"] for p in night1]


def test_label_collision_with_a_kept_label_is_resolved(spec, customers) -> None:
    """Last night segment 4 was published as "<what segment 1 reads like tonight>"; segment 4 has not
    changed, so it keeps that label; segment 1 (new tonight) must not take it, nor may any other."""
    df, seg = customers
    fresh = by_id(profile_segments(df, seg, spec))
    summary4 = published(list(fresh.values()))[4]
    previous = {4: {"label": fresh[1]["label"], "share": fresh[4]["share"], "summary": summary4["summary"]}}
    night = by_id(profile_segments(df, seg, spec, previous=previous))
    assert night[4]["label"] == fresh[1]["label"] and night[4]["label_change"]["status"] == "kept"
    assert night[1]["label"] != fresh[1]["label"]
    assert night[1]["label_change"]["status"] == "new"
    assert "is held by segment 4" in night[1]["label_change"]["reason"]
    assert_unique(list(night.values()))


def test_a_label_never_jumps_to_another_id_overnight(spec, customers) -> None:
    """Segment 1 is retired tonight and a new id 5 has exactly its make-up: 5 does not inherit 1's
    label (a campaign built on the label would silently switch segments)."""
    df, seg = customers
    night1 = by_id(profile_segments(df, seg, spec))
    renumbered = np.where(seg == 1, 5, seg)
    night2 = by_id(profile_segments(df, renumbered, spec, previous=published(list(night1.values()))))
    assert 1 not in night2 and night2[5]["label_change"]["status"] == "new"
    assert night2[5]["label"] != night1[1]["label"]
    assert "segment 1 (last night)" in night2[5]["label_change"]["reason"]
    assert [night2[s]["label"] for s in (2, 3, 4)] == [night1[s]["label"] for s in (2, 3, 4)]


def test_labels_published_before_they_carried_traits_are_kept(spec, customers) -> None:
    """Profiles published by an earlier version (no label_traits, no scaled means) still anchor the
    labels of an unchanged night."""
    df, seg = customers
    night1 = published(profile_segments(df, seg, spec))
    for entry in night1.values():
        entry["summary"] = {"features": {k: {kk: vv for kk, vv in v.items() if kk not in ("scaled_mean", "base_mean", "base_sd")}
                                         for k, v in entry["summary"]["features"].items()},
                            "distinctive": entry["summary"]["distinctive"]}
    night2 = profile_segments(df, seg, spec, previous=night1)
    assert [p["label"] for p in night2] == [night1[p["segment_id"]]["label"] for p in night2]
    assert {p["label_change"]["status"] for p in night2} == {"kept"}


# ---------------------------------------------------------------------------------------------
# through the pipeline: published tables and the report
# ---------------------------------------------------------------------------------------------
def test_labels_in_the_warehouse_and_the_report_across_nights(warehouse_url: str, tmp_path: Path) -> None:
    """Night 1 and 2 (same customers): every segment id keeps its label in ``segments`` and
    ``segment_profiles``. Night 3: the customers of one segment take on another's make-up; it is
    renamed, the run record and the report say so ("renamed from 'A' to 'B'"), the others keep theirs."""
    import pyarrow.parquet as pq

    from segmentation import pipeline
    from segmentation.report import build_report

    df = synthetic_customers()
    night1 = synthetic_night(warehouse_url, synthetic_run(tmp_path, S1, df))
    labels1 = {r["segment_id"]: r["label"] for r in rows(warehouse_url, SEGMENTS)}
    assert {s["label_status"] for s in night1["segments"]} == {"new"}

    run2 = synthetic_run(tmp_path, S2, df)
    night2 = synthetic_night(warehouse_url, run2)
    assert {r["segment_id"]: r["label"] for r in rows(warehouse_url, SEGMENTS)} == labels1
    assert {s["label_status"] for s in night2["segments"]} == {"kept"}
    page2 = Path(pipeline.report(warehouse_url, run2)["report"]).read_text()
    assert "No segment was renamed" in page2 and "renamed from" not in page2

    # night 3: the largest segment's customers take on the make-up of the smallest one
    store = pipeline._store(run2)
    assignments = pq.read_table(store.run_file(S2.isoformat(), "assignments.parquet")).to_pandas()
    seg = assignments.set_index("customer_id")["segment_id"].reindex(df["customer_id"]).to_numpy()
    sizes = pd.Series(seg).value_counts()
    target, source = int(sizes.index[0]), int(sizes.index[-1])
    df3 = like(df, seg, target=target, source=source)
    run3 = synthetic_run(tmp_path, S3, df3)
    pq.write_table(pq.read_table(store.run_file(S2.isoformat(), "assignments.parquet")),
                   store.run_dir(S3.isoformat()) / "assignments.parquet")
    kept = dict(night2["training"], mode="keep", promoted=True)  # score as night 2 did: the same ids
    pipeline.publish(warehouse_url, run3, kept, {"model_version": kept["scoring_version"], "stability": {}})

    labels3 = {r["segment_id"]: r["label"] for r in rows(warehouse_url, SEGMENTS)}
    assert labels3[target] != labels1[target]
    assert {s: labels3[s] for s in labels1 if s != target} == {s: labels1[s] for s in labels1 if s != target}
    assert len(set(labels3.values())) == len(labels3)
    summary = {r["segment_id"]: json.loads(r["summary"]) for r in rows(warehouse_url, PROFILES, "WHERE run_date = ?", [S3])}
    change = summary[target]["label_change"]
    assert change["status"] == "renamed" and change["previous_label"] == labels1[target] and change["reason"]
    record = rows(warehouse_url, RUNS, "WHERE run_id = ?", [f"synthetic-{S3.isoformat()}"])[0]
    assert json.loads(record["metrics"])["segments"][str(target)]["label_change"]["status"] == "renamed"
    page3 = build_report(warehouse_url, run3).read_text()
    changes = page3.split('id="changes"')[1]
    assert f"{target}: renamed from “{labels1[target]}” to “{labels3[target]}”" in changes
    assert "its label no longer fits" in changes or "moved by" in changes


def _new_vs_established() -> tuple[dict[str, Any], pd.DataFrame, np.ndarray]:
    """Two segments: 300 brand-new customers (all spend recent, most with a single order, so no gap
    between orders) and 700 established ones."""
    rng = np.random.default_rng(0)
    new, old = 300, 700
    gap_new = np.where(rng.random(new) < 0.8, np.nan, rng.uniform(5, 15, new))  # 80% one order
    df = pd.DataFrame({
        "customer_id": [f"C{i}" for i in range(new + old)],
        "tenure": np.r_[rng.integers(1, 60, new), rng.integers(200, 700, old)],
        "recent_share": np.r_[np.ones(new), rng.uniform(0, 0.6, old)],
        "gap": np.r_[gap_new, rng.uniform(30, 120, old)],
        "spend": np.r_[rng.lognormal(4, 0.5, new), rng.lognormal(6, 0.5, old)],
    })
    spec = {
        "name": "implied", "entity_key": "customer_id",
        "features_relation": {"schema": "features", "table": "customer_features"},
        "features": [
            {"name": "tenure", "type": "count", "high_label": "long-standing", "low_label": "new customers"},
            {"name": "recent_share", "type": "continuous", "high_label": "spending more lately",
             "low_label": "spending less lately", "implied_by": ["tenure:lower"]},
            {"name": "gap", "type": "continuous", "high_label": "long gaps between orders", "low_label": "order regularly"},
            {"name": "spend", "type": "money", "high_label": "big spenders", "low_label": "small spenders"},
        ],
    }
    return spec, df, np.r_[np.ones(new, int), np.full(old, 2)]


def test_labels_leave_out_what_goes_without_saying() -> None:
    """A trait implied by one already in the label ('spending more lately' after 'new customers'),
    and a trait of a feature most of the segment has no value for ('order regularly' of a segment
    that mostly ordered once), do not name the segment; the next trait does."""
    from segmentation.profiles import _trait_words
    from segmentation.spec import parse_spec

    raw, df, seg = _new_vs_established()
    spec = parse_spec(raw)
    effects = [("tenure", -2.0), ("recent_share", 1.5), ("gap", -1.2), ("spend", -1.0)]
    feats = {"tenure": {"missing_share": 0.0}, "recent_share": {"missing_share": 0.0},
             "gap": {"missing_share": 0.8}, "spend": {"missing_share": 0.0}}
    keys = lambda sp, f, **kw: [k for k, _ in _trait_words(sp, effects, f, **kw)]  # noqa: E731
    assert keys(spec, feats) == ["tenure:lower", "spend:lower"]
    # also when the implied trait is the stronger one (seen on the demo: "Spending more lately, new
    # customers")
    stronger = [("recent_share", 2.5), ("tenure", -2.0), ("gap", -1.2), ("spend", -1.0)]
    assert [k for k, _ in _trait_words(spec, stronger, feats)] == ["tenure:lower", "spend:lower"]
    assert keys(spec, dict(feats, gap={"missing_share": 0.2})) == ["tenure:lower", "gap:lower", "spend:lower"]
    assert keys(spec, feats, legacy=True) == ["tenure:lower", "recent_share:higher", "gap:lower", "spend:lower"]
    raw_plain = json.loads(json.dumps(raw))
    raw_plain["features"][1].pop("implied_by")
    assert keys(parse_spec(raw_plain), feats)[:2] == ["tenure:lower", "recent_share:higher"]
    # end to end
    newcomers = by_id(profile_segments(df, seg, spec))[1]
    assert "spending more lately" not in newcomers["label"] and "order regularly" not in newcomers["label"]
    assert newcomers["label"].startswith("New customers"), newcomers["label"]


@pytest.mark.parametrize("implied_by, problem", [
    (["tenure:up"], "must read 'feature:higher' or 'feature:lower'"),
    (["nosuch:lower"], "names no declared feature 'nosuch'"),
    (["recent_share:higher"], "names the feature itself"),
    ("tenure", "must read 'feature:higher'"),
    ([3], "must be a list of traits"),
])
def test_implied_by_is_checked(implied_by: Any, problem: str) -> None:
    from segmentation.spec import SpecError, parse_spec

    raw, _, _ = _new_vs_established()
    raw["features"][1]["implied_by"] = implied_by
    with pytest.raises(SpecError, match="recent_share|features\\[1\\]") as err:
        parse_spec(raw, "spec.yaml")
    assert problem in str(err.value)
