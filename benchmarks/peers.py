#!/usr/bin/env python
"""Clustering quality of the GMVAE estimators against classic peers on the same preprocessed data.

Peers: scikit-learn ``GaussianMixture`` (``covariance_type`` diag and full) and ``KMeans``
(10 initialisations), fitted on exactly the rows the model sees: the encoder input of the
library's own fitted ``TablePreprocessor`` (standardised numbers, log-scaled and standardised
counts and money, 0/1 flags, one-hot categories, missing-value indicators), with the columns that
are constant on the fit rows dropped (they carry nothing, and a zero variance only inflates a
Gaussian density).

- MNIST: the fixed 8,000 / 2,000 split of benchmarks/mnist_gmvae.py (imported, not copied); peers
  fitted on the 8,000 rows, every metric on the 2,000 held-out rows: Hungarian accuracy, NMI, ARI
  against the digit, and for GaussianMixture the held-out mean log-likelihood. The concrete and
  exact GMVAE numbers of the same split come from mnist_gmvae.py (results/mnist.json); this script
  does not refit them.
- Labelled tabular sets in /work/shared/data (adult, bank marketing, penguins, telco churn): every
  method, the two GMVAE estimators included, fitted on all rows without the label, with K = the
  number of label classes; ARI and NMI (and Hungarian accuracy) against the label. These labels
  (income band, subscribed to a deposit, churned; species for penguins) are weak ground truth for
  customer segments: a good segmentation need not reproduce them.

Seeds: every method is fitted once per seed (model seed = sklearn ``random_state``); mean and sd.
Writes benchmarks/results/peers.json.

Examples
--------
  python benchmarks/peers.py                       # MNIST + 4 tabular sets, 5 seeds
  python benchmarks/peers.py --quick               # 1 seed, fewer epochs and iterations
  python benchmarks/peers.py --datasets penguins --seeds 0 1
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mnist_gmvae import (  # noqa: E402  (the sibling script holds the shared helpers)
    DEFAULT_DATA,
    RESULTS,
    SPLIT_SEED,
    binary_types,
    command_line,
    load_mnist,
    mean_sd,
    now_utc,
    write_json,
)
from bench_meta import bench_machine, uncommitted_library_files  # noqa: E402

DATA = Path("/work/shared/data")
PEERS = ("gmm_diag", "gmm_full", "kmeans")
GMVAE = ("concrete", "exact")
TABULAR = ("adult", "bank_marketing", "penguins", "telco_churn")
# the GMVAE settings of the tabular runs: the engine defaults except kl_anneal_epochs=0 (the MNIST
# tuning's choice: annealing the KL of y from 0 collapses segments, benchmarks/README.md Finding 1)
GMVAE_DEFAULTS = dict(latent_dim=10, hidden=(256, 128), epochs=100, batch_size=256, learning_rate=1e-3,
                      kl_anneal_epochs=0, patience=10, validation_fraction=0.1)
QUICK = dict(seeds=[0], epochs=10, gmm_max_iter=20, kmeans_n_init=2, mnist_fit_rows=2000)


# ---------------------------------------------------------------------------------------------
# data sets: (frame of features, feature types, labels, description)
# ---------------------------------------------------------------------------------------------
def load_adult():
    import pandas as pd

    df = pd.read_csv(DATA / "adult" / "adult.data", na_values="?", skipinitialspace=True)
    df = df.dropna(how="all")
    y = df.pop("ltgt50k").astype(str).str.rstrip(".")
    df = df.drop(columns=["fnlwgt"])  # the census sampling weight: not an attribute of the person
    types = {"age": "count", "workclass": "categorical", "education": "categorical", "education_num": "count",
             "marital_status": "categorical", "occupation": "categorical", "relationship": "categorical",
             "race": "categorical", "sex": "categorical", "capital_gain": "money", "capital_loss": "money",
             "hours_per_week": "count", "native_country": "categorical"}
    return df[list(types)], types, y.to_numpy(), "adult.data (32,561 rows); label: income <=50K / >50K; fnlwgt dropped"


def load_bank():
    import pandas as pd

    df = pd.read_csv(DATA / "bank_marketing" / "bank-additional-full.csv", sep=";")
    df.columns = [c.replace(".", "_") for c in df.columns]
    y = df.pop("y").astype(str)
    df = df.drop(columns=["duration"])  # only known after the call: it leaks the label
    df["pdays"] = df["pdays"].where(df["pdays"] != 999)  # 999 = never contacted: a real missing value
    types = {"age": "count", "job": "categorical", "marital": "categorical", "education": "categorical",
             "default": "categorical", "housing": "categorical", "loan": "categorical", "contact": "categorical",
             "month": "categorical", "day_of_week": "categorical", "campaign": "count", "pdays": "count",
             "previous": "count", "poutcome": "categorical", "emp_var_rate": "continuous",
             "cons_price_idx": "continuous", "cons_conf_idx": "continuous", "euribor3m": "continuous",
             "nr_employed": "continuous"}
    return (df[list(types)], types, y.to_numpy(),
            "bank-additional-full.csv (41,188 rows); label: y (subscribed); duration dropped (leaks y); pdays 999 -> missing")


def load_penguins():
    import pandas as pd

    df = pd.read_csv(DATA / "penguins" / "penguins.csv")
    y = df.pop("species").astype(str)
    types = {"island": "categorical", "bill_length_mm": "continuous", "bill_depth_mm": "continuous",
             "flipper_length_mm": "continuous", "body_mass_g": "continuous", "sex": "categorical"}
    return df[list(types)], types, y.to_numpy(), "penguins.csv (344 rows, 19 NaN kept: masked); label: species; year dropped"


def load_telco():
    import pandas as pd

    df = pd.read_csv(DATA / "telco_churn" / "telco_customer_churn.csv")
    y = df.pop("Churn").astype(str)
    df["TotalCharges"] = pd.to_numeric(df["TotalCharges"].astype(str).str.strip().replace("", None), errors="coerce")
    types = {"gender": "categorical", "SeniorCitizen": "binary", "Partner": "binary", "Dependents": "binary",
             "tenure": "count", "PhoneService": "binary", "MultipleLines": "categorical",
             "InternetService": "categorical", "OnlineSecurity": "categorical", "OnlineBackup": "categorical",
             "DeviceProtection": "categorical", "TechSupport": "categorical", "StreamingTV": "categorical",
             "StreamingMovies": "categorical", "Contract": "categorical", "PaperlessBilling": "binary",
             "PaymentMethod": "categorical", "MonthlyCharges": "money", "TotalCharges": "money"}
    return (df[list(types)], types, y.to_numpy(),
            "telco_customer_churn.csv (7,043 rows, 11 blank TotalCharges -> missing); label: Churn; customerID dropped")


LOADERS: dict[str, Callable[[], Any]] = {"adult": load_adult, "bank_marketing": load_bank, "penguins": load_penguins,
                                         "telco_churn": load_telco}


# ---------------------------------------------------------------------------------------------
# methods
# ---------------------------------------------------------------------------------------------
def encoded(pre, df, keep: np.ndarray | None = None) -> np.ndarray:
    x = pre.transform(df)["x"].numpy().astype(np.float64)
    return x if keep is None else x[:, keep]


def fit_peer(name: str, x_fit: np.ndarray, k: int, seed: int, args) -> tuple[Any, float]:
    from sklearn.cluster import KMeans
    from sklearn.mixture import GaussianMixture

    t0 = time.perf_counter()
    if name == "kmeans":
        m = KMeans(n_clusters=k, n_init=args.kmeans_n_init, random_state=seed).fit(x_fit)
        return m, time.perf_counter() - t0
    # scikit-learn's default reg_covar first; a component that collapses onto near-constant 0/1
    # columns makes its covariance singular, and then the next larger regularisation is used
    # (recorded in the row as reg_covar)
    for reg in (1e-6, 1e-4, 1e-2):
        m = GaussianMixture(n_components=k, covariance_type=name.split("_")[1], max_iter=args.gmm_max_iter,
                            random_state=seed, reg_covar=reg)
        try:
            m.fit(x_fit)
            break
        except ValueError as exc:
            if "ill-defined empirical covariance" not in str(exc) or reg == 1e-2:
                raise
    return m, time.perf_counter() - t0


def peer_row(name: str, m: Any, seconds: float, x_eval: np.ndarray, labels: np.ndarray, seed: int) -> dict[str, Any]:
    from segmentation.model.evaluation import label_metrics, segment_usage

    clusters = m.predict(x_eval)
    row = {"method": name, "seed": seed, "fit_seconds": seconds, **label_metrics(labels, clusters),
           "n_used": segment_usage(clusters, int(getattr(m, "n_components", getattr(m, "n_clusters", 0))))["n_used"]}
    if name.startswith("gmm"):
        row["log_likelihood"] = float(m.score(x_eval))  # mean log density of x under the mixture
        row["n_iter"] = int(m.n_iter_)
        row["converged"] = bool(m.converged_)
        row["reg_covar"] = float(m.reg_covar)
    return row


def gmvae_row(est: str, df, types, labels, k: int, seed: int, args) -> dict[str, Any]:
    from segmentation import ConcreteGMVAE
    from segmentation.model.evaluation import label_metrics

    cfg = dict(GMVAE_DEFAULTS, epochs=args.epochs)
    m = ConcreteGMVAE(n_segments=k, estimator=est, seed=seed, device="cpu", n_threads=1, progress=False, **cfg)
    t0 = time.perf_counter()
    m.fit(df, feature_types=types)
    seconds = time.perf_counter() - t0
    clusters = m.predict(df)
    return {"method": est, "seed": seed, "fit_seconds": seconds, **label_metrics(labels, clusters),
            "n_used": int(m.metrics_["usage"]["n_used"]), "epochs_run": int(m.metrics_["epochs_run"]),
            "elbo": float(m.score(df))}


METRICS = ("hungarian_accuracy", "nmi", "ari", "log_likelihood", "fit_seconds", "n_used", "n_iter", "epochs_run")


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for method in dict.fromkeys(r["method"] for r in rows):
        rs = [r for r in rows if r["method"] == method]
        out[method] = {m: mean_sd([r[m] for r in rs if m in r]) for m in METRICS if any(m in r for r in rs)}
    return out


def run_mnist(args) -> dict[str, Any]:
    from segmentation.model.preprocessing import TablePreprocessor

    train_df, test_df, y_train, y_test, info = load_mnist(args.mnist_data, args.mnist_fit_rows, SPLIT_SEED)
    pre = TablePreprocessor(binary_types(train_df)).fit(train_df)
    x_fit = encoded(pre, train_df)
    keep = x_fit.std(0) > 0
    x_fit, x_test = x_fit[:, keep], encoded(pre, test_df, keep)
    rows = []
    for seed in args.seeds:
        for name in args.peers:
            m, s = fit_peer(name, x_fit, 10, seed, args)
            rows.append(peer_row(name, m, s, x_test, y_test, seed))
            _print(f"mnist {name:9s} seed {seed}", rows[-1])
    return {"data": info, "k": 10, "encoded_columns": int(x_fit.shape[1]),
            "encoded_columns_before_dropping_constants": int(keep.size),
            "evaluated_on": f"{len(test_df):,} held-out rows", "runs": rows, "summary": summarise(rows),
            "gmvae_source": "results/mnist.json (benchmarks/mnist_gmvae.py, same split)"}


def run_tabular(name: str, args) -> dict[str, Any]:
    from segmentation.model.preprocessing import TablePreprocessor

    df, types, labels, desc = LOADERS[name]()
    k = int(len(np.unique(labels)))
    pre = TablePreprocessor(types, 10).fit(df)
    x = encoded(pre, df)
    keep = x.std(0) > 0
    x = x[:, keep]
    rows = []
    for seed in args.seeds:
        for est in args.estimators:
            rows.append(gmvae_row(est, df, types, labels, k, seed, args))
            _print(f"{name} {est:9s} seed {seed}", rows[-1])
        for peer in args.peers:
            m, s = fit_peer(peer, x, k, seed, args)
            rows.append(peer_row(peer, m, s, x, labels, seed))
            _print(f"{name} {peer:9s} seed {seed}", rows[-1])
    classes, counts = np.unique(labels, return_counts=True)
    return {"description": desc, "rows": int(len(df)), "k": k, "feature_types": types,
            "label_classes": {str(c): int(n) for c, n in zip(classes, counts)},
            "encoded_columns": int(x.shape[1]), "evaluated_on": "all rows (fitted without the label)",
            "runs": rows, "summary": summarise(rows)}


def _print(prefix: str, r: dict[str, Any]) -> None:
    extra = f" ll={r['log_likelihood']:.1f}" if "log_likelihood" in r else ""
    print(f"  {prefix}: acc={r['hungarian_accuracy']:.3f} nmi={r['nmi']:.3f} ari={r['ari']:.3f} used={r['n_used']}"
          f"{extra} fit {r['fit_seconds']:.1f}s", flush=True)


def targets(results: dict[str, Any]) -> dict[str, Any]:
    """Concrete ARI >= GaussianMixture's, per tabular set and covariance type."""
    per_set = {}
    for name, res in results.get("tabular", {}).items():
        s = res["summary"]
        if "concrete" not in s:
            continue
        c = s["concrete"]["ari"]["mean"]
        per_set[name] = {"concrete_ari": c, **{f"{g}_ari": s[g]["ari"]["mean"] for g in ("gmm_diag", "gmm_full") if g in s}}
        per_set[name].update({f"concrete>={g}": bool(c >= s[g]["ari"]["mean"]) for g in ("gmm_diag", "gmm_full") if g in s})
    out: dict[str, Any] = {"per_set": per_set}
    for g in ("gmm_diag", "gmm_full"):
        wins = [v[f"concrete>={g}"] for v in per_set.values() if f"concrete>={g}" in v]
        if wins:
            out[f"concrete_ari>={g}_on_at_least_half"] = {"wins": int(sum(wins)), "sets": len(wins),
                                                           "met": bool(sum(wins) >= len(wins) / 2)}
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="peers.py", description=__doc__.split("Examples")[0].strip(),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="1 seed, 10 epochs, 20 EM iterations, 2 k-means inits, MNIST peers on 2,000 rows")
    p.add_argument("--datasets", nargs="+", default=["mnist", *TABULAR], choices=["mnist", *TABULAR])
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="default 0 1 2 3 4")
    p.add_argument("--estimators", nargs="*", default=list(GMVAE), choices=GMVAE, help="GMVAE estimators (tabular sets)")
    p.add_argument("--peers", nargs="+", default=list(PEERS), choices=PEERS)
    p.add_argument("--epochs", type=int, default=None, help=f"GMVAE max epochs (default {GMVAE_DEFAULTS['epochs']})")
    p.add_argument("--gmm-max-iter", type=int, default=None, help="GaussianMixture max EM iterations (default 100)")
    p.add_argument("--kmeans-n-init", type=int, default=None, help="KMeans initialisations (default 10)")
    p.add_argument("--mnist-data", default=DEFAULT_DATA)
    p.add_argument("--mnist-fit-rows", type=int, default=None,
                   help="MNIST rows to fit on, the rest held out (default 8000: the split of mnist_gmvae.py; --quick 2000)")
    p.add_argument("--out", default=None, help="JSON output (default benchmarks/results/peers.json)")
    p.add_argument("--merge", action="store_true",
                   help="keep the data sets of an existing --out file that this run does not measure (each data set "
                        "records the command, commit and time that measured it)")
    return p


