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
