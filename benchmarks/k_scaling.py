#!/usr/bin/env python
"""Training cost of the concrete vs the exact GMVAE estimator as the number of segments K grows.

For each K (default 2 5 10 20 50 100 200) and each estimator it fits ``ConcreteGMVAE`` for a few epochs
on the same binarised-MNIST training rows and network as benchmarks/mnist_gmvae.py, and reads the
per-epoch training seconds and step counts from ``history_`` (the training loop's own timer: the
minibatch steps only, not validation or preprocessing). The first epoch is a warm-up and is not
timed; the reported seconds per epoch / per step are the medians over the remaining epochs.

It also counts the FLOPs of one training step (forward + backward of the loss on one minibatch)
with ``torch.utils.flop_counter.FlopCounterMode``: deterministic and cheap, and independent of the
machine's load. The counter only sees matrix products (linear layers, ``@``); elementwise work such
as the [B, K, features] Bernoulli log-likelihood of the exact estimator is not in it.

Writes benchmarks/results/k_scaling.json and prints a table with the exact/concrete ratio per K
and the concrete largest-K / smallest-K ratio.

Examples
--------
  python benchmarks/k_scaling.py                        # K = 2 5 10 20 50 100 200, 4 epochs each
  python benchmarks/k_scaling.py --ks 2 20 --epochs 3   # a subset
  python benchmarks/k_scaling.py --flops-only           # FLOP counts only (seconds)
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mnist_gmvae import (  # noqa: E402  (the sibling script holds the shared helpers)
    DEFAULT_DATA,
    DEFAULTS,
    RESULTS,
    SPLIT_SEED,
    binary_types,
    command_line,
    load_mnist,
    machine_info,
    now_utc,
    write_json,
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="k_scaling.py",
        description=__doc__.split("Examples")[0].strip(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--ks", type=int, nargs="+", default=[2, 5, 10, 20, 50, 100, 200], help="numbers of segments K")
    p.add_argument("--estimators", nargs="+", choices=("concrete", "exact"), default=["concrete", "exact"])
    p.add_argument("--epochs", type=int, default=4, help="epochs per fit; the first is warm-up (default 4)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"])
    p.add_argument("--hidden", type=int, nargs="+", default=DEFAULTS["hidden"])
    p.add_argument("--latent-dim", type=int, default=DEFAULTS["latent_dim"])
    p.add_argument("--validation-fraction", type=float, default=0.0,
                   help="share held out for early stopping inside fit (default 0: every row is trained on)")
    p.add_argument("--prior-covariance", choices=("diagonal", "full"), default=DEFAULTS["prior_covariance"],
                   help="shape of p(z|y), as in mnist_gmvae.py (default %(default)s: the accuracy run's)")
    p.add_argument("--data", default=DEFAULT_DATA)
    p.add_argument("--n-train", type=int, default=8000)
    p.add_argument("--flops-only", action="store_true", help="skip the timed fits")
    p.add_argument("--out", default=str(RESULTS / "k_scaling.json"))
    p.add_argument("--no-write", action="store_true")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def count_flops(pre, train_df, k: int, estimator: str, args) -> dict[str, int]:
    """FLOPs of one training step (forward, and forward + backward) on one minibatch."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from segmentation.model.network import GMVAENetwork
    from segmentation.model.training import compute_loss

    torch.manual_seed(0)
    batch = pre.transform(train_df.iloc[: args.batch_size])
    net = GMVAENetwork(pre.layout, k, args.latent_dim, tuple(args.hidden), prior_covariance=args.prior_covariance)
    net.train()
    with FlopCounterMode(display=False) as fwd:
        terms = compute_loss(net, estimator, batch, tau=1.0, kl_weight=1.0)
    forward = int(fwd.get_total_flops())
    with FlopCounterMode(display=False) as both:
        terms = compute_loss(net, estimator, batch, tau=1.0, kl_weight=1.0)
        terms.loss.backward()
    return {"forward": forward, "train_step": int(both.get_total_flops()), "batch_rows": int(batch["x"].shape[0])}


