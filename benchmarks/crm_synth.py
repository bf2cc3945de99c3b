"""A synthetic CRM customers table with planted segments, for the scale benchmark (benchmarks/scale.py).

``segmentation.synthetic.planted_customers`` (five features, for tests) is too small a picture of a
CRM; this generator makes a raw ``customers`` table shaped like a real CRM export, in chunks, so
that millions of rows never sit in memory at once:

- planted segments (personas) with unequal sizes: 30 % dormant one-timers down to 3 % mobile-first;
- heavy-tailed money (log-normal spend per persona, plus a Pareto tail of "whales");
- counts (negative binomial orders, zero-inflated support tickets);
- timestamps (first purchase, last order) from which the features model derives tenure and recency;
- rare categories (60 countries with a Zipf tail, levels below the pooling threshold, and a trickle of
  levels never seen before, ``XX-<n>``) and missing values (real ones: no order, so no
  average order value; and at random: no e-mail address on file, unknown channel);
- binary flags and bounded shares.

The raw table is turned into one row of features per customer by ``FEATURES_SQL`` (DuckDB), which
stands in for the product's dbt model: derived recency, tenure and average order value. ``spec_yaml``
writes the matching feature spec (``segmentation/spec.py``) so the real pipeline steps run on it.

Everything is a pure function of (seed, chunk index, as_of): the same rows on every machine.

    for table, planted in iter_chunks(1_000_000, as_of=datetime(2026, 12, 1)):
        ...   # pyarrow.Table of <= 250,000 raw rows, numpy array of planted segment ids
"""
from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa

from validation.rules import DEMO_SOURCE_RULES

SOURCE = "customers"            # the spec's source name (see spec_yaml)
RAW_SCHEMA, RAW_TABLE = "raw", "crm_customers"
FEATURES_SCHEMA, FEATURES_TABLE = "features", "crm_customer_features"
CHUNK_ROWS = 250_000

# ---- the personas (planted segments) ---------------------------------------------------------
# One entry per planted segment; arrays below are indexed by segment. Shares sum to 1.
PERSONAS = [
    # name,                share, orders, spend mu, recency d, tenure d, tickets, open a,b, disc a,b, app,  news, session
    ("dormant one-timers",  0.30,   0.3,    3.2,      420,       900,      0.05,    1, 7,    2, 4,    0.05, 0.15, 3.0),
    ("bargain hunters",     0.20,   4.0,    4.3,       60,       700,      0.3,     3, 4,    7, 2,    0.35, 0.45, 6.0),
    ("loyal regulars",      0.15,  12.0,    5.6,       12,      1500,      0.4,     4, 3,    1, 8,    0.80, 0.70, 9.0),
    ("new sign-ups",        0.12,   1.2,    3.8,       15,        30,      0.2,     3, 3,    3, 3,    0.50, 0.60, 5.0),
    ("VIP whales",          0.08,  30.0,    7.6,        6,      2200,      2.5,     3, 3,    1, 12,   0.70, 0.40, 14.0),
    ("support-heavy",       0.07,   5.0,    4.9,       40,       800,      7.0,     1, 5,    3, 5,    0.30, 0.20, 7.0),
    ("e-mail engaged",      0.05,   3.0,    4.6,       35,      1000,      0.3,     9, 2,    4, 4,    0.25, 0.97, 4.0),
    ("mobile-first",        0.03,   8.0,    4.8,        9,       400,      0.5,     3, 4,    3, 5,    0.98, 0.30, 25.0),
]
N_PLANTED = len(PERSONAS)
_P = {k: np.array([p[i] for p in PERSONAS], dtype=np.float64) for i, k in enumerate(
    ["name", "share", "orders", "spend_mu", "recency", "tenure", "tickets", "open_a", "open_b", "disc_a", "disc_b",
     "app", "news", "session"]) if k != "name"}

