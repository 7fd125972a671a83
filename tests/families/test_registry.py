"""Support matching, default families per Pyro distribution, overrides and their errors."""

import pyro.distributions as dist
import pytest
import torch
from pyro.distributions import constraints as pyro_constraints
from torch.distributions import constraints

from pyro_qem.families import (
    FAMILIES,
    Bernoulli,
    Beta,
    Binomial,
    Categorical,
    Dirichlet,
    Family,
    Gamma,
    LogNormal,
    Multinomial,
    MultivariateNormal,
    Normal,
    OneHotCategorical,
    Poisson,
    ScaledBeta,
    Unconstrained,
    compatible_families,
    default_family,
    resolve_family,
    support_matches,
)
from pyro_qem.families.registry import _DEFAULTS, _defaults_by_kind

PRIORS = [
    (dist.Normal(0.0, 1.0), "Normal"),
    (dist.Normal(torch.zeros(3), 1.0).to_event(1), "Normal"),
    (dist.Cauchy(0.0, 1.0), "Normal"),
    (dist.StudentT(3.0, 0.0, 1.0), "Normal"),
    (dist.MultivariateNormal(torch.zeros(2), torch.eye(2)), "MultivariateNormal"),
    (dist.MultivariateNormal(torch.zeros(3, 2), torch.eye(2)).to_event(1), "Normal"),
    (dist.Gamma(2.0, 1.0), "Gamma"),
    (dist.Gamma(torch.ones(4), 1.0).to_event(1), "Gamma"),
    (dist.HalfCauchy(1.0), "Gamma"),
    (dist.HalfNormal(1.0), "Gamma"),
    (dist.LogNormal(0.0, 1.0), "Gamma"),
    (dist.Exponential(1.0), "Gamma"),
    (dist.InverseGamma(2.0, 1.0), "Gamma"),
    (dist.Weibull(1.0, 2.0), "Gamma"),
    (dist.Beta(2.0, 2.0), "Beta"),
    (dist.Uniform(0.0, 1.0), "Beta"),
    (dist.Uniform(torch.zeros(2), torch.ones(2)), "Beta"),
    (dist.Dirichlet(torch.ones(3)), "Dirichlet"),
    (dist.Bernoulli(0.3), "Bernoulli"),
    (dist.Bernoulli(0.3 * torch.ones(5)).to_event(1), "Bernoulli"),
    (dist.Categorical(torch.ones(4)), "Categorical"),
    (dist.Binomial(5, 0.5), "Binomial"),
    (dist.Binomial(torch.tensor([3.0, 4.0]), 0.5), "Binomial"),
    (dist.Binomial(5, 0.5).expand([3]).to_event(1), "Binomial"),
    (dist.Poisson(2.0), "Poisson"),
    (dist.Geometric(0.5), "Poisson"),
    (dist.NegativeBinomial(3.0, 0.5), "Poisson"),
    (dist.Multinomial(4, torch.ones(3)), "Multinomial"),
    (dist.Normal(torch.zeros(3, 4), 1.0).to_event(2), "Normal"),
    (dist.Gamma(torch.ones(3, 4), 1.0).to_event(2), "Gamma"),
    (dist.Uniform(-1.0, 1.0), "ScaledBeta"),
    (dist.Uniform(0.0, 5.0), "ScaledBeta"),
    (dist.Uniform(torch.tensor([0.0, 1.0]), torch.tensor([2.0, 4.0])), "ScaledBeta"),
    (dist.Uniform(torch.zeros(3, 4), 2.0).to_event(2), "ScaledBeta"),
    (dist.OneHotCategorical(torch.ones(3)), "OneHotCategorical"),
    (dist.OneHotCategorical(torch.ones(2, 3)).to_event(1), "OneHotCategorical"),
    (dist.LKJCholesky(3, 2.0), "Unconstrained"),
    (dist.Pareto(1.0, 1.0), "Unconstrained"),
    (dist.Normal(0.0, 1.0).expand([3]).to_event(1).mask(True), "Normal"),
]


