"""``segment``: the command line. Every subcommand is a thin call into the library.

    segment demo init                 load the Online Retail demo into the warehouse (schema raw)
    segment run --date 2011-12-09     run the whole nightly pipeline for one date, without Airflow
    segment fit DATA --k 8 --out DIR  fit a model on a Parquet/CSV file
    segment assign DIR DATA --out F   assign segments to the rows of a Parquet/CSV file
    segment summary                   print the published segments and a query to try
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

ENV_HELP = textwrap.dedent("""\
    environment:
      SEGMENT_WAREHOUSE_URL  warehouse URL when --warehouse is not given
                             (duckdb:///path/file.duckdb or postgresql://user:pass@host:5432/db)
      SEGMENT_DATA_DIR       folder for the default DuckDB file and artifacts (default ./.data)
      SEGMENT_ARTIFACTS      artifact store folder (default $SEGMENT_DATA_DIR/artifacts)
      SEGMENT_DEVICE         torch device for training: auto (default), cpu, cuda
      SEGMENT_SPEC           the feature spec when --config is not given (default: the demo's)
      SEGMENT_DBT_PROJECT_DIR  your own dbt project (default: dags/dbt of this repository); it must
                             have a model named customer_features that writes the spec's features_relation
    """)


def _setup_logging(verbose: int) -> None:
    level = logging.DEBUG if verbose > 1 else logging.INFO if verbose >= 0 else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("great_expectations", "urllib3", "botocore", "numexpr", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if verbose < 1:  # dbt's own progress lines: with -v
        logging.getLogger("segmentation.features.dbt").setLevel(logging.WARNING)


def _read_table(path: str):
    import pandas as pd

    p = Path(path)
    if not p.exists():
        raise SystemExit(f"error: {p} does not exist")
    suffixes = "".join(p.suffixes).lower()
    if suffixes.endswith(".parquet") or suffixes.endswith(".pq"):
        return pd.read_parquet(p)
    if ".csv" in suffixes or ".tsv" in suffixes or ".txt" in suffixes:
        try:
            return pd.read_csv(p, sep="\t" if ".tsv" in suffixes else ",")
        except (ValueError, UnicodeDecodeError) as exc:  # pandas' EmptyDataError / ParserError are ValueErrors
            raise SystemExit(f"error: {p}: cannot read it as a table: {exc}")
    raise SystemExit(f"error: {p}: unsupported file type; use .parquet or .csv")


def _widths(text: str) -> tuple[int, ...]:
    """``--hidden``: comma-separated positive layer widths."""
    try:
        widths = tuple(int(h) for h in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give positive whole numbers separated by commas, e.g. 256,128") from None
    if not widths or min(widths) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: every width must be at least 1")
    return widths


def _at_least_one(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is below 1")
    return value


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def _share(text: str) -> float:
    value = _number(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"{value} is not in [0, 1)")
    return value


def _positive(text: str) -> float:
    value = _number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value} is not above 0")
    return value


def _device(text: str) -> str:
    """auto, cpu, cuda or cuda:N (mps on Apple machines): a torch device this product runs on."""
    import re

    if not re.fullmatch(r"auto|cpu|(mps|cuda)(:\d+)?", text):
        raise argparse.ArgumentTypeError(f"{text!r}: use auto, cpu, cuda or cuda:N")
    return text


def _table_out(text: str) -> str:
    """An output table file: .parquet / .pq or .csv, nothing that would be written as something else."""
    if not text.lower().endswith((".parquet", ".pq", ".csv", ".csv.gz")):
        raise argparse.ArgumentTypeError(f"{text!r}: the output must end in .parquet, .pq, .csv or .csv.gz")
    return text


def _parse_types(items: list[str] | None) -> dict[str, str] | None:
    if not items:
        return None
    out = {}
    for item in items:
        for part in item.split(","):
            if not part.strip():
                continue
            name, sep, t = part.partition("=")
            if not sep:
                raise SystemExit(f"error: --type {part!r}: write NAME=TYPE, e.g. spend=money")
            out[name.strip()] = t.strip()
    return out


# ---- subcommands ----------------------------------------------------------------------------
def _check_out_dir(text: str) -> None:
    """Refuse an --out that cannot become a model folder before any training is spent on it."""
    out = Path(text)
    if out.exists() and not out.is_dir():
        raise SystemExit(f"error: --out {text}: a file of that name exists; the model is a folder")
    parent = next((p for p in [out, *out.parents] if p.exists()), Path("."))
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise SystemExit(f"error: --out {text}: cannot create the model folder there ({parent} is not writable)")


def cmd_fit(args: argparse.Namespace) -> int:
    from segmentation import ConcreteGMVAE

    _check_out_dir(args.out)
    df = _read_table(args.data)
    types = _parse_types(args.type)
    if args.spec:
        from segmentation.spec import load_spec

        types = load_spec(args.spec).feature_types
    if args.exclude:
        df = df.drop(columns=[c for c in args.exclude if c in df.columns])
    model = ConcreteGMVAE(
        n_segments=args.k, estimator=args.estimator, latent_dim=args.latent_dim,
        hidden=args.hidden, epochs=args.epochs, batch_size=args.batch_size,
        learning_rate=args.lr, kl_anneal_epochs=args.kl_anneal_epochs, tau_start=args.tau_start, tau_min=args.tau_min,
        patience=args.patience, seed=args.seed, device=args.device, n_threads=args.threads,
        init=args.init, pretrain_epochs=args.pretrain_epochs, pretrain_noise=args.pretrain_noise,
        start_clusters=args.start_clusters, finetune_learning_rate=args.finetune_lr,
        prior_covariance=args.prior_covariance,
    )
    model.fit(df, feature_types=types, table_name=Path(args.data).name)
    model.save(args.out)
    usage = model.metrics_["usage"]
    print(f"model saved to {args.out}: K={args.k}, {model.metrics_['epochs_run']} epochs, "
          f"{model.metrics_['train_seconds']:.1f} s; segment sizes {usage['sizes']}")
    print("features: " + ", ".join(f"{k}={v}" for k, v in model.feature_types_.items()))
    return 0


def cmd_assign(args: argparse.Namespace) -> int:
    import numpy as np
    import pandas as pd

    from segmentation import ConcreteGMVAE

    model = ConcreteGMVAE.load(args.model_dir, device=args.device)
    df = _read_table(args.data)
    proba = model.predict_proba(df)
    order = np.argsort(-proba, axis=1)
    out = pd.DataFrame({
        "segment_id": order[:, 0],
        "segment_probability": proba[np.arange(len(df)), order[:, 0]],
        "runner_up_segment_id": order[:, 1],
    })
    if args.id_column:
        if args.id_column not in df.columns:
            raise SystemExit(f"error: --id-column {args.id_column!r} is not a column of {args.data}")
        out.insert(0, args.id_column, df[args.id_column].to_numpy())
    if args.probabilities:
        for k in range(proba.shape[1]):
            out[f"p_segment_{k}"] = proba[:, k]
    dest = Path(args.out)
    if dest.name.lower().endswith((".csv", ".csv.gz")):
        out.to_csv(dest, index=False)
    else:
        out.to_parquet(dest, index=False)
    sizes = np.bincount(out["segment_id"], minlength=model.n_segments)
    print(f"assigned {len(out)} rows to {args.out}; segment sizes {sizes.tolist()}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from segmentation.pipeline import run_all

    started = time.perf_counter()
    result = run_all(args.warehouse, args.date, spec_path=args.config, n_segments=args.k,
                     full_retrain=args.full_retrain, artifacts=args.artifacts)
    _print_run(result, time.perf_counter() - started)
    return 0


def _print_run(result: dict[str, Any], seconds: float) -> None:
    t = result["training"]
    print(f"\nrun {result['run_id']}: {result['n_customers']:,} customers in {len(result['segments'])} segments "
          f"({seconds:.0f} s; model {t['scoring_version']}, {t['mode']}: {t['reason']})")
    for s in result["segments"]:
        print(f"  segment {s['segment_id']:>3}  {s['size']:>7,} ({s['share']:6.1%})  {s['label']}")
    if result.get("report"):
        print(f"  report: {result['report']}")
    st = result.get("stability") or {}
    if st.get("common_customers"):
        print(f"  stability: {st['moved_share']:.1%} of customers changed segment since the previous run")
    if result.get("degraded"):
        print("  WARNING: degraded run: the new model was not promoted (see segmentation_runs.message)")


def cmd_demo_init(args: argparse.Namespace) -> int:
    from segmentation.demo import init_demo_warehouse
    from segmentation.warehouse import default_url, redact_url

    url = args.warehouse or default_url()
    if url.startswith("duckdb:///") and not url.startswith("duckdb:///:memory:"):
        Path(url[len("duckdb:///"):]).parent.mkdir(parents=True, exist_ok=True)
    counts = init_demo_warehouse(url, replace=not args.keep)
    print(f"demo warehouse {redact_url(url)}: raw.transactions {counts['transactions']:,} lines "
          f"({counts['guest_lines']:,} guest), raw.customers {counts['customers']:,}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from segmentation.report import build_report_for_date

    path = build_report_for_date(args.warehouse, args.date, artifacts=args.artifacts, spec_path=args.config,
                                 out_path=args.out)
    print(f"report written to {path}")
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    from segmentation.spec import load_spec
    from segmentation.summary import summary_text

    spec = load_spec(args.config)
    print(summary_text(args.warehouse, spec.output_schema))
    return 0


# ---- parser ---------------------------------------------------------------------------------
def _add_warehouse(p: argparse.ArgumentParser) -> None:
    p.add_argument("--warehouse", metavar="URL", default=None,
                   help="warehouse URL: duckdb:///path/file.duckdb or postgresql://user:pass@host:port/db "
                        "(default: $SEGMENT_WAREHOUSE_URL, else duckdb:///$SEGMENT_DATA_DIR/warehouse.duckdb)")


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="segment", formatter_class=fmt,
        description="Nightly customer segmentation with a Concrete Gaussian-Mixture VAE.",
        epilog=ENV_HELP,
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    # fit
    p = sub.add_parser("fit", formatter_class=fmt, help="fit a model on a Parquet or CSV file",
                       description="Fit a Concrete GMVAE on the rows of DATA and save it to MODEL_DIR "
                                   "(weights.safetensors + metadata.json).",
                       epilog="feature types: continuous (Gaussian), money (Gaussian on signed log1p; heavy-tailed "
                              "amounts), count (negative binomial), binary (Bernoulli), categorical (softmax; rare "
                              "levels pooled, unseen ones -> __unknown__). Missing values are masked, never filled.")
    p.add_argument("data", metavar="DATA", help="training table: .parquet or .csv")
    p.add_argument("--k", type=int, required=True, help="number of segments K")
    p.add_argument("--out", required=True, metavar="MODEL_DIR", help="folder to write the model to")
    p.add_argument("--type", action="append", metavar="NAME=TYPE",
                   help="declare a feature's type (repeatable or comma-separated). With --type, the model uses "
                        "exactly the declared columns; without it, every column but those that look like identifiers, types "
                        "inferred from dtypes and printed (inference never picks money: declare heavy-tailed "
                        "amounts as NAME=money)")
    p.add_argument("--spec", "--config", dest="spec", metavar="SPEC.yaml",
                   help="take features and types from a feature spec file instead")
    p.add_argument("--exclude", action="append", default=[], metavar="COLUMN",
                   help="column to leave out when types are inferred (e.g. an id); repeatable")
    p.add_argument("--estimator", choices=["concrete", "exact"], default="concrete",
                   help="concrete: one relaxed sample of the segment per row, cost flat in K (default); "
                        "exact: sum over all K segments, cost linear in K")
    p.add_argument("--latent-dim", type=_at_least_one, default=10, help="size of the continuous latent z (default 10)")
    p.add_argument("--hidden", type=_widths, default=(256, 128), help="hidden layer widths, comma-separated (default 256,128)")
    p.add_argument("--epochs", type=_at_least_one, default=100, help="maximum epochs (default 100)")
    p.add_argument("--batch-size", type=_at_least_one, default=256, help="minibatch size (default 256)")
    p.add_argument("--lr", type=_positive, default=1e-3, help="Adam learning rate (default 1e-3)")
    p.add_argument("--kl-anneal-epochs", type=int, default=10,
                   help="epochs over which the weight of KL(q(y|x)||p(y)) rises from 0 to 1 (default 10), with "
                        "--init random only: after the data-driven start the weight is 1 from the first epoch")
    p.add_argument("--tau-start", type=_positive, default=1.0, help="initial Concrete temperature (default 1.0)")
    p.add_argument("--tau-min", type=_positive, default=0.5, help="temperature floor (default 0.5)")
    p.add_argument("--patience", type=_at_least_one, default=10, help="early-stopping patience in epochs (default 10)")
    p.add_argument("--init", choices=["pretrain", "random"], default="pretrain",
                   help="how the mixture starts: 'pretrain' (default) trains a denoising autoencoder for "
                        "--pretrain-epochs epochs and places the K components by clustering its latent space "
                        "(--start-clusters); 'random' starts from random weights (the plain GMVAE)")
    p.add_argument("--pretrain-epochs", type=int, default=20,
                   help="autoencoder epochs of --init pretrain (default 20)")
    p.add_argument("--pretrain-noise", type=_share, default=0.2,
                   help="share of the input entries the autoencoder sees masked to 0, in [0, 1) (default 0.2; "
                        "0 turns the denoising off)")
    p.add_argument("--start-clusters", choices=["gmm", "kmeans"], default="gmm",
                   help="how --init pretrain places the components: 'gmm' (default), the consensus of 20 "
                        "full-covariance Gaussian mixtures, or 'kmeans'")
    p.add_argument("--finetune-lr", type=_positive, default=None,
                   help="Adam learning rate of the GMVAE training after --init pretrain (default: --lr). A "
                        "smaller one (e.g. 1e-4) refines the start instead of reshuffling it, in more epochs")
    p.add_argument("--prior-covariance", choices=["diagonal", "full"], default="diagonal",
                   help="shape of each segment's Gaussian in the latent space: 'diagonal' (default) or 'full' "
                        "(a covariance matrix per segment, started at its start cluster's: segments shaped like "
                        "tilted ellipsoids keep the shape the start found; benchmarks/RESULTS.md has the MNIST figures)")
    p.add_argument("--seed", type=int, default=0, help="random seed; same seed, same data, same model (default 0)")
    p.add_argument("--device", type=_device, default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N (default auto)")
    p.add_argument("--threads", type=_at_least_one, default=1, help="CPU threads for torch (default 1: fastest for these small networks)")
    p.set_defaults(func=cmd_fit)

    # assign
    p = sub.add_parser("assign", formatter_class=fmt, help="assign segments to the rows of a file",
                       description="Score DATA with the model in MODEL_DIR: segment_id, segment_probability and "
                                   "runner_up_segment_id per row, written to FILE (.parquet or .csv).")
    p.add_argument("model_dir", metavar="MODEL_DIR", help="a folder written by `segment fit` or a nightly run")
    p.add_argument("data", metavar="DATA", help="rows to score: .parquet or .csv with the model's feature columns")
    p.add_argument("--out", required=True, type=_table_out, metavar="FILE", help="output file: .parquet (or .pq) or .csv")
    p.add_argument("--id-column", metavar="COLUMN", help="copy this column (e.g. customer_id) into the output")
    p.add_argument("--probabilities", action="store_true", help="also write every segment's probability")
    p.add_argument("--device", type=_device, default="cpu", help="torch device for scoring: cpu, cuda or cuda:N (default cpu)")
    p.set_defaults(func=cmd_assign)

    # run
    p = sub.add_parser("run", formatter_class=fmt, help="run the nightly pipeline for one date (no Airflow)",
                       description="extract -> features (dbt) -> validate (Great Expectations) -> train or refresh "
                                   "-> score -> publish, for the data interval [DATE, DATE+1). Exits non-zero on "
                                   "failure; published tables are then left as they were.",
                       epilog=ENV_HELP)
    p.add_argument("--date", required=True, metavar="YYYY-MM-DD", help="the run's logical date D")
    _add_warehouse(p)
    p.add_argument("--config", "--spec", dest="config", metavar="SPEC.yaml", default=os.environ.get("SEGMENT_SPEC"),
                   help="feature spec (default: $SEGMENT_SPEC, else the Online Retail demo spec shipped with the package)")
    p.add_argument("--k", type=int, default=None, help="number of segments (default: the spec's model.n_segments)")
    p.add_argument("--full-retrain", action="store_true", help="train from scratch instead of refreshing")
    p.add_argument("--artifacts", metavar="DIR", default=None, help="artifact store folder (default $SEGMENT_ARTIFACTS)")
    p.set_defaults(func=cmd_run)

    # demo
    p = sub.add_parser("demo", formatter_class=fmt, help="the Online Retail demo warehouse")
    dsub = p.add_subparsers(dest="demo_command", metavar="ACTION", required=True)
    d = dsub.add_parser("init", formatter_class=fmt, help="load raw.transactions and raw.customers",
                        description="Load the UCI Online Retail invoice lines (541,909 rows, shipped with the "
                                    "package) into raw.transactions and one row per customer into raw.customers.")
    _add_warehouse(d)
    d.add_argument("--keep", action="store_true", help="do nothing if the demo tables already exist")
    d.set_defaults(func=cmd_demo_init)

    # report
    p = sub.add_parser("report", formatter_class=fmt, help="write the HTML segment report of a run",
                       description="Write the self-contained HTML report of the run of DATE (segments, what sets "
                                   "each apart, charts, changes since the previous run, validation).")
    p.add_argument("--date", required=True, metavar="YYYY-MM-DD", help="the run date")
    _add_warehouse(p)
    p.add_argument("--config", "--spec", dest="config", metavar="SPEC.yaml", default=os.environ.get("SEGMENT_SPEC"),
                   help="feature spec (default: $SEGMENT_SPEC, else the demo spec)")
    p.add_argument("--artifacts", metavar="DIR", default=None, help="artifact store (default $SEGMENT_ARTIFACTS)")
    p.add_argument("--out", metavar="FILE.html", default=None,
                   help="write here instead of into the run's folder in the artifact store")
    p.set_defaults(func=cmd_report)

    # summary
    p = sub.add_parser("summary", formatter_class=fmt, help="print the published segments and a query to try")
    _add_warehouse(p)
    p.add_argument("--config", "--spec", dest="config", metavar="SPEC.yaml", default=os.environ.get("SEGMENT_SPEC"),
                   help="feature spec, for the output schema (default: $SEGMENT_SPEC, else the demo spec)")
    p.set_defaults(func=cmd_summary)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(-1 if args.quiet else args.verbose)
    os.environ.setdefault("DBT_SEND_ANONYMOUS_USAGE_STATS", "False")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except SystemExit:
        raise
    except Exception as exc:  # one clear line for the user; the traceback with -v
        if args.verbose:
            raise
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
