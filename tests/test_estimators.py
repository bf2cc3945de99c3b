"""The two estimators over one network: exact = analytic marginalisation; concrete cost flat in K."""
import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from segmentation.model.network import GMVAENetwork
from segmentation.model.preprocessing import TablePreprocessor
from segmentation.model.likelihoods import kl_categorical, kl_gaussians


def _tiny(K=3, n=16, seed=0, prior_covariance="diagonal"):
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({
        "amount": np.exp(rng.normal(2, 1, n)),
        "visits": rng.poisson(3, n),
        "score": rng.normal(0, 1, n),
        "flag": rng.integers(0, 2, n),
        "tier": rng.choice(["a", "b", "c"], n),
    })
    df.loc[2, "amount"] = np.nan
    df.loc[5, "tier"] = None
    types = {"amount": "money", "visits": "count", "score": "continuous", "flag": "binary", "tier": "categorical"}
    pre = TablePreprocessor(types, min_level_count=1).fit(df)
    torch.manual_seed(seed)
    net = GMVAENetwork(pre.layout, K, latent_dim=2, hidden=(8, 6), prior_covariance=prior_covariance)
    if prior_covariance == "full":
        with torch.no_grad():  # tilted components: a prior that is not diagonal
            net.prior_tril.copy_(0.8 * torch.randn_like(net.prior_tril))
    return net, pre.transform(df)


def _prior_kl(net, zm, zlv, k):
    """KL(q(z|x,k) || p(z|k)) through torch.distributions, whatever the prior's covariance."""
    D = torch.distributions
    pm, plv = net.prior_params(None)
    scale = torch.diag_embed(torch.exp(0.5 * plv[k]))
    if net.prior_covariance == "full":
        scale = scale + torch.tril(net.prior_tril[k], -1)
    q = D.MultivariateNormal(zm, scale_tril=torch.diag_embed(torch.exp(0.5 * zlv)))
    return D.kl_divergence(q, D.MultivariateNormal(pm[k], scale_tril=scale))


@pytest.mark.parametrize("prior_covariance", ["diagonal", "full"])
@torch.no_grad()
def test_exact_equals_explicit_marginalisation_over_y(prior_covariance):
    """sum_k q(k|x) [log p(x|z_k) - KL(q(z|x,k)||p(z|k))] - KL(q(y|x)||p(y)), evaluated one y at a time."""
    K = 4
    net, batch = _tiny(K, prior_covariance=prior_covariance)
    terms = net.loss_exact(batch, kl_weight=1.0, sample=False)
    h, logits = net.encode(batch["x"])
    qy = torch.softmax(logits, -1)
    total = torch.zeros(batch["x"].shape[0])
    for k in range(K):
        onehot = torch.nn.functional.one_hot(torch.full((batch["x"].shape[0],), k), K).float()
        zm, zlv = net.z_params(h, onehot)
        branch = net.decode_log_lik(zm, batch) - _prior_kl(net, zm, zlv, k)
        total += qy[:, k] * branch
    total -= kl_categorical(logits, torch.full((K,), -np.log(K)))
    assert torch.allclose(-terms.neg_elbo, total, atol=1e-4)


@pytest.mark.parametrize("prior_covariance", ["diagonal", "full"])
@torch.no_grad()
def test_concrete_at_one_hot_limit_matches_exact_branch(prior_covariance):
    """At a near-zero temperature the relaxed y is one-hot on argmax q(y|x): the concrete terms equal
    the exact estimator's branch for that component."""
    K = 3
    net, batch = _tiny(K, prior_covariance=prior_covariance)
    conc = net.loss_concrete(batch, tau=1e-4, kl_weight=1.0, sample=False)
    h, logits = net.encode(batch["x"])
    onehot = torch.nn.functional.one_hot(logits.argmax(-1), K).float()
    zm, zlv = net.z_params(h, onehot)
    assert torch.allclose(conc.rec, net.decode_log_lik(zm, batch), atol=1e-4)
    pick = logits.argmax(-1)
    expected = torch.stack([_prior_kl(net, zm[i], zlv[i], int(pick[i])) for i in range(len(pick))])
    assert torch.allclose(conc.kl_z, expected, atol=1e-4)


