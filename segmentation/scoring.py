"""Scoring at scale: stream Arrow record batches through the encoder with bounded memory, and split
a large snapshot into shards that Airflow scores in parallel (dynamic task mapping), each writing
its own part, followed by one atomic publish.

Memory does not grow with the table: ``score_parquet`` reads ``batch_rows`` rows at a time with
``pyarrow.parquet.ParquetFile.iter_batches`` (only the feature and id columns), turns them into
tensors with the model's fitted preprocessing (row-wise, so a batch gives exactly the rows the
whole table would), runs the encoder on slices of ``encode_rows`` rows and appends the result to a
``ParquetWriter``. Peak memory is the model, one Parquet row group and one batch; measured by
``benchmarks/scoring_memory.py``.

A scored part has the raw clusters of the model, not yet segment ids::

    <id column>  cluster  probability  runner_up_cluster  [p_cluster_0 .. p_cluster_{K-1}]

``finalize_scores`` (the publish of the sharded path) reads the parts, maps clusters to stable
segment ids (``segmentation.matching``) and writes the run's ``assignments.parquet`` in the same
format as ``pipeline.score``, through a temporary file renamed into place: readers see the old file
or the new one, never a half-written one.

    plan = plan_shards("features.parquet", rows_per_shard=2_000_000)   # -> [{"shard": 0, ...}, ...]
    stats = score_parquet(model_dir, "features.parquet", "part-00000.parquet",
                          row_range=(plan[0]["start"], plan[0]["stop"]))
"""
from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

log = logging.getLogger(__name__)

DEFAULT_BATCH_ROWS = 65536
ENCODE_ROWS = 8192  # rows per encoder call: the same slicing as ConcreteGMVAE.predict_proba
PARTS_DIR = "score-parts"
ASSIGNMENTS = "assignments.parquet"


