"""The Newton solvers behind the Gamma, Beta and Dirichlet M-steps."""

import pytest
import torch
from tests.helpers.family_cases import CASES, make_case

from pyro_qem.families import Gamma
from pyro_qem.families._special import (
    SHAPE_MAX,
    SHAPE_MIN,
    digamma_inv,
    dirichlet_concentration,
    gamma_shape,
)


def test_gamma_shape_over_its_whole_range():
    a = torch.logspace(-4, 9, 300, dtype=torch.float64)
    gap = torch.log(a) - torch.digamma(a)
    # log a - digamma(a) loses digits to cancellation at large a; the solver does not.
    torch.testing.assert_close(gamma_shape(gap), a, rtol=1e-5, atol=0)


def test_gamma_shape_clamps_out_of_range_gaps():
    shape = gamma_shape(torch.tensor([0.0, -1.0, 1e-300, 1e6, float("inf")], dtype=torch.float64))
    assert torch.isfinite(shape).all()
    assert (shape >= SHAPE_MIN).all() and (shape <= SHAPE_MAX).all()


def test_digamma_inv():
    y = torch.linspace(-1e4, 20, 500, dtype=torch.float64)
    x = digamma_inv(y)
    torch.testing.assert_close(torch.digamma(x), y, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("k", [2, 3, 10])
def test_dirichlet_concentration_extremes(k):
    gen = torch.Generator().manual_seed(k)
    a = 10 ** torch.empty(3000, k, dtype=torch.float64).uniform_(-3, 4, generator=gen)
    a[0], a[1], a[2] = 1e-3, 1e4, torch.tensor([1e-3, 1e4] * (k // 2) + [1.0] * (k % 2))
    mean_log = torch.digamma(a) - torch.digamma(a.sum(-1, keepdim=True))
    torch.testing.assert_close(dirichlet_concentration(mean_log), a, rtol=1e-5, atol=0)


def test_float32_moments_give_float32_params():
    params = Gamma().params_from_moments(
        (torch.tensor([2.0, 3.0]), torch.tensor([0.5, 0.9])), torch.Size()
    )
    assert all(v.dtype == torch.float32 for v in params.values())


@pytest.mark.requires_cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", sorted(CASES))
def test_round_trip_on_cuda(name):
    family, event_shape, params = make_case(name)
    params = {k: v.cuda() for k, v in params.items()}
    recovered = family.params_from_moments(
        family.moments_from_params(params, event_shape), event_shape
    )
    for key, value in recovered.items():
        assert value.device.type == "cuda"
        torch.testing.assert_close(value, params[key], rtol=1e-4, atol=1e-9)
    q = family.distribution(recovered, event_shape)
    assert torch.isfinite(q.log_prob(q.sample())).all()