CHANNELS = ["organic_search", "paid_search", "paid_social", "affiliate", "referral", "app_store", "retail_store"]
# channel preference per persona (rows: personas, cols: CHANNELS), normalised below
_CHANNEL_W = np.array([
    [5, 3, 1, 1, 1, 0.2, 3],
    [2, 3, 3, 5, 1, 0.5, 1],
    [3, 2, 1, 1, 4, 1, 2],
    [1, 3, 6, 1, 1, 2, 0.5],
    [2, 1, 0.5, 0.2, 5, 1, 3],
    [3, 2, 2, 1, 1, 1, 2],
    [3, 1, 1, 1, 2, 0.5, 1],
    [0.5, 1, 3, 0.5, 1, 8, 0.2],
])
_CHANNEL_W = _CHANNEL_W / _CHANNEL_W.sum(1, keepdims=True)
TIERS = ["free", "basic", "pro", "enterprise"]
_TIER_W = np.array([
    [8, 2, 0.3, 0.01],
    [3, 6, 1, 0.05],
    [1, 4, 5, 0.5],
    [5, 4, 1, 0.05],
    [0.1, 1, 4, 5],
    [2, 4, 3, 0.5],
    [3, 5, 2, 0.1],
    [2, 5, 3, 0.1],
])
_TIER_W = _TIER_W / _TIER_W.sum(1, keepdims=True)
N_COUNTRIES = 60
COUNTRIES = [f"country_{i:02d}" for i in range(N_COUNTRIES)]
_COUNTRY_P = 1.0 / np.arange(1, N_COUNTRIES + 1) ** 1.6   # Zipf: the last levels are rare
_COUNTRY_P /= _COUNTRY_P.sum()
NEW_LEVEL_RATE = 2e-5          # rows with a country level never seen before ("XX-<n>")
WHALE_RATE = 0.003             # rows whose spend is multiplied by a Pareto(1.2) factor

# ---- the features (spec) ---------------------------------------------------------------------
# name, type, checks (YAML flow mapping), description
FEATURES: list[tuple[str, str, str, str]] = [
    ("recency_days", "count", "{min: 0, max_null_share: 0.05}", "Days since the last order (empty: never ordered)."),
    ("tenure_days", "count", "{min: 0, max_null_share: 0.05}", "Days since the first purchase (empty: never ordered)."),
    ("orders_12m", "count", "{min: 0}", "Orders in the last 12 months."),
    ("total_spend_12m", "money", "{min: 0}", "Spend in the last 12 months (heavy-tailed)."),
    ("avg_order_value", "money", "{min: 0, max_null_share: 0.6}", "Spend per order (empty: no order in 12 months)."),
    ("support_tickets_12m", "count", "{min: 0}", "Support tickets opened in the last 12 months."),
    ("email_open_rate", "continuous", "{min: 0, max: 1, max_null_share: 0.5}", "Share of e-mails opened (empty: no address)."),
    ("discount_share", "continuous", "{min: 0, max: 1, max_null_share: 0.6}", "Share of order value bought on discount."),
    ("avg_session_minutes", "money", "{min: 0, max_null_share: 0.2}", "Average session length in the app or site."),
    ("has_mobile_app", "binary", "{min: 0, max: 1}", "1 if the customer has installed the app."),
    ("newsletter_opt_in", "binary", "{min: 0, max: 1, max_null_share: 0.1}", "1 if opted in to the newsletter."),
    ("country", "categorical", "{severity: warning}", "Country on file (60 levels, Zipf tail, a few never seen before)."),
    ("acquisition_channel", "categorical", "{max_null_share: 0.1}", "How the customer was acquired."),
    ("plan_tier", "categorical", "{allowed: [free, basic, pro, enterprise]}", "Subscription tier."),
]
FEATURE_TYPES = {n: t for n, t, _, _ in FEATURES}

RAW_SCHEMA_ARROW = pa.schema([
    pa.field("customer_id", pa.string(), nullable=False),
    pa.field("country", pa.string(), nullable=False),
    pa.field("first_purchase_at", pa.timestamp("us")),
    pa.field("last_order_at", pa.timestamp("us")),
    pa.field("orders_12m", pa.int64()),
    pa.field("total_spend_12m", pa.float64()),
    pa.field("support_tickets_12m", pa.int64()),
    pa.field("email_open_rate", pa.float64()),
    pa.field("discount_share", pa.float64()),
    pa.field("avg_session_minutes", pa.float64()),
    pa.field("has_mobile_app", pa.int64()),
    pa.field("newsletter_opt_in", pa.int64()),
    pa.field("acquisition_channel", pa.string()),
    pa.field("plan_tier", pa.string()),
])


def _neg_binomial(rng: np.random.Generator, mean: np.ndarray, r: float = 1.5) -> np.ndarray:
    return rng.negative_binomial(r, r / (r + np.maximum(mean, 1e-9)))


