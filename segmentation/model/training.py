"""Training loop: Adam on minibatches, KL and temperature schedules, early stopping, NaN guard."""
from __future__ import annotations

import copy
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from segmentation.model.network import GMVAENetwork, LossTerms

log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite: the model is not usable, and nothing is saved."""


@dataclass
class Schedules:
    """w_t (weight of KL(q(y|x) || p(y))) and tau_t (Concrete temperature), per epoch.

    w_t rises linearly from 0 to 1 over ``kl_anneal_epochs``; tau_t decays exponentially from
    ``tau_start`` by ``tau_decay`` per epoch down to the floor ``tau_min``.
    """

    kl_anneal_epochs: int = 10
    tau_start: float = 1.0
    tau_min: float = 0.5
    tau_decay: float = 0.95

    def kl_weight(self, epoch: int) -> float:
        if self.kl_anneal_epochs <= 0:
            return 1.0
        return min(1.0, epoch / float(self.kl_anneal_epochs))

    def tau(self, epoch: int) -> float:
        return max(self.tau_min, self.tau_start * self.tau_decay**epoch)


@dataclass
class TrainConfig:
    estimator: str = "concrete"
    epochs: int = 100
    batch_size: int = 256
    learning_rate: float = 1e-3
    patience: int = 10
    min_epochs: int = 0
    schedules: Schedules = field(default_factory=Schedules)
    device: torch.device = torch.device("cpu")
    bf16: bool = False
    progress: bool | None = None  # None: a bar when stderr is a terminal, else one log line per epoch
    # epochs already trained (a warm-started refresh): the schedules continue where they ended
    # instead of restarting at w=0, tau=tau_start, which would undo the learnt segments
    epoch_offset: int = 0
    # the data-driven start (pretrain_init): its autoencoder's learning rate (None: learning_rate,
    # which is then the GMVAE phase's own), the share of input entries it masks, and how it places
    # the K components in the latent space ("gmm": consensus of full-covariance mixtures, "kmeans")
    pretrain_learning_rate: float | None = None
    pretrain_noise: float = 0.2
    start_clusters: str = "gmm"


class EarlyStopping:
    """Tracks the best validation loss once the KL weight has reached 1 (before that the objective
    still changes), keeps a copy of the best weights, and says when patience has run out."""

    def __init__(self, patience: int, min_epochs: int = 0):
        self.patience, self.min_epochs = patience, min_epochs
        self.best_val, self.best_state, self.best_epoch, self.bad_epochs = math.inf, None, -1, 0

    def update(self, net: torch.nn.Module, val: float, kl_weight: float, epochs_done: int, epoch_number: int) -> None:
        if kl_weight < 1.0 or epochs_done < self.min_epochs:
            return
        scale = abs(self.best_val) if math.isfinite(self.best_val) else 1.0
        if val < self.best_val - 1e-4 * scale:
            self.best_val, self.best_epoch, self.bad_epochs = val, epoch_number, 0
            self.best_state = copy.deepcopy(net.state_dict())
        else:
            self.bad_epochs += 1

    @property
    def should_stop(self) -> bool:
        return self.best_state is not None and self.bad_epochs >= self.patience

    def restore(self, net: torch.nn.Module, history: list[dict[str, Any]]) -> bool:
        """Load the best weights (if any) and mark the best epoch in the history."""
        for row in history:
            row["best"] = row["epoch"] == self.best_epoch
        if self.best_state is None:
            return False
        net.load_state_dict(self.best_state)
        return True


def fit_metrics(history: list[dict[str, Any]], seconds: float, refresh: bool, n_rows: int) -> dict[str, Any]:
    """The summary of a fit kept in ``metrics_`` and in the artifact."""
    final = history[-1] if history else {}
    return {
        "train_seconds": seconds,
        "epochs_run": len(history),
        "best_epoch": next((r["epoch"] for r in history if r.get("best")), len(history)),
        "final_train_loss": final.get("loss"),
        "val_loss": min((r["val_loss"] for r in history if "val_loss" in r and r["kl_weight"] >= 1.0), default=None),
        "refresh": refresh,
        "n_rows": n_rows,
    }


def batch_to(batch: dict[str, torch.Tensor], idx: torch.Tensor | slice, device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v[idx].to(device, non_blocking=True) for k, v in batch.items()}


def compute_loss(net: GMVAENetwork, estimator: str, batch: dict[str, torch.Tensor], tau: float, kl_weight: float,
                 sample: bool = True) -> LossTerms:
    if estimator == "concrete":
        return net.loss_concrete(batch, tau=tau, kl_weight=kl_weight, sample=sample)
    if estimator == "exact":
        return net.loss_exact(batch, kl_weight=kl_weight, sample=sample)
    raise ValueError(f"unknown estimator {estimator!r}; use 'concrete' or 'exact'")


@torch.no_grad()
def evaluate_loss(net: GMVAENetwork, cfg: TrainConfig, data: dict[str, torch.Tensor], tau: float, seed: int = 0) -> float:
    """Mean negative ELBO (w=1) with fixed noise, so epochs are comparable for early stopping."""
    net.eval()
    n = data["x"].shape[0]
    total = 0.0
    devtype = cfg.device.type
    with torch.random.fork_rng(devices=[] if devtype == "cpu" else None):
        torch.manual_seed(seed)
        for start in range(0, n, 4096):
            b = batch_to(data, slice(start, start + 4096), cfg.device)
            terms = compute_loss(net, cfg.estimator, b, tau=tau, kl_weight=1.0)
            total += float(terms.neg_elbo.float().sum())
    net.train()
    return total / max(n, 1)


@torch.no_grad()
def _latent_means(net: GMVAENetwork, data: dict[str, torch.Tensor], device: torch.device) -> torch.Tensor:
    """Means of q(z|x, y) with y at the uniform vector: the encoder's map before any segment exists."""
    net.eval()
    out = []
    uniform = torch.full((1, net.K), 1.0 / net.K, device=device)
    for start in range(0, data["x"].shape[0], 4096):
        h, _ = net.encode(data["x"][start : start + 4096].to(device))
        zm, _ = net.z_params(h, uniform.expand(h.shape[0], -1))
        out.append(zm.float().cpu())
    net.train()
    return torch.cat(out)


