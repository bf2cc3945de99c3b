"""The steps of one nightly run, as plain functions shared by the CLI and the Airflow DAG.

Every step takes the warehouse URL (resolved by the caller: never passed through XCom, since it may
hold a password) and the run dict from ``start_run``, and returns a small JSON-able dict of
references (table names, file paths, model versions): never DataFrames.

    run = start_run(date(2011, 12, 9))
    extracted = extract(url, run)
    built = features(url, run)
    checked = validate(url, run, extracted)
    trained = train(url, run, checked)
    scored = score(url, run, trained)
    published = publish(url, run, trained, scored, checked)

``run_all`` chains them (and records a failed run when one raises); ``segment run`` calls it.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

from segmentation.scoring import _top2, entity_id_text
from segmentation.spec import MODEL_KEYS, Spec, load_spec

log = logging.getLogger(__name__)

# Model settings a spec's ``model:`` block may set (the rest of ConcreteGMVAE's are left default).
REFRESH_EPOCHS = 5           # fine-tuning epochs of a nightly refresh
REFRESH_LEARNING_RATE = 3e-4  # gentler than training: a refresh adapts, it must not reshuffle
KEEP_MARGIN = 0.02           # production still fits when its ELBO on tonight's data is within 2% of training's
ELBO_MARGIN = 0.02           # promotion gate: a new model's ELBO may be at most 2% worse than production's
# A scheduled retrain reshuffles segments (a fresh model finds its own clusters): it replaces the
# production model only when it explains tonight's customers clearly better.
SCHEDULED_RETRAIN_MIN_GAIN = 0.01
RETRAIN_EVERY_DAYS = 7       # a refreshed lineage is retrained from scratch weekly
# promotion gate, absolute floor: the ELBO may be at most this far below a model of independent
# features (the larger of the two); a healthy model is above it (demo: -22.2 vs -29.2 nats)
INDEPENDENT_MARGIN = 0.25
INDEPENDENT_MARGIN_NATS = 2.0
MAX_DOMINANT_SHARE = 0.8     # promotion gate: no segment may hold more of the customers
MIN_SEGMENT_SHARE = 0.002    # promotion gate: nor may one be (almost) empty


class PipelineError(RuntimeError):
    """A step could not complete; the message says which and why."""


# ---------------------------------------------------------------------------------------------
# run context
# ---------------------------------------------------------------------------------------------
def _date(value: dt.date | str) -> dt.date:
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(str(value))
    except ValueError as exc:
        raise PipelineError(f"run date {value!r} is not a date (YYYY-MM-DD)") from exc


def start_run(
    run_date: dt.date | str,
    *,
    as_of: dt.datetime | str | None = None,
    spec_path: str | None = None,
    n_segments: int | None = None,
    full_retrain: bool = False,
    artifacts: str | None = None,
    trigger: str = "cli",
) -> dict[str, Any]:
    """The run's identity and settings. ``run_date`` is the logical date D; features are computed as
    of ``as_of``, the end of the data interval [D, D+1) unless given."""
    d = _date(run_date)
    if as_of is None:
        end = dt.datetime.combine(d + dt.timedelta(days=1), dt.time(), tzinfo=dt.timezone.utc)
    elif isinstance(as_of, str):
        end = dt.datetime.fromisoformat(as_of)
    else:
        end = as_of
    if end.tzinfo is None:
        end = end.replace(tzinfo=dt.timezone.utc)
    now = dt.datetime.now(dt.timezone.utc)
    if end > now + dt.timedelta(hours=1):
        # a run for a day that has not ended would publish partial data as "current" and every
        # later real night would count as a backfill of it
        raise PipelineError(
            f"run date {d} is in the future: its data interval ends {end:%Y-%m-%d %H:%M} UTC, after now "
            f"({now:%Y-%m-%d %H:%M} UTC); run it once the day is over"
        )
    spec = load_spec(spec_path)
    k = spec.model.get("n_segments", 8) if n_segments is None else n_segments
    if isinstance(k, bool) or not isinstance(k, int) or k < 2:
        raise PipelineError(f"n_segments must be a whole number of at least 2, not {k!r}")
    from segmentation.artifacts import open_store

    store = open_store(artifacts)
    return {
        # one id per run date: a rerun of D replaces D's run record, and its rows are identical
        "run_id": f"{spec.name}-{d.isoformat()}",
        "run_date": d.isoformat(),
        "as_of": end.astimezone(dt.timezone.utc).isoformat(),
        "spec_path": spec.path,
        "n_segments": k,
        "full_retrain": bool(full_retrain),
        # with its S3 options (endpoint, encryption): every later step must reach the store the same way
        "artifacts": store.url,
        "trigger": trigger,
        "started_at": dt.datetime.now(dt.timezone.utc).isoformat(),
    }


def _spec(run: dict[str, Any]) -> Spec:
    return load_spec(run["spec_path"])


def _store(run: dict[str, Any]):
    from segmentation.artifacts import open_store

    return open_store(run["artifacts"])


def _as_of(run: dict[str, Any]) -> dt.datetime:
    return dt.datetime.fromisoformat(run["as_of"])


def _run_dir(run: dict[str, Any]) -> Path:
    return _store(run).run_dir(run["run_date"])


# ---------------------------------------------------------------------------------------------
# 1. extract
# ---------------------------------------------------------------------------------------------
def extract(url: str, run: dict[str, Any]) -> dict[str, Any]:
    """Check that every source table exists and validate the raw tables (Great Expectations) before
    dbt reads them: a missing column or a broken key is reported on the raw table, by name, rather
    than as a SQL error in the features model. The sources stay in the warehouse."""
    from segmentation.warehouse import connect
    from validation import validate_raw

    spec = _spec(run)
    counts: dict[str, int] = {}
    with connect(url) as wh:
        for name, rel in spec.sources.items():
            if not wh.table_exists(rel.schema, rel.table):
                raise PipelineError(
                    f"source table {rel.qualified} ({name}) does not exist in {wh}; load your CRM data there "
                    "or point the spec's sources at your tables (for the demo: `segment demo init`)"
                )
            counts[rel.qualified] = int(wh.query(f"SELECT count(*) AS n FROM {wh.qualified(rel.schema, rel.table)}").column("n")[0].as_py())
    log.info("extract: sources present: %s", ", ".join(f"{k} ({v:,} rows)" for k, v in counts.items()))
    out = _run_dir(run)
    raw = validate_raw(url, spec, as_of=_as_of(run), previous_row_counts=_previous_row_counts(run), out_dir=out)
    log.info("validation of raw tables: %s (checks above)", raw.status)
    store = _store(run)
    for f in out.glob("validation_raw*"):
        store.put_run_file(run["run_date"], f)
    raw.raise_if_failed()
    return {"row_counts": raw.row_counts or counts, "raw_status": raw.status}


# ---------------------------------------------------------------------------------------------
# 2. features
# ---------------------------------------------------------------------------------------------
def features(url: str, run: dict[str, Any]) -> dict[str, Any]:
    """Build the features with dbt as of the interval end and snapshot them to Parquet in the run's
    folder, so training and scoring read exactly the same rows."""
    import pyarrow.parquet as pq

    from segmentation.features import build_features
    from segmentation.warehouse import connect

    spec = _spec(run)
    relation = build_features(url, _as_of(run), spec)
    rel = spec.features_relation
    with connect(url) as wh:
        table = wh.query(f"SELECT * FROM {wh.qualified(rel.schema, rel.table)} ORDER BY {wh.ident(spec.entity_key)}")
    path = _run_dir(run) / "features.parquet"
    # small row groups: DDP ranks and scoring shards each read only their own part
    pq.write_table(table, path, row_group_size=100_000)
    _store(run).put_run_file(run["run_date"], path)
    log.info("features: %s has %d rows; snapshot %s", relation, table.num_rows, path)
    return {"relation": relation, "rows": table.num_rows, "snapshot": str(path)}


def _read_features(run: dict[str, Any]):
    import pyarrow.parquet as pq

    path = _store(run).run_file(run["run_date"], "features.parquet")
    if path is None:
        raise PipelineError(f"the features snapshot of {run['run_date']} is missing from {_store(run)}: "
                            "run the features step first")
    return pq.read_table(path).to_pandas()


# ---------------------------------------------------------------------------------------------
# 3. validate
# ---------------------------------------------------------------------------------------------
def _previous_row_counts(run: dict[str, Any]) -> dict[str, int] | None:
    """Row counts of the latest earlier run whose inputs passed validation."""
    store = _store(run)
    for d in reversed([d for d in store.run_dates() if d < run["run_date"]]):
        path = store.run_file(d, "row_counts.json")
        if path is not None:
            return json.loads(path.read_text())
    return None


def validate(url: str, run: dict[str, Any], extracted: dict[str, Any] | None = None) -> dict[str, Any]:
    """Great Expectations on the features (the raw tables were checked by ``extract``), with drift
    against the production model's training data. An error-severity failure raises
    ``ValidationFailed`` (the run stops before training; published tables are untouched)."""
    from validation import validate_features

    spec = _spec(run)
    out = _run_dir(run)
    raw_path = _store(run).run_file(run["run_date"], "validation_raw.json")
    raw_result = json.loads(raw_path.read_text()) if raw_path else {}
    raw_status = (extracted or {}).get("raw_status") or raw_result.get("status", "passed")
    reference = _production_reference(run)
    feats = validate_features(url, spec, as_of=_as_of(run), reference=reference, out_dir=out,
                              min_rows=run["n_segments"])
    log.info("validation of features: %s (checks above)", feats.status)
    result = {
        "status": "failed" if "failed" in (raw_status, feats.status) else
                  "warning" if "warning" in (raw_status, feats.status) else "passed",
        "raw": raw_result,
        "features": feats.to_dict(),
        "drift_detected": bool(feats.drift_detected),
    }
    (out / "validation.json").write_text(json.dumps(result, indent=2, default=str))
    store = _store(run)
    for f in out.glob("validation*"):
        store.put_run_file(run["run_date"], f)
    feats.raise_if_failed()
    # only a run whose inputs passed sets the band for the next night
    (out / "row_counts.json").write_text(json.dumps((extracted or {}).get("row_counts") or raw_result.get("row_counts") or {}))
    store.put_run_file(run["run_date"], out / "row_counts.json")
    return {"status": result["status"], "drift_detected": result["drift_detected"], "path": str(out / "validation.json")}


def _production_as_of(store, run_date: dt.date) -> tuple[str | None, str | None]:
    """(the production model for ``run_date``, None), or (None, why) when the production pointer is
    unreadable: the run then goes on as on a first night (retrain from scratch) instead of failing,
    and publishing replaces the broken pointer (its bytes are kept aside)."""
    from segmentation.artifacts import ArtifactStoreError

    try:
        return store.production_as_of(run_date), None
    except ArtifactStoreError as exc:
        log.error("artifacts: %s", exc)
        return None, str(exc)


def _production_reference(run: dict[str, Any]) -> dict | None:
    store = _store(run)
    version, _ = _production_as_of(store, _date(run["run_date"]))
    if not version:
        return None
    try:
        path = store.model_dir(version) / "reference.json"
        return json.loads(path.read_text()) if path.exists() else None
    except (OSError, ValueError) as exc:
        log.warning("validate: no drift reference for %s (%s)", version, exc)
        return None


# ---------------------------------------------------------------------------------------------
# 4. train (or refresh)
# ---------------------------------------------------------------------------------------------
def _model_settings(spec: Spec, run: dict[str, Any]) -> dict[str, Any]:
    settings = {k: v for k, v in spec.model.items() if k in MODEL_KEYS}
    settings["n_segments"] = run["n_segments"]
    if "hidden" in settings:
        settings["hidden"] = tuple(settings["hidden"])
    settings.setdefault("device", os.environ.get("SEGMENT_DEVICE", "auto"))
    return settings


def _with_defaults(settings: dict[str, Any]) -> dict[str, Any]:
    """Tonight's model settings in full: a key the spec leaves out (or deletes) is the estimator's
    default, which is what a retrain would build."""
    from segmentation import ConcreteGMVAE

    return {**ConcreteGMVAE().get_params(), **settings}


def _shape_changes(model, settings: dict[str, Any]) -> str:
    """The settings that shape the network (K aside: ``train`` says so on its own) where tonight's
    spec differs from ``model``'s ("" when none)."""
    from segmentation.model.estimator import SHAPE_KEYS

    tonight = _with_defaults(settings)
    changed = []
    for key in (k for k in SHAPE_KEYS if k != "n_segments"):
        was, now = getattr(model, key), tonight[key]
        was, now = (tuple(was), tuple(now)) if key == "hidden" else (was, now)
        if now != was:
            changed.append(f"{key} {was!r} -> {now!r}")
    return ", ".join(changed)


