"""Each hand-written likelihood / KL term agrees with torch.distributions."""
import torch
from torch import distributions as D

from segmentation.model import likelihoods as L

torch.manual_seed(0)


def test_gaussian_matches_normal():
    x, m, lv = torch.randn(50, 3), torch.randn(50, 3), torch.randn(50, 3)
    ref = D.Normal(m, torch.exp(0.5 * lv)).log_prob(x)
    assert torch.allclose(L.gaussian_log_prob(x, m, lv), ref, atol=1e-5)


def test_bernoulli_matches():
    x = (torch.rand(40, 5) > 0.5).float()
    logits = torch.randn(40, 5) * 3
    assert torch.allclose(L.bernoulli_log_prob(x, logits), D.Bernoulli(logits=logits).log_prob(x), atol=1e-5)


def test_negative_binomial_matches():
    x = torch.randint(0, 60, (30, 4)).float()
    log_mean = torch.randn(30, 4) * 2
    log_r = torch.randn(4)
    ref = D.NegativeBinomial(total_count=torch.exp(log_r), logits=log_mean - log_r).log_prob(x)
    assert torch.allclose(L.negative_binomial_log_prob(x, log_mean, log_r), ref, atol=1e-4)
    # the mean parameterisation really is the mean
    d = D.NegativeBinomial(total_count=torch.exp(log_r), logits=log_mean - log_r)
    assert torch.allclose(d.mean, torch.exp(log_mean), rtol=1e-4)


def test_categorical_matches():
    logits = torch.randn(20, 7)
    x = torch.randint(0, 7, (20,))
    assert torch.allclose(L.categorical_log_prob(x, logits), D.Categorical(logits=logits).log_prob(x), atol=1e-5)


def test_kl_gaussians_matches():
    mq, lq, mp, lp = (torch.randn(25, 6) for _ in range(4))
    ref = D.kl_divergence(D.Normal(mq, torch.exp(0.5 * lq)), D.Normal(mp, torch.exp(0.5 * lp))).sum(-1)
    assert torch.allclose(L.kl_gaussians(mq, lq, mp, lp), ref, atol=1e-4)


def test_kl_categorical_matches():
    logits = torch.randn(25, 9)
    log_prior = torch.log_softmax(torch.randn(9), -1)
    ref = D.kl_divergence(D.Categorical(logits=logits), D.Categorical(logits=log_prior.expand(25, 9)))
    assert torch.allclose(L.kl_categorical(logits, log_prior), ref, atol=1e-5)


def _full_prior(K: int, Ld: int):
    mp, lp = torch.randn(K, Ld), 0.5 * torch.randn(K, Ld)
    tril = 0.7 * torch.randn(K, Ld, Ld)  # only its strictly lower triangle is used
    scale = torch.diag_embed(torch.exp(0.5 * lp)) + torch.tril(tril, -1)
    return mp, lp, tril, D.MultivariateNormal(mp, scale_tril=scale)


def test_kl_to_a_full_covariance_prior_matches():
    """KL(diagonal q || full-covariance p) against torch's MultivariateNormal, for the two layouts the
    estimators use: every row against every component ([B, K]) and one prior per row ([B])."""
    B, K, Ld = 20, 3, 4
    mp, lp, tril, prior = _full_prior(K, Ld)
    mq, lq = torch.randn(B, K, Ld), 0.5 * torch.randn(B, K, Ld)
    q = D.MultivariateNormal(mq, scale_tril=torch.diag_embed(torch.exp(0.5 * lq)))
    ref = D.kl_divergence(q, D.MultivariateNormal(mp.unsqueeze(0), scale_tril=prior.scale_tril.unsqueeze(0)))
    assert torch.allclose(L.kl_gaussian_full(mq, lq, mp.unsqueeze(0), lp.unsqueeze(0), tril.unsqueeze(0)), ref, atol=1e-4)
    per_row = L.kl_gaussian_full(mq[:, 1], lq[:, 1], mp[1].expand(B, Ld), lp[1].expand(B, Ld), tril[1].expand(B, Ld, Ld))
    assert torch.allclose(per_row, ref[:, 1], atol=1e-4)
    # with no off-diagonal entries it is the diagonal KL
    flat = L.kl_gaussian_full(mq, lq, mp.unsqueeze(0), lp.unsqueeze(0), torch.zeros(1, K, Ld, Ld))
    assert torch.allclose(flat, L.kl_gaussians(mq, lq, mp.unsqueeze(0), lp.unsqueeze(0)), atol=1e-4)


def test_full_covariance_log_density_matches():
    mp, lp, tril, prior = _full_prior(3, 5)
    z = torch.randn(30, 1, 5)
    assert torch.allclose(L.gaussian_full_log_prob(z, mp, lp, tril), prior.log_prob(z), atol=1e-4)
