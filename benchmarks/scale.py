#!/usr/bin/env python
"""Scale of one nightly run: 100k, 1M and 5M synthetic CRM customers through the real pipeline steps.

For each table size it writes a synthetic CRM table (``benchmarks/crm_synth.py``: planted segments,
heavy-tailed money, counts, rare and unseen categories, missing values) into a DuckDB warehouse,
then runs the product's own step functions, each in a fresh Python process (as Airflow runs each
task), and measures per step the wall time, the process's peak resident set size
(``getrusage(RUSAGE_SELF).ru_maxrss``, which includes the interpreter and its imports) and rows/s:

- ``extract``: ``pipeline.extract``: sources present, raw-table checks (Great Expectations);
- ``features``: ``pipeline.features`` with the dbt build replaced by ``crm_synth.features_sql`` (one
  CREATE TABLE AS in DuckDB: the product's dbt model is the Online Retail one), then the product's
  own Parquet snapshot of the features;
- ``validate``: ``pipeline.validate``: Great Expectations on every feature row;
- ``train``: ``pipeline.train`` (training, ELBO score, promotion gate, artifact), on a uniform random
  sample of at most ``--train-rows`` rows (see below);
- ``score``: the product's streaming scorer: ``scoring.plan_run_shards`` + ``score_shard`` per shard +
  ``finalize_scores`` (segment-id matching, assignments file), the path of
  ``SEGMENT_SCORING_MODE=sharded`` run one shard after another; with ``--score-mode both`` also
  ``pipeline.score`` (the whole table in memory) as ``score_whole``;
- ``publish_duckdb`` / ``publish_postgres``: ``pipeline.publish`` (profiles, output checks, one
  transaction) into the DuckDB warehouse and into a fresh PostgreSQL database.

Training on a sample: neither ``pipeline.train`` nor ``ConcreteGMVAE`` has a setting to train on a
bounded sample of the rows; ``train`` always fits on the whole features snapshot (and scores its
ELBO on all of it). This benchmark therefore swaps ``pipeline._read_features`` for a reader that
returns a uniform sample (DuckDB reservoir sample of the snapshot, fixed seed) for the duration of
the train step only, and says so in its output. Every other step handles every row.

The K sweep (``--k-sweep``) reruns train, score and publish (DuckDB) at other K on the snapshot of
the first K's run at ``--k-sweep-rows``.

Results: benchmarks/results/scale.json (or --out). Work files in benchmarks/out/scale (git-ignored).

Examples
--------
  python benchmarks/scale.py                                  # 100k, 1M, 5M at K=8 + K sweep 4 16 32 at 1M
  python benchmarks/scale.py --rows 100000 --k-sweep          # one size, no K sweep
  python benchmarks/scale.py --quick                          # 20k rows, 3 epochs: a smoke run
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import logging
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench_meta import bench_machine  # noqa: E402
from mnist_gmvae import RESULTS, command_line, now_utc, write_json  # noqa: E402

WORK = REPO / "benchmarks" / "out" / "scale"
PG_ADMIN = os.environ.get("SEGMENT_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
PIPELINE_STEPS = ("extract", "features", "validate", "train", "score", "publish_duckdb")
WHOLE_TABLE_MAX_ROWS = 1_000_000  # --score-mode both: pipeline.score (whole table in memory) up to this size
QUICK = dict(rows=[20_000], ks=[4], k_sweep=[8], k_sweep_rows=20_000, train_rows=20_000, epochs=3, pretrain_epochs=2)


# ---------------------------------------------------------------------------------------------
# child side: one step in this process
# ---------------------------------------------------------------------------------------------
def _rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:  # pragma: no cover
        return float("nan")


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class _Timers:
    """Accumulates the seconds spent inside chosen library functions during a step."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._undo: list[tuple[Any, str, Any]] = []

    def wrap(self, owner: Any, name: str, label: str | None = None) -> None:
        original = getattr(owner, name)
        label = label or name

        def timed(*a: Any, **kw: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return original(*a, **kw)
            finally:
                self.seconds[label] = self.seconds.get(label, 0.0) + time.perf_counter() - t0

        setattr(owner, name, timed)
        self._undo.append((owner, name, original))

    def restore(self) -> None:
        for owner, name, original in reversed(self._undo):
            setattr(owner, name, original)
        self._undo.clear()


@contextlib.contextmanager
def _patched(owner: Any, name: str, value: Any):
    old = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, old)