@pytest.mark.parametrize("prior, expected", PRIORS, ids=lambda x: repr(x)[:40])
def test_default_family_per_prior(prior, expected):
    family = default_family("z", prior.support, prior.event_shape, prior=prior)
    assert type(family).name == expected
    assert family.supports_event_shape(prior.event_shape)
    assert support_matches(family.support, prior.support)


def test_default_family_counts_come_from_prior_and_support():
    assert (
        default_family("c", dist.Categorical(torch.ones(4)).support, torch.Size()).num_categories
        == 4
    )
    binomial = default_family(
        "b", dist.Binomial(7, 0.5).support, torch.Size(), prior=dist.Binomial(7, 0.5)
    )
    assert binomial.total_count.item() == 7
    multinomial = dist.Multinomial(6, torch.ones(3))
    assert default_family("m", multinomial.support, torch.Size([3])).total_count == 6
    # Without a Binomial prior an integer interval is a Categorical over 0..n.
    assert default_family("b", dist.Binomial(7, 0.5).support, torch.Size()).num_categories == 8


@pytest.mark.parametrize(
    "family_support, site_support, expected",
    [
        (constraints.real, constraints.real, True),
        (constraints.real, constraints.real_vector, True),
        (constraints.real, constraints.independent(constraints.real, 2), True),
        (constraints.real_vector, constraints.real, True),  # event shape is checked apart
        (constraints.positive, constraints.nonnegative, True),
        (constraints.positive, constraints.independent(constraints.nonnegative, 1), True),
        (constraints.positive, pyro_constraints.softplus_positive, True),
        (constraints.positive, constraints.greater_than(1.0), False),
        (constraints.positive, constraints.real, False),
        (constraints.unit_interval, constraints.interval(0.0, 1.0), True),
        (constraints.unit_interval, constraints.interval(0.0, 2.0), False),
        (constraints.interval(-1.0, 1.0), constraints.interval(0.0, 2.0), True),
        (constraints.interval(-1.0, 1.0), constraints.half_open_interval(0.0, 2.0), True),
        (constraints.interval(-1.0, 1.0), constraints.unit_interval, True),
        (constraints.interval(-1.0, 1.0), constraints.positive, False),
        (constraints.one_hot, constraints.one_hot, True),
        (constraints.one_hot, constraints.simplex, False),
        (constraints.corr_cholesky, constraints.corr_cholesky, True),
        (constraints.corr_cholesky, constraints.greater_than(1.0), False),
        (constraints.greater_than(1.0), constraints.greater_than(1.0), True),
        (constraints.greater_than(1.0), constraints.greater_than(2.0), False),
        (constraints.unit_interval, constraints.positive, False),
        (constraints.integer_interval(0, 1), constraints.integer_interval(0, 9), True),
        (constraints.integer_interval(0, 1), constraints.boolean, False),
        (constraints.boolean, constraints.boolean, True),
        (constraints.nonnegative_integer, constraints.nonnegative_integer, True),
        (constraints.nonnegative_integer, constraints.positive_integer, False),
        (constraints.simplex, constraints.simplex, True),
        (constraints.simplex, constraints.real_vector, False),
        (constraints.multinomial(1), constraints.multinomial(5), True),
        (constraints.positive_definite, constraints.positive_definite, True),
        (constraints.positive_definite, constraints.lower_cholesky, False),
        (constraints.real, constraints.positive_definite, False),
    ],
    ids=lambda x: repr(x)[:30],
)
def test_support_matches(family_support, site_support, expected):
    assert support_matches(family_support, site_support) is expected


@pytest.mark.parametrize("override", ["LogNormal", "lognormal", LogNormal, LogNormal()])
def test_override_forms(override):
    family = resolve_family("tau", override, constraints.nonnegative, torch.Size())
    assert isinstance(family, LogNormal)


def test_override_none_is_the_default():
    assert isinstance(resolve_family("tau", None, constraints.nonnegative, torch.Size()), Gamma)


