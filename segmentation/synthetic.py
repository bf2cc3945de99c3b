"""Synthetic CRM-shaped customers with planted segments, for tests and benchmarks.

Each planted segment has its own spend level (heavy-tailed, log-normal), visit rate (counts), a
satisfaction score (Gaussian), a promo-opt-in rate (binary) and a favourite region (categorical, with
a rare level mixed in). A share of entries is set missing at random.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

FEATURE_TYPES = {
    "spend": "money",
    "visits": "count",
    "satisfaction": "continuous",
    "promo_opt_in": "binary",
    "region": "categorical",
}
_REGIONS = ["north", "south", "east", "west", "central", "islands", "overseas", "online"]


def planted_customers(n: int = 4000, k: int = 4, seed: int = 0, missing: float = 0.1) -> tuple[pd.DataFrame, np.ndarray]:
    """Return (table, planted segment of each row); table has a ``customer_id`` column and the
    features of ``FEATURE_TYPES``."""
    if k > len(_REGIONS):
        raise ValueError(f"at most {len(_REGIONS)} planted segments")
    rng = np.random.default_rng(seed)
    seg = rng.integers(0, k, n)
    spend_mu = np.linspace(2.0, 2.0 + 1.6 * (k - 1), k)
    visit_rate = np.geomspace(1.0, 40.0, k)
    sat_mu = rng.permutation(np.linspace(-3.0, 3.0, k))
    promo = np.where(np.arange(k) % 2 == 0, 0.1, 0.9)
    df = pd.DataFrame({
        "customer_id": [f"C{i:07d}" for i in range(n)],
        "spend": np.round(np.exp(rng.normal(spend_mu[seg], 0.35)), 2),
        "visits": rng.poisson(visit_rate[seg]),
        "satisfaction": rng.normal(sat_mu[seg], 0.6),
        "promo_opt_in": (rng.random(n) < promo[seg]).astype("int64"),
        "region": np.array(_REGIONS)[seg].astype(object),
    })
    # a few customers from a rare region, to exercise pooling of rare levels
    rare = rng.random(n) < 0.002
    df.loc[rare, "region"] = "antarctica"
    for col in FEATURE_TYPES:
        holes = rng.random(n) < missing
        df.loc[holes, col] = None if col == "region" else np.nan
    return df, seg
