"""Subsampled plates: the N / B scale applied after each element's logsumexp."""

import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer.autoguide import init_to_value

from pyro_qem import AutoQEM, Inference
from pyro_qem.infer import SubsampleWarning

N, B = 200, 50


def model(y, subsample_size=None):
    mu = pyro.sample("mu", dist.Normal(torch.zeros((), dtype=y.dtype), 10.0))
    with pyro.plate("items", N, subsample_size=subsample_size) as idx:
        theta = pyro.sample("theta", dist.Normal(mu, 1.0))
        pyro.sample("obs", dist.Normal(theta, 1.0), obs=y[idx])


def exact(y):
    """mu | y ~ N(m, v) with y_i | mu ~ N(mu, 2); theta_i | y is Gaussian too."""
    prec = 1 / 100 + N / 2
    v_mu = 1 / prec
    m_mu = v_mu * y.sum() / 2
    # theta_i | mu, y_i ~ N((mu + y_i) / 2, 1/2); marginalise mu.
    m_theta = (m_mu + y) / 2
    v_theta = 0.5 + v_mu / 4
    log_z = dist.MultivariateNormal(torch.zeros(N, dtype=y.dtype),
                                    2 * torch.eye(N, dtype=y.dtype) + 100.0).log_prob(y)
    return m_mu, v_mu ** 0.5, m_theta, v_theta ** 0.5, log_z


def exact_guide(y):
    m_mu, s_mu, m_theta, s_theta, _ = exact(y)
    values = {"mu": m_mu, "theta": m_theta}
    return AutoQEM(model, init_loc_fn=init_to_value(values=values),
                   init_scale={"mu": float(s_mu), "theta": float(s_theta)})


@pytest.fixture
def y():
    torch.manual_seed(0)
    return 2.0 + 1.4 * torch.randn(N, dtype=torch.float64)


def test_minibatch_log_p_hat_is_nearly_unbiased(y):
    """With q at the exact marginals, the mean of log P_hat over 400 minibatches is
    within 3 nats of the full-data mean (one minibatch draw has sd ~16 nats, so the
    mean's standard error is ~0.8). Scaling inside the logsumexp (TraceTMC_ELBO) is
    off by ~27 nats here."""
    guide = exact_guide(y)
    inference = Inference(model, guide, K=30)
    full = torch.tensor([-inference.evaluate_loss(y) for _ in range(50)]).mean()
    mini = torch.tensor([-inference.evaluate_loss(y, B) for _ in range(400)])
    assert 5 < mini.std() < 40
    assert abs(mini.mean() - full) < 3.0, (mini.mean(), full)
    assert abs(full - exact(y)[-1]) < 1.0


def test_only_the_minibatch_elements_move(y):
    guide = exact_guide(y)
    inference = Inference(model, guide, K=10, lr=0.5)
    guide.setup(y, B)
    before = guide.distributions()["theta"].mean.clone()
    with pytest.warns(SubsampleWarning, match="pyro.plate\\('items'\\) is subsampled"):
        inference.step(y, B)
    after = guide.distributions()["theta"].mean
    moved = after != before
    assert guide.distributions()["theta"].batch_shape == (N,)
    assert moved.sum() == B


def test_subsampled_fit_of_a_global_normal_site_matches_the_exact_posterior(y):
    """mu, outside the subsampled plate, is fitted by regression on each minibatch
    (natural parameters, linear in the scaled log likelihood) and averaged over whole
    passes: seeds 0-4 gave means within 0.03 exact sds and sds 0.983-0.985x (the local
    thetas' importance sampling inside each element's logsumexp narrows it slightly);
    the tolerances are about 3x those. No SubsampleWarning: nothing is distorted."""
    m_mu, s_mu, *_ = exact(y)
    guide = AutoQEM(model)
    inference = Inference(model, guide, K=30, lr=0.1, average_from=300)
    with warnings.catch_warnings():
        warnings.simplefilter("error", SubsampleWarning)
        for _ in range(600):
            inference.step(y, B)
    q = guide.distributions()["mu"]
    assert abs(q.mean - m_mu) < 0.1 * s_mu
    assert 0.95 < q.stddev / s_mu < 1.03


def test_without_averaging_a_subsampled_fit_says_to_average():
    torch.manual_seed(1)
    y = torch.randn(N, dtype=torch.float64)
    inference = Inference(model, AutoQEM(model), K=30, lr=0.1)
    with pytest.warns(SubsampleWarning, match="pass average_from"):
        inference.step(y, B)


def test_a_site_the_regression_cannot_fit_is_named_in_the_warning():
    def beta_scale(y, subsample_size=None):
        tau = pyro.sample("tau", dist.Beta(torch.tensor(2.0, dtype=y.dtype), 2.0))
        with pyro.plate("items", N, subsample_size=subsample_size) as idx:
            pyro.sample("obs", dist.Normal(0.0, tau), obs=y[idx])

    torch.manual_seed(1)
    y = torch.randn(N, dtype=torch.float64)
    inference = Inference(beta_scale, AutoQEM(beta_scale), K=30, lr=0.1, average_from=0)
    with pytest.warns(SubsampleWarning, match=r"\['tau'\]: a family without natural parameters"):
        inference.step(y, B)


def test_a_site_with_too_few_particles_for_the_regression_is_told_the_k_it_needs():
    def gamma_rate(y, subsample_size=None):
        lam = pyro.sample("lam", dist.Gamma(torch.tensor(2.0, dtype=y.dtype), 2.0))
        with pyro.plate("items", N, subsample_size=subsample_size) as idx:
            pyro.sample("obs", dist.Normal(0.0, lam.rsqrt()), obs=y[idx])

    torch.manual_seed(1)
    y = torch.randn(N, dtype=torch.float64)
    inference = Inference(gamma_rate, AutoQEM(gamma_rate), K=3, lr=0.1, average_from=0)
    with pytest.warns(SubsampleWarning, match=r"\['lam'\]: too few particles for the least-squares "
                                              r"fit of their group \(K = 3; it needs K >= \d+\)"):
        inference.step(y, B)


def test_rows_grouped_under_a_plate_of_latents_are_warned_about():
    def nested(y, subsample_size=None):
        mu = pyro.sample("mu", dist.Normal(torch.zeros((), dtype=y.dtype), 10.0))
        with pyro.plate("groups", 4, dim=-2):
            a = pyro.sample("a", dist.Normal(mu, 1.0))
            with pyro.plate("rows", 50, subsample_size=subsample_size, dim=-1) as idx:
                pyro.sample("obs", dist.Normal(a, 1.0), obs=y[..., idx])

    torch.manual_seed(2)
    y = torch.randn(4, 50, dtype=torch.float64)
    inference = Inference(nested, AutoQEM(nested), K=30, lr=0.1, average_from=0)
    with pytest.warns(SubsampleWarning, match=r"grouped under latents of plate\(s\) \['groups'\]"):
        inference.step(y, 10)