def test_missing_entries_do_not_change_the_likelihood():
    """A masked entry contributes nothing: changing its placeholder value leaves log p(x|z) unchanged."""
    net, batch = _tiny(3)
    z = torch.randn(batch["x"].shape[0], 2)
    before = net.decode_log_lik(z, batch)
    b2 = dict(batch)
    g = batch["gaussian"].clone()
    g[2, 0] = 123.0  # row 2's amount is missing
    b2["gaussian"] = g
    assert batch["gaussian_mask"][2, 0] == 0
    assert torch.allclose(before, net.decode_log_lik(z, b2))


def _step_flops(estimator: str, K: int, n_inputs: int = 64, hidden=(128, 64), latent: int = 8, n: int = 64,
                prior_covariance: str = "diagonal") -> int:
    rng = np.random.default_rng(0)
    df = pd.DataFrame({f"p{i}": rng.integers(0, 2, n) for i in range(n_inputs)})
    pre = TablePreprocessor({c: "binary" for c in df.columns}, min_level_count=1).fit(df)
    net = GMVAENetwork(pre.layout, K, latent_dim=latent, hidden=hidden, prior_covariance=prior_covariance)
    batch = pre.transform(df)
    with FlopCounterMode(display=False) as counter:
        if estimator == "concrete":
            loss = net.loss_concrete(batch, tau=0.7, kl_weight=1.0).loss
        else:
            loss = net.loss_exact(batch, kl_weight=1.0).loss
        loss.backward()
    return counter.get_total_flops()


def test_concrete_step_flops_grow_only_through_the_small_y_layers():
    """Counted, not timed: everything in a concrete step but the y layers is independent of K."""
    B, H, L = 64, 64, 8
    conc = {K: _step_flops("concrete", K) for K in (2, 20, 200)}
    # K-dependent layers: y-logits (H x K), y-input of the z-encoder (K x H), prior means and
    # log-variances (K x L each); forward 2*B*in*out flops each, backward twice that.
    per_k = 3 * 2 * B * (H + H + 2 * L)
    assert conc[20] - conc[2] == pytest.approx(per_k * 18, rel=0.01)
    assert conc[200] - conc[2] == pytest.approx(per_k * 198, rel=0.01)
    # a full-covariance prior adds one more: the mixed Cholesky factor y @ (K x L*L); the triangular
    # solves of its KL are [B, L, L] whatever K is
    full = {K: _step_flops("concrete", K, prior_covariance="full") for K in (2, 200)}
    assert full[200] - full[2] == pytest.approx(3 * 2 * B * (H + H + 2 * L + L * L) * 198, rel=0.01)


def test_concrete_flat_in_k_at_realistic_width_while_exact_is_linear():
    shape = dict(n_inputs=784, hidden=(512, 256), latent=10)  # 784 encoder inputs, like MNIST
    conc2, conc200 = _step_flops("concrete", 2, **shape), _step_flops("concrete", 200, **shape)
    ex2, ex20 = _step_flops("exact", 2, **shape), _step_flops("exact", 20, **shape)
    assert conc200 / conc2 < 1.2, (conc2, conc200)
    full2 = _step_flops("concrete", 2, prior_covariance="full", **shape)
    assert _step_flops("concrete", 200, prior_covariance="full", **shape) / full2 < 1.2
    assert ex20 / ex2 > 5, (ex2, ex20)
    assert ex20 / _step_flops("concrete", 20, **shape) > 5