def resolve(args):
    defaults = QUICK if args.quick else dict(seeds=[0, 1, 2, 3, 4], epochs=GMVAE_DEFAULTS["epochs"], gmm_max_iter=100,
                                             kmeans_n_init=10, mnist_fit_rows=8000)
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.out is None:
        args.out = str(RESULTS / ("peers_quick.json" if args.quick else "peers.json"))
    for name in ("epochs", "gmm_max_iter", "kmeans_n_init", "mnist_fit_rows"):
        if getattr(args, name) < 1:
            sys.exit(f"peers.py: --{name.replace('_', '-')} must be at least 1, not {getattr(args, name)}")
    if "mnist" in args.datasets:
        if not Path(args.mnist_data).is_file():
            sys.exit(f"peers.py: --mnist-data {args.mnist_data}: no such file (an npz with x [N,28,28] and y)")
        import numpy as np

        with np.load(args.mnist_data) as d:
            n = len(d["y"])
        if not 0 < args.mnist_fit_rows < n:
            sys.exit(f"peers.py: --mnist-fit-rows must be between 1 and {n - 1} (the file has {n} images), "
                     f"not {args.mnist_fit_rows}")
    return args


def _provenance(payload: dict[str, Any]) -> dict[str, Any]:
    machine = payload.get("machine", {})
    return {"command": payload.get("command"), "started_utc": payload.get("started_utc"),
            "git_commit": machine.get("git_commit"), "config": payload.get("config"),
            "uncommitted_library_files": machine.get("uncommitted_library_files")}


