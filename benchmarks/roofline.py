#!/usr/bin/env python
"""Training throughput against the machine's matrix-multiply roofline at the model's own layer shapes.

For each configuration (network, K, estimator, batch) it:

1. records every matrix product of one training step (forward and backward of the loss on one
   minibatch): a ``TorchDispatchMode`` logs the shapes of each ``aten.mm`` / ``addmm`` / ``bmm``;
2. times ``torch.mm`` (``torch.bmm``) at each of those shapes on one thread: the machine's
   achievable throughput *at those shapes* (a 1568x256 product runs faster per FLOP than 256x10);
3. the roofline time of a step is the sum over its products of FLOPs / measured throughput, and the
   roofline FLOP/s is the step's FLOPs over that time;
4. counts the step's FLOPs with ``torch.utils.flop_counter.FlopCounterMode`` (benchmarks/k_scaling.py's
   ``count_flops``, imported) and measures the achieved seconds per step of a real ``fit`` (the
   training loop's own per-epoch timer, first epoch left out; k_scaling's ``time_fit`` for MNIST);
5. reports achieved FLOP/s and the percentage of the roofline, plus the peak of a large square
   product (2048^3) as the machine's plain matmul peak, and a profile of where the rest of a step's
   time goes (``torch.profiler``: self CPU time by operator group).

Configurations: the MNIST benchmark network (784 binary pixels: encoder input 1568 with the
missing-value indicators; hidden 256-128; latent 10; K=10; batch 256), concrete and exact, and the
synthetic CRM network of benchmarks/scale.py (14 mixed-type features; K=8; concrete).

Writes benchmarks/results/roofline.json.

Examples
--------
  python benchmarks/roofline.py
  python benchmarks/roofline.py --quick
"""
from __future__ import annotations

import argparse
import datetime as dt
import logging
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from k_scaling import count_flops, time_fit  # noqa: E402
from bench_meta import bench_machine  # noqa: E402
from mnist_gmvae import DEFAULTS, RESULTS, SPLIT_SEED, binary_types, command_line, load_mnist, now_utc, write_json  # noqa: E402

MM_OPS = ("mm", "addmm", "bmm")