def pretrain_init(
    net: GMVAENetwork,
    train_data: dict[str, torch.Tensor],
    cfg: TrainConfig,
    generator: torch.Generator,
    epochs: int,
    seed: int = 0,
    max_cluster_rows: int = 100_000,
    anchor: torch.Tensor | None = None,
    n_fits: int = 20,
) -> dict[str, Any]:
    """A data-driven start for the mixture (the recipe of VaDE, Jiang et al. 2017, on our network).

    A GMVAE started from random weights places its K components before the encoder has learnt
    anything, and its segments tend to settle on whatever split the first epochs happen to find
    (on MNIST: 0.52 Hungarian accuracy). Instead:

    1. train the encoder and decoder as an autoencoder for ``epochs`` epochs, with y held at the
       uniform vector (no segment yet). The encoder sees the rows with ``cfg.pretrain_noise`` of
       their input entries masked to 0 (a denoising autoencoder, as in DEC / VaDE: the latent
       space then groups rows by what they share, not by their details; MNIST seed 0, 50 epochs: a
       full-covariance mixture on the latent means reaches ARI 0.55 without masking, 0.68 with 20%
       masked). z gets a little Gaussian noise (sd 0.1) so
       the decoder already tolerates the sampling noise of the VAE phase, and a small L2 pull on z
       keeps its scale near the prior's;
    2. K clusters of the latent means (a seeded sample of at most ``max_cluster_rows`` rows): with
       ``cfg.start_clusters="gmm"`` the consensus of several full-covariance Gaussian mixtures
       (``consensus_mixture``), with ``"kmeans"`` k-means. The cluster means become p(z|y)'s means.
       A diagonal p(z|y) gets the within-cluster variance pooled over the clusters (per latent
       dimension): per-cluster diagonal variances start some components much sharper than others,
       and on planted CRM data one of those then lost all its rows. A full-covariance p(z|y) gets
       each cluster's own covariance (``_set_full_covariances``): its partition of the latent
       space is then the start's, which a pooled diagonal one is not (MNIST: 0.72 against 0.79);
    3. fit the y head (a linear map of the encoder's last layer) to the cluster labels for a few
       epochs, encoder frozen, so q(y|x) starts out agreeing with p(z|y).

    The GMVAE training that follows then refines a sensible split (MNIST, 5 seeds: see
    benchmarks/RESULTS.md). Returns a summary for the model's metrics.

    ``anchor`` (one int64 per training row, -1 where unknown; values 0..m-1 with m <= K) is an
    existing segmentation, for example last night's published one: the anchored components start
    at their groups' latent means and q(y|x) starts out reproducing the groups, so a scheduled
    retrain moves a customer only where the data argues for it. Components beyond m take the k-means
    centres farthest from the anchored ones; rows without an anchor follow the nearest centre.
    """
    from sklearn.cluster import KMeans

    t0 = time.perf_counter()
    device = cfg.device
    n = int(train_data["x"].shape[0])
    K = net.K
    if n < 2 * K:
        log.info("pretraining skipped: %d training rows are too few for %d segments", n, K)
        return {"init": "random", "reason": f"{n} rows < 2 x {K} segments"}
    net.to(device)
    net.train()
    opt = torch.optim.Adam(net.parameters(), lr=cfg.pretrain_learning_rate or cfg.learning_rate)
    uniform = torch.full((1, K), 1.0 / K, device=device)
    rec = math.nan
    for epoch in range(epochs):
        perm = torch.randperm(n, generator=generator)
        total = 0.0
        for start in range(0, n, cfg.batch_size):
            b = batch_to(train_data, perm[start : start + cfg.batch_size], device)
            x_in = b["x"]
            if cfg.pretrain_noise > 0:  # a denoising autoencoder: the encoder sees a masked copy
                keep = torch.rand(x_in.shape, device=x_in.device) >= cfg.pretrain_noise
                x_in = x_in * keep.to(x_in.dtype)
            h, _ = net.encode(x_in)
            zm, _ = net.z_params(h, uniform.expand(h.shape[0], -1))
            log_lik = net.decode_log_lik(zm + 0.1 * torch.randn_like(zm), b)
            loss = -log_lik.mean() + 1e-3 * zm.pow(2).sum(-1).mean()
            if not torch.isfinite(loss):
                raise TrainingDiverged(
                    f"pretraining loss became {float(loss.detach())} at epoch {epoch + 1}: lower the learning rate "
                    "or check the features for extreme values (or use init='random')"
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 10.0)
            opt.step()
            total += float(log_lik.detach().sum())
        rec = total / n
        log.info("pretraining epoch %d/%d (autoencoder) rec=%.3f", epoch + 1, epochs, rec)
    # ---- k-means on the latent means -> p(z|y) -------------------------------------------------
    rows = torch.randperm(n, generator=generator)[:max_cluster_rows]
    z = _latent_means(net, {"x": train_data["x"][rows]}, device).double().numpy()
    found = consensus_mixture(z, K, int(seed), n_fits=n_fits) if cfg.start_clusters == "gmm" else None
    if found is not None:
        start_labels, start_centres, start_info = found
    else:  # k-means asked for, or no mixture fit used every component (tiny or degenerate data)
        km = KMeans(n_clusters=K, n_init=3, random_state=int(seed)).fit(z)
        start_labels, start_centres, start_info = km.labels_, km.cluster_centers_, {"start": "kmeans"}
    labels = torch.from_numpy(start_labels.astype("int64"))
    sizes = torch.bincount(labels, minlength=K)
    var = torch.stack([
        torch.from_numpy(z[start_labels == k].var(0)) if sizes[k] > 1 else torch.ones(z.shape[1], dtype=torch.float64)
        for k in range(K)
    ])
    centres = start_centres
    n_anchored = 0
    if anchor is not None:
        centres, labels = _anchored_start(z, anchor[rows].cpu().numpy(), start_centres)
        n_anchored = int((anchor[rows] >= 0).sum())
        sizes = torch.bincount(labels, minlength=K)
    with torch.no_grad():
        net.prior_mean.copy_(torch.from_numpy(centres).to(net.prior_mean))
        pooled_logvar = torch.log(var.mean(0) + 1e-3).to(net.prior_logvar)
        net.prior_logvar.copy_(pooled_logvar.expand_as(net.prior_logvar))
        if net.prior_covariance == "full":
            _set_full_covariances(net, z, labels.numpy(), var.mean(0).numpy())
        # q(z|x,y) must start where the autoencoder left it, whatever y the training step feeds it:
        # (1) the autoencoder only ever saw the uniform y, so every column of the y-input layer
        #     becomes their mean (z_from_y(y) is then the same vector for every y on the simplex);
        # (2) its log-variance head was never trained (variance ~1, against a pooled within-cluster
        #     variance of ~0.01), which made KL(q(z|x,y) || p(z|y)) ~200 nats per row at the first
        #     step: those gradients scrambled q(y|x) and emptied segments of a 5-segment table.
        #     It starts at the prior's variance instead.
        net.z_from_y.weight.copy_(net.z_from_y.weight.mean(1, keepdim=True).expand_as(net.z_from_y.weight))
        net.z_logvar.weight.zero_()
        q_logvar = pooled_logvar
        if net.prior_covariance == "full":  # see _set_full_covariances
            q_logvar = torch.log(FULL_START_SHARE * var.mean(0) + 1e-3).to(net.prior_logvar)
        net.z_logvar.bias.copy_(q_logvar.to(net.z_logvar.bias))
    # ---- q(y|x) starts out agreeing with the clusters -------------------------------------------
    head_opt = torch.optim.Adam(net.y_logits.parameters(), lr=1e-2)
    x_rows = train_data["x"][rows]
    # a few epochs, but never fewer than ~300 steps: on a small table 3 epochs are a dozen steps
    head_epochs = max(3, math.ceil(300 / math.ceil(len(rows) / cfg.batch_size)))
    for _ in range(head_epochs):
        perm = torch.randperm(len(rows), generator=generator)
        for start in range(0, len(rows), cfg.batch_size):
            idx = perm[start : start + cfg.batch_size]
            with torch.no_grad():
                h, _ = net.encode(x_rows[idx].to(device))
            loss = torch.nn.functional.cross_entropy(net.y_logits(h), labels[idx].to(device))
            head_opt.zero_grad(set_to_none=True)
            loss.backward()
            head_opt.step()
    seconds = time.perf_counter() - t0
    log.info("pretraining done in %.1f s: %d autoencoder epochs, %s start on %d rows, cluster sizes %d-%d",
             seconds, epochs, start_info["start"], len(rows), int(sizes.min()), int(sizes.max()))
    info = {"init": "anchored" if anchor is not None else "pretrain", "pretrain_epochs": epochs, "pretrain_rec": rec,
            "pretrain_noise": cfg.pretrain_noise, **start_info,
            "kmeans_rows": int(len(rows)), "kmeans_cluster_sizes": sizes.tolist(), "pretrain_seconds": seconds}
    if anchor is not None:
        info["anchored_rows"] = n_anchored
    return info


