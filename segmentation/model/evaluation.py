"""Clustering metrics and segment-usage diagnostics."""
from __future__ import annotations

import math
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


def independent_log_likelihood(model: Any, X: Any) -> float:
    """Mean log-likelihood per row of ``X`` under the simplest model of the same table: every feature
    on its own, with the decoder's own families (standard normal on the preprocessing's
    standardised scale, negative binomial, Bernoulli, categorical fitted to ``X``'s marginals),
    missing values masked exactly as in the model's likelihood. A trained GMVAE's ELBO on the same rows should not be far below it:
    one that is has learnt nothing usable (a diverged fit whose loss stayed finite), whatever its
    segment sizes look like. The promotion gate uses it as an absolute floor."""
    import torch

    from segmentation.model.likelihoods import (
        bernoulli_log_prob,
        categorical_log_prob,
        gaussian_log_prob,
        negative_binomial_log_prob,
    )

    data = model.preprocessor_.transform(X)
    n = int(data["x"].shape[0])
    if n == 0:
        return float("nan")
    total = torch.zeros(n, dtype=torch.float64)

    def masked_moments(x: torch.Tensor, m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: E306
        k = m.sum(0).clamp_min(1.0)
        mean = (x * m).sum(0) / k
        var = (((x - mean) ** 2) * m).sum(0) / k
        return mean, var

    if data["gaussian"].shape[1]:
        # the standard normal of the preprocessing's own standardisation (the training data's mean
        # and sd), not tonight's fitted variance: a feature that is constant tonight would give a
        # density no decoder reaches within its variance bounds, and refuse a healthy model
        x, m = data["gaussian"].double(), data["gaussian_mask"].double()
        zero = torch.zeros(x.shape[1], dtype=torch.float64)
        total += (gaussian_log_prob(x, zero, zero) * m).sum(1)
    if data["count"].shape[1]:
        x, m = data["count"].double(), data["count_mask"].double()
        mean, var = masked_moments(x, m)
        mean = mean.clamp(math.exp(-10.0), math.exp(15.0))  # the decoder's bounds on log mean
        # method of moments: var = mu + mu^2 / r; no overdispersion -> a large r (near Poisson),
        # within the decoder's own bounds on log r
        r = torch.where(var > mean, mean**2 / (var - mean).clamp_min(1e-9), torch.full_like(mean, 3e3))
        log_r = torch.log(r).clamp(-6.0, 8.0)
        total += (negative_binomial_log_prob(x, torch.log(mean).expand_as(x), log_r.expand_as(x)) * m).sum(1)
    if data["binary"].shape[1]:
        x, m = data["binary"].double(), data["binary_mask"].double()
        p, _ = masked_moments(x, m)
        p = p.clamp(1e-4, 1 - 1e-4)
        total += (bernoulli_log_prob(x, torch.log(p / (1 - p)).expand_as(x)) * m).sum(1)
    sizes = list(model.network_.layout.cat_sizes)
    if sizes:
        codes, mask = data["categorical"], data["categorical_mask"].double()
        for j, size in enumerate(sizes):
            c = codes[:, j].clamp_min(0)
            counts = torch.bincount(c[mask[:, j] > 0], minlength=size).double() + 0.5
            logits = torch.log(counts / counts.sum())
            total += categorical_log_prob(c, logits.expand(n, -1)) * mask[:, j]
    return float(total.mean())