def record_matmuls(net, estimator: str, batch: dict[str, Any]) -> list[dict[str, Any]]:
    """Shapes of every matrix product in one forward + backward of the training loss."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    from segmentation.model.training import compute_loss

    calls: list[dict[str, Any]] = []

    class Recorder(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = func.overloadpacket.__name__
            if name in MM_OPS:
                a, b = (args[1], args[2]) if name == "addmm" else (args[0], args[1])
                if name == "bmm":
                    calls.append({"op": name, "batch": int(a.shape[0]), "m": int(a.shape[1]), "k": int(a.shape[2]),
                                  "n": int(b.shape[2])})
                else:
                    calls.append({"op": name, "batch": 1, "m": int(a.shape[0]), "k": int(a.shape[1]),
                                  "n": int(b.shape[1])})
            return func(*args, **(kwargs or {}))

    net.train()
    net.zero_grad(set_to_none=True)
    with Recorder():
        terms = compute_loss(net, estimator, batch, tau=1.0, kl_weight=1.0)
        terms.loss.backward()
    for c in calls:
        c["flops"] = 2 * c["batch"] * c["m"] * c["k"] * c["n"]
    return calls


def time_matmul(batch: int, m: int, k: int, n: int, min_seconds: float, repeats: int) -> float:
    """Median seconds of one product of these shapes (contiguous float32 operands, one thread)."""
    import torch

    g = torch.Generator().manual_seed(0)
    if batch > 1:
        a, b = torch.randn(batch, m, k, generator=g), torch.randn(batch, k, n, generator=g)
        op = torch.bmm
    else:
        a, b = torch.randn(m, k, generator=g), torch.randn(k, n, generator=g)
        op = torch.mm
    out = op(a, b)
    t0, reps = time.perf_counter(), 0
    while time.perf_counter() - t0 < min_seconds / 4 or reps < 3:  # warm-up, and size the loop
        op(a, b, out=out)
        reps += 1
    per = (time.perf_counter() - t0) / reps
    inner = max(1, int(min_seconds / repeats / max(per, 1e-9)))
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(inner):
            op(a, b, out=out)
        samples.append((time.perf_counter() - t0) / inner)
    return float(statistics.median(samples))


def roofline_of(calls: list[dict[str, Any]], min_seconds: float, repeats: int) -> dict[str, Any]:
    shapes: dict[tuple, dict[str, Any]] = {}
    for c in calls:
        key = (c["batch"], c["m"], c["k"], c["n"])
        e = shapes.setdefault(key, {"batch": key[0], "m": key[1], "k": key[2], "n": key[3], "count": 0,
                                    "flops_each": c["flops"]})
        e["count"] += 1
    total_flops = 0
    total_time = 0.0
    for e in shapes.values():
        s = time_matmul(e["batch"], e["m"], e["k"], e["n"], min_seconds, repeats)
        e["seconds_each"] = s
        e["gflops_per_s"] = e["flops_each"] / s / 1e9
        total_flops += e["flops_each"] * e["count"]
        total_time += s * e["count"]
    rows = sorted(shapes.values(), key=lambda e: -e["flops_each"] * e["count"])
    return {"matmul_flops_per_step": int(total_flops), "roofline_seconds_per_step": total_time,
            "roofline_gflops_per_s": total_flops / total_time / 1e9, "shapes": rows}


def profile_step(net, estimator: str, batch: dict[str, Any], steps: int) -> dict[str, Any]:
    """Self CPU time of ``steps`` isolated training steps (loss, backward, clip, Adam), by operator group."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from segmentation.model.training import compute_loss

    opt = torch.optim.Adam(net.parameters(), lr=1e-3)

    def step():
        terms = compute_loss(net, estimator, batch, tau=1.0, kl_weight=1.0)
        opt.zero_grad(set_to_none=True)
        terms.loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 10.0)
        opt.step()

    for _ in range(5):
        step()
    phases = {"forward (loss)": 0.0, "backward": 0.0, "gradient clipping": 0.0, "Adam step": 0.0}
    t0 = time.perf_counter()
    for _ in range(steps):
        a = time.perf_counter()
        terms = compute_loss(net, estimator, batch, tau=1.0, kl_weight=1.0)
        b = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        terms.loss.backward()
        c = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 10.0)
        d = time.perf_counter()
        opt.step()
        e = time.perf_counter()
        for k, v in zip(phases, (b - a, c - b, d - c, e - d)):
            phases[k] += v
    isolated = (time.perf_counter() - t0) / steps
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    groups = {"matmul": 0.0, "optimizer (Adam, grad clip)": 0.0, "random numbers": 0.0, "other operators": 0.0}
    top = []
    total = 0.0
    for ev in prof.key_averages():
        self_us = ev.self_cpu_time_total
        if self_us <= 0:
            continue
        total += self_us
        name = ev.key
        if any(name == f"aten::{op}" for op in MM_OPS):
            g = "matmul"
        elif any(s in name for s in ("exponential", "uniform", "normal", "rand")):
            g = "random numbers"
        elif "_foreach" in name or "adam" in name.lower() or "clip" in name.lower() or "vector_norm" in name:
            g = "optimizer (Adam, grad clip)"
        else:
            g = "other operators"
        groups[g] += self_us
        top.append((self_us, name, ev.count))
    top.sort(reverse=True)
    return {"isolated_seconds_per_step": isolated, "profiled_steps": steps,
            "phase_ms_per_step": {k: 1e3 * v / steps for k, v in phases.items()},
            "self_cpu_share": {k: v / total for k, v in groups.items()} if total else {},
            "top_ops": [{"op": n, "self_ms_per_step": us / 1e3 / steps, "calls_per_step": c / steps, "share": us / total}
                        for us, n, c in top[:12]]}


