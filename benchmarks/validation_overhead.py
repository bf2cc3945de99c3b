"""How much does validation add to a nightly run at scale? Side by side, in one process:

    .venv/bin/python benchmarks/validation_overhead.py --rows 1000000 --epochs 10

Builds a features table of N customers by resampling the real Online Retail features (new ids,
jittered numbers), writes it to a DuckDB warehouse, then times the run's steps on it: validation
of the features (Great Expectations, with a drift reference), training, scoring and publishing.
Training is the dominant cost and scales with epochs: the report gives validation's share both for
the epochs run here and extrapolated to the spec's full epochs (early stopping usually ends sooner).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000, help="customers in the features table")
    ap.add_argument("--epochs", type=int, default=10, help="training epochs to time (default 10)")
    ap.add_argument("--out", default="benchmarks/results/validation_overhead.json")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    import numpy as np
    import pyarrow as pa

    from segmentation import ConcreteGMVAE
    from segmentation.demo import init_demo_warehouse
    from segmentation.features import build_features
    from segmentation.profiles import profile_segments, profiles_tables
    from segmentation.publish import publish_run
    from segmentation.spec import load_spec
    from segmentation.warehouse import connect
    from validation import feature_reference, validate_features

    spec = load_spec()
    work = Path(tempfile.mkdtemp(prefix="valbench-"))
    url = f"duckdb:///{work}/w.duckdb"
    init_demo_warehouse(url)
    build_features(url, dt.datetime(2011, 12, 10, tzinfo=dt.timezone.utc), spec)
    rel = spec.features_relation
    with connect(url) as wh:
        real = wh.query(f"SELECT * FROM {wh.qualified(rel.schema, rel.table)}").to_pandas()
    rng = np.random.default_rng(0)
    idx = rng.integers(0, len(real), args.rows)
    big = real.iloc[idx].reset_index(drop=True)
    big[spec.entity_key] = [f"S{i:08d}" for i in range(args.rows)]
    for f in spec.features:
        if f.type in ("continuous", "money") and f.checks.max is None:
            big[f.name] = big[f.name] * rng.uniform(0.9, 1.1, args.rows)
    with connect(url) as wh:
        wh.write_table(rel.schema, rel.table, pa.Table.from_pandas(big, preserve_index=False), mode="replace")
    reference = feature_reference(real, spec)
    as_of = dt.datetime(2011, 12, 10, tzinfo=dt.timezone.utc)
    timings = {}

    t = time.perf_counter()
    with connect(url) as wh:
        df = wh.query(f"SELECT * FROM {wh.qualified(rel.schema, rel.table)} ORDER BY {spec.entity_key}").to_pandas()
    timings["read_features"] = time.perf_counter() - t

    t = time.perf_counter()
    res = validate_features(url, spec, as_of=as_of, reference=reference)
    timings["validate_features"] = time.perf_counter() - t

    settings = {k: v for k, v in spec.model.items() if k in ("n_segments", "latent_dim", "batch_size", "learning_rate", "seed")}
    t = time.perf_counter()
    model = ConcreteGMVAE(**settings, epochs=args.epochs, kl_anneal_epochs=min(10, args.epochs), progress=False)
    model.fit(df, spec.feature_types)
    timings["train"] = time.perf_counter() - t
    per_epoch = timings["train"] / max(1, model.metrics_["epochs_run"])

    t = time.perf_counter()
    proba = model.predict_proba(df)
    timings["score"] = time.perf_counter() - t

    t = time.perf_counter()
    seg = proba.argmax(1) + 1
    order = np.argsort(-proba, 1)
    profiles = profile_segments(df, seg, spec)
    segments, prof = profiles_tables(profiles)
    assignments = pa.table({"customer_id": df[spec.entity_key].astype(str), "segment_id": pa.array(seg, pa.int64()),
                            "segment_probability": proba.max(1).astype("float64"),
                            "runner_up_segment_id": pa.array(order[:, 1] + 1, pa.int64())})
    now = dt.datetime.now(dt.timezone.utc)
    with connect(url) as wh:
        publish_run(wh, run_date=dt.date(2011, 12, 9), run_id="bench", model_version="bench", assignments=assignments,
                    segments=segments, profiles=prof, run_record={"status": "success", "started_at": now, "finished_at": now})
    timings["profile_and_publish"] = time.perf_counter() - t

    total = sum(timings.values())
    full_epochs = int(spec.model.get("epochs", 100))
    total_full = total - timings["train"] + per_epoch * full_epochs
    result = {
        "command": " ".join([sys.executable, *sys.argv]), "rows": args.rows, "epochs_timed": args.epochs,
        "timings_s": {k: round(v, 2) for k, v in timings.items()},
        "validation_status": res.status,
        "validation_share_of_run": round(timings["validate_features"] / total, 4),
        "validation_share_at_full_epochs": round(timings["validate_features"] / total_full, 4),
        "cpus": os.cpu_count(),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
