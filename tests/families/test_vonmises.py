"""The VonMises family: its moment map against Bessel functions, its quantiles, and a
fit of an angle whose posterior straddles +-pi against the exact VonMises posterior."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_qem import AutoQEM, Inference, sample_posterior
from pyro_qem.families import VonMises, default_family
from pyro_qem.families.vonmises import concentration_from_resultant, mean_resultant

F64 = torch.float64


def test_the_moment_map_round_trips_over_six_decades_of_concentration():
    fam = VonMises()
    kappa = torch.logspace(-3, 3, 61, dtype=F64)
    loc = torch.linspace(-3.1, 3.1, 61, dtype=F64)
    params = fam.params_from_moments(fam.moments_from_params(
        {"loc": loc, "concentration": kappa}, torch.Size()), torch.Size())
    assert torch.allclose(params["loc"], loc, atol=1e-9)
    assert torch.allclose(params["concentration"], kappa, rtol=1e-6)
    # A(kappa) = I1 / I0 against the series I_n(k) = sum_m (k/2)^(2m+n) / (m! (m+n)!).
    k = torch.tensor([0.3, 2.0, 7.0], dtype=F64)
    terms = torch.arange(60, dtype=F64)
    half = (k[:, None] / 2).log()
    i0 = torch.exp(2 * terms * half - 2 * torch.lgamma(terms + 1)).sum(-1)
    i1 = torch.exp((2 * terms + 1) * half - torch.lgamma(terms + 1) - torch.lgamma(terms + 2)).sum(-1)
    assert torch.allclose(mean_resultant(k), i1 / i0, rtol=1e-12)
    assert torch.allclose(concentration_from_resultant(i1 / i0), k, rtol=1e-8)


def test_statistics_are_those_of_draws():
    fam = VonMises()
    q = fam.distribution({"loc": torch.tensor(2.5, dtype=F64),
                          "concentration": torch.tensor(3.0, dtype=F64)}, torch.Size())
    torch.manual_seed(0)
    draws = q.sample((200000,))
    expected = fam.moments_from_params({"loc": torch.tensor(2.5, dtype=F64),
                                        "concentration": torch.tensor(3.0, dtype=F64)}, torch.Size())
    for stat, value in zip(fam.statistics(draws, torch.Size()), expected):
        # SE of a mean of 2e5 bounded draws < 0.0023.
        assert abs(stat.mean() - value) < 0.01


def test_quantiles_are_centred_on_loc_and_match_a_fine_grid():
    fam = VonMises()
    params = {"loc": torch.tensor([-3.0, 0.5], dtype=F64),
              "concentration": torch.tensor([4.0, 0.7], dtype=F64)}
    quantiles = fam.quantiles(params, [0.1, 0.5, 0.9], torch.Size())
    assert quantiles.shape == (3, 2)
    assert torch.allclose(quantiles[1], params["loc"], atol=1e-9)
    for j in range(2):
        grid = torch.linspace(-math.pi, math.pi, 200001, dtype=F64)
        pdf = torch.exp(params["concentration"][j] * torch.cos(grid))
        cdf = pdf.cumsum(0) / pdf.sum()
        expected = grid[torch.searchsorted(cdf, torch.tensor(0.1, dtype=F64))] + params["loc"][j]
        assert abs(quantiles[0, j] - expected) < 1e-3


def test_a_vonmises_prior_gets_the_family_by_default():
    family = default_family("z", dist.VonMises(0.0, 1.0).support, torch.Size(),
                            prior=dist.VonMises(0.0, 1.0))
    assert isinstance(family, VonMises)
    assert not isinstance(default_family("x", dist.Normal(0.0, 1.0).support, torch.Size(),
                                         prior=dist.Normal(0.0, 1.0)), VonMises)


Y = torch.tensor([3.0, -3.0, 3.1])


def angle(y):
    z = pyro.sample("z", dist.VonMises(torch.tensor(3.0, dtype=F64), 1.0))
    with pyro.plate("n", len(y)):
        pyro.sample("y", dist.VonMises(z, 2.0), obs=y)


def test_an_angle_whose_posterior_straddles_pi_is_fitted_on_the_circle():
    """The posterior is VonMises exactly (the prior's and the data's resultant vectors
    add). A Normal q here followed the density's copies to loc ~1e6."""
    resultant = (torch.tensor([math.cos(3.0), math.sin(3.0)], dtype=F64)
                 + 2.0 * torch.stack([Y.cos(), Y.sin()], -1).double().sum(0))
    exact_loc, exact_kappa = math.atan2(resultant[1], resultant[0]), resultant.norm().item()
    pyro.set_rng_seed(0)
    guide = AutoQEM(angle)
    inference = Inference(angle, guide, K=30, lr=0.1, average_from=300)
    for _ in range(600):
        inference.step(Y.double())
    q = guide.distributions()["z"]
    # Measured over seeds 0-2: loc within 0.01 rad, kappa within 3% of exact.
    assert abs(q.loc.item() - exact_loc) < 0.05
    assert q.concentration.item() == pytest.approx(exact_kappa, rel=0.1)
    draws = sample_posterior(inference, Y.double(), num_samples=2000)["z"]
    assert ((draws >= -math.pi) & (draws < math.pi)).all()
    mean_direction = math.atan2(draws.sin().mean(), draws.cos().mean())
    # Circular sd of the posterior ~0.39 rad; 1600 effective draws: SE ~0.01.
    assert abs(mean_direction - exact_loc) < 0.05
    length = torch.stack([draws.cos().mean(), draws.sin().mean()]).norm().item()
    assert length == pytest.approx(mean_resultant(torch.tensor(exact_kappa, dtype=F64)).item(), abs=0.01)