def crm_frame(rows: int):
    """A features frame of the synthetic CRM of benchmarks/scale.py (DuckDB in memory)."""
    import duckdb

    import crm_synth

    as_of = dt.datetime(2026, 12, 1)
    raw, _ = crm_synth.generate_chunk(0, rows, as_of=as_of, seed=0)
    con = duckdb.connect()
    con.register("raw_arrow", raw)
    con.execute("CREATE TABLE raw_t AS SELECT * FROM raw_arrow")
    con.execute(crm_synth.features_sql(as_of, raw="raw_t", features="feat_t"))
    df = con.sql("SELECT * FROM feat_t").to_arrow_table().to_pandas()
    con.close()
    return df.drop(columns=["customer_id"]), dict(crm_synth.FEATURE_TYPES)


def time_fit_typed(df, types, k: int, estimator: str, args) -> dict[str, Any]:
    from segmentation import ConcreteGMVAE

    m = ConcreteGMVAE(n_segments=k, latent_dim=args.latent_dim, hidden=tuple(args.hidden), estimator=estimator,
                      epochs=args.epochs, batch_size=args.batch_size, patience=10**6, kl_anneal_epochs=0,
                      validation_fraction=0.0, seed=args.seed, device="cpu", n_threads=1, progress=False)
    m.fit(df, feature_types=types)
    secs = [float(r["seconds"]) for r in m.history_]
    steps = [int(r["steps"]) for r in m.history_]
    timed, ts = (secs[1:], steps[1:]) if len(secs) > 1 else (secs, steps)
    return {"epoch_seconds": secs, "steps_per_epoch": steps[0], "seconds_per_epoch": float(np.median(timed)),
            "seconds_per_step": float(np.median([s / n for s, n in zip(timed, ts)])), "timed_epochs": len(timed)}


