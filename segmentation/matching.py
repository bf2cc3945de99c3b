"""Stable segment ids: map tonight's clusters onto yesterday's segment ids.

Marketers build campaigns on segment ids, so a cluster that holds mostly the customers of
yesterday's segment 3 must be called 3 again. Clusters are matched to previous ids by a Hungarian
assignment that maximises the number of shared customers; clusters left unmatched (or sharing too
few customers) get new ids, never reusing an id issued before.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd


def match_segments(
    customer_ids: np.ndarray,
    clusters: np.ndarray,
    n_clusters: int,
    previous: pd.DataFrame | None,
    issued_ids: list[int] | None = None,
    min_overlap: float = 0.2,
) -> tuple[dict[int, int], dict[str, Any]]:
    """Return ({cluster: segment_id}, stability) for tonight's ``clusters`` of ``customer_ids``.

    ``previous``: yesterday's published assignments (customer_id, segment_id) or None on a first run.
    ``issued_ids``: every segment id ever issued (new ids start above the largest).
    A match needs at least ``min_overlap`` of the cluster's customers to come from that segment.
    """
    from scipy.optimize import linear_sum_assignment
    from sklearn.metrics import adjusted_rand_score

    issued = set(int(i) for i in (issued_ids or []))
    mapping: dict[int, int] = {}
    stability: dict[str, Any] = {"previous_customers": 0, "common_customers": 0}
    if previous is not None and len(previous):
        prev = pd.Series(previous["segment_id"].to_numpy(), index=previous["customer_id"].astype(str).to_numpy())
        issued |= set(int(i) for i in prev.unique())
        now = pd.Series(clusters, index=pd.Index(customer_ids).astype(str))
        common = now.index.intersection(prev.index)
        stability.update(previous_customers=int(len(prev)), common_customers=int(len(common)))
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
    next_id = max(issued, default=0) + 1
    for k in range(n_clusters):
        if k not in mapping:
            mapping[k] = next_id
            next_id += 1
    if stability["common_customers"]:
        seg_now = np.array([mapping[int(c)] for c in now[common].to_numpy()])
        seg_prev = prev[common].to_numpy()
        stability["moved_share"] = float(np.mean(seg_now != seg_prev))
        stability["moved_customers"] = int(np.sum(seg_now != seg_prev))
        stability["ari_vs_previous"] = float(adjusted_rand_score(seg_prev, seg_now))
        stability["new_segment_ids"] = sorted(int(v) for v in set(mapping.values()) - set(int(i) for i in prev.unique()))
        stability["retired_segment_ids"] = sorted(int(i) for i in set(int(i) for i in prev.unique()) - set(mapping.values()))
    return mapping, stability
