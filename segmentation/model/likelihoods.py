"""Log-likelihoods of the decoder heads and the closed-form KL terms.

Written out by hand (rather than through torch.distributions objects) because they run on every
minibatch over [batch, K, features] tensors; tests check each against torch.distributions.
Every log-likelihood takes a 0/1 ``mask`` of observed entries: a missing value contributes
nothing to the likelihood (it is never treated as a zero).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LOG_2PI = math.log(2.0 * math.pi)


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Elementwise log N(x; mean, exp(logvar))."""
    return -0.5 * (LOG_2PI + logvar + (x - mean) ** 2 * torch.exp(-logvar))


def bernoulli_log_prob(x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Elementwise log Bernoulli(x; sigmoid(logits)), numerically stable."""
    return -F.binary_cross_entropy_with_logits(logits, x, reduction="none")


def negative_binomial_log_prob(x: torch.Tensor, log_mean: torch.Tensor, log_r: torch.Tensor) -> torch.Tensor:
    """Elementwise log NB(x; mean=exp(log_mean), total_count=exp(log_r)).

    Parameterised by the mean so the decoder predicts a count's level directly; the dispersion r is a
    learned per-feature parameter. Same distribution as torch's NegativeBinomial(total_count=r,
    logits=log_mean - log_r).
    """
    r = torch.exp(log_r)
    # log(r + mu) computed stably from the logs
    log_r_plus_mu = torch.logaddexp(log_r, log_mean)
    return (
        torch.lgamma(x + r)
        - torch.lgamma(r)
        - torch.lgamma(x + 1.0)
        + r * (log_r - log_r_plus_mu)
        + x * (log_mean - log_r_plus_mu)
    )


def categorical_log_prob(x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """log Categorical(x; softmax(logits)) for integer codes x (shape [...]) and logits [..., L]."""
    logp = torch.log_softmax(logits, dim=-1)
    return torch.gather(logp, -1, x.clamp_min(0).unsqueeze(-1)).squeeze(-1)


def kl_gaussians(mean_q: torch.Tensor, logvar_q: torch.Tensor, mean_p: torch.Tensor, logvar_p: torch.Tensor) -> torch.Tensor:
    """KL(N(mean_q, var_q) || N(mean_p, var_p)) summed over the last (latent) dimension."""
    return 0.5 * torch.sum(
        logvar_p - logvar_q + (torch.exp(logvar_q) + (mean_q - mean_p) ** 2) * torch.exp(-logvar_p) - 1.0,
        dim=-1,
    )


def kl_categorical(logits_q: torch.Tensor, log_prior: torch.Tensor) -> torch.Tensor:
    """KL(q(y|x) || p(y)) in closed form, summed over the K categories."""
    logq = torch.log_softmax(logits_q, dim=-1)
    return torch.sum(torch.exp(logq) * (logq - log_prior), dim=-1)


def _prior_factor(logvar_p: torch.Tensor, tril_p: torch.Tensor) -> torch.Tensor:
    """The Cholesky factor diag(exp(logvar_p / 2)) + strictly-lower(tril_p) of a full covariance."""
    return torch.diag_embed(torch.exp(0.5 * logvar_p)) + torch.tril(tril_p, diagonal=-1)


def _inverse_factor(logvar_p: torch.Tensor, tril_p: torch.Tensor) -> torch.Tensor:
    """S^-1 for S = ``_prior_factor``, over the prior's own leading dimensions only ([K, L, L] for the
    K components, [B, L, L] for one mixed prior per row): never one inverse per (row, component)."""
    S = _prior_factor(logvar_p, tril_p)
    while S.dim() > 3 and S.shape[0] == 1:  # [1, K, L, L] (broadcast against [B, K, L]): drop the 1s
        S = S[0]
    eye = torch.eye(S.shape[-1], dtype=S.dtype, device=S.device).expand_as(S)
    return torch.linalg.solve_triangular(S, eye, upper=False)


def _whiten(inv: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """S^-1 d for d [..., L]. Rows against every component ([K, L, L] with d [B, K, L]) contract as
    one batched product over the components, holding [B, K, L] and not [B, K, L, L]."""
    if inv.dim() == 3 and d.dim() == 3 and inv.shape[0] == d.shape[1]:
        return torch.einsum("kij,bkj->bki", inv, d)
    return (inv @ d.unsqueeze(-1)).squeeze(-1)


def kl_gaussian_full(mean_q: torch.Tensor, logvar_q: torch.Tensor, mean_p: torch.Tensor, logvar_p: torch.Tensor,
                     tril_p: torch.Tensor) -> torch.Tensor:
    """KL(N(mean_q, diag var_q) || N(mean_p, S S^T)) with S = ``_prior_factor(logvar_p, tril_p)``.

    ``logvar_p`` is the log of S's squared diagonal, so with ``tril_p`` = 0 this is ``kl_gaussians``.
    Means [..., L] broadcast; ``tril_p`` is [K, L, L] or [1, K, L, L] (every component; means
    [B, K, L]) or [B, L, L] (one prior per row; means [B, L]). Computed in float32 (triangular
    solves have no bf16 kernel on CPU).
    """
    mq, lvq, mp, lvp, t = (a.float() for a in (mean_q, logvar_q, mean_p, logvar_p, tril_p))
    inv = _inverse_factor(lvp, t)
    # tr(Sigma^-1 diag var_q) = sum_j var_q[j] * sum_i inv[i, j]^2; the Mahalanobis term |S^-1 d|^2
    col_sq = inv.pow(2).sum(-2)
    trace = (torch.exp(lvq) * col_sq).sum(-1)
    quad = _whiten(inv, mq - mp).pow(2).sum(-1)
    return 0.5 * (trace + quad - mq.shape[-1] + lvp.sum(-1) - lvq.sum(-1))


def gaussian_full_log_prob(x: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor, tril: torch.Tensor) -> torch.Tensor:
    """log N(x; mean, S S^T) summed over the last dimension, S = ``_prior_factor(logvar, tril)``;
    shapes as in ``kl_gaussian_full``."""
    xf, m, lv, t = (a.float() for a in (x, mean, logvar, tril))
    d = xf - m
    sol = _whiten(_inverse_factor(lv, t), d)
    return -0.5 * (sol.pow(2).sum(-1) + lv.sum(-1) + d.shape[-1] * LOG_2PI)
