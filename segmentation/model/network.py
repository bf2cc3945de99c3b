"""The GMVAE network and its two training estimators.

Generative model:  p(y) = Cat(1/K),  p(z|y) = N(mu_y, Sigma_y),  p(x|z) = one head per type.
                   Sigma_y is diagonal, or full (``prior_covariance="full"``: a Cholesky factor per component).
Inference model:   q(y|x) = Cat(softmax(f(x))),  q(z|x,y) = N(m(x,y), diag s(x,y)^2).

The cluster variable y enters the network only through two small linear maps: the y-input layer of
the z-encoder (K x H) and the prior p(z|y) (K x latent). With a relaxed (Concrete) y those cost
O(K * H) per row; everything else is independent of K. The exact estimator instead evaluates the
z-encoder, the decoder and the likelihood once per value of y, batched as [B, K, ...]: O(K) work.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from segmentation.model.likelihoods import (
    bernoulli_log_prob,
    categorical_log_prob,
    gaussian_log_prob,
    kl_categorical,
    gaussian_full_log_prob,
    kl_gaussian_full,
    kl_gaussians,
    negative_binomial_log_prob,
)
from segmentation.model.preprocessing import Layout

_LOGVAR_MIN, _LOGVAR_MAX = -8.0, 6.0


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), nn.ELU()]
    return nn.Sequential(*layers)


_U_EPS = 1e-7


def relaxed_one_hot(logits: torch.Tensor, tau: float) -> torch.Tensor:
    """One sample of the Concrete (Gumbel-softmax) relaxation of Cat(softmax(logits)) at temperature tau.

    Gumbel noise as -log(-log(u)) from uniforms: the same distribution as ``F.gumbel_softmax`` (which
    draws it through ``exponential_``), but about 3x cheaper on CPU. The noise is the only [B, K] work
    of a concrete step besides two small linear maps, so this is what keeps an epoch at K=200 close to
    one at K=2.
    """
    # always float32: under bf16 autocast a bf16 uniform has ~2,000 distinct values and 1 - 1e-7
    # rounds to 1, which biases the noise (and log(-log(1)) is inf)
    u = torch.rand(logits.shape, dtype=torch.float32, device=logits.device).clamp_(_U_EPS, 1.0 - _U_EPS)
    gumbel = -torch.log(-torch.log(u))
    return torch.softmax((logits.float() + gumbel) / tau, dim=-1).to(logits.dtype)


@dataclass
class LossTerms:
    """Per-row terms of the negative ELBO; ``loss`` is what the optimiser minimises (batch mean)."""

    loss: torch.Tensor          # scalar: mean over rows of -(rec - kl_z - w * kl_y)
    neg_elbo: torch.Tensor      # [B]: -(rec - kl_z - kl_y), the unweighted bound per row
    rec: torch.Tensor           # [B]
    kl_z: torch.Tensor          # [B]
    kl_y: torch.Tensor          # [B]
    logits_y: torch.Tensor      # [B, K]


class GMVAENetwork(nn.Module):
    def __init__(self, layout: Layout, n_segments: int, latent_dim: int = 10, hidden: tuple[int, ...] = (256, 128),
                 prior_covariance: str = "diagonal"):
        super().__init__()
        if n_segments < 2:
            raise ValueError("n_segments must be at least 2")
        if prior_covariance not in ("diagonal", "full"):
            raise ValueError(f"prior_covariance must be 'diagonal' or 'full', not {prior_covariance!r}")
        self.prior_covariance = prior_covariance
        self.layout = layout
        self.K = int(n_segments)
        self.latent_dim = int(latent_dim)
        hidden = tuple(int(h) for h in hidden)
        h_last = hidden[-1]
        # q(y|x), q(z|x,y)
        self.encoder = _mlp([layout.input_dim, *hidden])
        self.y_logits = nn.Linear(h_last, self.K)
        self.z_from_h = nn.Linear(h_last, h_last)
        self.z_from_y = nn.Linear(self.K, h_last, bias=False)  # the small y-input layer
        self.z_mean = nn.Linear(h_last, self.latent_dim)
        self.z_logvar = nn.Linear(h_last, self.latent_dim)
        # p(z|y): one Gaussian per component, spread out at init so components start distinct
        self.prior_mean = nn.Parameter(torch.randn(self.K, self.latent_dim))
        self.prior_logvar = nn.Parameter(torch.zeros(self.K, self.latent_dim))
        if prior_covariance == "full":
            # the strictly lower triangle of each component's Cholesky factor (its diagonal is
            # exp(prior_logvar / 2)); zero at init, so a full prior starts as the diagonal one.
            # Why full: the latent clusters are tilted ellipsoids; a diagonal p(z|y) assigns z to the
            # nearest component in a per-axis metric and, through KL(q(z|x,y) || p(z|y)), pulls q(y|x)
            # towards that partition (MNIST: 0.72 Hungarian accuracy against 0.79 for the same
            # components with their full covariances)
            self.prior_tril = nn.Parameter(torch.zeros(self.K, self.latent_dim, self.latent_dim))
        # p(x|z): shared trunk, one output slice per head
        self.decoder = _mlp([self.latent_dim, *reversed(hidden)])
        L = layout
        self.out_sizes = [2 * L.n_gaussian, L.n_count, L.n_binary, sum(L.cat_sizes)]
        self.decoder_out = nn.Linear(hidden[0], sum(self.out_sizes))
        self.count_log_r = nn.Parameter(torch.zeros(L.n_count))  # NB dispersion per count feature

    # ---- pieces -------------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(x)
        return h, self.y_logits(h)

    def z_params(self, h: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q(z|x,y). ``y`` is [B, K] (relaxed or one-hot) or None for all K one-hots ([B, K, L] out)."""
        hz = self.z_from_h(h)
        if y is None:  # every component at once: z_from_y of the k-th one-hot is its k-th column
            g = F.elu(hz.unsqueeze(1) + self.z_from_y.weight.t().unsqueeze(0))
        else:
            g = F.elu(hz + self.z_from_y(y))
        return self.z_mean(g), self.z_logvar(g).clamp(_LOGVAR_MIN, _LOGVAR_MAX)

    def prior_params(self, y: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """p(z|y) for a [B, K] y, or all K components ([K, L]) when y is None."""
        pm, plv = self.prior_mean, self.prior_logvar.clamp(_LOGVAR_MIN, _LOGVAR_MAX)
        if y is None:
            return pm, plv
        return y @ pm, y @ plv

    def prior_tril_for(self, y: torch.Tensor | None) -> torch.Tensor | None:
        """The strictly lower Cholesky entries of p(z|y) ([B, L, L], or [K, L, L] for y None); None
        for a diagonal prior. A relaxed y mixes the components' factors as it mixes their means."""
        if self.prior_covariance != "full":
            return None
        if y is None:
            return self.prior_tril
        return (y @ self.prior_tril.flatten(1)).view(y.shape[0], self.latent_dim, self.latent_dim)

    def kl_z(self, zm: torch.Tensor, zlv: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """KL(q(z|x,y) || p(z|y)): [B] for a [B, K] y, [B, K] for every component (y None)."""
        pm, plv = self.prior_params(y)
        tril = self.prior_tril_for(y)
        if y is None:
            pm, plv = pm.unsqueeze(0), plv.unsqueeze(0)
            tril = None if tril is None else tril.unsqueeze(0)
        if tril is None:
            return kl_gaussians(zm, zlv, pm, plv)
        return kl_gaussian_full(zm, zlv, pm, plv, tril).to(zm.dtype)

    def log_prior_z_k(self, z: torch.Tensor) -> torch.Tensor:
        """log p(z|k) for every component: z [B, L] -> [B, K]."""
        pm, plv = self.prior_params(None)
        tril = self.prior_tril_for(None)
        if tril is None:
            return gaussian_log_prob(z.unsqueeze(1), pm, plv).sum(-1)
        return gaussian_full_log_prob(z.unsqueeze(1), pm, plv, tril)

    def log_prior_y(self) -> torch.Tensor:
        return torch.full((self.K,), -math.log(self.K), device=self.prior_mean.device)

    def decode_log_lik(self, z: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """log p(x|z) summed over observed features. z: [..., L] with leading dims matching the batch
        on the left ([B, L] or [B, K, L]); returns [B] or [B, K]."""
        out = self.decoder_out(self.decoder(z))
        extra = out.dim() - 2  # 1 when z has a K axis
        gsz, csz, bsz, _ = self.out_sizes
        pieces = torch.split(out, self.out_sizes, dim=-1)

        def expand(t: torch.Tensor) -> torch.Tensor:
            return t.unsqueeze(1) if extra else t

        total = torch.zeros(out.shape[:-1], device=out.device, dtype=out.dtype)
        if gsz:
            mean, logvar = torch.split(pieces[0], gsz // 2, dim=-1)
            ll = gaussian_log_prob(expand(batch["gaussian"]), mean, logvar.clamp(_LOGVAR_MIN, _LOGVAR_MAX))
            total = total + (ll * expand(batch["gaussian_mask"])).sum(-1)
        if csz:
            log_mean = pieces[1].clamp(-10.0, 15.0)
            ll = negative_binomial_log_prob(expand(batch["count"]), log_mean, self.count_log_r.clamp(-6.0, 8.0))
            total = total + (ll * expand(batch["count_mask"])).sum(-1)
        if bsz:
            ll = bernoulli_log_prob(expand(batch["binary"]).expand_as(pieces[2]), pieces[2])
            total = total + (ll * expand(batch["binary_mask"])).sum(-1)
        if self.layout.cat_sizes:
            logits = torch.split(pieces[3], self.layout.cat_sizes, dim=-1)
            codes, mask = expand(batch["categorical"]), expand(batch["categorical_mask"])
            for j, lg in enumerate(logits):
                c = codes[..., j].expand(lg.shape[:-1])
                total = total + categorical_log_prob(c, lg) * mask[..., j]
        return total

    # ---- estimators -----------------------------------------------------------------------
    def loss_concrete(self, batch: dict[str, torch.Tensor], tau: float, kl_weight: float, sample: bool = True) -> LossTerms:
        """One relaxed sample of y ~ Concrete(q(y|x), tau): cost independent of K (but the y layers)."""
        h, logits = self.encode(batch["x"])
        if sample:
            y = relaxed_one_hot(logits, tau)
        else:  # deterministic variant used for tests: the tempered softmax without noise
            y = torch.softmax(logits / tau, dim=-1)
        zm, zlv = self.z_params(h, y)
        z = zm + torch.exp(0.5 * zlv) * torch.randn_like(zm) if sample else zm
        rec = self.decode_log_lik(z, batch)
        kl_z = self.kl_z(zm, zlv, y)
        kl_y = kl_categorical(logits, self.log_prior_y())
        neg_elbo = -(rec - kl_z - kl_y)
        loss = -(rec - kl_z - kl_weight * kl_y).mean()
        return LossTerms(loss, neg_elbo, rec, kl_z, kl_y, logits)

    def loss_exact(self, batch: dict[str, torch.Tensor], kl_weight: float, sample: bool = True) -> LossTerms:
        """Classic GMVAE bound: sum over all K values of y, the K branches batched into one pass."""
        h, logits = self.encode(batch["x"])
        qy = torch.softmax(logits, dim=-1)                      # [B, K]
        zm, zlv = self.z_params(h, None)                        # [B, K, L]
        z = zm + torch.exp(0.5 * zlv) * torch.randn_like(zm) if sample else zm
        rec_k = self.decode_log_lik(z, batch)                   # [B, K]
        kl_z_k = self.kl_z(zm, zlv, None)                       # [B, K]
        rec = (qy * rec_k).sum(-1)
        kl_z = (qy * kl_z_k).sum(-1)
        kl_y = kl_categorical(logits, self.log_prior_y())
        neg_elbo = -(rec - kl_z - kl_y)
        loss = -(rec - kl_z - kl_weight * kl_y).mean()
        return LossTerms(loss, neg_elbo, rec, kl_z, kl_y, logits)

    # ---- evaluation ------------------------------------------------------------------------
    @torch.no_grad()
    def iw_log_likelihood(self, batch: dict[str, torch.Tensor], n_samples: int = 50) -> torch.Tensor:
        """Importance-weighted estimate of log p(x) per row ([B]).

        Proposal: y ~ q(y|x), z ~ q(z|x,y); its density q(z|x) = sum_k q(k|x) q(z|x,k) and the
        prior p(z) = sum_k p(k) p(z|k) are both evaluated as exact mixtures over the K components.
        """
        h, logits = self.encode(batch["x"])
        logq_y = torch.log_softmax(logits, -1)                       # [B, K]
        zm_all, zlv_all = self.z_params(h, None)                     # [B, K, L]
        B = h.shape[0]
        estimates = []
        for _ in range(n_samples):
            k = torch.distributions.Categorical(logits=logits).sample()          # [B]
            idx = k.view(B, 1, 1).expand(B, 1, self.latent_dim)
            zm, zlv = zm_all.gather(1, idx).squeeze(1), zlv_all.gather(1, idx).squeeze(1)
            z = zm + torch.exp(0.5 * zlv) * torch.randn_like(zm)                 # [B, L]
            log_qz = torch.logsumexp(
                logq_y + gaussian_log_prob(z.unsqueeze(1), zm_all, zlv_all).sum(-1), dim=-1
            )
            log_pz = torch.logsumexp(
                self.log_prior_y().unsqueeze(0) + self.log_prior_z_k(z), dim=-1
            )
            estimates.append(self.decode_log_lik(z, batch) + log_pz - log_qz)
        stacked = torch.stack(estimates, 0)
        return torch.logsumexp(stacked, 0) - math.log(n_samples)