# A full-covariance start: q(z|x,y) starts with this share of the pooled within-cluster variance,
# and each component's covariance is its cluster's covariance of the latent means plus that same
# noise (z = encoder mean + q's noise, so that is the spread p(z|y) has to explain). Without the
# floor, latent means that lie on a thin surface (planted CRM tables) gave components with
# eigenvalues near 0 and a first-epoch KL(q(z|x,y) || p(z|y)) of ~270 nats, which training never
# fully undid (test ELBO -13.2 against -7.8 diagonal). On MNIST a share up to 0.3 leaves the
# partition as it is (0.1-0.3: within +0.006 of none on seeds 0-3; 1.0: -0.01).
FULL_START_SHARE = 0.3


def _set_full_covariances(net: GMVAENetwork, z, labels, pooled_var) -> None:
    """Each component of a full-covariance p(z|y) starts with its cluster's covariance plus the
    floor ``FULL_START_SHARE * pooled_var`` (and 1e-3, as the diagonal start has), as the Cholesky
    factor the network stores. A cluster with no more rows than latent dimensions has no usable
    covariance and keeps the diagonal start's pooled variance."""
    import numpy as np

    L = z.shape[1]
    floor = np.diag(FULL_START_SHARE * np.asarray(pooled_var, dtype=np.float64) + 1e-3)
    for k in range(net.K):
        members = z[labels == k]
        if len(members) <= L:
            continue
        try:
            chol = np.linalg.cholesky(np.cov(members, rowvar=False) + floor)
        except np.linalg.LinAlgError:  # not positive definite in float64 (extreme scales): keep the pooled one
            continue
        net.prior_logvar[k].copy_(torch.from_numpy(2.0 * np.log(np.diag(chol))).to(net.prior_logvar))
        net.prior_tril[k].copy_(torch.from_numpy(np.tril(chol, -1)).to(net.prior_tril))


