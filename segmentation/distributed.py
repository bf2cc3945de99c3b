"""Training past one GPU: the same model under ``torchrun`` with PyTorch DDP, and the training pod's
entrypoint.

Two commands (``python -m segmentation.distributed --help``):

``train``  fit a ``ConcreteGMVAE`` on a Parquet snapshot and save it (the artifact format of
           ``ConcreteGMVAE.save``). Runs as one process, or under torchrun on several GPUs / CPU
           processes::

               torchrun --standalone --nproc_per_node=4 -m segmentation.distributed train \\
                   features.parquet --spec spec.yaml --k 50 --out model/

``pod``    the training pod of the nightly DAG (KubernetesPodOperator): runs the pipeline's train
           step, ``segmentation.pipeline.train``, on the run's features snapshot in the artifact
           store and stores the model in the registry; the small result dict goes to
           ``/airflow/xcom/return.json`` (the operator's XCom sidecar). Under torchrun the step's
           model fit is spread over the ranks with DDP; everything else (reuse, keep, refresh,
           promotion gate, registry) runs on rank 0 exactly as in-process.

How the ranks split the work (each rank is one process, one GPU or a share of the CPU):

- Data: the snapshot is cut into ``world_size`` contiguous row ranges of equal size (one row
  apart at most); a rank reads only the Parquet row groups its range touches.
- Preprocessing is fitted once, on rank 0, on all rows (as in a single process), and its JSON is
  broadcast, so every rank encodes with identical parameters.
- The network is wrapped in ``DistributedDataParallel``; the GMVAE's losses are methods
  (``loss_concrete`` / ``loss_exact``), so a small module whose ``forward`` computes the loss is
  what DDP wraps, and its gradient hooks fire on ``backward``. DDP broadcasts rank 0's initial
  weights and averages gradients, so the weights stay identical on every rank (checked at the end:
  every rank's weight checksum is gathered and must agree).
- ``batch_size`` stays the global minibatch: each rank takes ``ceil(batch_size / world_size)`` rows
  per step, so the optimiser sees the same batch size and number of steps per epoch as one
  process. Every rank runs the same number of steps (short shards wrap around, as
  ``DistributedSampler`` pads), because a rank that stops early would hang the others.
- Validation loss for early stopping is summed over all ranks; the loss of a diverged step shows
  up as a non-finite gradient norm, identical on every rank after the all-reduce: all ranks stop
  together, never one alone.

Backend: NCCL with one GPU per rank when CUDA is available, else gloo on CPU (what the tests use:
``torchrun --standalone --nproc_per_node=2 -m segmentation.distributed train ...``).
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

log = logging.getLogger(__name__)

XCOM_RETURN = "/airflow/xcom/return.json"
DEFAULT_TIMEOUT_S = 4 * 3600  # rank 0 may score / save for a long time while the others wait


# ---------------------------------------------------------------------------------------------
# process group
# ---------------------------------------------------------------------------------------------
@dataclass
class DistContext:
    """Where this process sits: rank among world_size, its device, and the collectives it needs.
    With world_size 1 (no torchrun) every collective is a no-op, so the same code runs alone."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: Any = None
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            if self.backend == "nccl":
                dist.barrier(device_ids=[self.local_rank])
            else:
                dist.barrier()

    def broadcast_object(self, obj: Any = None, src: int = 0) -> Any:
        """``obj`` of rank ``src`` on every rank (JSON-able or picklable; small)."""
        if not self.distributed:
            return obj
        import torch.distributed as dist

        box = [obj if self.rank == src else None]
        dist.broadcast_object_list(box, src=src, device=self.device if self.backend == "nccl" else None)
        return box[0]

    def all_gather_object(self, obj: Any) -> list[Any]:
        if not self.distributed:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def all_reduce(self, tensor, op: str = "sum"):
        """In place; returns the tensor (summed / maxed over ranks)."""
        if self.distributed:
            import torch.distributed as dist

            dist.all_reduce(tensor, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX,
                                        "min": dist.ReduceOp.MIN}[op])
        return tensor