# ---------------------------------------------------------------------------------------------
# shards
# ---------------------------------------------------------------------------------------------
def shard_ranges(n_rows: int, n_shards: int) -> list[tuple[int, int]]:
    """``n_shards`` contiguous half-open row ranges covering ``[0, n_rows)``, sizes differing by at
    most one row; ranges are never empty (fewer shards are returned when rows are fewer)."""
    if n_rows < 0 or n_shards < 1:
        raise ValueError(f"need n_rows >= 0 and n_shards >= 1, got {n_rows}, {n_shards}")
    n_shards = max(1, min(int(n_shards), int(n_rows))) if n_rows else 1
    bounds = [(i * n_rows) // n_shards for i in range(n_shards + 1)]
    return [(bounds[i], bounds[i + 1]) for i in range(n_shards)]


def plan_shards(path: str | os.PathLike, *, rows_per_shard: int = 2_000_000, max_shards: int = 64) -> list[dict[str, Any]]:
    """The shards of a Parquet snapshot for Airflow dynamic task mapping: a short JSON-able list, one
    element per mapped task, each a row range ``[start, stop)`` (never the rows themselves). A shard
    reads only the row groups its range touches: write snapshots with row groups well below
    ``rows_per_shard`` (e.g. 100,000 rows) so that shards share no reads."""
    import pyarrow.parquet as pq

    n_rows = pq.ParquetFile(path).metadata.num_rows
    wanted = max(1, min(int(max_shards), math.ceil(n_rows / max(int(rows_per_shard), 1))))
    ranges = shard_ranges(n_rows, wanted)
    return [{"shard": i, "n_shards": len(ranges), "start": a, "stop": b, "rows": b - a}
            for i, (a, b) in enumerate(ranges)]


def _row_groups_for(pf: Any, start: int, stop: int) -> tuple[list[int], int]:
    """The row groups that hold rows [start, stop), and the index of the first one's first row."""
    groups, first, offset = [], 0, 0
    for g in range(pf.metadata.num_row_groups):
        n = pf.metadata.row_group(g).num_rows
        if offset < stop and offset + n > start:
            if not groups:
                first = offset
            groups.append(g)
        offset += n
    return groups, first


def _iter_range(pf: Any, start: int, stop: int, batch_rows: int, columns: list[str]) -> Iterator[Any]:
    """Record batches of rows [start, stop), at most ``batch_rows`` each, reading only the row
    groups the range touches."""
    groups, offset = _row_groups_for(pf, start, stop)
    if not groups:
        return
    for batch in pf.iter_batches(batch_size=int(batch_rows), row_groups=groups, columns=columns, use_threads=False):
        lo, hi = max(start - offset, 0), min(stop - offset, batch.num_rows)
        offset += batch.num_rows
        if hi > lo:
            yield batch.slice(lo, hi - lo) if (lo, hi) != (0, batch.num_rows) else batch
        if offset >= stop:
            return


def part_name(shard: int) -> str:
    return f"part-{int(shard):05d}.parquet"


# ---------------------------------------------------------------------------------------------
# streaming scorer
# ---------------------------------------------------------------------------------------------
def _load(model: Any, device: str):
    from segmentation import ConcreteGMVAE

    if isinstance(model, ConcreteGMVAE):
        return model
    return ConcreteGMVAE.load(str(model), device=device)


def iter_predict_proba(model: Any, batches: Iterable[Any]) -> Iterator[tuple[Any, "Any"]]:
    """For each Arrow record batch (or table), yield (batch, q(y|x) as a float32 numpy array)."""
    import torch

    from segmentation.model.estimator import _threads
    from segmentation.model.training import batch_to

    pre, net, device = model.preprocessor_, model.network_, model.device_
    net.eval()
    with _threads(model.n_threads), torch.no_grad():
        for batch in batches:
            if batch.num_rows == 0:
                continue
            data = pre.transform(batch.to_pandas())
            n = data["x"].shape[0]
            out = []
            for start in range(0, n, ENCODE_ROWS):
                b = batch_to({"x": data["x"]}, slice(start, start + ENCODE_ROWS), device)
                _, logits = net.encode(b["x"])
                out.append(torch.softmax(logits.float(), -1).cpu())
            del data
            yield batch, torch.cat(out).numpy()


def _top2(proba, live=None):
    """Best and runner-up cluster per row, ordered exactly as ``pipeline.score`` orders them.

    ``live`` (one bool per cluster): the clusters that hold customers tonight. The runner-up is
    taken among them, because a cluster nobody is assigned to gets no published segment id, and a
    runner-up pointing at it would name a segment the marketers' tables do not have."""
    import numpy as np

    if live is not None and np.count_nonzero(live) >= 2:
        proba = np.where(np.asarray(live, dtype=bool)[None, :], proba, -np.inf)
    order = np.argsort(-proba, axis=1)
    return order[:, 0].astype("int64"), order[:, 1].astype("int64")


def entity_id_arrow(values) -> "Any":
    """Customer ids as the text the warehouse contract stores, the same on every path (whole-table
    and sharded scoring, matching, validation, the report), as an Arrow string array. Whole-number
    floats (a DOUBLE key column, or an integer column pandas widened to float) read as integers,
    '10000' rather than pandas' '10000.0' or Arrow's '1e+20'; other values take Arrow's cast, and a
    column of mixed Python objects their str()."""
    import numpy as np
    import pyarrow as pa

    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if isinstance(values, pa.Array):
        arr = values
    else:
        try:
            arr = pa.array(values, from_pandas=True)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            arr = pa.array([None if v is None else str(v) for v in values], pa.string())
    if pa.types.is_floating(arr.type):
        import pyarrow.compute as pc

        f = arr.to_numpy(zero_copy_only=False).astype("float64")
        whole = np.isfinite(f) & (np.floor(f) == f) & (np.abs(f) < 2.0**53)
        as_int = pa.array(np.where(whole, f, 0).astype("int64")).cast(pa.string())
        return pc.if_else(pa.array(whole), as_int, arr.cast(pa.string()))
    return arr if arr.type == pa.string() else arr.cast(pa.string())


def entity_id_text(values) -> "Any":
    """``entity_id_arrow`` as a NumPy object array."""
    return entity_id_arrow(values).to_numpy(zero_copy_only=False).astype(object)


def part_schema(id_column: str | None, n_segments: int, probabilities: bool):
    import pyarrow as pa

    fields = []
    if id_column:
        fields.append(pa.field(id_column, pa.string()))
    fields += [pa.field("cluster", pa.int64()), pa.field("probability", pa.float64()),
               pa.field("runner_up_cluster", pa.int64())]
    if probabilities:
        fields += [pa.field(f"p_cluster_{k}", pa.float32()) for k in range(n_segments)]
    return pa.schema(fields)


def _atomic_writer(out_path: Path):
    """A temporary file next to ``out_path``; renamed over it by the caller when complete."""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out_path.parent, prefix=f".{out_path.name}-", suffix=".tmp")
    os.close(fd)
    return Path(tmp)


