"""Stable segment ids: map tonight's clusters onto yesterday's segment ids.

Marketers build campaigns on segment ids, so a cluster that holds mostly the customers of
yesterday's segment 3 must be called 3 again. Clusters are matched to previous ids by a Hungarian
assignment that maximises the number of shared customers. Clusters left unmatched (sharing too few
customers, e.g. after a retrain that re-partitioned part of the base, or a night whose customers are
mostly new) then fall back on the similarity of cluster prototypes: each cluster's mean features
against each unmatched previous segment's published profile, Hungarian again on the distance, a
match only when the two are close (``max_prototype_distance``). What is still unmatched gets a
new id, never reusing an id issued before.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import pandas as pd


def match_segments(
    customer_ids: np.ndarray,
    clusters: np.ndarray,
    n_clusters: int,
    previous: pd.DataFrame | None,
    issued_ids: list[int] | None = None,
    min_overlap: float = 0.2,
    prototypes: Callable[[list[int]], tuple[dict[int, np.ndarray], dict[int, np.ndarray]]] | None = None,
    max_prototype_distance: float = 0.5,
) -> tuple[dict[int, int], dict[str, Any]]:
    """Return ({cluster: segment_id}, stability) for tonight's ``clusters`` of ``customer_ids``.

    ``previous``: yesterday's published assignments (customer_id, segment_id) or None on a first run.
    ``issued_ids``: every segment id ever issued (new ids start above the largest).
    A match needs at least ``min_overlap`` of the cluster's customers to come from that segment.
    ``prototypes(unmatched_clusters)``: called only when some cluster is left unmatched, returns
    ({cluster: vector}, {previous segment id: vector}), features on a common standardised scale;
    a cluster then takes a still-unmatched previous id whose vector lies within
    ``max_prototype_distance`` (root mean square over the features).
    """
    from scipy.optimize import linear_sum_assignment

    issued = set(int(i) for i in (issued_ids or []))
    mapping: dict[int, int] = {}
    stability: dict[str, Any] = {}
    prev, now, common = _aligned(customer_ids, clusters, previous)
    if prev is not None:
        issued |= set(int(i) for i in prev.unique())
        if len(common):
            prev_ids = np.sort(prev.unique())
            col = {int(s): j for j, s in enumerate(prev_ids)}
            table = np.zeros((n_clusters, len(prev_ids)), dtype=np.int64)
            np.add.at(table, (now[common].to_numpy(), [col[int(s)] for s in prev[common].to_numpy()]), 1)
            rows, cols = linear_sum_assignment(-table)
            sizes = np.bincount(now.to_numpy(), minlength=n_clusters)
            for r, c in zip(rows, cols):
                if table[r, c] > 0 and table[r, c] >= min_overlap * max(sizes[r], 1):
                    mapping[int(r)] = int(prev_ids[c])
    if prototypes is not None and prev is not None:
        taken = set(mapping.values())
        present = set(int(k) for k in np.unique(np.asarray(clusters)))
        by_prototype = match_prototypes([k for k in range(n_clusters) if k not in mapping and k in present],
                                        sorted(int(i) for i in prev.unique() if int(i) not in taken),
                                        prototypes, max_prototype_distance)
        mapping.update({k: v["segment_id"] for k, v in by_prototype.items()})
        stability["matched_by_prototype"] = {str(k): v for k, v in by_prototype.items()}
    next_id = max(issued, default=0) + 1
    for k in range(n_clusters):
        if k not in mapping:
            mapping[k] = next_id
            next_id += 1
    stability.update(_stability(prev, now, common, clusters, mapping))
    return mapping, stability


def _aligned(customer_ids, clusters, previous: pd.DataFrame | None):
    """(previous segment per customer, tonight's cluster per customer, customers in both), ids as
    text; (None, None, None) on a first night."""
    if previous is None or not len(previous):
        return None, None, None
    prev = pd.Series(previous["segment_id"].to_numpy(), index=previous["customer_id"].astype(str).to_numpy())
    now = pd.Series(np.asarray(clusters), index=pd.Index(customer_ids).astype(str))
    return prev, now, now.index.intersection(prev.index)


def segment_stability(customer_ids, clusters, previous: pd.DataFrame | None, mapping: dict[int, int]) -> dict[str, Any]:
    """How tonight's segments (``mapping`` of ``clusters``) compare with ``previous``: customers in
    common, the share and number that changed segment id, ARI, new and retired ids. Computed from
    the mapping that is published, whichever way it was chosen."""
    return _stability(*_aligned(customer_ids, clusters, previous), clusters, mapping)


def _stability(prev, now, common, clusters, mapping: dict[int, int]) -> dict[str, Any]:
    from sklearn.metrics import adjusted_rand_score

    out: dict[str, Any] = {"previous_customers": 0, "common_customers": 0}
    if prev is None:
        return out
    out.update(previous_customers=int(len(prev)), common_customers=int(len(common)))
    if len(common):
        seg_now = np.array([mapping[int(c)] for c in now[common].to_numpy()])
        seg_prev = prev[common].to_numpy()
        out["moved_share"] = float(np.mean(seg_now != seg_prev))
        out["moved_customers"] = int(np.sum(seg_now != seg_prev))
        out["ari_vs_previous"] = float(adjusted_rand_score(seg_prev, seg_now))
    # ids of the clusters that hold customers tonight (an empty cluster is no segment)
    used = set(mapping[int(k)] for k in np.unique(np.asarray(clusters)))
    before = set(int(i) for i in prev.unique())
    out["new_segment_ids"] = sorted(int(v) for v in used - before)
    out["retired_segment_ids"] = sorted(int(i) for i in before - used)
    return out


def match_prototypes(clusters: list[int], previous_ids: list[int],
                     prototypes: Callable[[list[int]], tuple[dict[int, np.ndarray], dict[int, np.ndarray]]],
                     max_distance: float) -> dict[int, dict[str, Any]]:
    """{cluster: {"segment_id", "distance"}} for the unmatched ``clusters`` whose prototype lies
    within ``max_distance`` of an unmatched previous segment's (one-to-one, nearest overall)."""
    from scipy.optimize import linear_sum_assignment

    if not clusters or not previous_ids:
        return {}
    now, before = prototypes(clusters)
    rows = [k for k in clusters if k in now]
    cols = [i for i in previous_ids if i in before]
    if not rows or not cols:
        return {}
    dist = np.full((len(rows), len(cols)), np.inf)
    for a, k in enumerate(rows):
        for b, i in enumerate(cols):
            d = np.asarray(now[k], dtype="float64") - np.asarray(before[i], dtype="float64")
            ok = np.isfinite(d)
            if ok.sum():  # features one side has no value for (all missing) are left out
                dist[a, b] = float(np.sqrt(np.mean(d[ok] ** 2)))
    finite = np.where(np.isfinite(dist), dist, 1e9)
    out = {}
    for a, b in zip(*linear_sum_assignment(finite)):
        if dist[a, b] <= max_distance:
            out[int(rows[a])] = {"segment_id": int(cols[b]), "distance": round(float(dist[a, b]), 4)}
    return out
