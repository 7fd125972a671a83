"""Held-out predictive log-likelihood against the exact posterior predictive, pointwise
log-likelihoods and replicated data."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from tests.helpers.fitted_models import J, I, fit_model, hierarchy, hierarchy_data, restore
from pyro_qem.outputs import (
    log_likelihood,
    posterior_predictive,
    predictive_log_likelihood,
    sample_guide,
    sample_posterior,
)

PRIOR_SD, NOISE_SD = 2.0, 1.0


def normal_mean(y):
    mu = pyro.sample("mu", dist.Normal(0.0, PRIOR_SD))
    with pyro.plate("obs_plate", y.shape[0]):
        pyro.sample("obs", dist.Normal(mu, NOISE_SD), obs=y)


def exact_predictive(train, test):
    """log p(test | train): given train, mu ~ N(m, v), so test ~ N(m 1, I + v 1 1^T)."""
    precision = 1 / PRIOR_SD ** 2 + len(train) / NOISE_SD ** 2
    v = 1 / precision
    m = v * train.double().sum() / NOISE_SD ** 2
    cov = NOISE_SD ** 2 * torch.eye(len(test), dtype=torch.float64) + v
    loc = m * torch.ones(len(test), dtype=torch.float64)
    return dist.MultivariateNormal(loc, cov).log_prob(test.double())


def test_predictive_log_likelihood_matches_exact_posterior_predictive():
    generator = torch.Generator().manual_seed(0)
    data = 1.5 + NOISE_SD * torch.randn(30, generator=generator)
    train, test = data[:20], data[20:]
    fitted = fit_model(normal_mean, train, steps=150)
    inference = restore(fitted)
    exact = exact_predictive(train, test).item()
    # The test observations are new elements of obs_plate with no latent of their own:
    # p(test | mu_n) is exact per draw. Its spread over draws is ~0.5 relative, so the
    # Monte Carlo error of log mean over 1000 draws is ~0.02 nat.
    draws = sample_posterior(inference, train, num_samples=1000, draws_per_run=20)
    joint = predictive_log_likelihood(normal_mean, draws, test)
    guide = predictive_log_likelihood(normal_mean, sample_guide(fitted.guide, 1000), test)
    assert abs(joint - exact) < 0.1, (joint, exact)
    assert abs(guide - exact) < 0.1, (guide, exact)
    # Pointwise: each test point's own predictive N(m, noise^2 + v), summed.
    precision = 1 / PRIOR_SD ** 2 + len(train) / NOISE_SD ** 2
    m = train.double().sum() / NOISE_SD ** 2 / precision
    exact_pointwise = dist.Normal(m, (NOISE_SD ** 2 + 1 / precision) ** 0.5).log_prob(test.double()).sum()
    pointwise = predictive_log_likelihood(normal_mean, draws, test, pointwise=True)
    assert abs(pointwise - exact_pointwise.item()) < 0.1, (pointwise, exact_pointwise)


def test_new_plate_elements_are_drawn_from_the_model():
    fitted = fit_model(hierarchy, hierarchy_data(), steps=50)
    restore(fitted)
    draws = sample_guide(fitted.guide, 200)
    held_out = hierarchy_data(seed=1)
    with pytest.raises(ValueError, match="name them in new_plates"):
        predictive_log_likelihood(hierarchy, {**draws, "theta": draws["theta"][:, :2]}, held_out)
    value = predictive_log_likelihood(hierarchy, draws, held_out, new_plates=["groups"])
    assert torch.isfinite(torch.tensor(value))
    # A misspelt or bare-string plate name would reuse the training groups' draws for
    # the new groups (they have as many): refused.
    with pytest.raises(ValueError, match=r"new_plates names \['group'\].*its plates: \[.*'groups'"):
        predictive_log_likelihood(hierarchy, draws, held_out, new_plates=["group"])
    with pytest.raises(TypeError, match=r"write new_plates=\['groups'\]"):
        predictive_log_likelihood(hierarchy, draws, held_out, new_plates="groups")


def test_draws_without_a_latent_site_are_refused_by_name():
    """A missing latent would be drawn from its prior and scored as the posterior."""
    fitted = fit_model(hierarchy, hierarchy_data(), steps=50)
    restore(fitted)
    draws = sample_guide(fitted.guide, 20)
    partial = {name: value for name, value in draws.items() if name != "mu"}
    with pytest.raises(ValueError, match=r"no values for the latent site\(s\) \['mu'\]"):
        log_likelihood(hierarchy, partial, hierarchy_data())
    with pytest.raises(ValueError, match=r"no values for the latent site\(s\) \['mu'\]"):
        posterior_predictive(hierarchy, partial, hierarchy_data())


def test_pointwise_log_likelihood_and_replicated_data_shapes():
    fitted = fit_model(hierarchy, hierarchy_data(), steps=50)
    restore(fitted)
    y = hierarchy_data()
    draws = sample_guide(fitted.guide, 100)
    log_lik = log_likelihood(hierarchy, draws, y)
    assert set(log_lik) == {"y"} and log_lik["y"].shape == (100, J, I)
    expected = dist.Normal(draws["theta"], 1.0).log_prob(y)
    assert torch.allclose(log_lik["y"], expected, atol=1e-5)
    replicated = posterior_predictive(hierarchy, draws, y)
    assert replicated["y"].shape == (100, J, I)
    assert not torch.equal(replicated["y"][0], y)
    with pytest.raises(ValueError, match="same leading draw dim"):
        log_likelihood(hierarchy, {"mu": draws["mu"], "theta": draws["theta"][:5]}, y)
    with pytest.raises(ValueError, match="no latent sample site 'y'"):
        log_likelihood(hierarchy, {"y": draws["theta"]}, y)


def test_pointwise_log_likelihood_is_minus_inf_where_a_draw_puts_the_data_outside_its_support():
    """k ~ Binomial(N, 0.3) at given draws of N: a draw with N < k cannot have produced
    k (log-likelihood -inf, not Pyro's validation error); the others are exact."""
    def model(k):
        n = pyro.sample("N", dist.Poisson(10.0))
        pyro.sample("k", dist.Binomial(n, 0.3), obs=k)

    k = torch.tensor(4.0)
    draws = {"N": torch.tensor([3.0, 5.0, 8.0])}
    log_lik = log_likelihood(model, draws, k)["k"]
    assert log_lik[0] == -math.inf
    exact = dist.Binomial(torch.tensor([5.0, 8.0]), 0.3).log_prob(k)
    assert torch.allclose(log_lik[1:], exact)


def test_log_predictive_density_takes_any_element_layout():
    """(draws,) for a site outside every plate: the log-mean-exp over draws (it was
    summed over the draws); several element dims are flattened; no draws, refused."""
    from pyro_qem.outputs import log_predictive_density

    one = torch.tensor([-1.0, -2.0, -0.5])
    expected = (torch.logsumexp(one, 0) - math.log(3)).item()
    assert log_predictive_density(one) == pytest.approx(expected)
    assert log_predictive_density(one.numpy()) == pytest.approx(expected)
    nested = torch.randn(4, 2, 3)
    assert log_predictive_density(nested, pointwise=True) == pytest.approx(
        log_predictive_density(nested.reshape(4, 6), pointwise=True))
    with pytest.raises(ValueError, match="at least one draw"):
        log_predictive_density(torch.zeros(0, 3))


def test_draws_may_be_numpy_arrays():
    fitted = fit_model(hierarchy, hierarchy_data(), steps=20)
    restore(fitted)
    draws = sample_guide(fitted.guide, 10)
    as_arrays = {name: value.numpy() for name, value in draws.items()}
    y = hierarchy_data()
    assert torch.equal(log_likelihood(hierarchy, as_arrays, y)["y"], log_likelihood(hierarchy, draws, y)["y"])


def test_a_subsampled_call_is_refused():
    def minibatched(y):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("data", len(y), subsample_size=3) as idx:
            pyro.sample("obs", dist.Normal(mu, 1.0), obs=y[idx])

    with pytest.raises(ValueError, match=r"pyro.plate\('data'\) is subsampled \(3 of 10"):
        log_likelihood(minibatched, {"mu": torch.zeros(5)}, torch.randn(10))


def test_leaving_the_data_out_predicts_the_site_as_pyro_predictive_does():
    """posterior_predictive(model, draws, x) with y=None: the site without data that
    nothing reads is the prediction (it used to be refused as a latent without draws),
    drawn around each draw's mean."""
    def regression(x, y=None):
        b = pyro.sample("b", dist.Normal(0.0, 1.0))
        with pyro.plate("n", len(x)):
            pyro.sample("y", dist.Normal(b * x, 0.1), obs=y)

    x = torch.tensor([1.0, 2.0, 3.0])
    draws = {"b": torch.linspace(-1.0, 1.0, 200)}
    predicted = posterior_predictive(regression, draws, x)["y"]
    assert predicted.shape == (200, 3)
    # Each row lies within 6 noise sds of its draw's mean.
    assert ((predicted - draws["b"][:, None] * x).abs() < 0.6).all()
    def shifted(x, y=None):
        b = pyro.sample("b", dist.Normal(0.0, 1.0))
        c = pyro.sample("c", dist.Normal(b, 1.0))   # read by y: a latent, not a prediction
        with pyro.plate("n", len(x)):
            pyro.sample("y", dist.Normal(c * x, 0.1), obs=y)

    with pytest.raises(ValueError, match=r"no values for the latent site\(s\) \['c'\]"):
        posterior_predictive(shifted, draws, x)