def _masked(values: np.ndarray, missing: np.ndarray, typ: pa.DataType) -> pa.Array:
    return pa.array(values, type=typ, mask=missing)


def _strings(levels: list[str], codes: np.ndarray, missing: np.ndarray | None = None) -> pa.Array:
    arr = pa.DictionaryArray.from_arrays(pa.array(codes.astype(np.int32), mask=missing), pa.array(levels))
    return arr.cast(pa.string())


def generate_chunk(start: int, n: int, *, as_of: dt.datetime, seed: int = 0) -> tuple[pa.Table, np.ndarray]:
    """Raw rows ``start .. start + n - 1`` (ids ``C000000000`` ...) and their planted segments.

    A chunk depends only on (seed, start, n, as_of), so the table is the same however it is chunked
    as long as chunks start at multiples of ``CHUNK_ROWS``."""
    rng = np.random.default_rng([seed, start])
    seg = rng.choice(N_PLANTED, size=n, p=_P["share"])
    # counts
    orders = _neg_binomial(rng, _P["orders"][seg], 1.5)
    tickets = np.where(rng.random(n) < 0.6, 0, _neg_binomial(rng, _P["tickets"][seg] / 0.4, 1.0))
    # heavy-tailed money: log-normal per persona, more orders -> more spend, rare Pareto whales
    spend = np.exp(rng.normal(_P["spend_mu"][seg] + 0.35 * np.log1p(orders), 0.9))
    whale = rng.random(n) < WHALE_RATE
    spend[whale] *= 1.0 + rng.pareto(1.2, int(whale.sum()))
    spend = np.where(orders > 0, np.round(spend, 2), 0.0)
    # time: tenure (days since first purchase) and recency (days since last order) <= tenure
    tenure = np.where(seg == 3, rng.uniform(1, 60, n), rng.gamma(2.0, _P["tenure"][seg] / 2.0)).astype(np.int64) + 1
    recency = np.minimum(rng.exponential(_P["recency"][seg]).astype(np.int64), tenure)
    recency = np.where(orders > 0, np.minimum(recency, 364), np.maximum(recency, 365))
    tenure = np.maximum(tenure, recency)
    never = (orders == 0) & (rng.random(n) < 0.04)          # signed up, never bought (~1 % of rows)
    base = np.datetime64(as_of.replace(tzinfo=None), "us")
    jitter = rng.integers(0, 86_400_000_000, n).astype("timedelta64[us]")
    first = base - tenure.astype("timedelta64[D]") - jitter
    last = base - recency.astype("timedelta64[D]") - jitter // 2
    last = np.maximum(last, first)
    # shares and flags
    open_rate = rng.beta(_P["open_a"][seg], _P["open_b"][seg])
    no_email = rng.random(n) < np.where(seg == 0, 0.30, 0.12)
    disc = rng.beta(_P["disc_a"][seg], _P["disc_b"][seg])
    app = (rng.random(n) < _P["app"][seg]).astype(np.int64)
    session = np.exp(rng.normal(np.log(_P["session"][seg]), 0.6))
    news = (rng.random(n) < _P["news"][seg]).astype(np.int64)
    # categories
    cum = np.cumsum(_CHANNEL_W[seg], axis=1)
    channel = (rng.random((n, 1)) > cum).sum(1).clip(0, len(CHANNELS) - 1)
    cum = np.cumsum(_TIER_W[seg], axis=1)
    tier = (rng.random((n, 1)) > cum).sum(1).clip(0, len(TIERS) - 1)
    country = rng.choice(N_COUNTRIES, size=n, p=_COUNTRY_P)
    country = np.where(seg == 4, np.where(rng.random(n) < 0.5, 1, country), country)  # whales: country_01
    country_text = np.array(COUNTRIES, dtype=object)[country]
    new_level = rng.random(n) < NEW_LEVEL_RATE
    if new_level.any():
        country_text[new_level] = [f"XX-{int(v)}" for v in rng.integers(0, 10_000, int(new_level.sum()))]
    ids = np.char.add("C", np.char.zfill(np.arange(start, start + n).astype(str), 9)).astype(object)
    table = pa.table({
        "customer_id": pa.array(ids, pa.string()),
        "country": pa.array(country_text, pa.string()),
        "first_purchase_at": pa.array(first, pa.timestamp("us"), mask=never),
        "last_order_at": pa.array(last, pa.timestamp("us"), mask=never),
        "orders_12m": pa.array(orders, pa.int64()),
        "total_spend_12m": pa.array(spend, pa.float64()),
        "support_tickets_12m": pa.array(tickets, pa.int64()),
        "email_open_rate": _masked(open_rate, no_email, pa.float64()),
        "discount_share": _masked(disc, orders == 0, pa.float64()),
        "avg_session_minutes": _masked(np.round(session, 2), rng.random(n) < 0.05, pa.float64()),
        "has_mobile_app": pa.array(app, pa.int64()),
        "newsletter_opt_in": _masked(news, rng.random(n) < 0.03, pa.int64()),
        "acquisition_channel": _strings(CHANNELS, channel, rng.random(n) < 0.02),
        "plan_tier": _strings(TIERS, tier),
    }, schema=RAW_SCHEMA_ARROW)
    return table, seg.astype(np.int8)


