#!/usr/bin/env python
"""GPU smoke test: both estimators at K=50 on a few hundred thousand synthetic customers.

On one GPU (the default when CUDA is present) it fits ``ConcreteGMVAE`` with the concrete and the
exact estimator on ``--rows`` synthetic rows (default 300,000) for ``--epochs`` epochs each, and
prints training samples per second (the training loop's own per-epoch timer, first epoch excluded
as warm-up) and the concrete/exact speed ratio. The whole run must stay under ``--budget-s``
(default 120 s); exit 1 otherwise, or when a loss is not finite.

Without CUDA (or with ``--device cpu``) it runs small and slow: 20,000 rows, 2 epochs, unless
``--rows`` / ``--epochs`` say otherwise; the budget then does not apply.

Examples
--------
  python benchmarks/gpu_smoke.py                     # GPU: 300k rows, K=50, both estimators
  python benchmarks/gpu_smoke.py --device cpu        # the same, small, on CPU
  python benchmarks/gpu_smoke.py --bf16 --batch-size 8192
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gpu_smoke.py", description=__doc__.split("Examples")[0].strip(),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cuda or cpu")
    p.add_argument("--rows", type=int, default=None, help="rows (default 300,000 on GPU, 20,000 on CPU)")
    p.add_argument("--epochs", type=int, default=None, help="epochs per estimator (default 4 on GPU, 2 on CPU)")
    p.add_argument("--k", type=int, default=50, help="segments K (default 50)")
    p.add_argument("--batch-size", type=int, default=None, help="minibatch (default 4096 on GPU, 1024 on CPU)")
    p.add_argument("--estimators", nargs="+", choices=("concrete", "exact"), default=["concrete", "exact"])
    p.add_argument("--bf16", action="store_true", help="bf16 autocast")
    p.add_argument("--budget-s", type=float, default=120.0, help="wall-clock budget on GPU (default 120)")
    p.add_argument("--out", default=str(RESULTS / "gpu_smoke.json"))
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    started = time.perf_counter()
    import pandas as pd
    import torch

    from segmentation import ConcreteGMVAE
    from segmentation.synthetic import FEATURE_TYPES, planted_customers

    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but CUDA is not available", file=sys.stderr)
        return 2
    device = "cuda" if cuda else "cpu"
    rows = args.rows or (300_000 if cuda else 20_000)
    epochs = args.epochs or (4 if cuda else 2)
    batch = args.batch_size or (4096 if cuda else 1024)
    if cuda:
        name = torch.cuda.get_device_name(0)
        print(f"device: {name} (CUDA {torch.version.cuda}, torch {torch.__version__})")
    else:
        name = platform.processor() or "cpu"
        print(f"device: CPU ({os.cpu_count()} logical CPUs, torch {torch.__version__}): small and slow run")

    t0 = time.perf_counter()
    parts = []
    for i, start in enumerate(range(0, rows, 100_000)):
        df, _ = planted_customers(n=min(100_000, rows - start), k=8, seed=i, missing=0.1)
        parts.append(df)
    data = pd.concat(parts, ignore_index=True)
    del parts
    print(f"data: {len(data):,} synthetic rows ({time.perf_counter() - t0:.1f} s)")

    results = {}
    ok = True
    for est in args.estimators:
        model = ConcreteGMVAE(n_segments=args.k, estimator=est, epochs=epochs, batch_size=batch,
                              kl_anneal_epochs=max(1, epochs // 2), validation_fraction=0.0, device=device,
                              bf16=args.bf16, progress=False, n_threads=None if cuda else 1, seed=0)
        t = time.perf_counter()
        model.fit(data, FEATURE_TYPES)
        if cuda:
            torch.cuda.synchronize()
        wall = time.perf_counter() - t
        hist = model.history_
        timed = hist[1:] if len(hist) > 1 else hist
        sec = statistics.median(r["seconds"] for r in timed)
        n_train = len(data)
        sps = n_train / sec
        finite = all(math.isfinite(r["loss"]) for r in hist)
        ok &= finite
        results[est] = {"samples_per_s": round(sps, 1), "median_epoch_s": round(sec, 3),
                        "steps_per_epoch": hist[-1]["steps"], "fit_wall_s": round(wall, 2),
                        "final_loss": round(hist[-1]["loss"], 4), "finite": finite,
                        "segments_used": model.metrics_["usage"]["n_used"]}
        print(f"{est:>8}: {sps:>12,.0f} samples/s  (median epoch {sec:.2f} s, {hist[-1]['steps']} steps of {batch}; "
              f"fit {wall:.1f} s; loss {hist[-1]['loss']:.3f}; {model.metrics_['usage']['n_used']}/{args.k} segments used)")
        del model
        if cuda:
            torch.cuda.empty_cache()
    total = time.perf_counter() - started
    ratio = None
    if "concrete" in results and "exact" in results:
        ratio = results["concrete"]["samples_per_s"] / results["exact"]["samples_per_s"]
        print(f"concrete / exact speed at K={args.k}: {ratio:.1f}x")
    within = (total <= args.budget_s) if cuda else True
    print(f"total {total:.1f} s" + (f" (budget {args.budget_s:.0f} s: {'ok' if within else 'EXCEEDED'})" if cuda else ""))
    payload = {
        "benchmark": "gpu_smoke", "device": device, "device_name": name, "torch": torch.__version__,
        "cuda": torch.version.cuda, "rows": rows, "epochs": epochs, "k": args.k, "batch_size": batch, "bf16": args.bf16,
        "results": results, "concrete_over_exact": ratio, "total_s": round(total, 1), "within_budget": within,
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2) + "\n")
    return 0 if (ok and within) else 1


if __name__ == "__main__":
    sys.exit(main())
