"""A user's own Family subclass: clear errors for what it does not set or implement."""

import pyro.distributions as dist
import pytest
import torch
from torch.distributions import constraints

from pyro_qem.families import Family, Moments, Params, resolve_family


class Minimal(Family):
    """The least a family needs: class attributes and the four abstract methods."""

    name = "Minimal"
    support = constraints.real
    stat_names = ("z", "z2")

    def statistics(self, value: torch.Tensor, event_shape: torch.Size) -> Moments:
        return value, value.square()

    def params_from_moments(self, moments: Moments, event_shape: torch.Size) -> Params:
        first, second = moments
        return {"loc": first, "scale": (second - first.square()).sqrt()}

    def moments_from_params(self, params: Params, event_shape: torch.Size) -> Moments:
        return params["loc"], params["loc"].square() + params["scale"].square()

    def distribution(self, params: Params, event_shape: torch.Size) -> dist.Distribution:
        return dist.Normal(params["loc"], params["scale"])


PARAMS = {"loc": torch.zeros(2, dtype=torch.float64), "scale": torch.ones(2, dtype=torch.float64)}


def test_a_minimal_family_resolves():
    assert isinstance(resolve_family("x", Minimal, constraints.real, torch.Size()), Minimal)
    assert isinstance(resolve_family("x", Minimal(), constraints.real, torch.Size()), Minimal)


def test_relocate_is_not_implemented_by_default():
    with pytest.raises(
        NotImplementedError,
        match=r"Minimal does not implement relocate\(params, value\).*explicit init_loc_fn "
        r"moves q's centre to the strategy's value.*Implement Minimal.relocate, or leave "
        r"init_loc_fn unset",
    ):
        Minimal().relocate(PARAMS, torch.tensor(1.0))


def test_quantiles_are_not_implemented_by_default():
    with pytest.raises(
        NotImplementedError,
        match=r"Minimal does not implement inverse_cdf.*guide.quantiles\(\) and "
        r"guide.median\(\) need",
    ):
        Minimal().quantiles(PARAMS, [0.5], torch.Size())


def test_bad_probabilities_are_reported_before_the_missing_inverse_cdf():
    with pytest.raises(ValueError, match=r"probabilities must lie in \(0, 1\)"):
        Minimal().quantiles(PARAMS, [1.5], torch.Size())


def test_implementing_inverse_cdf_gives_quantiles():
    class WithQuantiles(Minimal):
        name = "WithQuantiles"

        def inverse_cdf(self, params, probs, event_shape):
            return params["loc"] + params["scale"] * torch.special.ndtri(probs)

    result = WithQuantiles().quantiles(PARAMS, [0.5, 0.8413447460685429], torch.Size())
    assert result.shape == (2, 2)
    torch.testing.assert_close(result[1], torch.ones(2, dtype=torch.float64))


class NoName(Family):
    support = constraints.real
    stat_names = ("z",)

    statistics = Minimal.statistics
    params_from_moments = Minimal.params_from_moments
    moments_from_params = Minimal.moments_from_params
    distribution = Minimal.distribution


class NoSupportOrStatNames(Family):
    name = "NoSupportOrStatNames"

    statistics = Minimal.statistics
    params_from_moments = Minimal.params_from_moments
    moments_from_params = Minimal.moments_from_params
    distribution = Minimal.distribution


@pytest.mark.parametrize("as_instance", [False, True], ids=["class", "instance"])
@pytest.mark.parametrize(
    "cls, missing",
    [
        (NoName, r"name"),
        (NoSupportOrStatNames, r"support, stat_names"),
    ],
    ids=["name", "support-and-stat_names"],
)
def test_missing_class_attributes_are_named(cls, missing, as_instance):
    override = cls() if as_instance else cls
    with pytest.raises(
        TypeError,
        match=rf"Site 'x': family class {cls.__name__} does not set the class attribute\(s\) "
        rf"{missing}\. Set them in the class body",
    ):
        resolve_family("x", override, constraints.real, torch.Size())


def test_missing_stat_names_is_named():
    class WithoutStatNames(Family):
        name = "WithoutStatNames"
        support = constraints.real

        statistics = Minimal.statistics
        params_from_moments = Minimal.params_from_moments
        moments_from_params = Minimal.moments_from_params
        distribution = Minimal.distribution

    with pytest.raises(
        TypeError, match=r"WithoutStatNames does not set the class attribute\(s\) stat_names\."
    ):
        resolve_family("x", WithoutStatNames, constraints.real, torch.Size())


def test_missing_abstract_methods_are_named():
    class Partial(Family):
        name = "Partial"
        support = constraints.real
        stat_names = ("z",)

        statistics = Minimal.statistics

    with pytest.raises(
        TypeError,
        match=r"Site 'x': family Partial does not implement the abstract method\(s\) "
        r"distribution, moments_from_params, params_from_moments of Family",
    ):
        resolve_family("x", Partial, constraints.real, torch.Size())