def time_fit(train_df, k: int, estimator: str, args) -> dict[str, Any]:
    from segmentation import ConcreteGMVAE

    model = ConcreteGMVAE(
        n_segments=k, latent_dim=args.latent_dim, hidden=tuple(args.hidden), estimator=estimator,
        epochs=args.epochs, batch_size=args.batch_size, patience=10**6, kl_anneal_epochs=0,
        validation_fraction=args.validation_fraction, seed=args.seed, device="cpu", n_threads=args.threads,
        progress=False, prior_covariance=args.prior_covariance,
    )
    t0 = time.perf_counter()
    model.fit(train_df, feature_types=binary_types(train_df))
    wall = time.perf_counter() - t0
    secs = [float(r["seconds"]) for r in model.history_]
    steps = [int(r["steps"]) for r in model.history_]
    timed, timed_steps = (secs[1:], steps[1:]) if len(secs) > 1 else (secs, steps)
    return {
        "epoch_seconds": secs,
        "steps_per_epoch": steps[0],
        "seconds_per_epoch": float(np.median(timed)),
        "seconds_per_step": float(np.median([s / n for s, n in zip(timed, timed_steps)])),
        "timed_epochs": len(timed),
        "fit_wall_seconds": wall,
    }


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.ERROR, format="%(message)s")
    import torch

    from segmentation.model.preprocessing import TablePreprocessor

    torch.set_num_threads(args.threads)
    train_df, _, _, _, data_info = load_mnist(args.data, args.n_train, SPLIT_SEED)
    pre = TablePreprocessor(binary_types(train_df)).fit(train_df)
    started = now_utc()
    machine = machine_info(args.threads)
    rows: list[dict[str, Any]] = []
    for k in args.ks:
        for est in args.estimators:
            row: dict[str, Any] = {"k": k, "estimator": est, "flops": count_flops(pre, train_df, k, est, args)}
            if not args.flops_only:
                row.update(time_fit(train_df, k, est, args))
            rows.append(row)
            msg = f"K={k:4d} {est:8s} flops/step={row['flops']['train_step'] / 1e9:8.3f} G"
            if "seconds_per_epoch" in row:
                msg += f"  {row['seconds_per_epoch']:7.3f} s/epoch  {1e3 * row['seconds_per_step']:8.2f} ms/step"
            print(msg, flush=True)

    def get(k, est):
        return next((r for r in rows if r["k"] == k and r["estimator"] == est), None)

    per_k = []
    for k in args.ks:
        c, e = get(k, "concrete"), get(k, "exact")
        entry: dict[str, Any] = {"k": k}
        for name, r in (("concrete", c), ("exact", e)):
            if r:
                entry[f"{name}_flops_per_step"] = r["flops"]["train_step"]
                if "seconds_per_epoch" in r:
                    entry[f"{name}_seconds_per_epoch"] = r["seconds_per_epoch"]
                    entry[f"{name}_ms_per_step"] = 1e3 * r["seconds_per_step"]
        if c and e:
            entry["exact_over_concrete_flops"] = e["flops"]["train_step"] / c["flops"]["train_step"]
            if "seconds_per_epoch" in c and "seconds_per_epoch" in e:
                entry["exact_over_concrete_seconds"] = e["seconds_per_epoch"] / c["seconds_per_epoch"]
        per_k.append(entry)

    kmin, kmax = min(args.ks), max(args.ks)
    ratios: dict[str, Any] = {}
    c_lo, c_hi = get(kmin, "concrete"), get(kmax, "concrete")
    if c_lo and c_hi and kmin != kmax:
        ratios["concrete_flops_kmax_over_kmin"] = c_hi["flops"]["train_step"] / c_lo["flops"]["train_step"]
        if "seconds_per_epoch" in c_lo:
            r = c_hi["seconds_per_epoch"] / c_lo["seconds_per_epoch"]
            ratios["concrete_seconds_kmax_over_kmin"] = r
            ratios["target_concrete_kmax_within_1.2x_of_kmin"] = {"k_max": kmax, "k_min": kmin, "value": r,
                                                                   "met": bool(r <= 1.2)}
    e20 = next((p for p in per_k if p["k"] == 20), None)
    if e20 and "exact_over_concrete_seconds" in e20:
        ratios["exact_over_concrete_seconds_at_k20"] = e20["exact_over_concrete_seconds"]
        ratios["paper_reference_k20"] = "about 8x (47 h vs < 6 h on CIFAR-100, Collier & Urdiales 2019)"

    # ---- table ----
    timed = not args.flops_only
    head = ["K", "concrete GFLOP/step", "exact GFLOP/step", "exact/concrete FLOPs"]
    if timed:
        head += ["concrete s/epoch", "exact s/epoch", "concrete ms/step", "exact ms/step", "exact/concrete time"]
    print()
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for p in per_k:
        cells = [str(p["k"]), _g(p.get("concrete_flops_per_step")), _g(p.get("exact_flops_per_step")),
                 _x(p.get("exact_over_concrete_flops"))]
        if timed:
            cells += [_f(p.get("concrete_seconds_per_epoch"), 3), _f(p.get("exact_seconds_per_epoch"), 3),
                      _f(p.get("concrete_ms_per_step"), 2), _f(p.get("exact_ms_per_step"), 2),
                      _x(p.get("exact_over_concrete_seconds"))]
        print("| " + " | ".join(cells) + " |")
    print()
    for k_, v in ratios.items():
        print(f"{k_}: {v if not isinstance(v, float) else round(v, 3)}")
    if not args.no_write:
        payload = {
            "benchmark": "k_scaling",
            "command": command_line(),
            "started_utc": started,
            "finished_utc": now_utc(),
            "config": {"ks": args.ks, "estimators": args.estimators, "epochs": args.epochs, "warmup_epochs": 1,
                       "batch_size": args.batch_size, "hidden": args.hidden, "latent_dim": args.latent_dim,
                       "validation_fraction": args.validation_fraction, "seed": args.seed,
                       "prior_covariance": args.prior_covariance,
                       "statistic": "median over the epochs after the first"},
            "data": data_info,
            "machine": machine,
            "flop_counter_note": "torch.utils.flop_counter.FlopCounterMode: matrix products only (2 FLOPs per "
                                 "multiply-add), one minibatch, forward + backward",
            "per_k": per_k,
            "ratios": ratios,
            "rows": rows,
        }
        print(f"wrote {write_json(args.out, payload)}")
    return 0


def _g(v):
    return "n/a" if v is None else f"{v / 1e9:.3f}"


def _f(v, d):
    return "n/a" if v is None else f"{v:.{d}f}"


def _x(v):
    return "n/a" if v is None else f"{v:.2f}x"


if __name__ == "__main__":
    sys.exit(main())