def score_parquet(
    model: Any,
    in_path: str | os.PathLike,
    out_path: str | os.PathLike,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    *,
    id_column: str | None = None,
    row_range: tuple[int, int] | None = None,
    probabilities: bool = False,
    device: str = "cpu",
    live: "Any" = None,
) -> dict[str, Any]:
    """Score the rows of a Parquet file in batches of at most ``batch_rows`` rows and write one
    Parquet part (schema above) to ``out_path``, atomically. ``model`` is a model folder or a loaded
    ``ConcreteGMVAE``; ``row_range`` (start, stop) restricts it to a shard. Returns small statistics."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    if batch_rows < 1:
        raise ValueError("batch_rows must be positive")
    t0 = time.perf_counter()
    m = _load(model, device)
    features = list(m.preprocessor_.feature_types)
    pf = pq.ParquetFile(in_path)
    names = set(pf.schema_arrow.names)
    missing = [c for c in features + ([id_column] if id_column else []) if c not in names]
    if missing:
        raise ValueError(f"{in_path}: missing column(s) {missing} needed to score with this model")
    columns = features + ([id_column] if id_column and id_column not in features else [])
    schema = part_schema(id_column, int(m.n_segments), probabilities)
    out = Path(out_path)
    tmp = _atomic_writer(out)
    rows = n_batches = max_batch = 0
    counts = np.zeros(int(m.n_segments), dtype=np.int64)
    start, stop = (0, pf.metadata.num_rows) if row_range is None else (int(row_range[0]), int(row_range[1]))
    try:
        with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
            for batch, proba in iter_predict_proba(m, _iter_range(pf, start, stop, batch_rows, columns)):
                top, second = _top2(proba, live)
                cols: list[Any] = []
                if id_column:
                    ids = batch.column(batch.schema.get_field_index(id_column))
                    cols.append(entity_id_arrow(ids))
                cols += [pa.array(top, pa.int64()),
                         pa.array(proba[np.arange(len(top)), top].astype("float64")),
                         pa.array(second, pa.int64())]
                if probabilities:
                    cols += [pa.array(proba[:, k]) for k in range(proba.shape[1])]
                writer.write_batch(pa.RecordBatch.from_arrays(cols, schema=schema))
                counts += np.bincount(top, minlength=len(counts))
                rows += batch.num_rows
                n_batches += 1
                max_batch = max(max_batch, batch.num_rows)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    seconds = time.perf_counter() - t0
    return {"rows": int(rows), "batches": n_batches, "max_batch_rows": int(max_batch), "seconds": round(seconds, 3),
            "rows_per_s": round(rows / seconds, 1) if seconds > 0 else None, "out_path": str(out),
            "cluster_counts": counts.tolist(), "row_range": [start, stop]}


def _lookup(lut, clusters):
    """cluster -> segment id; -1 for a cluster the mapping does not name."""
    import numpy as np

    inside = (clusters >= 0) & (clusters < len(lut))
    return np.where(inside, lut[np.clip(clusters, 0, len(lut) - 1)], -1)


def merge_parts(
    parts: Sequence[str | os.PathLike],
    out_path: str | os.PathLike,
    mapping: dict[int, int] | None = None,
    *,
    id_column: str = "customer_id",
    live: Any = None,
) -> dict[str, Any]:
    """Concatenate scored parts, in order, into ``out_path`` (renamed into place when complete).
    ``live`` (one bool per cluster): a runner-up in a cluster that holds nobody tonight has no
    published segment id, and is written as null (only when a single segment holds everyone).

    With ``mapping`` (cluster -> segment id) the output has the columns of the warehouse contract
    (``customer_id``, ``segment_id``, ``segment_probability``, ``runner_up_segment_id``); without it
    the parts' columns are kept. Streams one record batch at a time."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not parts:
        raise ValueError("no scored parts to merge")
    out = Path(out_path)
    lut = None
    if mapping is not None:
        size = max(int(k) for k in mapping) + 1
        lut = np.full(size, -1, dtype=np.int64)
        for k, v in mapping.items():
            lut[int(k)] = int(v)
        schema = pa.schema([("customer_id", pa.string()), ("segment_id", pa.int64()),
                            ("segment_probability", pa.float64()), ("runner_up_segment_id", pa.int64())])
    else:
        schema = pq.ParquetFile(parts[0]).schema_arrow
    tmp = _atomic_writer(out)
    rows = 0
    try:
        with pq.ParquetWriter(tmp, schema) as writer:
            for part in parts:
                pf = pq.ParquetFile(part)
                for batch in pf.iter_batches(batch_size=DEFAULT_BATCH_ROWS, use_threads=False):
                    if lut is not None:
                        top = _lookup(lut, batch.column(batch.schema.get_field_index("cluster")).to_numpy())
                        raw_second = batch.column(batch.schema.get_field_index("runner_up_cluster")).to_numpy()
                        second = _lookup(lut, raw_second)
                        if (top < 0).any() or (second < 0).any():
                            raise ValueError(f"{part}: a cluster has no segment id in the mapping {mapping}")
                        dead = ~np.asarray(live, dtype=bool)[raw_second] if live is not None else None
                        batch = pa.RecordBatch.from_arrays(
                            [batch.column(batch.schema.get_field_index(id_column)), pa.array(top),
                             batch.column(batch.schema.get_field_index("probability")),
                             pa.array(second, pa.int64(), mask=dead)],
                            schema=schema)
                    elif batch.schema != schema:
                        raise ValueError(f"{part}: its columns differ from the first part's")
                    writer.write_batch(batch)
                    rows += batch.num_rows
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return {"rows": rows, "parts": len(parts), "out_path": str(out)}