def init_distributed(device: str = "auto", backend: str = "auto", timeout_s: int = DEFAULT_TIMEOUT_S) -> DistContext:
    """Join the process group that torchrun describes (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
    ``MASTER_ADDR``/``PORT``); without those, a single-process context. ``device``: auto (CUDA when
    present, one GPU per local rank), cpu or cuda. ``backend``: auto (nccl on CUDA, gloo on CPU)."""
    import torch
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {device!r} requested but CUDA is not available on this machine")
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(f"local rank {local_rank} but only {torch.cuda.device_count()} GPU(s) visible: "
                               "start at most one process per GPU (--nproc_per_node)")
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    if world <= 1:
        return DistContext(0, 1, 0, dev, None)
    chosen = ("nccl" if use_cuda else "gloo") if backend == "auto" else backend
    if not dist.is_initialized():
        kwargs: dict[str, Any] = {"backend": chosen, "timeout": dt.timedelta(seconds=timeout_s)}
        if chosen == "nccl":
            kwargs["device_id"] = dev
        dist.init_process_group(**kwargs)
    ctx = DistContext(dist.get_rank(), dist.get_world_size(), local_rank, dev, chosen)
    log.info("distributed: rank %d of %d on %s (%s)", ctx.rank, ctx.world_size, dev, chosen)
    return ctx


def shutdown(ctx: DistContext) -> None:
    if ctx.distributed:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------
# the snapshot, one shard per rank
# ---------------------------------------------------------------------------------------------
class ParquetSnapshot:
    """A Parquet file read by row ranges: a rank reads only the row groups its range touches."""

    def __init__(self, path: str | os.PathLike):
        import pyarrow.parquet as pq

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"snapshot {self.path} does not exist")
        md = pq.ParquetFile(self.path).metadata
        self.row_group_rows = [md.row_group(i).num_rows for i in range(md.num_row_groups)]
        self.n_rows = int(sum(self.row_group_rows))

    def shard_range(self, rank: int, world_size: int) -> tuple[int, int]:
        from segmentation.scoring import shard_ranges

        if self.n_rows < 2 * world_size:
            raise ValueError(f"{self.path}: {self.n_rows} rows cannot be split over {world_size} ranks")
        return shard_ranges(self.n_rows, world_size)[rank]

    def read_rows(self, start: int, stop: int, columns: list[str] | None = None):
        """Rows [start, stop) as an Arrow table, reading only the overlapping row groups."""
        import pyarrow.parquet as pq

        from segmentation.scoring import _row_groups_for

        pf = pq.ParquetFile(self.path)
        groups, first = _row_groups_for(pf, start, stop)
        if not groups:
            return pq.read_schema(self.path).empty_table().select(columns) if columns else pq.read_schema(self.path).empty_table()
        return pf.read_row_groups(groups, columns=columns, use_threads=False).slice(start - first, stop - start)

    def read_shard(self, rank: int, world_size: int, columns: list[str] | None = None):
        start, stop = self.shard_range(rank, world_size)
        return self.read_rows(start, stop, columns).to_pandas()

    def read_all(self, columns: list[str] | None = None):
        import pyarrow.parquet as pq

        return pq.read_table(self.path, columns=columns).to_pandas()


# ---------------------------------------------------------------------------------------------
# DDP fit
# ---------------------------------------------------------------------------------------------
def _loss_module(net, estimator: str):
    """The module DDP wraps: its forward computes the estimator's loss, so DDP's hooks fire."""
    import torch.nn as nn

    from segmentation.model.training import compute_loss

    class GMVAELoss(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, batch, tau: float, kl_weight: float):
            t = compute_loss(self.net, estimator, batch, tau=tau, kl_weight=kl_weight)
            return t.loss, t.rec.detach().float().mean(), t.kl_z.detach().float().mean(), t.kl_y.detach().float().mean()

    return GMVAELoss()


def _unused_parameters(net, estimator: str, batch) -> bool:
    """Whether some parameter gets no gradient (e.g. the count dispersion when there are no count
    features): DDP must then be told to look for unused parameters."""
    import torch

    from segmentation.model.training import compute_loss

    with torch.random.fork_rng(devices=[]):
        net.zero_grad(set_to_none=True)
        compute_loss(net, estimator, batch, tau=1.0, kl_weight=1.0).loss.backward()
        unused = any(p.grad is None for p in net.parameters() if p.requires_grad)
        net.zero_grad(set_to_none=True)
    return unused


