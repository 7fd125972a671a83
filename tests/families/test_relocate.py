"""Family.relocate: q's centre moves to the given value and its spread stays."""

import math
from typing import Callable, Dict, Tuple

import pytest
import torch

from tests.helpers.family_cases import CASES, make_case
from pyro_qem.families import FAMILIES, Family, Params

RTOL = 1e-10


def _gen() -> torch.Generator:
    return torch.Generator().manual_seed(4321)


def _uniform(shape: torch.Size, lo: float, hi: float) -> torch.Tensor:
    return torch.empty(shape, dtype=torch.float64).uniform_(lo, hi, generator=_gen())


def _log_uniform(shape: torch.Size, lo: float, hi: float) -> torch.Tensor:
    return 10.0 ** _uniform(shape, lo, hi)


def _real(shape: torch.Size) -> torch.Tensor:
    return torch.randn(shape, dtype=torch.float64, generator=_gen()) * 10


def _simplex(shape: torch.Size) -> torch.Tensor:
    return torch.distributions.Dirichlet(torch.full(shape, 2.0, dtype=torch.float64)).sample()


def _counts_mean(family: Family, shape: torch.Size) -> torch.Tensor:
    return _uniform(shape, 0.01, 0.99) * family.total_count


# A value inside each family's support, of the site's batch + event shape.
VALUES: Dict[str, Callable[[Family, torch.Size], torch.Tensor]] = {
    "Normal": lambda fam, shape: _real(shape),
    "MultivariateNormal": lambda fam, shape: _real(shape),
    "LogNormal": lambda fam, shape: _log_uniform(shape, -3, 3),
    "Gamma": lambda fam, shape: _log_uniform(shape, -3, 3),
    "InverseGamma": lambda fam, shape: _log_uniform(shape, -3, 3),
    "Exponential": lambda fam, shape: _log_uniform(shape, -3, 3),
    "HalfNormal": lambda fam, shape: _log_uniform(shape, -3, 3),
    "Beta": lambda fam, shape: _uniform(shape, 0.01, 0.99),
    "ScaledBeta": lambda fam, shape: fam.low + (fam.high - fam.low) * _uniform(shape, 0.01, 0.99),
    # The case's support is greater_than(2).
    "Unconstrained": lambda fam, shape: 2.0 + _log_uniform(shape, -3, 3),
    "Dirichlet": lambda fam, shape: _simplex(shape),
    "Bernoulli": lambda fam, shape: _uniform(shape, 0.01, 0.99),
    "Binomial": _counts_mean,
    "Poisson": lambda fam, shape: _log_uniform(shape, -3, 3),
    "VonMises": lambda fam, shape: _uniform(shape, -3.1, 3.1),
}


def _centre(name: str, family: Family, params: Params, event_shape: torch.Size) -> torch.Tensor:
    """The centre each family's relocation sets."""
    if name in ("LogNormal", "Unconstrained"):
        return family.quantiles(params, [0.5], event_shape)[0]
    if name == "InverseGamma":
        return params["rate"] / (params["concentration"] + 1)
    if name == "VonMises":
        return params["loc"]
    return family.distribution(params, event_shape).mean


# The parameter (or function of them) that relocation keeps.
KEPT: Dict[str, Callable[[Params], torch.Tensor]] = {
    "Normal": lambda p: p["scale"],
    "MultivariateNormal": lambda p: p["scale_tril"],
    "LogNormal": lambda p: p["scale"],
    "Gamma": lambda p: p["concentration"],
    "InverseGamma": lambda p: p["concentration"],
    "Beta": lambda p: p["concentration1"] + p["concentration0"],
    "ScaledBeta": lambda p: p["concentration1"] + p["concentration0"],
    "Unconstrained": lambda p: p["scale"],
    "Dirichlet": lambda p: p["concentration"].sum(-1),
    "VonMises": lambda p: p["concentration"],
}


def _relocated(name: str) -> Tuple[Family, torch.Size, Params, Params, torch.Tensor]:
    family, event_shape, params = make_case(name)
    shape = family.distribution(params, event_shape).shape()
    value = VALUES[name](family, shape)
    before = {key: tensor.clone() for key, tensor in params.items()}
    return family, event_shape, before, family.relocate(params, value), value


def test_every_family_is_covered():
    assert set(VALUES) | set(UNORDERED) == set(FAMILIES) == set(CASES)


@pytest.mark.parametrize("name", sorted(VALUES))
def test_relocate_moves_the_centre_to_the_value(name):
    family, event_shape, _, params, value = _relocated(name)
    centre = _centre(name, family, params, event_shape)
    torch.testing.assert_close(centre, value, rtol=RTOL, atol=0.0)


@pytest.mark.parametrize("name", sorted(KEPT))
def test_relocate_keeps_the_spread(name):
    _, _, before, after, _ = _relocated(name)
    torch.testing.assert_close(KEPT[name](after), KEPT[name](before), rtol=RTOL, atol=0.0)


@pytest.mark.parametrize("name", sorted(CASES))
def test_relocate_returns_a_new_dict_and_leaves_its_input_alone(name):
    family, event_shape, params = make_case(name)
    before = {key: tensor.clone() for key, tensor in params.items()}
    value = family.distribution(params, event_shape).sample().double()
    after = family.relocate(params, value)
    assert after is not params and set(after) == set(params)
    for key, tensor in params.items():
        torch.testing.assert_close(tensor, before[key], rtol=0.0, atol=0.0)
        assert after[key].shape == tensor.shape and after[key].dtype == torch.float64


UNORDERED = ["Categorical", "Multinomial", "OneHotCategorical"]


@pytest.mark.parametrize("name", UNORDERED)
def test_unordered_families_keep_their_params(name):
    family, event_shape, params = make_case(name)
    value = family.distribution(params, event_shape).sample()
    after = family.relocate(params, value)
    assert after is not params
    assert all(after[key] is params[key] for key in params)


def test_relocate_broadcasts_a_scalar_value():
    family, event_shape, params = make_case("Normal")
    after = family.relocate(params, torch.tensor(2.5, dtype=torch.float32))
    assert after["loc"].shape == params["loc"].shape and after["loc"].dtype == torch.float64
    assert bool((after["loc"] == 2.5).all())


@pytest.mark.parametrize(
    "name, value, centre",
    [
        ("Beta", 0.0, 1e-6),
        ("Beta", 1.0, 1 - 1e-6),
        ("Bernoulli", 0.0, 1e-6),
        ("Bernoulli", 1.0, 1 - 1e-6),
        ("Poisson", 0.0, 1e-6),
    ],
)
def test_relocate_keeps_an_edge_value_inside_the_support(name, value, centre):
    family, event_shape, params = make_case(name)
    after = family.relocate(params, torch.tensor(value))
    mean = family.distribution(after, event_shape).mean
    assert torch.isfinite(torch.stack(list(after.values()))).all()
    torch.testing.assert_close(mean, torch.full_like(mean, centre), rtol=1e-8, atol=0.0)


@pytest.mark.parametrize("name", ["Gamma", "Exponential", "LogNormal"])
def test_relocate_to_zero_stays_finite(name):
    family, _, params = make_case(name)
    after = family.relocate(params, torch.tensor(0.0))
    assert all(bool(torch.isfinite(tensor).all()) for tensor in after.values())


def test_half_normal_scale_for_a_unit_mean():
    family, _, params = make_case("HalfNormal")
    after = family.relocate(params, torch.tensor(1.0, dtype=torch.float64))
    expected = torch.full_like(params["scale"], math.sqrt(math.pi / 2))
    torch.testing.assert_close(after["scale"], expected, rtol=0.0, atol=0.0)
