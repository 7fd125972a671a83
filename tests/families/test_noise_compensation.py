"""Noise compensation: with particle weights that carry no information about a site,
smoothing the mean parameters must keep q's spread in expectation (it shrinks by
``1 - lr^2 sum w^2`` per step without the compensation)."""

import pytest
import torch

from pyro_qem.families import Gamma, InverseGamma, LogNormal, MultivariateNormal, Normal

CHAINS, K, STEPS, LR = 4000, 10, 20, 0.3


def _spread(family, moments, event_shape):
    """The quantity each family's compensation keeps in expectation, per chain."""
    first, second = moments
    if isinstance(family, MultivariateNormal):
        cov = second - first.unsqueeze(-1) * first.unsqueeze(-2)
        return cov.diagonal(dim1=-2, dim2=-1).sum(-1)
    if isinstance(family, Gamma):
        return first.log() - second  # log E z - E log z, which sets the shape
    if isinstance(family, InverseGamma):
        return first.log() + second
    return second - first.square()  # Normal: Var z; LogNormal: Var log z


def _smooth(family, params, event_shape, compensate: bool, seed: int):
    """Run the smoothing recursion on CHAINS independent chains with Dirichlet weights
    drawn independently of the particles; return the spread before and after."""
    torch.manual_seed(seed)
    moments = family.moments_from_params(params, event_shape)
    start = _spread(family, moments, event_shape)
    concentration = torch.full((K,), 0.3, dtype=torch.float64)
    for _ in range(STEPS):
        q = family.distribution(family.params_from_moments(moments, event_shape), event_shape)
        particles = q.sample((K,))
        weight = torch.distributions.Dirichlet(concentration).sample((CHAINS,)).T
        weight = weight.reshape((K, CHAINS) + (1,) * (particles.dim() - 2))
        stats = family.statistics(particles, event_shape)
        estimates = []
        for stat in stats:
            w = weight.reshape(weight.shape[:2] + (1,) * (stat.dim() - 2))
            estimates.append((w * stat).sum(0))
        if compensate:
            squares = (weight.reshape(K, CHAINS) ** 2).sum(0)
            for i, term in enumerate(family.noise_compensation(moments, event_shape)):
                estimates[i] = estimates[i] + LR * squares.reshape((CHAINS,) + (1,) * (term.dim() - 1)) * term
        moments = tuple(m + LR * (e - m) for m, e in zip(moments, estimates))
    return start, _spread(family, moments, event_shape)


def _params(family):
    ones = torch.ones(CHAINS, dtype=torch.float64)
    if isinstance(family, (Normal, LogNormal)):
        return {"loc": 0.5 * ones, "scale": 2.0 * ones}, torch.Size()
    if isinstance(family, MultivariateNormal):
        cov = torch.tensor([[2.0, 0.6, 0.0], [0.6, 1.0, -0.3], [0.0, -0.3, 0.5]], dtype=torch.float64)
        tril = torch.linalg.cholesky(cov).expand(CHAINS, 3, 3)
        return {"loc": torch.zeros(CHAINS, 3, dtype=torch.float64), "scale_tril": tril}, torch.Size([3])
    return {"concentration": 20.0 * ones, "rate": 5.0 * ones}, torch.Size()


@pytest.mark.parametrize("family", [Normal(), LogNormal(), MultivariateNormal(), Gamma(), InverseGamma()],
                         ids=lambda f: f.name)
def test_compensation_keeps_spread_under_uninformative_weights(family):
    params, event_shape = _params(family)
    start, compensated = _smooth(family, params, event_shape, compensate=True, seed=0)
    _, plain = _smooth(family, params, event_shape, compensate=False, seed=0)
    ratio = compensated / start
    standard_error = ratio.std() / CHAINS ** 0.5
    # Exact for the Normal families; Gamma's is a second-order (delta method) correction,
    # so allow 3% of bias on top of 4 standard errors.
    slack = 0.03 if isinstance(family, (Gamma, InverseGamma)) else 0.0
    assert abs(ratio.mean() - 1) < 4 * standard_error + slack, (ratio.mean(), standard_error)
    # Without it the spread shrinks: about (1 - lr^2 E[sum w^2])^steps, 0.4 here.
    assert (plain / start).mean() < 0.75


def test_families_without_a_spread_leave_estimates_alone():
    from pyro_qem.families import Bernoulli, Poisson

    for family in (Bernoulli(), Poisson()):
        moments = (torch.full((3,), 0.4, dtype=torch.float64),)
        assert family.noise_compensation(moments, torch.Size()) is None