def _build_features_with_sql(url: str | None, as_of: Any, spec: Any, **_: Any) -> str:
    """Stand-in for ``segmentation.features.build_features``: the synthetic CRM's SQL model."""
    import crm_synth

    from segmentation.warehouse import connect

    as_of = dt.datetime.fromisoformat(as_of) if isinstance(as_of, str) else as_of
    with connect(url) as wh:
        wh.create_schema(spec.features_relation.schema)
        wh.execute(crm_synth.features_sql(as_of))
    return spec.features_relation.qualified


def _sampled_reader(rows: int, seed: int = 0):
    """A ``pipeline._read_features`` that returns a uniform sample of at most ``rows`` rows."""
    def read(run: dict[str, Any]):
        import duckdb

        from segmentation import pipeline

        path = pipeline._store(run).run_file(run["run_date"], "features.parquet")
        con = duckdb.connect()
        try:
            con.execute("SET threads TO 1")
            q = (f"SELECT * FROM read_parquet('{path}') USING SAMPLE reservoir({int(rows)} ROWS) REPEATABLE ({seed})")
            df = con.sql(q).to_arrow_table().to_pandas()
        finally:
            con.close()
        return df.sort_values(list(df.columns)[0], kind="stable").reset_index(drop=True)

    return read


def run_step(step: str, state: dict[str, Any]) -> dict[str, Any]:
    """Run one step with the state written by the driver; returns what the step returned plus timers."""
    from segmentation import pipeline

    run, url = state["run"], state["url"]
    timers = _Timers()
    extra: dict[str, Any] = {}
    try:
        if step == "load":
            return _load(state)
        if step == "quality":
            return _quality(state)
        if step == "extract":
            import validation.raw

            timers.wrap(validation.raw, "validate_raw")
            t0 = time.perf_counter()
            out = pipeline.extract(url, run)
        elif step == "features":
            import segmentation.features

            with _patched(segmentation.features, "build_features", _build_features_with_sql):
                timers.wrap(segmentation.features, "build_features", "features_sql")
                try:
                    t0 = time.perf_counter()
                    out = pipeline.features(url, run)
                finally:
                    timers.restore()
        elif step == "validate":
            import validation.features

            timers.wrap(validation.features, "validate_features")
            t0 = time.perf_counter()
            out = pipeline.validate(url, run, state["steps"]["extract"]["returned"])
        elif step == "train":
            from segmentation import ConcreteGMVAE

            timers.wrap(ConcreteGMVAE, "fit")
            timers.wrap(ConcreteGMVAE, "score", "elbo_score")
            timers.wrap(pipeline, "_save_model", "save_model")
            reader = _sampled_reader(state["train_rows"]) if state["train_rows"] < state["rows"] else pipeline._read_features
            with _patched(pipeline, "_read_features", _timed_reader(reader, timers)):
                t0 = time.perf_counter()
                out = pipeline.train(url, run, state["steps"]["validate"]["returned"])
            extra = _model_facts(run, out)
        elif step == "score_whole":
            timers.wrap(pipeline, "assign_segment_ids")
            t0 = time.perf_counter()
            out = pipeline.score(url, run, state["steps"]["train"]["returned"])
        elif step == "score":
            from segmentation import scoring

            timers.wrap(scoring, "score_parquet")
            timers.wrap(pipeline, "assign_segment_ids")
            timers.wrap(scoring, "merge_parts")
            trained = state["steps"]["train"]["returned"]
            t0 = time.perf_counter()
            shards = scoring.plan_run_shards(run)
            parts = [scoring.score_shard(run, trained, s) for s in shards]
            out = scoring.finalize_scores(url, run, trained, parts)
            extra = {"shards": len(shards)}
        elif step.startswith("publish"):
            import segmentation.profiles
            import segmentation.publish
            import validation
            import validation.outputs

            timers.wrap(pipeline, "_read_features", "read_features")
            timers.wrap(segmentation.profiles, "profile_segments")
            timers.wrap(segmentation.publish, "publish_run", "warehouse_write")
            timers.wrap(validation.outputs, "validate_outputs")
            validation.validate_outputs = validation.outputs.validate_outputs  # the lazy export, timed
            target = state["pg_url"] if step == "publish_postgres" else url
            steps = state["steps"]
            t0 = time.perf_counter()
            out = pipeline.publish(target, run, steps["train"]["returned"], steps["score"]["returned"],
                                   steps["validate"]["returned"])
            extra = {"warehouse": target.partition("://")[0]}
        else:
            raise SystemExit(f"unknown step {step!r}")
        seconds = time.perf_counter() - t0
    finally:
        timers.restore()
    return {"seconds": seconds, "timers": {k: round(v, 3) for k, v in timers.seconds.items()},
            "returned": out, **extra}


