#!/usr/bin/env python
"""Peak memory of streaming scoring (segmentation.scoring.score_parquet) on a large table.

Writes a synthetic customer table of ``--rows`` rows (default 1,000,000) to Parquet in chunks (the
generator never holds the whole table either), fits a model on its first rows, then scores the
whole file in a fresh subprocess and reads that process's peak resident set size
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``): the number includes the Python interpreter,
torch, pyarrow and the model, not only the batches. ``--whole-table`` also measures the naive
path (read the whole table, ``predict_proba`` on it) in another subprocess, for comparison.

Fails (exit 1) when the streaming peak exceeds ``--limit-gb`` (default 1.5). Results go to
benchmarks/results/scoring_memory.json.

Examples
--------
  python benchmarks/scoring_memory.py                      # 1M rows, 65,536-row batches
  python benchmarks/scoring_memory.py --whole-table        # and the whole-table baseline
  python benchmarks/scoring_memory.py --rows 200000 --batch-rows 8192
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
WORK = REPO / "benchmarks" / "out" / "scoring_memory"


def _peak_rss_mb() -> float:
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / 1024.0 if sys.platform != "darwin" else peak / 1024.0 / 1024.0


def _rss_mb() -> float:
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except ImportError:  # pragma: no cover
        return float("nan")


def write_table(path: Path, rows: int, chunk: int = 100_000, seed: int = 0) -> None:
    """Synthetic customers in chunks of ``chunk`` rows (one Parquet row group each)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from segmentation.synthetic import planted_customers

    tmp = path.with_suffix(".part")
    writer = None
    done = 0
    try:
        while done < rows:
            n = min(chunk, rows - done)
            df, _ = planted_customers(n=n, k=8, seed=seed + done, missing=0.1)
            df["customer_id"] = [f"C{done + i:09d}" for i in range(n)]
            table = pa.Table.from_pandas(df, preserve_index=False)
            if writer is None:
                writer = pq.ParquetWriter(tmp, table.schema, compression="zstd")
            writer.write_table(table)
            done += n
    finally:
        if writer is not None:
            writer.close()
    os.replace(tmp, path)


def fit_model(data: Path, out: Path, k: int, rows: int, epochs: int) -> None:
    import pyarrow.parquet as pq

    from segmentation import ConcreteGMVAE
    from segmentation.synthetic import FEATURE_TYPES

    df = pq.ParquetFile(data).read_row_group(0).to_pandas().iloc[:rows]
    ConcreteGMVAE(n_segments=k, epochs=epochs, kl_anneal_epochs=2, progress=False, device="cpu").fit(
        df, FEATURE_TYPES).save(str(out))


def child_stream(model: str, data: str, out: str, batch_rows: int) -> dict:
    """Run in a fresh process: import, load the model, then stream-score the file."""
    from segmentation import ConcreteGMVAE
    from segmentation.scoring import score_parquet

    m = ConcreteGMVAE.load(model)
    base = _rss_mb()
    stats = score_parquet(m, data, out, batch_rows, id_column="customer_id")
    return {"rss_after_load_mb": round(base, 1), "peak_rss_mb": round(_peak_rss_mb(), 1), **{
        k: stats[k] for k in ("rows", "batches", "max_batch_rows", "seconds", "rows_per_s")}}


def child_whole(model: str, data: str) -> dict:
    """The naive path for comparison: the whole table in pandas, predict_proba on all of it."""
    import pandas as pd

    from segmentation import ConcreteGMVAE

    m = ConcreteGMVAE.load(model)
    base = _rss_mb()
    t0 = time.perf_counter()
    df = pd.read_parquet(data)
    proba = m.predict_proba(df)
    seconds = time.perf_counter() - t0
    return {"rss_after_load_mb": round(base, 1), "peak_rss_mb": round(_peak_rss_mb(), 1), "rows": int(len(proba)),
            "seconds": round(seconds, 2), "rows_per_s": round(len(proba) / seconds, 1)}


def _run_child(*args: str) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, env=env, cwd=REPO)
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode != 0 or not line:
        raise SystemExit(f"child {args[0]} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return json.loads(line[-1][len("RESULT "):])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="scoring_memory.py", description=__doc__.split("Examples")[0].strip(),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--batch-rows", type=int, default=65536)
    p.add_argument("--k", type=int, default=8, help="segments of the model (default 8)")
    p.add_argument("--limit-gb", type=float, default=1.5, help="fail above this streaming peak RSS (default 1.5)")
    p.add_argument("--whole-table", action="store_true", help="also measure predict_proba on the whole table")
    p.add_argument("--workdir", default=str(WORK), help="where the table, model and scores go")
    p.add_argument("--out", default=str(RESULTS / "scoring_memory.json"))
    p.add_argument("--regenerate", action="store_true", help="rewrite the table even if it exists")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_stream":
        print("RESULT " + json.dumps(child_stream(argv[1], argv[2], argv[3], int(argv[4]))))
        return 0
    if argv and argv[0] == "_whole":
        print("RESULT " + json.dumps(child_whole(argv[1], argv[2])))
        return 0
    args = build_parser().parse_args(argv)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    data = work / f"customers_{args.rows}.parquet"
    t0 = time.perf_counter()
    if args.regenerate or not data.exists():
        print(f"writing {args.rows:,} synthetic rows to {data} in chunks ...", flush=True)
        write_table(data, args.rows)
    gen_s = time.perf_counter() - t0
    model = work / f"model_k{args.k}"
    if not (model / "metadata.json").exists():
        print(f"fitting a K={args.k} model on 20,000 rows ...", flush=True)
        fit_model(data, model, args.k, 20_000, epochs=3)
    print("scoring in a fresh process ...", flush=True)
    stream = _run_child("_stream", str(model), str(data), str(work / "scores.parquet"), str(args.batch_rows))
    whole = _run_child("_whole", str(model), str(data)) if args.whole_table else None
    result = {
        "benchmark": "scoring_memory",
        "rows": args.rows, "batch_rows": args.batch_rows, "n_segments": args.k,
        "data_mb": round(data.stat().st_size / 2**20, 1), "generate_seconds": round(gen_s, 1),
        "streaming": stream, "whole_table": whole, "limit_mb": args.limit_gb * 1024,
        "passed": stream["peak_rss_mb"] <= args.limit_gb * 1024,
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "logical_cpus": os.cpu_count(), "load_average": [round(x, 2) for x in os.getloadavg()]},
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"streaming: {stream['rows']:,} rows in {stream['batches']} batches of <= {stream['max_batch_rows']:,}: "
          f"peak RSS {stream['peak_rss_mb']:.0f} MB (after imports + model load {stream['rss_after_load_mb']:.0f} MB), "
          f"{stream['rows_per_s']:,.0f} rows/s")
    if whole:
        print(f"whole table: peak RSS {whole['peak_rss_mb']:.0f} MB, {whole['rows_per_s']:,.0f} rows/s")
    print(f"limit {args.limit_gb} GB: {'PASS' if result['passed'] else 'FAIL'}; results in {out}")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