def main(argv: list[str] | None = None) -> int:
    args = resolve(build_parser().parse_args(argv))
    logging.basicConfig(level=logging.ERROR, format="%(message)s")
    import threadpoolctl
    import torch

    torch.set_num_threads(1)
    threadpoolctl.threadpool_limits(1)  # BLAS under scikit-learn: one thread, like torch
    started, t0 = now_utc(), time.perf_counter()
    results: dict[str, Any] = {"tabular": {}}
    done: list[str] = []
    kept: list[str] = []
    if args.merge and Path(args.out).exists():
        # a rerun of some data sets (after an engine change, say) keeps the others as they were measured
        try:
            old = json.loads(Path(args.out).read_text())
        except ValueError as exc:
            sys.exit(f"peers.py: --merge: {args.out} is not readable JSON ({exc}); move it away or drop --merge")
        if not isinstance(old, dict) or not isinstance(old.get("results", {}), dict):
            sys.exit(f"peers.py: --merge: {args.out} is not a peers.py result; move it away or drop --merge")
        if bool(old.get("quick")) != bool(args.quick):
            sys.exit(f"peers.py: --merge: {args.out} holds a {'quick' if old.get('quick') else 'full'} run and this "
                     f"one is {'quick' if args.quick else 'full'}; merge like with like (or pick another --out)")
        old_results, old_run = old.get("results", {}), _provenance(old)
        for name in old.get("datasets_done", []):
            if name in args.datasets:
                continue
            entry = old_results.get(name) if name == "mnist" else old_results.get("tabular", {}).get(name)
            if entry is None:
                continue
            entry.setdefault("measured_by", old_run)
            if name == "mnist":
                results["mnist"] = entry
            else:
                results["tabular"][name] = entry
            kept.append(name)
    config = {"gmvae": dict(GMVAE_DEFAULTS, epochs=args.epochs, hidden=list(GMVAE_DEFAULTS["hidden"])),
              "gmm": {"max_iter": args.gmm_max_iter, "reg_covar": "1e-6, else 1e-4, else 1e-2 (per fit, recorded)",
                      "init": "kmeans", "n_init": 1},
              "kmeans": {"n_init": args.kmeans_n_init, "init": "k-means++"},
              "encoding": "TablePreprocessor(feature_types, min_level_count=10).transform(df)['x'], fitted on the "
                          "fit rows; columns constant on the fit rows dropped",
              "threads": 1}
    measured_by = {"command": command_line(), "started_utc": started,
                   "git_commit": bench_machine(1).get("git_commit"), "config": config,
                   "uncommitted_library_files": uncommitted_library_files()}

    def payload(finished: bool) -> dict[str, Any]:
        return {
            "benchmark": "peers", "command": command_line(), "started_utc": started,
            "finished_utc": now_utc() if finished else None, "complete": finished,
            "datasets_done": kept + [d for d in done if d not in kept], "datasets_kept_from_earlier_run": kept,
            "total_wall_seconds": time.perf_counter() - t0, "quick": args.quick,
            # seeds and config of this run; a data set kept by --merge has its own in measured_by
            "seeds": args.seeds, "config": config,
            "machine": bench_machine(1), "results": results, "targets": targets(results),
        }

    # the JSON is rewritten after every data set (marked incomplete until the end), so a run cut
    # short keeps what it measured
    if "mnist" in args.datasets:
        print("MNIST (peers only; the GMVAE numbers come from results/mnist.json)", flush=True)
        results["mnist"] = dict(run_mnist(args), measured_by=measured_by)
        done.append("mnist")
        write_json(args.out, payload(False))
    for name in args.datasets:
        if name != "mnist":
            print(name, flush=True)
            results["tabular"][name] = dict(run_tabular(name, args), measured_by=measured_by)
            done.append(name)
            write_json(args.out, payload(False))
    final = payload(True)
    print(f"wrote {write_json(args.out, final)} ({final['total_wall_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
