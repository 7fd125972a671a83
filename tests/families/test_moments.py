"""``moments_from_params`` against Monte Carlo and closed forms; ``init_moments``."""

import pytest
import torch

import pyro.distributions as dist
from tests.helpers.family_cases import float64
from pyro_qem.families import (
    Bernoulli,
    Beta,
    Binomial,
    Categorical,
    Dirichlet,
    Exponential,
    Gamma,
    HalfNormal,
    InverseGamma,
    LogNormal,
    Multinomial,
    MultivariateNormal,
    Normal,
    Poisson,
)


MODERATE = [
    (Normal(), torch.Size(), {"loc": float64(-1.0, 3.0), "scale": float64(0.5, 2.0)}),
    (
        MultivariateNormal(),
        torch.Size([2]),
        {
            "loc": float64(1.0, -2.0),
            "scale_tril": torch.tensor([[1.0, 0.0], [0.6, 0.5]], dtype=torch.float64),
        },
    ),
    (LogNormal(), torch.Size(), {"loc": float64(0.0, 2.0), "scale": float64(0.3, 1.0)}),
    (Gamma(), torch.Size(), {"concentration": float64(0.5, 3.0, 50.0), "rate": float64(2.0, 0.5, 10.0)}),
    (InverseGamma(), torch.Size(), {"concentration": float64(0.5, 3.0), "rate": float64(2.0, 0.5)}),
    (Exponential(), torch.Size(), {"rate": float64(0.1, 3.0)}),
    (HalfNormal(), torch.Size(), {"scale": float64(0.1, 3.0)}),
    (Beta(), torch.Size(), {"concentration1": float64(0.7, 5.0), "concentration0": float64(2.0, 0.9)}),
    (Dirichlet(), torch.Size([3]), {"concentration": float64(0.8, 2.0, 6.0)}),
    (Bernoulli(), torch.Size(), {"logits": float64(-2.0, 0.5)}),
    (Categorical(3), torch.Size(), {"logits": float64(0.0, 1.0, -1.0)}),
    (Binomial(8), torch.Size(), {"logits": float64(-1.0, 0.7)}),
    (Multinomial(6), torch.Size([3]), {"logits": float64(0.0, 1.0, -1.0)}),
    (Poisson(), torch.Size(), {"rate": float64(0.3, 12.0)}),
]


@pytest.mark.parametrize("family, event_shape, params", MODERATE, ids=lambda x: repr(x)[:20])
def test_moments_match_monte_carlo(family, event_shape, params):
    draws = family.distribution(params, event_shape).sample((100_000,))
    exact = family.moments_from_params(params, event_shape)
    for stat, expected in zip(family.statistics(draws, event_shape), exact):
        stat = stat.double()
        stderr = stat.std(0) / stat.shape[0] ** 0.5
        assert torch.all((stat.mean(0) - expected).abs() <= 6 * stderr + 1e-12)


def test_gamma_mean_log_is_digamma_minus_log_rate():
    a, b = float64(1e-3, 0.5, 1e4), float64(1e3, 2.0, 1e-3)
    mean, mean_log = Gamma().moments_from_params({"concentration": a, "rate": b}, torch.Size())
    torch.testing.assert_close(mean, a / b)
    torch.testing.assert_close(mean_log, torch.digamma(a) - torch.log(b))


def test_dirichlet_mean_log_closed_form():
    a = float64(0.5, 2.0, 7.0)
    (mean_log,) = Dirichlet().moments_from_params({"concentration": a}, torch.Size([3]))
    torch.testing.assert_close(mean_log, torch.digamma(a) - torch.digamma(a.sum()))


HEAVY_TAILED = [
    (Gamma(), dist.HalfCauchy(1.0)),
    (LogNormal(), dist.HalfCauchy(1.0)),
    (InverseGamma(), dist.HalfCauchy(1.0)),
    (Exponential(), dist.HalfCauchy(1.0)),
    (HalfNormal(), dist.HalfCauchy(1.0)),
    (Normal(), dist.Cauchy(0.0, 1.0)),
    (Gamma(), dist.Gamma(0.01, 1.0)),
    (Beta(), dist.Beta(0.01, 0.01)),
    (Poisson(), dist.Geometric(0.01)),
]


@pytest.mark.parametrize("family, prior", HEAVY_TAILED, ids=lambda x: repr(x)[:30])
def test_init_from_heavy_tailed_prior_is_finite(family, prior):
    draws = prior.sample((1000, 3))
    moments = family.init_moments(draws, torch.Size())
    params = family.params_from_moments(moments, torch.Size())
    for value in params.values():
        assert value.shape[0] == 3 and torch.isfinite(value).all()
    q = family.distribution(params, torch.Size())
    assert torch.isfinite(q.log_prob(q.sample())).all()


def test_init_halfcauchy_gives_a_sensible_scale():
    params = Gamma().params_from_moments(
        Gamma().init_moments(dist.HalfCauchy(2.0).sample((4000,)), torch.Size()), torch.Size()
    )
    # The clipped prior mean of HalfCauchy(2) is a few units; the true mean is infinite.
    mean = params["concentration"] / params["rate"]
    assert 1.0 < mean < 20.0


@pytest.mark.parametrize(
    "family, prior, event_shape",
    [
        (Categorical(4), dist.Categorical(torch.tensor([0.7, 0.3, 0.0, 0.0])), torch.Size()),
        (Bernoulli(), dist.Bernoulli(0.0), torch.Size()),
        (Binomial(5), dist.Binomial(5, 1.0), torch.Size()),
        (Multinomial(3), dist.Multinomial(3, torch.tensor([1.0, 0.0, 0.0])), torch.Size([3])),
        (Dirichlet(), dist.Dirichlet(torch.full((3,), 0.01)), torch.Size([3])),
        (MultivariateNormal(), dist.Normal(torch.zeros(3), 1.0).to_event(1), torch.Size([3])),
    ],
    ids=lambda x: repr(x)[:30],
)
def test_init_keeps_every_outcome_proposable(family, prior, event_shape):
    moments = family.init_moments(prior.sample((500,)), event_shape)
    params = family.params_from_moments(moments, event_shape)
    q = family.distribution(params, event_shape)
    for value in params.values():
        assert torch.isfinite(value).all()
    if isinstance(q, (dist.Bernoulli, dist.Binomial)):
        assert (q.probs > 1e-4).all() and (q.probs < 1 - 1e-4).all()
    elif isinstance(q, (dist.Categorical, dist.Multinomial)):
        assert (q.probs > 1e-4).all()