def weights_checksum(net) -> str:
    h = hashlib.sha256()
    for name, t in sorted(net.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _ddp_train(ddp, net, train_data, val_data, cfg, generator, ctx: DistContext, local_batch: int) -> list[dict[str, Any]]:
    """``segmentation.model.training.train`` for DDP: same schedules, clipping, early stopping and
    history rows; every decision is taken on all-reduced numbers so that ranks never disagree."""
    import torch

    from segmentation.model.training import EarlyStopping, TrainingDiverged, batch_to, evaluate_loss

    dev = cfg.device
    net.train()
    opt = torch.optim.Adam(net.parameters(), lr=cfg.learning_rate)
    n_local = int(train_data["x"].shape[0])
    largest = ctx.all_reduce(torch.tensor([float(n_local)], dtype=torch.float64, device=dev), "max")
    total = ctx.all_reduce(torch.tensor([float(n_local)], dtype=torch.float64, device=dev))
    steps = max(1, math.ceil(float(largest[0]) / local_batch))
    n_val_local = int(val_data["x"].shape[0]) if val_data is not None else 0
    n_val = int(ctx.all_reduce(torch.tensor([float(n_val_local)], dtype=torch.float64, device=dev))[0])
    history: list[dict[str, Any]] = []
    stopper = EarlyStopping(cfg.patience, cfg.min_epochs)
    sched = cfg.schedules
    for epoch in range(cfg.epochs):
        t0 = time.perf_counter()
        tau, w = sched.tau(epoch + cfg.epoch_offset), sched.kl_weight(epoch + cfg.epoch_offset)
        need = steps * local_batch
        perm = torch.randperm(n_local, generator=generator)
        while perm.numel() < need:  # a shorter shard wraps around: every rank runs `steps` steps
            perm = torch.cat([perm, torch.randperm(n_local, generator=generator)])
        sums = torch.zeros(5, dtype=torch.float64, device=dev)  # loss, rec, kl_z, kl_y, rows
        for s in range(steps):
            idx = perm[s * local_batch:(s + 1) * local_batch]
            b = batch_to(train_data, idx, dev)
            with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=cfg.bf16):
                loss, rec, kl_z, kl_y = ddp(b, tau, w)
            opt.zero_grad(set_to_none=True)
            loss.backward()  # DDP averages the gradients over the ranks here
            norm = torch.nn.utils.clip_grad_norm_(net.parameters(), 10.0)
            if not torch.isfinite(norm):  # identical on every rank after the all-reduce
                raise TrainingDiverged(
                    f"training loss became non-finite at epoch {epoch + 1}, step {s + 1} (gradient norm {float(norm)}): "
                    "the model is unusable. Lower the learning rate, check the features for extreme values, "
                    "or declare heavy-tailed amounts as 'money'."
                )
            opt.step()
            bs = idx.shape[0]
            sums += torch.stack([loss.detach().double(), rec.double(), kl_z.double(), kl_y.double(),
                                 torch.tensor(1.0, dtype=torch.float64, device=dev)]) * bs
        ctx.all_reduce(sums)
        seconds = time.perf_counter() - t0
        rows = float(sums[4])
        row: dict[str, Any] = {k: float(sums[i]) / rows for i, k in enumerate(("loss", "rec", "kl_z", "kl_y"))}
        row.update(epoch=epoch + 1 + cfg.epoch_offset, tau=tau, kl_weight=w, steps=steps, seconds=seconds,
                   rows_seen=int(rows), rows=int(total[0]))
        if not math.isfinite(row["loss"]):
            raise TrainingDiverged(f"training loss became {row['loss']} at epoch {epoch + 1}")
        if n_val:
            local_val = evaluate_loss(net, cfg, val_data, tau=cfg.schedules.tau_min) * n_val_local if n_val_local else 0.0
            val = float(ctx.all_reduce(torch.tensor([local_val], dtype=torch.float64, device=dev))[0]) / n_val
            if not math.isfinite(val):
                raise TrainingDiverged(f"validation loss became {val} at epoch {epoch + 1}")
            row["val_loss"] = val
            stopper.update(net, val, w, epoch + 1, epoch + 1 + cfg.epoch_offset)
        history.append(row)
        if ctx.is_main:
            log.info("epoch %d/%d loss=%.4f rec=%.3f kl_z=%.3f kl_y=%.3f tau=%.3f w=%.2f%s (%.1fs, %d ranks)",
                     epoch + 1, cfg.epochs, row["loss"], row["rec"], row["kl_z"], row["kl_y"], tau, w,
                     f" val={row['val_loss']:.4f}" if "val_loss" in row else "", seconds, ctx.world_size)
        if stopper.should_stop:
            if ctx.is_main:
                log.info("early stopping at epoch %d (best epoch %d)", epoch + 1, stopper.best_epoch)
            break
    stopper.restore(net, history)
    return history