# ---------------------------------------------------------------------------------------------
# the sharded scoring steps of a nightly run (Airflow dynamic task mapping)
# ---------------------------------------------------------------------------------------------
def plan_run_shards(run: dict[str, Any], *, rows_per_shard: int | None = None,
                    max_shards: int | None = None) -> list[dict[str, Any]]:
    """Shards of the run's features snapshot: the list a mapped ``score_shard`` task expands over.
    ``$SEGMENT_SCORE_ROWS_PER_SHARD`` (default 2,000,000) and ``$SEGMENT_SCORE_MAX_SHARDS`` (64)."""
    from segmentation.pipeline import PipelineError, _store

    rows_per_shard = int(rows_per_shard or os.environ.get("SEGMENT_SCORE_ROWS_PER_SHARD", "2000000"))
    max_shards = int(max_shards or os.environ.get("SEGMENT_SCORE_MAX_SHARDS", "64"))
    path = _store(run).run_file(run["run_date"], "features.parquet")
    if path is None:
        raise PipelineError(f"the features snapshot of {run['run_date']} is missing: run the features step first")
    return plan_shards(path, rows_per_shard=rows_per_shard, max_shards=max_shards)


def score_shard(run: dict[str, Any], trained: dict[str, Any], shard: dict[str, Any], *,
                batch_rows: int = DEFAULT_BATCH_ROWS) -> dict[str, Any]:
    """Score one shard of the run's snapshot with the run's scoring model; the part goes to the
    artifact store as ``runs/<D>/score-parts/part-NNNNN.parquet`` (a retry overwrites its own part)."""
    from segmentation.pipeline import _spec, _store

    spec, store = _spec(run), _store(run)
    snapshot = store.run_file(run["run_date"], "features.parquet")
    version = trained["scoring_version"]
    parts_dir = store.run_dir(run["run_date"]) / PARTS_DIR
    out = parts_dir / part_name(shard["shard"])
    # the store's checked load: a wrong-shaped or corrupt artifact is an error naming the file
    stats = score_parquet(store.load_model(version), snapshot, out, batch_rows, id_column=spec.entity_key,
                          row_range=(shard["start"], shard["stop"]))
    if stats["rows"] != shard["rows"]:
        raise RuntimeError(f"shard {shard['shard']}: scored {stats['rows']} rows, planned {shard['rows']}")
    _put_part(store, run["run_date"], out)
    log.info("score shard %d/%d: %d rows, %.0f rows/s", shard["shard"] + 1, shard["n_shards"], stats["rows"],
             stats["rows_per_s"] or 0)
    return {"shard": int(shard["shard"]), "n_shards": int(shard["n_shards"]), "part": part_name(shard["shard"]),
            "start": int(shard["start"]), "stop": int(shard["stop"]), "rows": stats["rows"], "model_version": version, "seconds": stats["seconds"]}