def _timed_reader(reader, timers: _Timers):
    def read(run):
        t0 = time.perf_counter()
        try:
            return reader(run)
        finally:
            timers.seconds["read_features"] = timers.seconds.get("read_features", 0.0) + time.perf_counter() - t0
    return read


def _model_facts(run: dict[str, Any], trained: dict[str, Any]) -> dict[str, Any]:
    from segmentation import pipeline

    meta = json.loads((pipeline._store(run).model_dir(trained["model_version"]) / "metadata.json").read_text())
    hist = meta.get("history", [])
    secs = [h["seconds"] for h in hist]
    steps = [h["steps"] for h in hist]
    import statistics

    return {"model": {
        "n_rows": meta["metrics"].get("n_rows"), "epochs_run": meta["metrics"].get("epochs_run"),
        "best_epoch": meta["metrics"].get("best_epoch"), "train_seconds": meta["metrics"].get("train_seconds"),
        "seconds_per_epoch": statistics.median(secs[1:] or secs) if secs else None,
        "steps_per_epoch": steps[0] if steps else None,
        "ms_per_step": 1e3 * statistics.median([s / n for s, n in zip(secs[1:] or secs, steps[1:] or steps)]) if secs else None,
        "usage_shares": meta["metrics"].get("usage", {}).get("shares"),
        "init": (meta["metrics"].get("init") or {}).get("init"),
        "config": {k: meta["config"].get(k) for k in ("n_segments", "epochs", "batch_size", "hidden", "latent_dim",
                                                       "kl_anneal_epochs", "patience", "validation_fraction")},
        "input_dim": _input_dim(pipeline._store(run).model_dir(trained["model_version"])),
    }}


def _input_dim(model_dir: Path) -> int:
    from segmentation import ConcreteGMVAE

    return int(ConcreteGMVAE.load(str(model_dir)).preprocessor_.layout.input_dim)


