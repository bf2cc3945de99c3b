"""Simulate N consecutive nightly runs over the Online Retail history (each night's data cut at its
date) and report, per night: refresh / keep / retrain, wall time, movers, promotion decision.

    .venv/bin/python benchmarks/simulate_nights.py --start 2011-11-01 --nights 30 --out benchmarks/results/nights.json

Uses the real pipeline (dbt, Great Expectations, training, publish) on a DuckDB warehouse in a temp
folder (or --warehouse URL).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path


def _git_commit() -> str | None:
    import subprocess

    try:
        out = subprocess.run(["git", "-C", str(Path(__file__).resolve().parents[1]), "rev-parse", "HEAD"],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or None
    except Exception:  # noqa: BLE001 - provenance is best effort
        return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--start", default="2011-11-01", help="first run date (default 2011-11-01)")
    ap.add_argument("--nights", type=int, default=30, help="number of consecutive nights (default 30)")
    ap.add_argument("--warehouse", default=None,
                    help="warehouse URL (default: a DuckDB file in a temp folder). The demo data is loaded into it: "
                         "its raw.transactions and raw.customers are REPLACED, so never point this at a real warehouse")
    ap.add_argument("--k", type=int, default=None, help="segments (default: the spec's; at least 2)")
    ap.add_argument("--keep", action="store_true", help="keep the temp folder (warehouse and artifacts) afterwards")
    ap.add_argument("--out", default="benchmarks/results/nights.json", help="JSON results file")
    args = ap.parse_args(argv)
    try:
        dt.date.fromisoformat(args.start)
    except ValueError:
        ap.error(f"--start {args.start!r} is not a date (YYYY-MM-DD)")
    if args.nights < 1:
        ap.error(f"--nights must be at least 1, not {args.nights}")
    if args.k is not None and args.k < 2:
        ap.error(f"--k must be at least 2 segments, not {args.k}")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("DBT_SEND_ANONYMOUS_USAGE_STATS", "False")
    os.environ.setdefault("DO_NOT_TRACK", "1")

    from segmentation.demo import init_demo_warehouse
    from segmentation.pipeline import run_all

    work = Path(tempfile.mkdtemp(prefix="nights-"))
    url = args.warehouse or f"duckdb:///{work}/warehouse.duckdb"
    init_demo_warehouse(url)
    start = dt.date.fromisoformat(args.start)
    rows = []
    started = dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()
    print(f"{'night':<11} {'mode':<8} {'promoted':<8} {'customers':>9} {'moved':>7} {'ARI':>6} {'new ids':<10} {'secs':>6}  reason")
    for i in range(args.nights):
        d = start + dt.timedelta(days=i)
        t0 = time.perf_counter()
        try:
            res = run_all(url, d, artifacts=str(work / "artifacts"), n_segments=args.k)
        except Exception as exc:  # a failed night is a result too
            secs = time.perf_counter() - t0
            rows.append({"run_date": str(d), "status": "failed", "error": str(exc)[:300], "seconds": secs})
            print(f"{d}  FAILED ({secs:.0f} s): {str(exc)[:120]}")
            continue
        secs = time.perf_counter() - t0
        t, st = res["training"], res.get("stability") or {}
        row = {
            "run_date": str(d), "status": "success", "mode": t["mode"], "reason": t["reason"],
            "promoted": t["promoted"], "model": t["scoring_version"], "customers": res["n_customers"],
            "moved_share": st.get("moved_share"), "moved_customers": st.get("moved_customers"),
            "ari_vs_previous": st.get("ari_vs_previous"), "new_segment_ids": st.get("new_segment_ids", []),
            "retired_segment_ids": st.get("retired_segment_ids", []),
            "matched_by_prototype": st.get("matched_by_prototype") or {},
            "gate": t.get("gate"), "message": res.get("message"), "seconds": round(secs, 1),
        }
        rows.append(row)
        moved = f"{row['moved_share']:.1%}" if row["moved_share"] is not None else "-"
        ari = f"{row['ari_vs_previous']:.3f}" if row["ari_vs_previous"] is not None else "-"
        print(f"{d}  {t['mode']:<8} {str(t['promoted']):<8} {res['n_customers']:>9,} {moved:>7} {ari:>6} "
              f"{str(row['new_segment_ids']):<10} {secs:>6.1f}  {t['reason'][:60]}", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "command": " ".join(["python", *sys.argv]), "start": args.start, "nights": args.nights,
        "started_utc": started, "finished_utc": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform(),
                    "git_commit": _git_commit()},
        "rows": rows,
    }, indent=2, default=str))
    print(f"results: {out}")
    if args.keep:
        print(f"warehouse and artifacts kept in {work}")
    else:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return 0 if all(r["status"] == "success" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