def _put_part(store: Any, run_date: str, path: Path) -> None:
    from segmentation.artifacts import S3ArtifactStore

    if isinstance(store, S3ArtifactStore):  # keep the parts in their own prefix on S3 too
        store._upload(f"runs/{run_date}/{PARTS_DIR}/{path.name}", path)


def _get_part(store: Any, run_date: str, name: str) -> Path:
    from segmentation.artifacts import S3ArtifactStore

    local = store.run_dir(run_date) / PARTS_DIR / name
    if isinstance(store, S3ArtifactStore):
        data = store._read(f"runs/{run_date}/{PARTS_DIR}/{name}")
        if data is not None:
            local.parent.mkdir(parents=True, exist_ok=True)
            tmp = local.with_name(f".{name}.part")
            tmp.write_bytes(data)
            os.replace(tmp, local)
    if not local.exists():
        raise FileNotFoundError(f"scored part {name} of {run_date} is missing from {store}")
    return local


def finalize_scores(url: str, run: dict[str, Any], trained: dict[str, Any], shards: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The publish of the sharded path: check every shard's part is there and scored by the same
    model, map clusters to stable segment ids, and write ``assignments.parquet`` and
    ``segment_mapping.json`` exactly as ``pipeline.score`` does (same files, same return value)."""
    import numpy as np
    import pyarrow.parquet as pq

    from segmentation.pipeline import PipelineError, _run_dir, _spec, _store, assign_segment_ids

    spec, store = _spec(run), _store(run)
    shards = sorted(shards, key=lambda s: s["shard"])
    if not shards:
        raise PipelineError("no scored shards to publish")
    n = shards[0]["n_shards"]
    if [s["shard"] for s in shards] != list(range(n)):
        raise PipelineError(f"scored shards {[s['shard'] for s in shards]} do not cover 0..{n - 1}")
    versions = {s["model_version"] for s in shards}
    if versions != {trained["scoring_version"]}:
        raise PipelineError(f"shards were scored by {sorted(versions)}, expected {trained['scoring_version']}")
    parts = [_get_part(store, run["run_date"], s["part"]) for s in shards]
    # matching needs every customer's cluster: two narrow columns, not the features
    ids = np.concatenate([pq.read_table(p, columns=[spec.entity_key]).column(0).to_numpy(zero_copy_only=False)
                          for p in parts]).astype(str)
    top = np.concatenate([pq.read_table(p, columns=["cluster"]).column(0).to_numpy() for p in parts])
    k = int(store.model_metadata(trained["scoring_version"])["config"]["n_segments"])
    live = np.bincount(top, minlength=k) > 0
    stale = [i for i, p in enumerate(parts)
             if not live[pq.read_table(p, columns=["runner_up_cluster"]).column(0).to_numpy()].all()]
    if stale and live.sum() >= 2:
        # a shard's runner-up can only be judged once every shard is scored: a cluster that holds
        # nobody tonight gets no segment id, so the shards that named it as a runner-up are scored
        # again with the runner-up taken among the populated clusters (rare: a kept model whose
        # segment emptied)
        snapshot = store.run_file(run["run_date"], "features.parquet")
        model = store.load_model(trained["scoring_version"])
        log.info("score: %d shard(s) rescored: their runner-up segment is empty tonight", len(stale))
        for i in stale:
            s = shards[i]
            score_parquet(model, snapshot, parts[i], id_column=spec.entity_key, row_range=(s["start"], s["stop"]),
                          live=live)
            _put_part(store, run["run_date"], parts[i])
    mapping, stability = assign_segment_ids(url, run, trained["scoring_version"], ids, top, k)
    del ids, top
    run_dir = _run_dir(run)
    merged = merge_parts(parts, run_dir / ASSIGNMENTS, mapping, id_column=spec.entity_key, live=live)
    store.put_run_file(run["run_date"], run_dir / ASSIGNMENTS)
    log.info("score: %d customers from %d shard(s) published to %s", merged["rows"], len(parts), run_dir / ASSIGNMENTS)
    return {"assignments": str(run_dir / ASSIGNMENTS), "n_customers": int(merged["rows"]),
            "model_version": trained["scoring_version"], "stability": stability}