def _load(state: dict[str, Any]) -> dict[str, Any]:
    """Generate the raw CRM table in chunks into the DuckDB warehouse; planted labels to Parquet."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    import crm_synth
    from segmentation.warehouse import connect

    as_of = dt.datetime.fromisoformat(state["run"]["as_of"])
    t0 = time.perf_counter()
    gen_s = 0.0
    planted_writer = None
    with connect(state["url"]) as wh:
        wh.execute(f"DROP TABLE IF EXISTS {wh.qualified(crm_synth.RAW_SCHEMA, crm_synth.RAW_TABLE)}")
        mode = "replace"
        start = 0
        for i in range(0, state["rows"], crm_synth.CHUNK_ROWS):
            g0 = time.perf_counter()
            table, planted = crm_synth.generate_chunk(i, min(crm_synth.CHUNK_ROWS, state["rows"] - i), as_of=as_of,
                                                      seed=state["seed"])
            gen_s += time.perf_counter() - g0
            wh.write_table(crm_synth.RAW_SCHEMA, crm_synth.RAW_TABLE, table, mode=mode)
            mode = "append"
            lab = pa.table({"customer_id": table.column("customer_id"), "planted": pa.array(planted.astype(np.int64))})
            if planted_writer is None:
                planted_writer = pq.ParquetWriter(state["planted_path"], lab.schema)
            planted_writer.write_table(lab)
            start += table.num_rows
    if planted_writer is not None:
        planted_writer.close()
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "timers": {"generate": round(gen_s, 3), "write_raw": round(seconds - gen_s, 3)},
            "returned": {"rows": start}}


def _quality(state: dict[str, Any]) -> dict[str, Any]:
    """Agreement of the published assignments with the planted segments (all rows)."""
    import numpy as np
    import pyarrow.parquet as pq

    from segmentation import pipeline
    from segmentation.model.evaluation import label_metrics

    t0 = time.perf_counter()
    path = pipeline._store(state["run"]).run_file(state["run"]["run_date"], "assignments.parquet")
    a = pq.read_table(path, columns=["customer_id", "segment_id"])
    p = pq.read_table(state["planted_path"])
    if not a.column("customer_id").equals(p.column("customer_id")):
        raise SystemExit("assignments and planted labels are not in the same customer order")
    m = label_metrics(p.column("planted").to_numpy(), a.column("segment_id").to_numpy())
    sizes = np.bincount(a.column("segment_id").to_numpy())
    return {"seconds": time.perf_counter() - t0, "timers": {}, "returned": {
        **{k: round(v, 4) for k, v in m.items()}, "segment_sizes": [int(s) for s in sizes if s]}}


def child_main(step: str, state_path: str) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    state = json.loads(Path(state_path).read_text())
    base = _rss_mb()
    import resource

    load_before = [round(x, 2) for x in os.getloadavg()]
    before = resource.getrusage(resource.RUSAGE_SELF)
    res = run_step(step, state)
    after = resource.getrusage(resource.RUSAGE_SELF)
    res["rss_after_imports_mb"] = round(base, 1)
    res["peak_rss_mb"] = round(_peak_rss_mb(), 1)
    # CPU seconds of the step (this process, all its threads): well under the wall time means the
    # step waited (I/O, PostgreSQL's server process, or other jobs on a shared machine)
    res["cpu_seconds"] = round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 2)
    res["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    res["load_average_before"] = load_before
    print("RESULT " + json.dumps(res, default=str), flush=True)
    return 0


# ---------------------------------------------------------------------------------------------
# driver side
# ---------------------------------------------------------------------------------------------
def _child(step: str, state: dict[str, Any], workdir: Path, log_lines: list[str]) -> dict[str, Any]:
    path = workdir / f"state-{step}.json"
    path.write_text(json.dumps(state, default=str))
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
               DBT_SEND_ANONYMOUS_USAGE_STATS="False", DO_NOT_TRACK="1", PYTHONWARNINGS="ignore")
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "_child", step, str(path)],
                          capture_output=True, text=True, env=env, cwd=REPO)
    wall = time.perf_counter() - t0
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode != 0 or not line:
        tail = (proc.stderr or "")[-3000:]
        log_lines.append(f"{step} failed (rc {proc.returncode}):\n{tail}")
        raise RuntimeError(f"step {step} failed (rc {proc.returncode}):\n{proc.stdout[-1000:]}\n{tail}")
    res = json.loads(line[-1][len("RESULT "):])
    res["process_seconds"] = round(wall, 2)
    return res


def _pg_create() -> str:
    import psycopg
    from urllib.parse import urlsplit, urlunsplit

    name = f"seg_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return urlunsplit(urlsplit(PG_ADMIN)._replace(path=f"/{name}"))


def _pg_drop(url: str) -> None:
    import psycopg
    from urllib.parse import urlsplit

    name = urlsplit(url).path.lstrip("/")
    with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _pg_version() -> str | None:
    try:
        import psycopg

        with psycopg.connect(PG_ADMIN, connect_timeout=5) as conn:
            return conn.execute("SHOW server_version").fetchone()[0]
    except Exception:  # noqa: BLE001 - recorded as unknown
        return None


def _step_summary(name: str, res: dict[str, Any], rows: int) -> dict[str, Any]:
    out = {k: res.get(k) for k in ("seconds", "process_seconds", "cpu_seconds", "peak_rss_mb", "rss_after_imports_mb",
                                   "load_average_before", "load_average_after", "timers")}
    out["seconds"] = round(out["seconds"], 3)
    n = rows
    if name == "train":
        n = (res.get("model") or {}).get("n_rows") or rows
        out["model"] = res.get("model")
        out["trained"] = {k: res["returned"].get(k) for k in ("mode", "promoted", "gate", "epochs_run", "train_seconds")}
    if name in ("score", "score_whole"):
        out["stability_first_run"] = not (res["returned"].get("stability") or {}).get("common_customers")
        out["shards"] = res.get("shards")
    if name.startswith("publish"):
        out["warehouse"] = res.get("warehouse")
        w = (res.get("timers") or {}).get("warehouse_write")
        out["warehouse_write_rows_per_s"] = round(rows / w, 1) if w else None
    if name == "validate":
        out["status"] = res["returned"].get("status")
    if name == "extract":
        out["raw_status"] = res["returned"].get("raw_status")
    out["rows"] = n
    out["rows_per_s"] = round(n / res["seconds"], 1) if res["seconds"] > 0 else None
    return out


def _case_state(base: dict[str, Any], k: int, case_dir: Path, run_date: dt.date, spec_model: dict[str, Any]) -> dict[str, Any]:
    import crm_synth

    from segmentation import pipeline

    case_dir.mkdir(parents=True, exist_ok=True)
    spec_path = case_dir / "spec.yaml"
    spec_path.write_text(crm_synth.spec_yaml(n_segments=k, output_schema=f"segments_k{k}", model=spec_model))
    run = pipeline.start_run(run_date, spec_path=str(spec_path), n_segments=k, artifacts=str(case_dir / "artifacts"),
                             trigger="benchmark")
    return {**base, "run": run, "k": k, "steps": {}}


def run_size(rows: int, args: argparse.Namespace, log_lines: list[str], machine: dict[str, Any]) -> list[dict[str, Any]]:
    work = Path(args.workdir) / f"rows_{rows}"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    url = f"duckdb:///{work}/warehouse.duckdb"
    run_date = dt.date.today() - dt.timedelta(days=2)
    spec_model = {"epochs": args.epochs, "patience": args.patience, "kl_anneal_epochs": args.kl_anneal_epochs}
    if args.pretrain_epochs is not None:
        spec_model["pretrain_epochs"] = args.pretrain_epochs
    base = {"url": url, "rows": rows, "seed": args.seed, "train_rows": min(args.train_rows, rows),
            "planted_path": str(work / "planted.parquet"), "pg_url": None}
    cases = []
    first = _case_state(base, args.ks[0], work / f"k{args.ks[0]}", run_date, spec_model)
    print(f"== {rows:,} rows: generating and loading the raw table", flush=True)
    load = _child("load", first, work, log_lines)
    print(f"   load {load['seconds']:.1f} s (peak RSS {load['peak_rss_mb']:.0f} MB)", flush=True)
    db_mb = sum(f.stat().st_size for f in work.glob("warehouse.duckdb*")) / 2**20
    k_list = list(args.ks)
    sweep = [k for k in (args.k_sweep or []) if k not in k_list] if rows == args.k_sweep_rows else []
    base_state = None
    for k in k_list + sweep:
        in_sweep = k in sweep
        state = first if k == args.ks[0] else _case_state(base, k, work / f"k{k}", run_date, spec_model)
        steps = ["extract", "features", "validate"] if not in_sweep else []
        if in_sweep:  # reuse the first K's extract/features/validate: copy its snapshot into this run
            from segmentation.artifacts import open_store

            src = open_store(base_state["run"]["artifacts"]).run_file(base_state["run"]["run_date"], "features.parquet")
            dst = open_store(state["run"]["artifacts"])
            copy = dst.run_dir(state["run"]["run_date"]) / "features.parquet"
            shutil.copyfile(src, copy)
            dst.put_run_file(state["run"]["run_date"], copy)
            for s in ("extract", "features", "validate"):
                state["steps"][s] = base_state["steps"][s]
        steps += ["train"]
        if args.score_mode == "whole" or (args.score_mode == "both" and not in_sweep and rows <= WHOLE_TABLE_MAX_ROWS):
            steps += ["score_whole"]
        steps += ["score", "publish_duckdb"]
        pg = None
        if args.postgres and not in_sweep:
            pg = _pg_create()
            state["pg_url"] = pg
            steps += ["publish_postgres"]
        summary: dict[str, Any] = {}
        try:
            for s in steps:
                res = _child(s, state, work, log_lines)
                state["steps"][s] = {"returned": res["returned"]}
                summary[s] = _step_summary(s, res, rows)
                print(f"   K={k:<3d} {s:<17s} {res['seconds']:8.1f} s  process {res['process_seconds']:7.1f} s  "
                      f"peak RSS {res['peak_rss_mb']:7.0f} MB  {summary[s]['rows_per_s'] or 0:>12,.0f} rows/s  "
                      f"{json.dumps(res.get('timers'))}", flush=True)
            quality = _child("quality", state, work, log_lines)["returned"]
        finally:
            if pg:
                _pg_drop(pg)
        for s in ("extract", "features", "validate"):  # a sweep case reuses them: say so, do not count twice
            if in_sweep:
                summary[s] = {"reused_from_k": args.ks[0]}
        e2e = [s for s in PIPELINE_STEPS if "seconds" in summary.get(s, {})]
        case = {
            "rows": rows, "k": k, "k_sweep": in_sweep, "train_rows": base["train_rows"],
            "command": command_line(), "finished_utc": now_utc(), "git_commit": machine.get("git_commit"),
            "uncommitted_library_files": machine.get("uncommitted_library_files"),
            "trained_on_sample": base["train_rows"] < rows,
            "load": _step_summary("load", load, rows), "duckdb_file_mb": round(db_mb, 1),
            "steps": summary,
            "end_to_end_seconds": round(sum(summary[s]["seconds"] for s in e2e), 2) if not in_sweep else None,
            "end_to_end_process_seconds": round(sum(summary[s]["process_seconds"] for s in e2e), 2) if not in_sweep else None,
            "end_to_end_steps": e2e,
            "end_to_end_with_postgres_seconds": round(sum(summary[s]["seconds"] for s in e2e) + summary["publish_postgres"]["seconds"], 2)
            if "publish_postgres" in summary and not in_sweep else None,
            "max_peak_rss_mb": max(v["peak_rss_mb"] for v in summary.values() if "peak_rss_mb" in v),
            "planted_agreement": quality,
        }
        cases.append(case)
        if not in_sweep and base_state is None:
            base_state = state
        if case["end_to_end_seconds"] is not None:
            print(f"   K={k}: end to end (extract..publish to DuckDB) {case['end_to_end_seconds']:.0f} s "
                  f"(processes {case['end_to_end_process_seconds']:.0f} s); ARI vs planted {quality['ari']:.3f}", flush=True)
        else:
            print(f"   K={k}: ARI vs planted {quality['ari']:.3f}", flush=True)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return cases


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="scale.py", description=__doc__.split("Examples")[0].strip(),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: 20k rows, K=4 (+8), 3 epochs, 2 pretraining epochs")
    p.add_argument("--rows", type=int, nargs="+", default=None, help="table sizes (default 100000 1000000 5000000)")
    p.add_argument("--ks", type=int, nargs="+", default=None, help="K of every size (default 8)")
    p.add_argument("--k-sweep", type=int, nargs="*", default=None,
                   help="more K at --k-sweep-rows: train, score, publish (DuckDB) only (default 4 16 32)")
    p.add_argument("--k-sweep-rows", type=int, default=None, help="table size of the K sweep (default 1000000)")
    p.add_argument("--train-rows", type=int, default=None, help="train on a uniform sample of at most this many rows (default 200000)")
    p.add_argument("--epochs", type=int, default=None, help="max training epochs (default 30)")
    p.add_argument("--patience", type=int, default=5)
    p.add_argument("--kl-anneal-epochs", type=int, default=0)
    p.add_argument("--pretrain-epochs", type=int, default=None,
                   help="autoencoder epochs of the engine's init='pretrain' (default: the engine's; --quick 2)")
    p.add_argument("--score-mode", choices=("stream", "both", "whole"), default="both",
                   help="stream: the sharded scorer only; both (default): also pipeline.score on the whole table, "
                        "up to 1M rows")
    p.add_argument("--no-postgres", dest="postgres", action="store_false", help="skip the PostgreSQL publish")
    p.add_argument("--seed", type=int, default=0, help="data seed")
    p.add_argument("--workdir", default=str(WORK))
    p.add_argument("--keep", action="store_true", help="keep the warehouse and artifacts of each size")
    p.add_argument("--out", default=None, help="JSON output (default benchmarks/results/scale.json)")
    p.add_argument("--merge", action="store_true",
                   help="keep the cases of other table sizes already in --out (each case records its own command and commit)")
    return p


def resolve(args: argparse.Namespace) -> argparse.Namespace:
    q = QUICK if args.quick else dict(rows=[100_000, 1_000_000, 5_000_000], ks=[8], k_sweep=[4, 16, 32],
                                      k_sweep_rows=1_000_000, train_rows=200_000, epochs=30, pretrain_epochs=None)
    for key in ("rows", "ks", "k_sweep", "k_sweep_rows", "train_rows", "epochs", "pretrain_epochs"):
        if getattr(args, key) is None:
            setattr(args, key, q[key])
    if args.out is None:
        args.out = str(RESULTS / ("scale_quick.json" if args.quick else "scale.json"))
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_child":
        return child_main(argv[1], argv[2])
    args = resolve(build_parser().parse_args(argv))
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    machine = bench_machine(1)
    machine["versions"]["postgresql-server"] = _pg_version() if args.postgres else None
    started = now_utc()
    t_all = time.perf_counter()
    log_lines: list[str] = []
    cases: list[dict[str, Any]] = []
    failures: list[dict[str, Any]] = []
    out = Path(args.out)
    kept: list[dict[str, Any]] = []
    earlier: dict[str, Any] = {}
    if args.merge and out.exists():
        earlier = json.loads(out.read_text())
        # a run without a K sweep keeps the earlier sweep's cases, even at a size it reran
        kept = [c for c in earlier.get("cases", [])
                if c["rows"] not in args.rows or (c.get("k_sweep") and not args.k_sweep)]
        for c in kept:  # cases of an earlier run without their own provenance get the file's
            c.setdefault("command", earlier.get("command"))
            c.setdefault("git_commit", (earlier.get("machine") or {}).get("git_commit"))
            c.setdefault("finished_utc", earlier.get("finished_utc"))

    def save() -> None:
        write_json(out, {
            "benchmark": "scale", "command": command_line(), "started_utc": started, "finished_utc": now_utc(),
            "total_wall_seconds": round(time.perf_counter() - t_all, 1), "quick": args.quick,
            "config": {"rows": args.rows, "ks": args.ks, "k_sweep": args.k_sweep, "k_sweep_rows": args.k_sweep_rows,
                       "train_rows": args.train_rows, "epochs": args.epochs, "patience": args.patience,
                       "kl_anneal_epochs": args.kl_anneal_epochs, "pretrain_epochs": args.pretrain_epochs,
                       "score_mode": args.score_mode,
                       "postgres": args.postgres, "data_seed": args.seed, "model_seed": 0, "torch_threads": 1,
                       "duckdb_threads": "default (all cores)", "chunk_rows": 250_000,
                       "train_sample": "uniform reservoir sample of the features snapshot (DuckDB, REPEATABLE(0)); "
                                       "pipeline.train has no sample setting, so the benchmark swaps its reader"},
            "machine": machine,
            "cases": sorted(kept + cases, key=lambda c: (c["rows"], bool(c.get("k_sweep")), c["k"])),
            "failures": failures + [f for f in earlier.get("failures", []) if f["rows"] not in args.rows],
            "merged_from": ({"command": earlier.get("command"), "started_utc": earlier.get("started_utc"),
                             "rows_kept": sorted({c["rows"] for c in kept})} if kept else None),
        })

    for rows in args.rows:
        try:
            cases += run_size(rows, args, log_lines, machine)
        except (RuntimeError, MemoryError) as exc:
            msg = str(exc)
            print(f"!! {rows:,} rows failed: {msg[:2000]}", flush=True)
            failures.append({"rows": rows, "error": msg[-4000:]})
        save()
    save()
    print(f"wrote {out} ({time.perf_counter() - t_all:.0f} s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
