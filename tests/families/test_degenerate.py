"""Degenerate mean parameters give finite, valid, non-collapsed distributions."""

import pytest
import torch

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


def _check_valid(family, params, event_shape):
    """Finite parameters, and a float32 q whose samples have finite log-density."""
    for key, value in params.items():
        assert torch.isfinite(value).all(), key
    for dtype in (torch.float64, torch.float32):
        q = family.distribution({k: v.to(dtype) for k, v in params.items()}, event_shape)
        value = q.sample((50,))
        assert torch.isfinite(q.log_prob(value)).all(), dtype
        stats = family.statistics(value, event_shape)
        assert all(torch.isfinite(s).all() for s in stats)


# One particle carrying all the weight: the moments are the statistics of one value.
SINGLE_PARTICLE = [
    (Normal(), torch.Size(), float64(0.0, 1e-8, 3.0, -1e6)),
    (MultivariateNormal(), torch.Size([3]), float64(0.0, 1.0, -2.0)),
    (LogNormal(), torch.Size(), float64(1e-30, 1.0, 1e30)),
    (Gamma(), torch.Size(), float64(1e-30, 1.0, 1e30)),
    # z^-2 (the inversion's Jacobian) must stay a float32 number.
    (InverseGamma(), torch.Size(), float64(1e-12, 1.0, 1e12)),
    (Exponential(), torch.Size(), float64(0.0, 1e-8, 1e8)),
    (HalfNormal(), torch.Size(), float64(0.0, 1e-8, 1e8)),
    (Beta(), torch.Size(), float64(0.0, 1e-12, 0.5, 1 - 1e-12, 1.0)),
    (Dirichlet(), torch.Size([3]), float64(0.0, 1e-12, 1.0 - 1e-12)),
    (Bernoulli(), torch.Size(), float64(0.0, 1.0)),
    (Categorical(3), torch.Size(), torch.tensor([0, 2])),
    (Binomial(4), torch.Size(), float64(0.0, 4.0, 2.0)),
    (Multinomial(5), torch.Size([3]), float64(5.0, 0.0, 0.0)),
    (Poisson(), torch.Size(), float64(0.0, 7.0)),
]


@pytest.mark.parametrize("family, event_shape, value", SINGLE_PARTICLE, ids=lambda x: repr(x)[:20])
def test_single_particle_gives_valid_q(family, event_shape, value):
    moments = family.statistics(value, event_shape)
    params = family.params_from_moments(tuple(m.double() for m in moments), event_shape)
    _check_valid(family, params, event_shape)


# Moments on (or numerically past) the boundary of the mean-parameter space.
BOUNDARY = [
    (Normal(), torch.Size(), (float64(0.0, 2.0), float64(0.0, 3.0))),  # variance 0 and negative
    (LogNormal(), torch.Size(), (float64(0.0, 2.0), float64(0.0, 3.0))),
    (Gamma(), torch.Size(), (float64(0.0, 1.0, 1.0), float64(-800.0, 0.1, -float("inf")))),
    # Far wider than the third column (shape ~0.5), 1 / Gamma(shape) samples overflow
    # the float32 Jacobian z^2 of the inversion.
    (InverseGamma(), torch.Size(), (float64(1e-300, 1.0, 1e-3), float64(690.0, 0.1, 8.0))),
    (Exponential(), torch.Size(), (float64(0.0, -1.0),)),
    (HalfNormal(), torch.Size(), (float64(0.0, -1.0),)),
    (Beta(), torch.Size(), (float64(0.0, -800.0, -1e-9), float64(-800.0, 0.0, -1e-9))),
    (Dirichlet(), torch.Size([3]), (float64(0.0, -1e6, -float("inf")),)),
    (Bernoulli(), torch.Size(), (float64(0.0, 1.0, -1e-3, 1.001),)),
    (Categorical(3), torch.Size(), (float64(1.0, 0.0, 0.0),)),
    (Categorical(3), torch.Size(), (float64(0.0, 0.0, 0.0),)),
    (Binomial(4), torch.Size(), (float64(0.0, 4.0, 5.0),)),
    (Multinomial(5), torch.Size([3]), (float64(5.0, 0.0, 0.0),)),
    (Poisson(), torch.Size(), (float64(0.0, -1.0),)),
]


@pytest.mark.parametrize("family, event_shape, moments", BOUNDARY, ids=lambda x: repr(x)[:20])
def test_boundary_moments_give_valid_q(family, event_shape, moments):
    params = family.params_from_moments(moments, event_shape)
    _check_valid(family, params, event_shape)


def test_mvn_rank_deficient_covariance():
    """Perfectly correlated particles, and a noisy indefinite estimate."""
    family = MultivariateNormal()
    z = torch.randn(30, 1, dtype=torch.float64) * float64(1.0, -2.0, 1e-6)
    w = torch.full((30, 1, 1), 1 / 30, dtype=torch.float64)
    first, second = (
        w[..., 0] * s if s.dim() == 2 else w * s for s in family.statistics(z, torch.Size([3]))
    )
    moments = (first.sum(0), second.sum(0))
    params = family.params_from_moments(moments, torch.Size([3]))
    _check_valid(family, params, torch.Size([3]))
    indefinite = (
        torch.zeros(2, dtype=torch.float64),
        torch.tensor([[1.0, 1.1], [1.1, 1.0]], dtype=torch.float64),
    )
    _check_valid(family, family.params_from_moments(indefinite, torch.Size([2])), torch.Size([2]))


@pytest.mark.parametrize("scale", [1e-6, 1.0, 1e6])
def test_floors_are_relative_to_scale(scale):
    """A collapsed Normal/Gamma/MVN keeps a width proportional to the site's scale."""
    normal = Normal().params_from_moments((float64(scale), float64(scale**2)), torch.Size())
    assert 0 < normal["scale"] / scale < 1e-5
    gamma = Gamma().params_from_moments((float64(scale), float64(scale).log()), torch.Size())
    sd = gamma["concentration"].sqrt() / gamma["rate"]
    assert 0 < sd / scale < 1e-4
    mvn = MultivariateNormal().params_from_moments(
        (
            float64(scale, 2 * scale),
            torch.full((2, 2), 2 * scale**2, dtype=torch.float64)
            + torch.diag(float64(-(scale**2), 2 * scale**2)),
        ),
        torch.Size([2]),
    )
    assert torch.isfinite(mvn["scale_tril"]).all()
    assert (torch.diagonal(mvn["scale_tril"]) > 0).all()