def fit_distributed(model, snapshot: ParquetSnapshot, ctx: DistContext, feature_types: dict[str, str] | None = None,
                    table_name: str = "input", full_frame: Any = None, anchor: Any = None):
    """Fit ``model`` (a ``ConcreteGMVAE``) on ``snapshot`` across the ranks of ``ctx``; every rank
    must call it. On return every rank holds the same fitted model (``network_``, ``preprocessor_``,
    ``history_``, ``metrics_``...), so rank 0 can ``save`` it. Rank 0's ``model`` decides: its
    configuration, and with ``warm_start`` on a fitted model, a refresh from its weights (the other
    ranks' ``model`` may be a bare ``ConcreteGMVAE()``). ``full_frame``: rank 0's in-memory copy of
    the whole snapshot, if it has one (else rank 0 reads the feature columns to fit the
    preprocessing and fingerprint the data). ``anchor``: as in ``ConcreteGMVAE.fit``, one label per
    snapshot row, read on rank 0 (which alone runs the data-driven start)."""
    import numpy as np
    import torch
    from torch.nn.parallel import DistributedDataParallel as DDP

    from segmentation.model import artifact
    from segmentation.model.training import fit_metrics, pretrain_init
    from segmentation.model.estimator import _CONFIG_KEYS, _anchor_codes, _threads
    from segmentation.model.evaluation import segment_usage
    from segmentation.model.preprocessing import TablePreprocessor, _as_frame, infer_feature_types

    t0 = time.perf_counter()
    # ---- rank 0 plans: configuration, preprocessing, refresh state ---------------------------
    plan: dict[str, Any] | None = None
    fingerprint = None
    if ctx.is_main:
        try:
            model._check_config()
            refresh = bool(model.warm_start) and model.is_fitted
            config = model.get_params()
            config["hidden"] = list(model.hidden)
            if refresh:
                model.check_refresh_shape()
                pre = model.preprocessor_
                columns = list(pre.feature_types)
            else:
                columns = list(feature_types) if feature_types else None
            df_all = _as_frame(full_frame) if full_frame is not None else snapshot.read_all(columns)
            if full_frame is not None and len(df_all) != snapshot.n_rows:
                raise ValueError(f"the frame to fit has {len(df_all)} rows but the snapshot {snapshot.path} has "
                                 f"{snapshot.n_rows}: they must be the same table")
            inferred = None
            if not refresh:
                if feature_types is None:
                    feature_types = infer_feature_types(df_all)
                    inferred = dict(feature_types)
                    log.info("inferred feature types: %s", ", ".join(f"{k}={v}" for k, v in feature_types.items()))
                pre = TablePreprocessor(feature_types, int(model.min_level_count), table_name=table_name)
                pre.fit(df_all)
            fingerprint = artifact.data_fingerprint(df_all, list(pre.feature_types))
            del df_all
            epoch_offset = max((int(r["epoch"]) for r in getattr(model, "history_", [])), default=0) if refresh else 0
            plan = {"config": config, "preprocessing": pre.to_dict(), "refresh": refresh, "epoch_offset": epoch_offset,
                    "inferred": inferred}
        except Exception as exc:  # tell the waiting ranks, so that they stop with a clear error
            ctx.broadcast_object({"error": f"{type(exc).__name__}: {exc}"})
            raise
    plan = ctx.broadcast_object(plan)
    if "error" in plan:
        raise RuntimeError(f"rank 0 could not prepare the fit: {plan['error']}")
    if not ctx.is_main:
        cfg_kwargs = {k: v for k, v in plan["config"].items() if k in _CONFIG_KEYS}
        cfg_kwargs["hidden"] = tuple(cfg_kwargs["hidden"])
        model.set_params(**cfg_kwargs)
        pre = TablePreprocessor.from_dict(plan["preprocessing"])
    pre.table_name = table_name
    refresh = plan["refresh"]
    # ---- each rank: its shard ------------------------------------------------------------------
    columns = list(pre.feature_types)
    df_local = snapshot.read_shard(ctx.rank, ctx.world_size, columns)
    data = pre.transform(df_local)
    del df_local
    cfg = model._train_config(pretrained_start=not refresh)  # the same rule on every rank
    cfg.device = ctx.device
    cfg.epoch_offset = plan["epoch_offset"]
    seed = int(model.seed)
    local_batch = max(1, math.ceil(int(model.batch_size) / ctx.world_size))
    with _threads(model.n_threads):
        torch.manual_seed(seed)
        if refresh and ctx.is_main:
            net = model.network_
        else:  # the other ranks' start weights are replaced by rank 0's when DDP wraps the network
            net = model.new_network(pre.layout)
        net.to(cfg.device)
        n = int(data["x"].shape[0])
        rng = np.random.default_rng([seed, ctx.rank])
        order = rng.permutation(n)
        n_val = int(round(n * float(model.validation_fraction))) if snapshot.n_rows >= 20 else 0
        val_idx, tr_idx = torch.from_numpy(order[:n_val]), torch.from_numpy(order[n_val:])
        train_data = {k: v[tr_idx] for k, v in data.items()}
        val_data = {k: v[val_idx] for k, v in data.items()} if n_val else None
        del data
        # what the start did, recorded with the model as a single-process fit records it (rank 0's)
        init_info: dict[str, Any] = {"init": "warm_start"} if refresh else {"init": "random"}
        if not refresh and model.init == "pretrain" and int(model.pretrain_epochs) > 0 and ctx.is_main:
            # the data-driven start of single-process training, on rank 0's shard; DDP then hands
            # rank 0's weights to every rank when it wraps the network
            shard_anchor = None
            if anchor is not None:
                start, stop = snapshot.shard_range(ctx.rank, ctx.world_size)
                codes = _anchor_codes(anchor, snapshot.n_rows, int(model.n_segments), table_name)
                shard_anchor = None if codes is None else codes[start:stop][tr_idx]
            init_info = pretrain_init(net, train_data, cfg, torch.Generator().manual_seed(seed),
                                      int(model.pretrain_epochs), seed, anchor=shard_anchor)
        elif not refresh and ctx.is_main:
            model._warn_no_start(model._no_start_reason(), anchor is not None)
        find_unused = _unused_parameters(net, cfg.estimator, {k: v[:8].to(cfg.device) for k, v in train_data.items()})
        wrapped = _loss_module(net, cfg.estimator)
        ddp = DDP(wrapped, device_ids=[cfg.device.index] if cfg.device.type == "cuda" else None,
                  find_unused_parameters=find_unused) if ctx.distributed else wrapped
        # different noise and minibatch order per rank; same start weights (DDP broadcast them)
        torch.manual_seed(seed + 1_000_003 * ctx.rank)
        gen = torch.Generator().manual_seed(seed + 7919 * ctx.rank)
        history = _ddp_train(ddp, net, train_data, val_data, cfg, gen, ctx, local_batch)
        net.eval()
        # ---- segment usage over all rows: per-rank counts, summed ------------------------------
        counts = torch.zeros(int(model.n_segments), dtype=torch.float64, device=cfg.device)
        with torch.no_grad():
            for part in (train_data, val_data):
                if part is None:
                    continue
                x = part["x"]
                for start in range(0, x.shape[0], 8192):
                    _, logits = net.encode(x[start:start + 8192].to(cfg.device))
                    counts += torch.bincount(logits.argmax(-1), minlength=int(model.n_segments)).double()
        ctx.all_reduce(counts)
    checksums = ctx.all_gather_object(weights_checksum(net))
    if len(set(checksums)) != 1:
        raise RuntimeError(f"DDP ranks ended with different weights ({checksums}); the model is not saved")
    sizes = counts.cpu().numpy().astype(np.int64)
    usage = segment_usage(np.repeat(np.arange(len(sizes)), sizes), int(model.n_segments))
    for warning in usage["warnings"] if ctx.is_main else []:
        log.warning("segment usage: %s", warning)
    model.preprocessor_ = pre
    model.network_ = net
    model.device_ = cfg.device
    model.feature_types_ = dict(pre.feature_types)
    if plan.get("inferred"):
        model.inferred_feature_types_ = dict(plan["inferred"])
    model.history_ = (getattr(model, "history_", []) + history) if refresh else history
    model.fingerprint_ = fingerprint or {"rows": snapshot.n_rows, "columns": columns}
    model.metrics_ = {
        **fit_metrics(history, time.perf_counter() - t0, refresh, snapshot.n_rows),
        "usage": usage,
        "init": init_info if ctx.is_main else {"init": "from rank 0"},
        "distributed": {"world_size": ctx.world_size, "backend": ctx.backend, "device": str(cfg.device),
                        "rows_per_rank_step": local_batch, "rank_weight_checksums": checksums},
    }
    return model


