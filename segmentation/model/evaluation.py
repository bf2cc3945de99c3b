"""Clustering metrics and segment-usage diagnostics."""
from __future__ import annotations

from typing import Any

import numpy as np


def hungarian_accuracy(labels: np.ndarray, clusters: np.ndarray) -> float:
    """Accuracy under the best one-to-one mapping of clusters to labels (unmatched clusters count wrong)."""
    from scipy.optimize import linear_sum_assignment

    labels = np.asarray(labels)
    clusters = np.asarray(clusters)
    lab_ids, lab = np.unique(labels, return_inverse=True)
    cl_ids, cl = np.unique(clusters, return_inverse=True)
    table = np.zeros((len(cl_ids), len(lab_ids)), dtype=np.int64)
    np.add.at(table, (cl, lab), 1)
    rows, cols = linear_sum_assignment(-table)
    return float(table[rows, cols].sum() / len(labels))


def label_metrics(labels: Any, clusters: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    labels = np.asarray(labels)
    return {
        "hungarian_accuracy": hungarian_accuracy(labels, clusters),
        "nmi": float(normalized_mutual_info_score(labels, clusters)),
        "ari": float(adjusted_rand_score(labels, clusters)),
    }


def segment_usage(clusters: np.ndarray, n_segments: int, dominant_share: float = 0.5,
                  min_share: float = 0.0) -> dict[str, Any]:
    """Sizes and normalised entropy of the assignment; flags empty and dominant segments."""
    sizes = np.bincount(np.asarray(clusters, dtype=np.int64), minlength=n_segments)
    n = int(sizes.sum())
    shares = sizes / max(n, 1)
    nz = shares[shares > 0]
    entropy = float(-(nz * np.log(nz)).sum() / np.log(n_segments)) if n_segments > 1 and n else 0.0
    empty = [int(k) for k in np.where(sizes == 0)[0]]
    small = [int(k) for k in np.where((sizes > 0) & (shares < min_share))[0]]
    dominant = [int(k) for k in np.where(shares > dominant_share)[0]]
    warnings = []
    if empty:
        warnings.append(f"{len(empty)} of {n_segments} segments are empty: {empty}")
    if small:
        warnings.append(f"segments under {min_share:.1%} of rows: {small}")
    if dominant:
        warnings.append(f"segment {dominant[0]} holds {shares[dominant[0]]:.0%} of rows")
    return {
        "sizes": sizes.tolist(),
        "shares": [float(s) for s in shares],
        "entropy": entropy,
        "n_used": int((sizes > 0).sum()),
        "empty": empty,
        "small": small,
        "dominant": dominant,
        "warnings": warnings,
    }
