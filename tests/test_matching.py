"""Stable segment ids (``segmentation.matching``): tonight's clusters take yesterday's ids by the
customers they share, and, when a cluster shares too few (a night of mostly new customers, a
retrain that re-partitioned part of the base), by how close its prototype lies to a previous
segment's. Pure functions on small hand-built inputs, so each rule is seen on its own."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from segmentation.matching import match_prototypes, match_segments


def _previous(groups: dict[int, list[str]]) -> pd.DataFrame:
    return pd.DataFrame([(c, sid) for sid, ids in groups.items() for c in ids], columns=["customer_id", "segment_id"])


def test_overlap_keeps_ids_and_counts_the_movers() -> None:
    prev = _previous({7: [f"a{i}" for i in range(10)], 9: [f"b{i}" for i in range(10)]})
    ids = [f"a{i}" for i in range(10)] + [f"b{i}" for i in range(10)]
    clusters = [1] * 9 + [0] + [0] * 10          # cluster 1 ~ segment 7, cluster 0 ~ segment 9, one mover
    mapping, st = match_segments(ids, clusters, 2, prev, issued_ids=[7, 9])
    assert mapping == {1: 7, 0: 9}
    assert st["moved_customers"] == 1 and st["common_customers"] == 20
    assert st["new_segment_ids"] == [] and st["retired_segment_ids"] == []
    assert "matched_by_prototype" not in st      # no fallback offered, none recorded


def test_clusters_of_new_customers_take_the_nearest_previous_ids_by_prototype() -> None:
    prev = _previous({1: ["a", "b"], 2: ["c", "d"], 3: ["e", "f"]})
    ids = [f"new{i}" for i in range(30)]          # nobody in common with last night
    clusters = [0] * 10 + [1] * 10 + [2] * 10
    asked: list[list[int]] = []

    def prototypes(unmatched: list[int]):
        asked.append(list(unmatched))
        now = {0: np.array([2.0, -1.0]), 1: np.array([0.1, 0.0]), 2: np.array([9.0, 9.0])}
        before = {1: np.array([0.0, 0.05]), 2: np.array([2.1, -0.9]), 3: np.array([-3.0, 4.0])}
        return now, before

    mapping, st = match_segments(ids, clusters, 3, prev, issued_ids=[1, 2, 3], prototypes=prototypes)
    assert asked == [[0, 1, 2]]
    # 0 is segment 2's twin, 1 segment 1's; 2 is far from segment 3, so it is a new segment (4)
    assert mapping == {0: 2, 1: 1, 2: 4}
    assert set(st["matched_by_prototype"]) == {"0", "1"}
    assert st["matched_by_prototype"]["0"]["segment_id"] == 2
    assert st["matched_by_prototype"]["0"]["distance"] == pytest.approx(0.1)
    assert st["new_segment_ids"] == [4] and st["retired_segment_ids"] == [3]


def test_prototypes_only_fill_what_the_overlap_left_unmatched() -> None:
    prev = _previous({1: [f"a{i}" for i in range(10)], 2: [f"b{i}" for i in range(10)]})
    ids = [f"a{i}" for i in range(10)] + [f"n{i}" for i in range(10)]
    clusters = [0] * 10 + [1] * 10

    def prototypes(unmatched: list[int]):
        assert unmatched == [1]
        # cluster 1 is nearest to segment 1's prototype, but segment 1 is taken by cluster 0's
        # customers: only the still-unmatched segment 2 is on offer
        return {1: np.array([0.0, 0.3])}, {2: np.array([0.0, 0.0])}

    mapping, st = match_segments(ids, clusters, 2, prev, issued_ids=[1, 2], prototypes=prototypes)
    assert mapping == {0: 1, 1: 2}
    assert st["matched_by_prototype"] == {"1": {"segment_id": 2, "distance": pytest.approx(np.sqrt(0.045), abs=1e-4)}}


def test_no_fallback_on_a_first_night() -> None:
    def prototypes(unmatched: list[int]):
        raise AssertionError("a first night has no previous prototypes to ask for")

    mapping, st = match_segments(["a", "b", "c"], [0, 1, 1], 2, None, prototypes=prototypes)
    assert mapping == {0: 1, 1: 2}


def test_prototype_distance_ignores_features_one_side_lacks_and_respects_the_limit() -> None:
    got = match_prototypes([0, 1], [5, 6],
                           lambda u: ({0: np.array([1.0, np.nan]), 1: np.array([np.nan, np.nan])},
                                      {5: np.array([1.2, 3.0]), 6: np.array([0.0, 0.0])}),
                           max_distance=0.5)
    # cluster 0 vs segment 5 on the first feature only (0.2); cluster 1 has no usable feature
    assert got == {0: {"segment_id": 5, "distance": pytest.approx(0.2)}}
    assert match_prototypes([0], [5], lambda u: ({0: np.array([3.0])}, {5: np.array([0.0])}), 0.5) == {}