# ---------------------------------------------------------------------------------------------
# the pipeline's train step with a DDP fit (the training pod under torchrun)
# ---------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _fits_spread_over_ranks(ctx: DistContext, snapshot_path: Path) -> Iterator[None]:
    """On rank 0, while ``pipeline.train`` runs: each ``ConcreteGMVAE.fit`` it calls wakes the
    other ranks (waiting in ``_serve_fits``) and fits with them through ``fit_distributed``."""
    from segmentation.model.estimator import ConcreteGMVAE

    original = ConcreteGMVAE.fit

    def fit(self, X, feature_types=None, table_name="input", anchor=None):
        ctx.broadcast_object({"op": "fit", "table_name": table_name})
        return fit_distributed(self, ParquetSnapshot(snapshot_path), ctx, feature_types, table_name, full_frame=X,
                               anchor=anchor)

    ConcreteGMVAE.fit = fit
    try:
        yield
    finally:
        ConcreteGMVAE.fit = original


def _serve_fits(ctx: DistContext, snapshot_path: Path) -> None:
    """Ranks > 0: take part in every fit rank 0 starts, until it says it is done."""
    from segmentation import ConcreteGMVAE
    from segmentation.model.training import TrainingDiverged

    while True:
        msg = ctx.broadcast_object(None)
        if msg is None or msg.get("op") == "done":
            return
        if msg.get("op") == "fit":
            try:
                fit_distributed(ConcreteGMVAE(progress=False), ParquetSnapshot(snapshot_path), ctx,
                                table_name=msg.get("table_name", "input"))
            except TrainingDiverged as exc:
                # every rank sees the same all-reduced loss and stops together; rank 0 decides what
                # the night does (pipeline.train falls back on production), so this rank waits for
                # its next message instead of failing the pod
                log.warning("rank %d: the fit diverged (%s); waiting for rank 0", ctx.rank, exc)


