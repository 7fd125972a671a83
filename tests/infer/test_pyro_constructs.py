"""pyro.factor, poutine.mask, obs_mask and pyro.deterministic inside models."""

import math

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch

from pyro_qem import AutoQEM, Inference


def observed(y):
    mu = pyro.sample("mu", dist.Normal(0.0, 2.0))
    with pyro.plate("items", len(y)):
        theta = pyro.sample("theta", dist.Normal(mu, 1.0))
        pyro.sample("obs", dist.Normal(theta, 0.5), obs=y)


def factored(y):
    mu = pyro.sample("mu", dist.Normal(0.0, 2.0))
    with pyro.plate("items", len(y)):
        theta = pyro.sample("theta", dist.Normal(mu, 1.0))
        pyro.factor("lik", dist.Normal(theta, 0.5).log_prob(y))


Y = torch.tensor([0.7, -1.3, 0.4])


def losses(model, y, steps=5, seed=0):
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    inference = Inference(model, AutoQEM(model), K=10)
    return [inference.step(y) for _ in range(steps)]


def test_factor_equals_observed_site():
    assert losses(factored, Y) == pytest.approx(losses(observed, Y), rel=1e-6)


def test_masked_observations_contribute_nothing():
    """Masking element 2 gives the same log P_hat as a likelihood that leaves it out,
    for the same particles (the latent theta_2 stays, weighted by its prior)."""
    mask = torch.tensor([True, True, False])

    def masked(y):
        mu = pyro.sample("mu", dist.Normal(0.0, 2.0))
        with pyro.plate("items", len(y)):
            theta = pyro.sample("theta", dist.Normal(mu, 1.0))
            with poutine.mask(mask=mask):
                pyro.sample("obs", dist.Normal(theta, 0.5), obs=y)

    def partial(y):
        mu = pyro.sample("mu", dist.Normal(0.0, 2.0))
        with pyro.plate("items", len(y)):
            theta = pyro.sample("theta", dist.Normal(mu, 1.0))
            pyro.factor("lik", torch.where(mask, dist.Normal(theta, 0.5).log_prob(y), 0.0))

    assert losses(masked, Y) == pytest.approx(losses(partial, Y), rel=1e-6)


def test_obs_mask_imputes_missing_values():
    """mu ~ N(0, 1), y_i ~ N(mu, 1); y_4 missing: mu | y ~ N(sum / 4, 1/4) and the
    missing y_4 | y ~ N(sum / 4, 1 + 1/4)."""
    y = torch.tensor([0.5, 1.5, 1.0, float("nan")])
    mask = ~torch.isnan(y)

    def model(y):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("items", 4):
            pyro.sample("obs", dist.Normal(mu, 1.0), obs=torch.nan_to_num(y), obs_mask=mask)

    guide = AutoQEM(model)
    inference = Inference(model, guide, K=30, lr=0.1, average_from=200)
    for _ in range(400):
        inference.step(y)
    q = guide.distributions()
    mean = torch.nan_to_num(y).sum() / 4
    assert abs(q["mu"].mean - mean) < 0.05 * 0.5
    assert abs(q["mu"].stddev / 0.5 - 1) < 0.05
    missing = q["obs_unobserved"]
    assert abs(missing.mean[3] - mean) < 0.05 * math.sqrt(1.25)
    assert abs(missing.stddev[3] / math.sqrt(1.25) - 1) < 0.05


def test_deterministic_values_are_recorded_with_particle_dims():
    def model(y):
        mu = pyro.sample("mu", dist.Normal(0.0, 2.0))
        with pyro.plate("items", len(y)):
            theta = pyro.sample("theta", dist.Normal(mu, 1.0))
            pyro.deterministic("shifted", theta + 1.0)
            pyro.sample("obs", dist.Normal(theta, 0.5), obs=y)

    inference = Inference(model, AutoQEM(model), K=7)
    run = inference.run_particles(Y)
    sites = {r.name: r for r in run.sites}
    assert sites["shifted"].is_deterministic
    assert torch.equal(sites["shifted"].value, sites["theta"].value + 1.0)
    assert sites["shifted"].value.shape[0] == 7
    assert math.isfinite(inference.step(Y))