def test_override_builds_counted_families_from_the_site():
    prior = dist.Categorical(torch.ones(5))
    categorical = resolve_family("c", Categorical, prior.support, torch.Size(), prior=prior)
    assert categorical.num_categories == 5
    binomial = resolve_family("c", "Binomial", prior.support, torch.Size(), prior=prior)
    assert isinstance(binomial, Binomial) and binomial.total_count.item() == 4
    mvn = resolve_family("x", "MultivariateNormal", constraints.real_vector, torch.Size([3]))
    assert isinstance(mvn, MultivariateNormal)


def test_families_mapping():
    assert FAMILIES["Normal"] is Normal and len(FAMILIES) == 18
    assert all(issubclass(cls, Family) and cls.name == name for name, cls in FAMILIES.items())
    assert compatible_families(constraints.real_vector, torch.Size([2])) == [
        "Normal",
        "MultivariateNormal",
        "VonMises",
        "Unconstrained",
    ]
    matrix = constraints.independent(constraints.real, 2)
    assert compatible_families(matrix, torch.Size([3, 4])) == [
        "Normal",
        "VonMises",
        "Unconstrained",
    ]


# positive_definite has no biject_to bijection (only transform_to's, which is not one).
UNSUPPORTED = [dist.Wishart(torch.tensor(4.0), torch.eye(2))]


@pytest.mark.parametrize("prior", UNSUPPORTED, ids=lambda x: type(x).__name__)
def test_unsupported_support_error(prior):
    with pytest.raises(
        ValueError,
        match=r"Site 'w' has support .* which no QEM family handles.*"
        r"positive / nonnegative reals: Gamma.*Reparameterise",
    ):
        default_family("w", prior.support, prior.event_shape, prior=prior)


def test_unknown_name_error():
    with pytest.raises(
        ValueError,
        match=r"Site 'tau': unknown family name 'LogNorml'. "
        r"Valid names: Normal, MultivariateNormal, Gamma, LogNormal",
    ):
        resolve_family("tau", "LogNorml", constraints.nonnegative, torch.Size())


@pytest.mark.parametrize("override", ["Beta", Normal(), Categorical])
def test_support_mismatch_error(override):
    with pytest.raises(
        ValueError,
        match=r"Site 'tau' has support GreaterThanEq\(lower_bound=0.0\), "
        r"but family '\w+' has support .* does not match. Families compatible with "
        r"this site: Gamma, LogNormal, InverseGamma, Exponential, HalfNormal",
    ):
        resolve_family("tau", override, constraints.nonnegative, torch.Size())


@pytest.mark.parametrize(
    "override, support, event_shape",
    [
        ("MultivariateNormal", constraints.real, torch.Size()),
        ("Dirichlet", constraints.simplex, torch.Size()),
        ("Multinomial", constraints.multinomial(4), torch.Size()),
        ("OneHotCategorical", constraints.one_hot, torch.Size()),
    ],
)
def test_event_shape_error(override, support, event_shape):
    with pytest.raises(
        ValueError,
        match=r"Site 'x' has event shape .*, but family '\w+' handles " r"event dims .* only",
    ):
        resolve_family("x", override, support, event_shape)


def test_dirichlet_on_scalar_site_error():
    with pytest.raises(
        ValueError,
        match=r"Site 'p' has support Interval.* family 'Dirichlet'.*"
        r"compatible with this site: Beta",
    ):
        resolve_family("p", "Dirichlet", constraints.unit_interval, torch.Size())


def test_categorical_lower_bound_error():
    with pytest.raises(
        ValueError,
        match=r"Site 'k' has support IntegerInterval\(lower_bound=1, "
        r"upper_bound=4\): the Categorical family needs the lower bound 0",
    ):
        default_family("k", constraints.integer_interval(1, 4), torch.Size())


def test_categorical_varying_upper_bound_error():
    support = constraints.integer_interval(0, torch.tensor([3.0, 4.0]))
    with pytest.raises(ValueError, match=r"Site 'k' .* upper bound differs across the batch"):
        default_family("k", support, torch.Size())