def test_relaxed_one_hot_is_a_concrete_sample():
    """Our Gumbel noise (-log(-log u)) gives the Concrete distribution: at a low temperature the argmax
    frequencies are the softmax probabilities (the Gumbel-max trick), and at tau=1 the sample means
    agree with torch's own gumbel_softmax."""
    from segmentation.model.network import relaxed_one_hot

    torch.manual_seed(0)
    logits = torch.tensor([[1.5, 0.0, -1.0, 0.5]]).expand(40000, 4).contiguous()
    probs = torch.softmax(logits[0], -1)
    cold = relaxed_one_hot(logits, tau=0.05)
    freq = torch.bincount(cold.argmax(-1), minlength=4).float() / cold.shape[0]
    assert torch.allclose(freq, probs, atol=0.01), (freq, probs)
    assert torch.allclose(cold.sum(-1), torch.ones(cold.shape[0]), atol=1e-5)
    ours = relaxed_one_hot(logits, tau=1.0).mean(0)
    torchs = torch.nn.functional.gumbel_softmax(logits, tau=1.0).mean(0)
    assert torch.allclose(ours, torchs, atol=0.01), (ours, torchs)
    assert torch.isfinite(relaxed_one_hot(torch.tensor([[80.0, -80.0]]), tau=0.01)).all()


def test_missing_indicators_only_for_features_missing_at_fit(caplog):
    rng = np.random.default_rng(0)
    n = 50
    df = pd.DataFrame({"spend": rng.normal(5, 1, n), "visits": rng.poisson(2, n).astype(float),
                       "tier": rng.choice(["a", "b"], n)})
    df.loc[3, "spend"] = np.nan
    types = {"spend": "continuous", "visits": "count", "tier": "categorical"}
    pre = TablePreprocessor(types, min_level_count=1).fit(df)
    assert pre.indicator_features == ["spend"]
    batch = pre.transform(df)
    # spend, visits, tier one-hot (a, b, __other__, __unknown__), one indicator
    assert pre.layout.input_dim == batch["x"].shape[1] == 1 + 1 + 4 + 1
    assert batch["x"][3, -1] == 1 and batch["x"][:, -1].sum() == 1
    # a feature complete at fit but missing at scoring: masked out of the likelihood, and said
    later = df.copy()
    later.loc[[0, 1], "visits"] = np.nan
    with caplog.at_level("WARNING"):
        b2 = pre.transform(later)
        pre.transform(later)  # scoring batch after batch: said once per column, not once per batch
    assert "'visits' had no missing values in the training table but 2 of 50 rows are missing" in caplog.text
    assert caplog.text.count("had no missing values in the training table") == 1
    assert b2["count_mask"][:2, 0].sum() == 0 and torch.isfinite(b2["x"]).all()
    # an artifact written before the rule (no flag) keeps an indicator for every feature
    old = pre.to_dict()
    for params in old["params"].values():
        params.pop("missing_indicator")
    legacy = TablePreprocessor.from_dict(old)
    assert legacy.indicator_features == list(types)
    assert legacy.transform(df)["x"].shape[1] == legacy.layout.input_dim == 1 + 1 + 4 + 3


def test_relaxed_one_hot_under_bf16_is_unbiased():
    """Under bf16 autocast the logits are bf16; the Gumbel noise must still come from float32
    uniforms (a bf16 uniform has ~2,000 values and biased the samples)."""
    from segmentation.model.network import relaxed_one_hot

    torch.manual_seed(1)
    logits = torch.tensor([[2.0, 0.0, -0.5]]).expand(60000, 3).contiguous()
    probs = torch.softmax(logits[0], -1)
    y = relaxed_one_hot(logits.to(torch.bfloat16), tau=0.05)
    assert y.dtype == torch.bfloat16 and torch.isfinite(y.float()).all()
    freq = torch.bincount(y.float().argmax(-1), minlength=3).float() / y.shape[0]
    assert torch.allclose(freq, probs, atol=0.006), (freq, probs)