def consensus_mixture(z, K: int, seed: int, n_fits: int = 20, fit_rows: int = 20_000,
                      max_values: int = 20_000_000):
    """K clusters of the latent means ``z`` ([n, L] float64): the consensus of ``n_fits``
    full-covariance Gaussian mixtures.

    Why full covariance: the autoencoder's latent clusters differ in spread and shape, and k-means
    (equal spheres) puts every boundary half-way between centres (MNIST, seed 0: k-means 0.63 Hungarian
    accuracy on the fit rows, single full-covariance mixtures 0.70-0.89). Why a consensus: EM lands
    in a different optimum from each start and neither its likelihood (the best-likelihood fit was
    among the worst on MNIST) nor agreement with the other fits tells the good ones apart. Each
    fit's responsibilities are features of a row; k-means on the fits' responsibilities side by side
    groups the rows that the fits keep together, which undoes each fit's own mistakes (MNIST, 5
    seeds, 20 fits: 0.83 on the fit rows, where the single fits average 0.78 and the fit agreeing
    most with the others, this function's choice before, 0.78 on seeds 0-3). Each mixture is fitted on
    at most ``fit_rows`` rows (a seeded sample) and labels every row. The responsibilities side by side
    are n x K x n_fits numbers: above ``max_values`` of them (100,000 rows at K=200 would be 1.6 GB) the
    consensus k-means is fitted on the sample's and assigns the other rows batch by batch.
    Returns (labels [n], means [K, L], summary), or None when no fit used every component.
    """
    import warnings

    import numpy as np
    from sklearn.cluster import KMeans
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.metrics import adjusted_rand_score
    from sklearn.mixture import GaussianMixture

    rng = np.random.default_rng(int(seed))
    sample = z if len(z) <= fit_rows else z[rng.choice(len(z), fit_rows, replace=False)]
    mixtures, fit_labels = [], []
    for i in range(max(1, int(n_fits))):
        try:
            with warnings.catch_warnings():
                # fewer distinct rows than K, or EM still moving after max_iter: the fit is judged
                # below (every component must hold rows), not announced twenty times in the log
                warnings.simplefilter("ignore", ConvergenceWarning)
                gm = GaussianMixture(K, covariance_type="full", reg_covar=1e-4, max_iter=200,
                                     random_state=(int(seed) * 1000 + i) % 2**32).fit(sample)
        except ValueError as exc:  # a degenerate covariance on tiny or constant data: skip this start
            log.info("mixture start %d skipped: %s", i, exc)
            continue
        labels = gm.predict(z)
        if len(np.unique(labels)) < K:  # a component that claims no row is no start for a segment
            continue
        mixtures.append(gm)
        fit_labels.append(labels)
    if not mixtures:
        return None

    def side_by_side(rows):
        return np.hstack([gm.predict_proba(rows).astype(np.float32) for gm in mixtures])

    if len(mixtures) == 1:
        labels = fit_labels[0]
    elif len(z) * K * len(mixtures) <= max_values:
        labels = KMeans(n_clusters=K, n_init=10, random_state=int(seed)).fit_predict(side_by_side(z))
    else:  # bounded memory: k-means on a seeded sample's responsibilities, then every row in batches
        step = max(10 * K, max_values // (K * len(mixtures)))
        some = np.sort(rng.choice(len(z), min(step, len(z)), replace=False))
        km = KMeans(n_clusters=K, n_init=10, random_state=int(seed)).fit(side_by_side(z[some]))
        labels = np.concatenate([km.predict(side_by_side(z[i:i + step])) for i in range(0, len(z), step)])
    if len(np.unique(labels)) < K:  # k-means on a sample may leave a centre without rows elsewhere
        labels = fit_labels[0]
    means = np.stack([z[labels == k].mean(0) for k in range(K)])
    agreement = float(np.mean([adjusted_rand_score(labels, f) for f in fit_labels]))
    return labels, means, {"start": "gmm-consensus", "start_fits": len(mixtures), "start_agreement": agreement}


def _anchored_start(z, anchor, kmeans_centres):
    """Component centres and per-row start labels from an existing segmentation (see pretrain_init)."""
    import numpy as np

    K = kmeans_centres.shape[0]
    centres = np.empty_like(kmeans_centres)
    anchored = []
    for k in range(K):
        members = anchor == k
        if members.sum() >= 2:
            centres[k] = z[members].mean(0)
            anchored.append(k)
    placed = [centres[k] for k in anchored]
    pool = list(range(K))
    for k in (k for k in range(K) if k not in anchored):
        # the k-means centre farthest from every centre placed so far
        if placed:
            dist = ((kmeans_centres[pool][:, None, :] - np.stack(placed)[None, :, :]) ** 2).sum(-1).min(1)
            pick = pool[int(dist.argmax())]
        else:
            pick = pool[0]
        centres[k] = kmeans_centres[pick]
        placed.append(centres[k])
        pool.remove(pick)
    nearest = ((z[:, None, :] - centres[None, :, :]) ** 2).sum(-1).argmin(1)
    # a row keeps its anchor unless it lies nearest a component no anchor group claimed: with more
    # components than anchor groups (K raised), those components must start with rows, or they stay
    # empty and the promotion gate rejects every retrain at the new K
    free = np.array([k not in anchored for k in range(K)])
    labels = np.where((anchor >= 0) & (anchor < K) & ~free[nearest], anchor, nearest)
    return centres, torch.from_numpy(labels.astype("int64"))


def _progress(cfg: TrainConfig, total: int):
    interactive = sys.stderr.isatty() if cfg.progress is None else cfg.progress
    if not interactive:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="training", unit="epoch", leave=False)


