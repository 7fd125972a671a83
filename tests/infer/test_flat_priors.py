"""Flat (improper) priors: q starts around init_loc_fn's value and fits the exact
posterior of a regression with ImproperUniform coefficients."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.distributions import constraints
from pyro.infer.autoguide import init_to_value

from pyro_qem import AutoQEM, Inference, sample_posterior

N, P = 50, 3


def data():
    generator = torch.Generator().manual_seed(0)
    X = torch.randn(N, P, generator=generator, dtype=torch.float64)
    y = X @ torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64) + torch.randn(N, generator=generator,
                                                                               dtype=torch.float64)
    return X, y


def flat_regression(X, y):
    beta = pyro.sample("beta", dist.ImproperUniform(constraints.real, (), (P,)))
    with pyro.plate("data", N):
        pyro.sample("y", dist.Normal((X * beta.to(X.dtype)).sum(-1), 1.0), obs=y)


def exact(X, y):
    """Flat prior, unit noise: beta | y ~ N((X'X)^-1 X'y, (X'X)^-1)."""
    cov = torch.linalg.inv(X.T @ X)
    return cov @ X.T @ y, cov.diagonal().sqrt()


@pytest.mark.parametrize("init", [None, {"beta": torch.tensor([0.5, 0.5, 0.5], dtype=torch.float64)}])
def test_flat_prior_regression_matches_its_exact_posterior(init):
    """K=30, lr=0.1, 400 steps averaged from 100 (restarts skip the shrinking phase):
    ~300 averaged iterates of ESS ~10 leave ~3% Monte Carlo error in the sds; the
    tolerances are ~3 of those (0.15 sd for means, 10% for sds)."""
    X, y = data()
    mean, sd = exact(X, y)
    init_loc_fn = init_to_value(values=init) if init else None
    guide = AutoQEM(flat_regression, init_loc_fn=init_loc_fn)
    inference = Inference(flat_regression, guide, K=30, lr=0.1, average_from=100)
    for _ in range(400):
        inference.step(X, y)
    q = guide.distributions()["beta"]
    assert ((q.mean - mean).abs() / sd).max() < 0.15
    assert ((q.stddev / sd) - 1).abs().max() < 0.1
    draws = sample_posterior(inference, X, y, num_samples=300)["beta"]
    assert ((draws.mean(0) - mean).abs() / sd).max() < 0.3  # 300 draws: 0.06 sd of error


def test_flat_positive_prior_starts_around_its_feasible_value():
    def model(y):
        scale = pyro.sample("scale", dist.ImproperUniform(constraints.positive, (), ()))
        with pyro.plate("data", len(y)):
            pyro.sample("y", dist.Normal(0.0, scale), obs=y)

    y = 2.0 * torch.randn(200, generator=torch.Generator().manual_seed(1))
    guide = AutoQEM(model)
    inference = Inference(model, guide, K=30, lr=0.1, average_from=100)
    for _ in range(300):
        inference.step(y)
    q = guide.distributions()["scale"]
    # Flat prior on the scale: the posterior mode is the RMS of y; sd ~ rms / sqrt(2N).
    rms = y.pow(2).mean().sqrt()
    assert abs(q.mean.item() - rms.item()) < 4 * rms.item() / (2 * 200) ** 0.5