def test_count_mismatch_errors():
    with pytest.raises(ValueError, match=r"Site 'k' has 3 categories .* use Categorical\(3\)"):
        resolve_family("k", Categorical(4), constraints.integer_interval(0, 2), torch.Size())
    with pytest.raises(
        ValueError,
        match=r"Site 'b' has support .* family given for it is "
        r"Binomial\(total_count=5.0\); use Binomial",
    ):
        resolve_family("b", Binomial(5), dist.Binomial(10, 0.5).support, torch.Size())
    assert resolve_family("b", Binomial(10), dist.Binomial(10, 0.5).support, torch.Size())
    with pytest.raises(ValueError, match=r"Site 'm' has total count 4 .* use Multinomial\(4\)"):
        resolve_family("m", Multinomial(5), constraints.multinomial(4), torch.Size([3]))


def test_bad_override_type_error():
    with pytest.raises(TypeError, match=r"Site 'x': a family override must be a family name"):
        resolve_family("x", 3.0, constraints.real, torch.Size())


def test_family_needing_arguments_error():
    class Shifted(Normal):
        name = "Shifted"

        def __init__(self, shift):
            self.shift = shift

    with pytest.raises(
        ValueError, match=r"Site 'x': cannot construct Shifted\(\) without arguments"
    ):
        resolve_family("x", Shifted, constraints.real, torch.Size())
    assert resolve_family("x", Shifted(1.0), constraints.real, torch.Size()).shift == 1.0


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: Categorical(1), r"Categorical: num_categories must be an integer >= 2"),
        (lambda: Binomial(0), r"Binomial: total_count must be positive integers"),
        (lambda: Binomial(2.5), r"Binomial: total_count must be positive integers"),
        (lambda: Multinomial(0), r"Multinomial: total_count must be an integer >= 1"),
    ],
)
def test_constructor_errors(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_binomial_without_total_count_error():
    with pytest.raises(ValueError, match=r"Site 'b': the Binomial family needs a total count"):
        Binomial.from_site("b", constraints.nonnegative_integer)


def test_defaults_table_comes_from_the_families():
    assert _DEFAULTS == {
        "real": Normal,
        "positive": Gamma,
        "unit_interval": Beta,
        "simplex": Dirichlet,
        "boolean": Bernoulli,
        "integer_interval": Categorical,
        "nonnegative_integer": Poisson,
        "multinomial": Multinomial,
        "interval": ScaledBeta,
        "one_hot": OneHotCategorical,
        "bijective": Unconstrained,
    }
    claimed = {kind: cls for cls in FAMILIES.values() for kind in cls.default_for}
    assert claimed == _DEFAULTS


def test_only_binomial_prefers_a_binomial_prior():
    prior = dist.Binomial(5, 0.5).expand([3]).to_event(1)
    assert [name for name, cls in FAMILIES.items() if cls.preferred_for(prior)] == ["Binomial"]
    assert not any(cls.preferred_for(None) for cls in FAMILIES.values())
    assert not Binomial.preferred_for(dist.Categorical(torch.ones(6)))


def test_two_families_claiming_one_kind_fail_loudly():
    class AlsoReal(Normal):
        name = "AlsoReal"
        default_for = ("real",)

    with pytest.raises(RuntimeError, match=r"Both Normal and AlsoReal set default_for 'real'"):
        _defaults_by_kind([*FAMILIES.values(), AlsoReal])


def test_a_claim_outside_the_family_support_fails_loudly():
    class Wrong(LogNormal):
        name = "Wrong"
        default_for = ("real",)

    others = [cls for cls in FAMILIES.values() if cls is not Normal]
    with pytest.raises(RuntimeError, match=r"Wrong.default_for names 'real', but its support"):
        _defaults_by_kind([*others, Wrong])


def test_a_kind_without_a_default_fails_loudly():
    others = [cls for cls in FAMILIES.values() if cls is not Poisson]
    with pytest.raises(RuntimeError, match=r"support kinds \['nonnegative_integer'\]"):
        _defaults_by_kind(others)