def train(
    net: GMVAENetwork,
    train_data: dict[str, torch.Tensor],
    val_data: dict[str, torch.Tensor] | None,
    cfg: TrainConfig,
    generator: torch.Generator,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Train ``net`` in place; returns the per-epoch history. Restores the best weights seen on the
    validation split once the KL annealing has finished (before that the objective still changes)."""
    net.to(cfg.device)
    net.train()
    opt = torch.optim.Adam(net.parameters(), lr=cfg.learning_rate)
    n = train_data["x"].shape[0]
    history: list[dict[str, Any]] = []
    stopper = EarlyStopping(cfg.patience, cfg.min_epochs)
    bar = _progress(cfg, cfg.epochs)
    sched = cfg.schedules
    for epoch in range(cfg.epochs):
        t0 = time.perf_counter()
        tau, w = sched.tau(epoch + cfg.epoch_offset), sched.kl_weight(epoch + cfg.epoch_offset)
        perm = torch.randperm(n, generator=generator)
        sums = {"loss": 0.0, "rec": 0.0, "kl_z": 0.0, "kl_y": 0.0}
        steps = 0
        for start in range(0, n, cfg.batch_size):
            idx = perm[start : start + cfg.batch_size]
            b = batch_to(train_data, idx, cfg.device)
            with torch.autocast(device_type=cfg.device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
                terms = compute_loss(net, cfg.estimator, b, tau=tau, kl_weight=w)
            if not torch.isfinite(terms.loss):
                raise TrainingDiverged(
                    f"training loss became {float(terms.loss.detach())} at epoch {epoch + 1}, step {steps + 1}: "
                    "the model is unusable. Lower the learning rate, check the features for extreme values, "
                    "or declare heavy-tailed amounts as 'money'."
                )
            opt.zero_grad(set_to_none=True)
            terms.loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 10.0)
            opt.step()
            bs = idx.shape[0]
            sums["loss"] += float(terms.loss.detach()) * bs
            sums["rec"] += float(terms.rec.detach().float().mean()) * bs
            sums["kl_z"] += float(terms.kl_z.detach().float().mean()) * bs
            sums["kl_y"] += float(terms.kl_y.detach().float().mean()) * bs
            steps += 1
        seconds = time.perf_counter() - t0
        row: dict[str, Any] = {k: v / n for k, v in sums.items()}
        row.update(epoch=epoch + 1 + cfg.epoch_offset, tau=tau, kl_weight=w, steps=steps, seconds=seconds)
        if val_data is not None and val_data["x"].shape[0]:
            # the concrete bound depends on tau, which decays epoch by epoch: validating at the fixed
            # floor tau_min keeps the early-stopping losses of different epochs comparable
            val = evaluate_loss(net, cfg, val_data, tau=sched.tau_min)
            if not math.isfinite(val):
                raise TrainingDiverged(f"validation loss became {val} at epoch {epoch + 1}")
            row["val_loss"] = val
            stopper.update(net, val, w, epoch + 1, epoch + 1 + cfg.epoch_offset)
        history.append(row)
        if on_epoch:
            on_epoch(row)
        msg = (
            f"epoch {epoch + 1}/{cfg.epochs} loss={row['loss']:.4f} rec={row['rec']:.3f} kl_z={row['kl_z']:.3f} "
            f"kl_y={row['kl_y']:.3f} tau={tau:.3f} w={w:.2f}"
            + (f" val={row['val_loss']:.4f}" if "val_loss" in row else "")
            + f" ({seconds:.1f}s)"
        )
        if bar is not None:
            bar.set_postfix_str(msg.split(" ", 2)[2][:80])
            bar.update(1)
        else:
            log.info(msg)
        if stopper.should_stop:
            log.info("early stopping at epoch %d: no validation improvement for %d epochs (best epoch %d)",
                     epoch + 1, cfg.patience, stopper.best_epoch)
            break
    if bar is not None:
        bar.close()
    if stopper.restore(net, history):
        log.info("restored the weights of epoch %d (validation loss %.4f)", stopper.best_epoch, stopper.best_val)
    return history