def _snapshot_for_run(ctx: DistContext, run: dict[str, Any]) -> Path:
    """The run's features snapshot on this node: local rank 0 fetches it from the artifact store
    (an S3 store downloads it into its cache), the node's other ranks wait and use that copy."""
    from segmentation.pipeline import PipelineError, _store

    store = _store(run)
    path = store.run_file(run["run_date"], "features.parquet") if ctx.local_rank == 0 else None
    ctx.barrier()
    if path is None:
        path = store.run_dir(run["run_date"]) / "features.parquet"
    if not Path(path).is_file():
        raise PipelineError(f"the features snapshot of {run['run_date']} is missing from {store}")
    return Path(path)


def write_xcom(result: dict[str, Any], path: str = XCOM_RETURN) -> bool:
    """Write the step's small result where the KubernetesPodOperator's sidecar reads XCom
    (only when that folder exists, i.e. inside an operator's pod)."""
    p = Path(path)
    if not p.parent.is_dir():
        return False
    tmp = p.with_name(f".{p.name}.tmp")
    tmp.write_text(json.dumps(result, default=str))
    os.replace(tmp, p)
    return True


def train_pod(run: dict[str, Any], validated: dict[str, Any] | None = None, *, device: str | None = None,
              xcom_path: str = XCOM_RETURN) -> dict[str, Any] | None:
    """The training pod: ``pipeline.train`` for ``run`` (its dict from the DAG's start task), with
    the fit spread over the torchrun ranks when there are several. Returns the step's result on
    rank 0 (None elsewhere) and writes it for the operator's XCom."""
    from segmentation import pipeline

    device = device or os.environ.get("SEGMENT_DEVICE", "auto")
    url = os.environ.get("SEGMENT_WAREHOUSE_URL", "")  # the train step reads the artifact store only
    ctx = init_distributed(device=device)
    try:
        if not ctx.distributed:
            result = pipeline.train(url, run, validated)
        else:
            snapshot = _snapshot_for_run(ctx, run)
            if ctx.is_main:
                try:
                    with _fits_spread_over_ranks(ctx, snapshot):
                        result = pipeline.train(url, run, validated)
                finally:
                    with contextlib.suppress(Exception):  # never hide pipeline.train's own error
                        ctx.broadcast_object({"op": "done"})
            else:
                _serve_fits(ctx, snapshot)
                result = None
        if ctx.is_main and result is not None:
            result = dict(result, world_size=ctx.world_size)
            if write_xcom(result, xcom_path):
                log.info("train pod: result written to %s", xcom_path)
            print(json.dumps(result, default=str))
        return result
    finally:
        shutdown(ctx)