def iter_chunks(rows: int, *, as_of: dt.datetime, seed: int = 0, chunk_rows: int = CHUNK_ROWS
                ) -> Iterator[tuple[pa.Table, np.ndarray]]:
    for start in range(0, rows, chunk_rows):
        yield generate_chunk(start, min(chunk_rows, rows - start), as_of=as_of, seed=seed)


def features_sql(as_of: dt.datetime, raw: str = f"{RAW_SCHEMA}.{RAW_TABLE}",
                 features: str = f"{FEATURES_SCHEMA}.{FEATURES_TABLE}") -> str:
    """DuckDB SQL that builds the features relation from the raw table as of ``as_of`` (the
    benchmark's stand-in for the product's dbt model: the columns are the spec's, in its order)."""
    ts = as_of.astimezone(dt.timezone.utc).replace(tzinfo=None).isoformat(sep=" ")
    return f"""
CREATE OR REPLACE TABLE {features} AS
SELECT
  customer_id,
  date_diff('day', last_order_at, TIMESTAMP '{ts}') AS recency_days,
  date_diff('day', first_purchase_at, TIMESTAMP '{ts}') AS tenure_days,
  orders_12m,
  total_spend_12m,
  CASE WHEN orders_12m > 0 THEN round(total_spend_12m / orders_12m, 2) END AS avg_order_value,
  support_tickets_12m,
  email_open_rate,
  discount_share,
  avg_session_minutes,
  has_mobile_app,
  newsletter_opt_in,
  country,
  acquisition_channel,
  plan_tier
FROM {raw}
WHERE first_purchase_at IS NULL OR first_purchase_at < TIMESTAMP '{ts}'
ORDER BY customer_id
"""


def spec_yaml(*, n_segments: int, output_schema: str = "segments", model: dict[str, Any] | None = None) -> str:
    """The feature spec of the synthetic CRM (YAML text for ``segmentation.spec.load_spec``)."""
    m = {"n_segments": n_segments, "estimator": "concrete", "latent_dim": 10, "hidden": [256, 128], "epochs": 30,
         "batch_size": 256, "learning_rate": 0.001, "kl_anneal_epochs": 0, "patience": 5, "min_level_count": 10,
         "seed": 0, "device": "cpu", "n_threads": 1}
    m.update(model or {})
    lines = [
        "# Written by benchmarks/crm_synth.py: the synthetic CRM of the scale benchmark.",
        "name: synthetic_crm",
        "entity_key: customer_id",
        "sources:",
        # the demo's raw rules for a source of this name, declared in the spec as a user would
        f"  {SOURCE}: {{schema: {RAW_SCHEMA}, table: {RAW_TABLE}, rules: {json.dumps(DEMO_SOURCE_RULES[SOURCE])}}}",
        f"features_relation: {{schema: {FEATURES_SCHEMA}, table: {FEATURES_TABLE}}}",
        f"output_schema: {output_schema}",
        "model:",
    ]
    for k, v in m.items():
        lines.append(f"  {k}: {list(v) if isinstance(v, (list, tuple)) else v}")
    lines.append("features:")
    for name, typ, checks, desc in FEATURES:
        lines += [f"  - name: {name}", f"    type: {typ}", f"    description: \"{desc}\"", f"    checks: {checks}"]
    return "\n".join(lines) + "\n"