def run_config(name: str, df, types, k: int, estimator: str, args, fit_timer) -> dict[str, Any]:
    import torch

    from segmentation.model.network import GMVAENetwork
    from segmentation.model.preprocessing import TablePreprocessor

    pre = TablePreprocessor(types).fit(df)
    torch.manual_seed(0)
    batch = pre.transform(df.iloc[: args.batch_size])
    net = GMVAENetwork(pre.layout, k, args.latent_dim, tuple(args.hidden))
    calls = record_matmuls(net, estimator, batch)
    roof = roofline_of(calls, args.min_seconds, args.repeats)
    flops = count_flops(pre, df, k, estimator, args)
    fit = fit_timer()
    achieved = flops["train_step"] / fit["seconds_per_step"] / 1e9
    prof = profile_step(GMVAENetwork(pre.layout, k, args.latent_dim, tuple(args.hidden)), estimator, batch, args.profile_steps)
    isolated = flops["train_step"] / prof["isolated_seconds_per_step"] / 1e9
    res = {
        "name": name, "k": k, "estimator": estimator, "batch_size": args.batch_size, "input_dim": pre.layout.input_dim,
        "hidden": list(args.hidden), "latent_dim": args.latent_dim, "fit_rows": int(len(df)),
        "flops": flops, "matmul_calls_per_step": len(calls),
        "recorded_matmul_flops_per_step": roof["matmul_flops_per_step"],
        "roofline_gflops_per_s": roof["roofline_gflops_per_s"],
        "roofline_ms_per_step": 1e3 * roof["roofline_seconds_per_step"],
        "fit": fit, "achieved_ms_per_step": 1e3 * fit["seconds_per_step"],
        "achieved_gflops_per_s": achieved, "percent_of_roofline": 100 * achieved / roof["roofline_gflops_per_s"],
        "isolated_step_gflops_per_s": isolated,
        "isolated_percent_of_roofline": 100 * isolated / roof["roofline_gflops_per_s"],
        "profile": prof, "shapes": roof["shapes"],
    }
    print(f"  {name}: {flops['train_step'] / 1e9:.3f} GFLOP/step; roofline {roof['roofline_gflops_per_s']:.1f} GFLOP/s "
          f"({res['roofline_ms_per_step']:.2f} ms/step); achieved {achieved:.1f} GFLOP/s ({res['achieved_ms_per_step']:.2f} "
          f"ms/step) = {res['percent_of_roofline']:.0f}% of the roofline; isolated steps {isolated:.1f} GFLOP/s "
          f"({res['isolated_percent_of_roofline']:.0f}%); matmul share of self CPU time "
          f"{100 * prof['self_cpu_share'].get('matmul', 0):.0f}%", flush=True)
    return res


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="roofline.py", description=__doc__.split("Examples")[0].strip(),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="shorter timings, 2 timed epochs, concrete MNIST + CRM only")
    p.add_argument("--epochs", type=int, default=None, help="epochs of the timed fit; the first is warm-up (default 6)")
    p.add_argument("--min-seconds", type=float, default=None, help="seconds spent timing each matmul shape (default 1.0)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--profile-steps", type=int, default=None, help="profiled training steps (default 40)")
    p.add_argument("--crm-rows", type=int, default=None, help="rows of the synthetic CRM fit (default 16384)")
    p.add_argument("--out", default=None, help="JSON output (default benchmarks/results/roofline.json)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    q = args.quick
    args.epochs = args.epochs or (3 if q else 6)
    args.min_seconds = args.min_seconds or (0.2 if q else 1.0)
    args.profile_steps = args.profile_steps or (10 if q else 40)
    args.crm_rows = args.crm_rows or (4096 if q else 16384)
    args.out = args.out or str(RESULTS / ("roofline_quick.json" if q else "roofline.json"))
    args.batch_size, args.hidden, args.latent_dim = DEFAULTS["batch_size"], DEFAULTS["hidden"], DEFAULTS["latent_dim"]
    args.seed, args.threads, args.validation_fraction = 0, 1, 0.0
    logging.basicConfig(level=logging.ERROR)
    import torch

    torch.set_num_threads(1)
    started, t0 = now_utc(), time.perf_counter()
    peak_n = 2048
    peak_s = time_matmul(1, peak_n, peak_n, peak_n, 2 * args.min_seconds, args.repeats)
    peak = 2 * peak_n**3 / peak_s / 1e9
    print(f"torch.mm {peak_n}^3, 1 thread: {peak:.1f} GFLOP/s", flush=True)
    train_df, _, _, _, info = load_mnist(n_train=8000, split_seed=SPLIT_SEED)
    mnist_types = binary_types(train_df)
    configs = []
    for est in (["concrete"] if q else ["concrete", "exact"]):
        configs.append(run_config(f"mnist_{est}_k10", train_df, mnist_types, 10, est, args,
                                  lambda est=est: time_fit(train_df, 10, est, args)))
    crm_df, crm_types = crm_frame(args.crm_rows)
    configs.append(run_config("crm_concrete_k8", crm_df, crm_types, 8, "concrete", args,
                              lambda: time_fit_typed(crm_df, crm_types, 8, "concrete", args)))
    for c in configs:
        c["percent_of_matmul_peak"] = 100 * c["achieved_gflops_per_s"] / peak
    main_cfg = configs[0]
    payload = {
        "benchmark": "roofline", "command": command_line(), "started_utc": started, "finished_utc": now_utc(),
        "total_wall_seconds": time.perf_counter() - t0, "quick": q, "seeds": [0],
        "config": {"epochs": args.epochs, "warmup_epochs": 1, "min_seconds_per_shape": args.min_seconds,
                   "repeats": args.repeats, "profile_steps": args.profile_steps, "crm_rows": args.crm_rows,
                   "batch_size": args.batch_size, "hidden": list(args.hidden), "latent_dim": args.latent_dim,
                   "threads": 1, "dtype": "float32"},
        "data": {"mnist": info},
        "machine": bench_machine(1),
        "matmul_peak": {"shape": [peak_n, peak_n, peak_n], "seconds": peak_s, "gflops_per_s": peak},
        "configs": configs,
        "targets": {"training_at_least_30pct_of_roofline": {
            "config": main_cfg["name"], "percent": main_cfg["percent_of_roofline"],
            "met": bool(main_cfg["percent_of_roofline"] >= 30.0)}},
    }
    print(f"wrote {write_json(args.out, payload)} ({payload['total_wall_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