# ---------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------
from segmentation.cli import _parse_types  # noqa: E402  (one parser for --type in both CLIs)


def _json_arg(value: str | None) -> dict[str, Any] | None:
    """A JSON object given inline or as @file."""
    if not value:
        return None
    text = Path(value[1:]).read_text() if value.startswith("@") else value
    obj = json.loads(text)
    if obj is not None and not isinstance(obj, dict):
        raise SystemExit("error: expected a JSON object")
    return obj


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(prog="python -m segmentation.distributed", formatter_class=fmt,
                                     description=__doc__.split("How the ranks")[0].strip())
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("train", formatter_class=fmt, help="fit a model on a Parquet snapshot (one process or torchrun)",
                       description="Fit a ConcreteGMVAE on DATA (Parquet) and save it to MODEL_DIR. Under torchrun "
                                   "each rank reads its shard of DATA and DDP averages the gradients; rank 0 saves.")
    p.add_argument("data", metavar="DATA", help="training snapshot (.parquet); or RUN_DATE with --artifacts")
    p.add_argument("--artifacts", metavar="URL", help="read DATA as the features snapshot of run date DATA in this "
                                                        "artifact store (folder or s3://bucket/prefix)")
    p.add_argument("--out", required=True, metavar="MODEL_DIR", help="folder to write the model to (rank 0)")
    p.add_argument("--k", type=int, required=True, help="number of segments K")
    p.add_argument("--type", action="append", metavar="NAME=TYPE", help="feature type (repeatable, comma-separated)")
    p.add_argument("--spec", metavar="SPEC.yaml", help="take features and types from a feature spec")
    p.add_argument("--init-model", metavar="MODEL_DIR", help="warm start (refresh) from this model")
    p.add_argument("--estimator", choices=["concrete", "exact"], default="concrete")
    p.add_argument("--latent-dim", type=int, default=10)
    p.add_argument("--hidden", default="256,128", help="hidden widths, comma-separated (default 256,128)")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=256, help="global minibatch, split over the ranks (default 256)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--kl-anneal-epochs", type=int, default=10)
    p.add_argument("--patience", type=int, default=10)
    p.add_argument("--validation-fraction", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto (one GPU per rank when present), cpu or cuda")
    p.add_argument("--threads", type=int, default=1, help="CPU threads per rank (default 1)")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast")
    p.add_argument("--save-rank-weights", metavar="DIR",
                   help="diagnostics: every rank also writes its final weights to DIR/rank<N>.safetensors")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("pod", formatter_class=fmt, help="the training pod of the nightly DAG",
                       description="Run the pipeline's train step (reuse / keep / refresh / retrain, promotion "
                                   "gate, registry) for one run in the artifact store; the fit uses every "
                                   "torchrun rank. The result dict is printed and written to "
                                   f"{XCOM_RETURN} when that folder exists.",
                       epilog="environment: SEGMENT_ARTIFACTS is not needed (the run dict names its store); "
                              "SEGMENT_DEVICE (auto), AWS_* / SEGMENT_S3_* for an S3 store.")
    p.add_argument("--run-json", required=True, metavar="JSON", help="the run dict of the DAG's start task (JSON or @file)")
    p.add_argument("--validated-json", metavar="JSON", default=None, help="the validate step's result (JSON or @file)")
    p.add_argument("--device", default=None, help="auto, cpu or cuda (default $SEGMENT_DEVICE or auto)")
    p.add_argument("--xcom-path", default=XCOM_RETURN, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_pod)
    return parser


def cmd_train(args: argparse.Namespace) -> int:
    from segmentation import ConcreteGMVAE

    types = _parse_types(args.type)
    if args.spec:
        from segmentation.spec import load_spec

        types = load_spec(args.spec).feature_types
    ctx = init_distributed(device=args.device)
    try:
        data = Path(args.data)
        if args.artifacts:
            data = _snapshot_for_run(ctx, {"run_date": args.data, "artifacts": args.artifacts})
        snapshot = ParquetSnapshot(data)
        if args.init_model:
            model = ConcreteGMVAE.load(args.init_model, device="cpu").set_params(
                warm_start=True, epochs=args.epochs, learning_rate=args.lr, patience=args.patience)
        else:
            model = ConcreteGMVAE(
                n_segments=args.k, estimator=args.estimator, latent_dim=args.latent_dim,
                hidden=tuple(int(h) for h in args.hidden.split(",")), epochs=args.epochs, batch_size=args.batch_size,
                learning_rate=args.lr, kl_anneal_epochs=args.kl_anneal_epochs, patience=args.patience,
                validation_fraction=args.validation_fraction, seed=args.seed, device=args.device,
                n_threads=args.threads, bf16=args.bf16, progress=False)
        fit_distributed(model, snapshot, ctx, types, table_name=data.name)
        if args.save_rank_weights:
            from safetensors.torch import save_file

            Path(args.save_rank_weights).mkdir(parents=True, exist_ok=True)
            save_file({k: v.detach().cpu().contiguous() for k, v in model.network_.state_dict().items()},
                      str(Path(args.save_rank_weights) / f"rank{ctx.rank}.safetensors"))
        if ctx.is_main:
            model.save(args.out, extra={"distributed": model.metrics_["distributed"]})
            m = model.metrics_
            print(json.dumps({"out": args.out, "world_size": ctx.world_size, "epochs_run": m["epochs_run"],
                              "train_seconds": round(m["train_seconds"], 2), "rows": m["n_rows"],
                              "sizes": m["usage"]["sizes"]}))
        ctx.barrier()
        return 0
    finally:
        shutdown(ctx)


def cmd_pod(args: argparse.Namespace) -> int:
    run = _json_arg(args.run_json)
    if not run:
        raise SystemExit("error: --run-json must be the run dict (JSON)")
    train_pod(run, _json_arg(args.validated_json), device=args.device, xcom_path=args.xcom_path)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    rank = os.environ.get("RANK", "0")
    level = logging.DEBUG if args.verbose > 1 else logging.INFO
    logging.basicConfig(level=level, format=f"%(asctime)s rank{rank} %(levelname)-7s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    return int(args.func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