# spec settings a refresh takes over (the network's shape and start, the preprocessing and the
# refresh's own epochs and learning rate stay): a spec that switches the estimator or the device
# says so for tonight, not from the next weekly retrain on
REFRESH_SETTINGS = ("estimator", "tau_start", "tau_min", "tau_decay", "kl_anneal_epochs", "batch_size",
                    "validation_fraction", "seed", "device", "n_threads", "bf16")


def _held_out(model, df):
    """The rows of ``df`` the fit held out for early stopping (``validation_rows_``), or all of ``df``
    when it held out too few to judge by (a tiny table, validation_fraction 0, a DDP fit)."""
    rows = getattr(model, "validation_rows_", None)
    if rows is None or len(rows) < max(50, 2 * int(model.n_segments)) or len(df) <= int(max(rows, default=-1)):
        return df
    return df.iloc[rows].reset_index(drop=True)


def _gate(model, df, score: float, judged=None) -> list[str]:
    """Reasons not to promote a model (empty: promote). Judged on what the model does with
    tonight's customers, not on the metrics it recorded while training: a model whose weights
    went bad afterwards (or were never good) must not pass on the strength of its history.
    ``score``: its ELBO on ``judged`` (the held-out rows; default all of ``df``)."""
    import torch

    from segmentation.model.evaluation import independent_log_likelihood, segment_usage

    problems = []
    losses = [r.get("loss") for r in model.history_]
    if not losses or not all(isinstance(x, (int, float)) and math.isfinite(x) for x in losses):
        problems.append("training loss is not finite")
    bad = [name for name, t in model.network_.state_dict().items()
           if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        problems.append(f"weights are not finite (NaN or inf in {', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''})")
        return problems  # nothing it predicts means anything
    if not math.isfinite(score):
        problems.append(f"its ELBO on tonight's customers is {score}")
    else:
        # an absolute floor: a fit can diverge with a finite loss (an ELBO of -6e23 passed the gate
        # on a first night, where there is no production model to compare with)
        baseline = independent_log_likelihood(model, df if judged is None else judged)
        if math.isfinite(baseline) and score < baseline - max(INDEPENDENT_MARGIN_NATS, INDEPENDENT_MARGIN * abs(baseline)):
            problems.append(f"its ELBO on tonight's customers ({score:.4g}) is far below that of a model of independent "
                            f"features ({baseline:.4g}): it learnt nothing usable")
    usage = segment_usage(model.predict(df), int(model.n_segments))
    shares = usage["shares"]
    if any(s == 0 for s in shares):
        problems.append(f"empty segment(s): {usage['empty']}")
    elif shares and min(shares) < MIN_SEGMENT_SHARE:
        problems.append(f"a segment holds under {MIN_SEGMENT_SHARE:.1%} of customers")
    if shares and max(shares) > MAX_DOMINANT_SHARE:
        problems.append(f"one segment holds {max(shares):.0%} of customers")
    return problems


def _save_model(model, store, run: dict[str, Any], info: dict[str, Any], df) -> str:
    """Save into the registry under a content-addressed version (same weights, same version)."""
    tmp = store.new_model_dir()
    model.save(str(tmp), extra={"run_date": run["run_date"], "spec": _spec(run).name, **info})
    digest = hashlib.sha256((tmp / "weights.safetensors").read_bytes()).hexdigest()[:10]
    version = f"{run['run_date'].replace('-', '')}-{digest}"
    _write_reference(tmp, df, _spec(run))
    store.add_model(version, tmp)
    return version


def _write_reference(model_dir: Path, df, spec: Spec) -> None:
    """The training distribution of each feature, kept with the model for drift checks."""
    try:
        from validation import feature_reference
    except ImportError:  # pragma: no cover - validation is part of the package
        return
    (model_dir / "reference.json").write_text(json.dumps(feature_reference(df, spec), default=str))


def train(url: str, run: dict[str, Any], validated: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train a model for the run, or reuse / refresh one, and decide whether to promote it.

    - reuse: a model was already trained for this run date (a rerun): score with it again, so a
      rerun gives identical rows;
    - refresh: warm-start from the model in production for this date and fine-tune a few epochs;
    - retrain: from scratch, when there is no production model, on a manual ``full_retrain``, when
      validation saw drift, when the production lineage is a week old, or when K changed.

    ``promoted`` in the result (and in the run record) means the new model passed the promotion
    gate: the production pointer itself moves only in ``publish``, after the publish transaction
    has committed, so a run that fails to publish leaves production as it was.
    """
    from segmentation import ConcreteGMVAE
    from segmentation.model.artifact import ArtifactError
    from segmentation.model.training import TrainingDiverged

    spec = _spec(run)
    store = _store(run)
    df = _read_features(run)
    settings = _model_settings(spec, run)
    run_date = _date(run["run_date"])
    base, pointer_problem = _production_as_of(store, run_date)

    earlier = _model_trained_for(store, run)
    if earlier and not run["full_retrain"]:
        log.info("train: reusing %s, already trained for %s (a rerun)", earlier["version"], run["run_date"])
        scoring = earlier.get("scoring_version")
        return {"model_version": earlier["version"], "mode": "reuse", "reason": "model already trained for this date",
                "promoted": earlier.get("promoted", False), "base_version": earlier.get("base_version"),
                "scoring_version": earlier["version"] if scoring == "self" else scoring, "gate": earlier.get("gate", [])}

    mode, reason = "retrain", ""
    base_model = None
    if run["full_retrain"]:
        reason = "full retrain requested"
    elif pointer_problem:
        reason = f"production pointer unreadable ({pointer_problem})"
    elif not base:
        reason = "no model in production yet"
    elif validated and validated.get("drift_detected"):
        reason = "feature drift against the production model's training data"
    else:
        try:
            base_model = store.load_model(base, device=settings["device"])
        except ArtifactError as exc:
            log.error("train: the production model %s cannot be loaded (%s); retraining from scratch", base, exc)
            reason, base_model = f"production model {base} unreadable: {exc}", None
    if base_model is not None:
        last_retrain = _last_retrain_date(store, spec, run_date)
        if base_model.n_segments != run["n_segments"]:
            reason, base_model = f"n_segments changed ({base_model.n_segments} -> {run['n_segments']})", None
        elif set(base_model.feature_types_.items()) != set(spec.feature_types.items()):
            reason, base_model = "the feature spec changed", None
        elif reshaped := _shape_changes(base_model, settings):
            # a refresh keeps the network's shape: a spec that changes it needs a model from scratch
            reason, base_model = f"model settings changed ({reshaped})", None
        elif last_retrain and (run_date - last_retrain).days >= RETRAIN_EVERY_DAYS:
            reason, base_model = f"weekly retrain (last retrain {last_retrain})", None
        else:
            mode, reason = "refresh", f"warm start from {base}"
    base_score = None
    if base_model is not None:
        # A model that still explains tonight's customers as well as its training data is kept as
        # it is: no training, and every customer keeps the segment the same model gives them.
        base_score = float(base_model.score(df))
        trained_score = base_model.metadata_.get("run", {}).get("train_score")
        if trained_score is not None and base_score >= trained_score - KEEP_MARGIN * abs(trained_score):
            log.info("train: keeping production model %s: its ELBO on tonight's data %.3f is within %.0f%% of "
                     "its training ELBO %.3f", base, base_score, 100 * KEEP_MARGIN, trained_score)
            return {"model_version": base, "mode": "keep", "reason": "production model still fits tonight's data",
                    "promoted": True, "base_version": base, "scoring_version": base, "gate": [],
                    "train_seconds": 0.0, "epochs_run": 0}
    started = time.perf_counter()
    log.info("train: %s (%s) on %d customers, K=%d", mode, reason, len(df), run["n_segments"])
    # the model to fall back on when the new one fails: production, if it can score tonight's spec
    fallback = base if base and _compatible(store, base, spec, run) and _loadable(store, base) else None
    try:
        if base_model is not None:
            tonight = _with_defaults(settings)  # a key deleted from the spec: back to the default
            model = base_model.set_params(warm_start=True, epochs=REFRESH_EPOCHS, patience=REFRESH_EPOCHS,
                                          learning_rate=REFRESH_LEARNING_RATE,
                                          **{k: tonight[k] for k in REFRESH_SETTINGS})
            lineage_start = base_model.metadata_.get("run", {}).get("lineage_start") or base_model.metadata_.get("run", {}).get("run_date")
            model.fit(df, table_name=spec.features_relation.qualified)
        else:
            lineage_start = run["run_date"]
            model = ConcreteGMVAE(progress=None, **settings)
            anchor = _retrain_anchor(url, run, df, spec)
            model.fit(df, feature_types=spec.feature_types, table_name=spec.features_relation.qualified, anchor=anchor)
    except TrainingDiverged as exc:
        # a diverged fit is a model that failed the gate before it existed: keep production
        seconds = time.perf_counter() - started
        problem = f"training diverged: {exc}"
        if not fallback:
            raise PipelineError(f"{problem}; there is no usable production model to fall back on") from exc
        log.warning("train: %s; scoring with production model %s (run degraded)", problem, fallback)
        return {"model_version": None, "mode": mode, "reason": reason, "promoted": False, "base_version": base,
                "scoring_version": fallback, "gate": [problem], "train_seconds": round(seconds, 2), "epochs_run": None}
    seconds = time.perf_counter() - started
    score_now = float(model.score(df))  # on every row: what tomorrow's keep decision compares with
    # the gate judges both models on the rows this fit held out for early stopping (tonight's
    # customers the new model never trained on), not on the rows it fitted
    held = _held_out(model, df)
    score_held = float(model.score(held)) if held is not df else score_now
    problems = _gate(model, df, score_held, held)
    base_held = None
    if base and fallback:
        production = store.load_model(base)
        base_held = float(production.score(held))
        if base_score is None:
            base_score = float(production.score(df)) if held is not df else base_held
        if score_held < base_held - ELBO_MARGIN * abs(base_held):
            problems.append(f"held-out ELBO {score_held:.3f} is worse than production's {base_held:.3f} by more than "
                            f"{ELBO_MARGIN:.0%}")
    promoted = not problems
    scoring_version = None
    kept_reason = None
    if promoted and reason.startswith("weekly") and base_held is not None \
            and score_held < base_held + SCHEDULED_RETRAIN_MIN_GAIN * abs(base_held):
        promoted = False
        kept_reason = (f"scheduled retrain not promoted: held-out ELBO {score_held:.3f} is not "
                       f"{SCHEDULED_RETRAIN_MIN_GAIN:.0%} better than production's {base_held:.3f}; segments stay as they are")
        log.info("train: %s", kept_reason)
    info = {"mode": mode, "reason": reason, "base_version": base, "n_segments": run["n_segments"],
            "lineage_start": lineage_start, "promoted": promoted, "gate": problems, "train_seconds": seconds,
            "train_score": score_now, "production_score": base_score,
            "heldout_score": score_held, "production_heldout_score": base_held, "heldout_rows": int(len(held)),
            # "self" when promoted; else the production model the run scored with instead
            "scoring_version": "self" if promoted else fallback, "kept_reason": kept_reason,
            "init": model.metrics_.get("init", {}).get("init")}
    version = _save_model(model, store, run, info, df)
    if promoted:
        # the pointer moves in publish, once the run's rows are committed (_promote_after_publish)
        scoring_version = version
        log.info("train: %s passed the promotion gate (%.1f s); it becomes the model of %s when this run is "
                 "published (and the production model, unless a later date is published already)",
                 version, seconds, run["run_date"])
    elif kept_reason:
        scoring_version = fallback
    else:
        if not fallback:
            raise PipelineError(
                f"model {version} failed the promotion gate ({'; '.join(problems)}) and there is no usable production "
                "model to fall back on; try another n_segments or check the features"
            )
        scoring_version = fallback
        log.warning("train: %s NOT promoted (%s); scoring with production model %s (run degraded)",
                    version, "; ".join(problems), fallback)
    if kept_reason:
        reason = f"{reason}; {kept_reason}"
    return {"model_version": version, "mode": mode, "reason": reason, "promoted": promoted, "base_version": base,
            "scoring_version": scoring_version, "gate": problems, "train_seconds": round(seconds, 2),
            "epochs_run": model.metrics_.get("epochs_run")}


def _retrain_anchor(url: str, run: dict[str, Any], df, spec: Spec):
    """Last published segment id of each of tonight's customers (None for new ones), or None.

    A retrain starts its mixture from the segments marketers already use (see ``pretrain_init``):
    started from k-means instead, a weekly retrain on barely changed data moved 30-42% of the
    customers to another segment id in the 30-night simulation."""
    prev, _, _ = _previous_assignments(url, run)
    if prev is None:
        return None
    last = dict(zip(prev["customer_id"].astype(str), prev["segment_id"]))
    anchor = [last.get(c) for c in entity_id_text(df[spec.entity_key])]
    known = sum(a is not None for a in anchor)
    log.info("train: the retrain starts from last night's segments (%d of %d customers had one)", known, len(df))
    return anchor


def _last_retrain_date(store, spec: Spec, run_date: dt.date) -> dt.date | None:
    """The latest earlier night that trained from scratch (promoted or not): the weekly clock."""
    dates = [m["run_date"] for m in store.models()
             if m.get("mode") == "retrain" and m.get("spec") == spec.name and m.get("run_date", "9999") < str(run_date)]
    return _date(max(dates)) if dates else None


def _loadable(store, version: str) -> bool:
    from segmentation.model.artifact import ArtifactError

    try:
        store.load_model(version)
        return True
    except ArtifactError as exc:
        log.error("artifacts: model %s cannot be loaded: %s", version, exc)
        return False


def _compatible(store, version: str, spec: Spec, run: dict[str, Any]) -> bool:
    """Whether a stored model can score tonight's features (same features and types, same K)."""
    from segmentation.model.artifact import ArtifactError

    try:
        meta = store.model_metadata(version)
    except ArtifactError as exc:
        log.error("artifacts: model %s cannot be used: %s", version, exc)
        return False
    return meta.get("feature_types") == spec.feature_types and meta["config"]["n_segments"] == run["n_segments"]


def _model_trained_for(store, run: dict[str, Any]) -> dict[str, Any] | None:
    """The model an earlier attempt trained for this run date (the last saved, if several)."""
    same = [m for m in store.models()
            if m.get("run_date") == run["run_date"] and m.get("n_segments") == run["n_segments"]
            and m.get("spec") == _spec(run).name and m.get("scoring_version")]
    if not same:
        return None
    return max(same, key=lambda m: m.get("saved_at", ""))


# ---------------------------------------------------------------------------------------------
# 5. score (+ 6. match)
# ---------------------------------------------------------------------------------------------
def _reference_date(wh, schema: str, run_date):
    """The published run whose segment ids and labels a run of ``run_date`` continues: the latest
    successful run before it, or, for a backfill earlier than every published run, the earliest one
    after it. Without that second rule such a backfill issued ids of its own (retired at once), and a
    rerun of the later night, now preceded by the backfill, reported every customer as moved and
    relabelled its segments to tell them from the backfill's (found by the README walk-through)."""
    from segmentation.publish import RUNS

    runs = wh.qualified(schema, RUNS)
    got = wh.query(
        f"SELECT (SELECT max(run_date) FROM {runs} WHERE status = 'success' AND run_date < ?) AS before, "
        f"(SELECT min(run_date) FROM {runs} WHERE status = 'success' AND run_date > ?) AS after",
        [run_date, run_date],
    ).to_pylist()[0]
    return got["before"] or got["after"]


def _previous_assignments(url: str, run: dict[str, Any]):
    """Published assignments of the run this date's ids are matched to (``_reference_date``), and
    every id issued before this run: ids first issued by an earlier attempt of this same date are
    not counted, so a rerun of D gives its new clusters the same ids again (identical rows) instead
    of retiring D's ids and issuing fresh ones."""
    from segmentation.publish import ASSIGNMENTS, RUNS, SEGMENTS
    from segmentation.warehouse import connect

    schema = _spec(run).output_schema
    run_date = _date(run["run_date"])
    with connect(url) as wh:
        if not (wh.table_exists(schema, RUNS) and wh.table_exists(schema, ASSIGNMENTS)):
            return None, [], None
        reference = _reference_date(wh, schema, run_date)
        prev = wh.query(
            f"SELECT customer_id, segment_id FROM {wh.qualified(schema, ASSIGNMENTS)} WHERE run_date = ?",
            [reference],
        ).to_pandas() if reference else []
        issued = wh.query(
            f"SELECT segment_id FROM {wh.qualified(schema, SEGMENTS)} WHERE first_run_date <> ?", [run_date]
        ).column("segment_id").to_pylist() if wh.table_exists(schema, SEGMENTS) else []
    return (prev if len(prev) else None), issued, reference


def _earlier_mapping(store, run: dict[str, Any], version: str) -> dict[int, int] | None:
    path = store.run_file(run["run_date"], "segment_mapping.json")
    if path is None:
        return None
    try:
        saved = json.loads(path.read_text())
    except ValueError:
        return None
    if not isinstance(saved, dict) or saved.get("model_version") != version:
        return None
    return {int(k): int(v) for k, v in saved["mapping"].items()}


def _prototypes(url: str, run: dict[str, Any], ids, clusters, unmatched: list[int]):
    """Prototypes for the fallback of ``match_segments``: per unmatched cluster of tonight and per
    segment of the previous published run, one number per component, all in standard deviations of
    the previous run's base (the yardstick its published profiles carry):

    - a numeric feature: its mean on the model's scale (log for money and counts);
    - a level of a categorical feature that some previous segment lists among its top levels: the
      share of customers with that level, as the standardised mean of its 0/1 indicator
      ((share - base share) / sqrt(base share (1 - base share))); a segment that does not list the
      level has no value for it, and the distance leaves it out.

    Tonight's side is read from the features snapshot batch by batch, so it costs one pass over the
    feature columns and only when some cluster is unmatched."""
    import numpy as np
    import pandas as pd
    import pyarrow.parquet as pq

    from segmentation.profiles import _scale

    spec = _spec(run)
    previous = _previous_profiles(url, run)
    feats_of = {int(sid): (prof.get("summary") or {}).get("features") or {} for sid, prof in previous.items()}
    # components: (feature, level or None), each with its yardstick (base mean, base sd)
    components: list[tuple[Any, str | None]] = []
    yardstick: dict[tuple[str, str | None], tuple[float, float]] = {}
    for f in spec.features:
        if f.type != "categorical":
            for feats in feats_of.values():
                e = feats.get(f.name) or {}
                bm, bs = e.get("base_mean"), e.get("base_sd")
                if _number(bm) and _number(bs) and bs > 0:
                    yardstick[(f.name, None)] = (float(bm), float(bs))
                    components.append((f, None))
                    break
            continue
        for feats in feats_of.values():
            for t in (feats.get(f.name) or {}).get("top") or []:
                if not isinstance(t, dict) or (f.name, str(t.get("value"))) in yardstick:
                    continue
                share, lift, base = t.get("share"), t.get("lift"), t.get("base_share")
                if not _number(base) and _number(share) and _number(lift) and lift > 0:
                    base = share / lift  # profiles published before base_share was recorded
                if _number(base) and 0 < base < 1:
                    yardstick[(f.name, str(t["value"]))] = (base, float(np.sqrt(base * (1 - base))))
                    components.append((f, str(t["value"])))
    if not components:
        return {}, {}
    before: dict[int, np.ndarray] = {}
    for sid, feats in feats_of.items():
        vec = []
        for f, level in components:
            bm, bs = yardstick[(f.name, level)]
            e = feats.get(f.name) or {}
            if level is None:
                m = e.get("scaled_mean")
            else:
                m = next((t.get("share") for t in e.get("top") or [] if isinstance(t, dict)
                          and str(t.get("value")) == level), None)
            vec.append((float(m) - bm) / bs if _number(m) else np.nan)
        before[sid] = np.array(vec)
    path = _store(run).run_file(run["run_date"], "features.parquet")
    if path is None:
        return {}, {}
    cluster_of = pd.Series(np.asarray(clusters), index=pd.Index(np.asarray(ids).astype(str)))
    cluster_of = cluster_of[cluster_of.isin(unmatched)]
    sums = {k: np.zeros(len(components)) for k in unmatched}
    counts = {k: np.zeros(len(components)) for k in unmatched}
    columns = [spec.entity_key, *dict.fromkeys(f.name for f, _ in components)]
    for batch in pq.ParquetFile(path).iter_batches(batch_size=200_000, columns=columns):
        frame = batch.to_pandas()
        k = cluster_of.reindex(entity_id_text(frame[spec.entity_key])).to_numpy()
        keep = ~pd.isna(k)
        if not keep.any():
            continue
        frame, k = frame[keep], k[keep].astype("int64")
        for j, (f, level) in enumerate(components):
            bm, bs = yardstick[(f.name, level)]
            if level is None:
                values = _scale(frame[f.name], f.type)
            else:  # shares among the customers with a value, as the profiles count them
                text = frame[f.name].astype("string")
                values = (text == level).astype("float64").where(text.notna())
            z = ((values - bm) / bs).to_numpy(dtype="float64", na_value=np.nan)
            ok = np.isfinite(z)
            for c in np.unique(k[ok]):
                sel = ok & (k == c)
                sums[int(c)][j] += z[sel].sum()
                counts[int(c)][j] += sel.sum()
    now = {c: np.where(counts[c] > 0, sums[c] / np.maximum(counts[c], 1), np.nan) for c in unmatched if counts[c].any()}
    return now, before


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def assign_segment_ids(url: str, run: dict[str, Any], version: str, ids, clusters, n_clusters: int):
    """Map tonight's clusters to stable segment ids, save the mapping with the run, and return
    (mapping, stability). A rerun of a date with the same model keeps the ids that date was
    published with, even when a backfill has since changed which run counts as the previous one."""
    from segmentation.matching import match_segments, segment_stability

    store = _store(run)
    previous, issued, reference = _previous_assignments(url, run)
    mapping, stability = match_segments(ids, clusters, n_clusters, previous, issued,
                                        prototypes=lambda unmatched: _prototypes(url, run, ids, clusters, unmatched))
    earlier = _earlier_mapping(store, run, version)
    if earlier is not None and earlier != mapping:
        log.info("score: keeping the segment ids %s was published with (a rerun)", run["run_date"])
        mapping = earlier
        # the figures describe what is published: the earlier mapping, not tonight's fresh match
        stability = segment_stability(ids, clusters, previous, mapping) | {"kept_ids_of_earlier_attempt": True}
    if previous is not None:
        # which published run the ids and movers refer to: the night before, or for a backfill
        # earlier than every published night the first night after it
        stability["reference_run_date"] = str(reference)
    path = _run_dir(run) / "segment_mapping.json"
    path.write_text(json.dumps({"model_version": version, "mapping": {str(k): v for k, v in mapping.items()}}))
    store.put_run_file(run["run_date"], path)
    return mapping, stability


def score(url: str, run: dict[str, Any], trained: dict[str, Any]) -> dict[str, Any]:
    """Assign every customer (segment, its probability, runner-up), with ids matched to the previous
    run's, and write the assignments to the run's folder."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    spec = _spec(run)
    store = _store(run)
    version = trained["scoring_version"]
    model = store.load_model(version)
    df = _read_features(run)
    proba = model.predict_proba(df)
    top = np.argmax(proba, axis=1)
    # the runner-up among the clusters that hold customers tonight (scoring._top2 says why); when
    # one segment holds everyone there is no other published segment, and the runner-up is null
    live = np.bincount(top, minlength=proba.shape[1]) > 0
    top, second = _top2(proba, live)
    ids = entity_id_text(df[spec.entity_key])
    mapping, stability = assign_segment_ids(url, run, version, ids, top, model.n_segments)
    seg = np.array([mapping[int(k)] for k in top])
    runner = np.array([mapping[int(k)] for k in second])
    table = pa.table({
        "customer_id": pa.array(ids, pa.string()),
        "segment_id": pa.array(seg, pa.int64()),
        "segment_probability": pa.array(proba[np.arange(len(top)), top].astype("float64")),
        "runner_up_segment_id": pa.array(runner, pa.int64(), mask=~live[second]),
    })
    path = _run_dir(run) / "assignments.parquet"
    pq.write_table(table, path)
    store.put_run_file(run["run_date"], path)
    if stability.get("matched_by_prototype"):
        log.info("score: %s kept by profile similarity (too few shared customers to match on)",
                 ", ".join(f"segment {v['segment_id']} (distance {v['distance']:.2f} SD)"
                           for v in stability["matched_by_prototype"].values()))
    if stability.get("common_customers"):
        if stability.get("reference_run_date", "") > str(run["run_date"]):
            log.info("score: %d customers; %.1f%% in another segment than in the next published run, %s, which "
                     "this backfill takes its segment ids from (ARI %.3f)", len(ids), 100 * stability["moved_share"],
                     stability["reference_run_date"], stability["ari_vs_previous"])
        else:
            log.info("score: %d customers; %.1f%% moved segment since the previous run (ARI %.3f)",
                     len(ids), 100 * stability["moved_share"], stability["ari_vs_previous"])
    elif "new_segment_ids" in stability:
        log.info("score: %d customers, none of them in the previous run", len(ids))
    else:
        log.info("score: %d customers (first run: no previous segments to match)", len(ids))
    return {"assignments": str(path), "n_customers": int(len(ids)), "model_version": version, "stability": stability}


# ---------------------------------------------------------------------------------------------
# 7. publish (+ profiles)
# ---------------------------------------------------------------------------------------------
def _previous_profiles(url: str, run: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """Label, share and summary (parsed JSON) per segment id of the run this date is matched to
    (``_reference_date``): the labels tonight's segments keep unless they really changed
    (``profiles._label_all``)."""
    from segmentation.publish import PROFILES, RUNS
    from segmentation.warehouse import connect

    schema = _spec(run).output_schema
    with connect(url) as wh:
        if not (wh.table_exists(schema, RUNS) and wh.table_exists(schema, PROFILES)):
            return {}
        reference = _reference_date(wh, schema, _date(run["run_date"]))
        got = wh.query(
            f"SELECT segment_id, label, share, summary FROM {wh.qualified(schema, PROFILES)} WHERE run_date = ?",
            [reference],
        ).to_pylist() if reference else []
    out = {}
    for r in got:
        try:
            summary = json.loads(r["summary"]) if r["summary"] else {}
        except ValueError:
            summary = {}
        out[int(r["segment_id"])] = {"label": r["label"], "share": r["share"],
                                     "summary": summary if isinstance(summary, dict) else {}}
    return out


def _promote_after_publish(run: dict[str, Any], trained: dict[str, Any]) -> str | None:
    """After the run's rows are committed, record in the production pointer the model they were
    scored with, for the run's date: the new model when it passed the promotion gate (it becomes the
    production model only now, so a run that fails to publish leaves production as it was and the
    next night scores with the old model), else the production model the run kept or fell back on
    (so each published date names its model, and a late rerun of an earlier date never replaces the
    model of a later night). Idempotent: a rerun leaves the pointer byte for byte as it is. A broken
    pointer is replaced (its bytes kept aside). Returns the version recorded."""
    version = trained.get("scoring_version")
    if not version:
        return None
    new_model = version == trained.get("model_version") and trained.get("mode") != "keep"
    if new_model and not trained.get("promoted"):  # never: a model that failed the gate does not score
        raise PipelineError(f"model {version} failed the promotion gate yet scored the run; not promoting it")
    store = _store(run)
    reason = f"{trained.get('mode')}: {trained.get('reason')}" if new_model else \
        f"{trained.get('mode')}: scored with the production model ({trained.get('reason')})"
    try:
        changed = store.promote(version, _date(run["run_date"]), reason=reason, replace_unreadable=True)
    except Exception as exc:
        raise PipelineError(
            f"run {run['run_id']} is published, but its model {version} could not be recorded as the production model "
            f"({exc}); the production pointer is unchanged: rerun the publish step (it republishes identical rows and "
            "records the model)"
        ) from exc
    if changed and new_model:
        current = store.production()
        if current == version:
            log.info("publish: %s is now the production model (run date %s)", version, run["run_date"])
        else:  # a backfill: its model is recorded for its date, tonight's production stays
            log.info("publish: %s is recorded as the model of %s (a backfill); the production model stays %s",
                     version, run["run_date"], current)
    return version


def publish(url: str, run: dict[str, Any], trained: dict[str, Any], scored: dict[str, Any],
            validated: dict[str, Any] | None = None) -> dict[str, Any]:
    """Profile the segments (labels kept from the previous run unless a segment really changed),
    check the outputs, publish everything in one transaction, and only then move the production
    pointer to the run's model when it passed the promotion gate."""
    import pyarrow.parquet as pq

    from segmentation.profiles import profile_segments, profiles_tables
    from segmentation.publish import publish_run
    from segmentation.warehouse import connect
    from validation import validate_outputs

    spec = _spec(run)
    df = _read_features(run)
    assignments = pq.read_table(_store(run).run_file(run["run_date"], "assignments.parquet"))
    seg_ids = assignments.column("segment_id").to_numpy()
    profiles = profile_segments(df, seg_ids, spec, previous=_previous_profiles(url, run))
    for p in profiles:
        change = p["label_change"]
        if change["status"] == "renamed":
            log.info("publish: segment %d renamed from %r to %r (%s)", p["segment_id"], change["previous_label"],
                     p["label"], change["reason"])
    (_run_dir(run) / "profiles.json").write_text(json.dumps(profiles, indent=2))
    _store(run).put_run_file(run["run_date"], _run_dir(run) / "profiles.json")
    segments_tbl, profiles_tbl = profiles_tables(profiles)
    outputs = validate_outputs(assignments, customer_ids=list(entity_id_text(df[spec.entity_key])),
                               n_segments_known=[p["segment_id"] for p in profiles], out_dir=_run_dir(run))
    outputs.raise_if_failed()
    finished = dt.datetime.now(dt.timezone.utc)
    # degraded: a new model failed the gate (not: a scheduled retrain that was simply not better)
    degraded = bool(trained.get("gate"))
    what = f"new model {trained['model_version']} not promoted" if trained.get("model_version") else "no new model"
    message = "ok" if not degraded else f"degraded: {what} " \
        f"({'; '.join(trained.get('gate', []))}); scored with {trained['scoring_version']}"
    record = {
        "status": "success",
        "started_at": dt.datetime.fromisoformat(run["started_at"]),
        "finished_at": finished,
        "n_segments": len(profiles),
        "n_customers": assignments.num_rows,
        "metrics": {"segments": {str(p["segment_id"]): {"size": p["size"], "label": p["label"],
                                                         "label_change": p["label_change"]} for p in profiles}},
        "validation": {"status": (validated or {}).get("status"), "drift_detected": (validated or {}).get("drift_detected"),
                       "outputs": outputs.status},
        "stability": scored.get("stability", {}),
        "training": {k: trained.get(k) for k in ("model_version", "mode", "reason", "promoted", "base_version",
                                                  "scoring_version", "gate", "train_seconds", "epochs_run")}
                    | {"trigger": run.get("trigger")},
        "message": message,
    }
    with connect(url) as wh:
        publish_run(wh, schema=spec.output_schema, run_date=_date(run["run_date"]), run_id=run["run_id"],
                    model_version=scored["model_version"], assignments=assignments, segments=segments_tbl,
                    profiles=profiles_tbl, run_record=record)
    log.info("publish: %d customers in %d segments written to %s (run %s)", assignments.num_rows, len(profiles),
             spec.output_schema, run["run_id"])
    _promote_after_publish(run, trained)
    return {
        "schema": spec.output_schema,
        "run_id": run["run_id"],
        "n_customers": assignments.num_rows,
        "segments": [{"segment_id": p["segment_id"], "label": p["label"], "size": p["size"], "share": round(p["share"], 4),
                      "label_status": p["label_change"]["status"]} for p in profiles],
        "degraded": degraded,
        "message": message,
    }


# ---------------------------------------------------------------------------------------------
# 8. report
# ---------------------------------------------------------------------------------------------
def report(url: str, run: dict[str, Any]) -> dict[str, Any]:
    """The HTML segment report of the run, saved with the run's artifacts."""
    from segmentation.report import build_report

    path = build_report(url, run)
    log.info("report: %s", path)
    return {"report": str(path)}


# ---------------------------------------------------------------------------------------------
# failure record and the whole chain
# ---------------------------------------------------------------------------------------------
def record_failure(url: str, run: dict[str, Any], step: str, error: str) -> str:
    """Record a failed run without touching the published tables; returns its run id.

    A failed attempt gets its own run id (the date plus a timestamp): it must never replace the
    record of an earlier successful run of the same date, which would move the current view."""
    from segmentation.publish import record_run
    from segmentation.warehouse import connect

    spec = _spec(run)
    now = dt.datetime.now(dt.timezone.utc)
    run_id = f"{run['run_id']}-failed-{now:%Y%m%dT%H%M%S%f}"
    record = {
        "status": "failed",
        "started_at": dt.datetime.fromisoformat(run["started_at"]),
        "finished_at": now,
        "training": {"trigger": run.get("trigger"), "failed_step": step},
        "message": f"{step}: {error}"[:4000],
    }
    try:
        with connect(url) as wh:
            record_run(wh, schema=spec.output_schema, run_id=run_id, run_date=_date(run["run_date"]), run_record=record)
    except Exception as exc:  # recording must not hide the original failure
        log.error("could not record the failed run %s: %s", run_id, exc)
    return run_id


def run_all(url: str | None, run_date: dt.date | str, **options: Any) -> dict[str, Any]:
    """Run every step for ``run_date``; on failure record the failed run and re-raise."""
    from segmentation.warehouse import default_url

    url = url or default_url()
    run = start_run(run_date, **options)
    step = "extract"
    try:
        extracted = extract(url, run)
        step = "features"
        features(url, run)
        step = "validate"
        validated = validate(url, run, extracted)
        step = "train"
        trained = train(url, run, validated)
        step = "score"
        scored = score(url, run, trained)
        step = "publish"
        published = publish(url, run, trained, scored, validated)
    except Exception as exc:
        record_failure(url, run, step, str(exc))
        raise
    try:  # the segments are published: a report that cannot be drawn must not fail the run
        reported = report(url, run)
    except Exception as exc:
        log.error("report: could not build the report: %s", exc)
        reported = {"report": None}
    return {"run": run, "training": trained, "stability": scored.get("stability", {}), **published, **reported}
