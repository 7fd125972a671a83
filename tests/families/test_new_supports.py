"""ScaledBeta, Unconstrained and OneHotCategorical, and elementwise families on matrix
(event shape (3, 4)) sites."""


import numpy as np
import pyro.distributions as dist
import pytest
import scipy.stats
import torch
from pyro.distributions import constraints as pyro_constraints
from torch.distributions import constraints

from tests.helpers.family_cases import float64
from pyro_qem.families import (
    FAMILIES,
    Bernoulli,
    Beta,
    Binomial,
    Categorical,
    Exponential,
    Gamma,
    HalfNormal,
    InverseGamma,
    LogNormal,
    Normal,
    OneHotCategorical,
    Poisson,
    ScaledBeta,
    Unconstrained,
    default_family,
    resolve_family,
)

MATRIX = torch.Size([3, 4])


def _positive(*shape):
    return torch.rand(*shape, dtype=torch.float64) * 3 + 0.5


# Each elementwise family with params of batch (2,) and event (3, 4).
ELEMENTWISE = [
    (Normal(), {"loc": torch.randn(2, 3, 4, dtype=torch.float64), "scale": _positive(2, 3, 4)}),
    (LogNormal(), {"loc": torch.randn(2, 3, 4, dtype=torch.float64), "scale": _positive(2, 3, 4)}),
    (Gamma(), {"concentration": _positive(2, 3, 4), "rate": _positive(2, 3, 4)}),
    (InverseGamma(), {"concentration": _positive(2, 3, 4) + 2, "rate": _positive(2, 3, 4)}),
    (Exponential(), {"rate": _positive(2, 3, 4)}),
    (HalfNormal(), {"scale": _positive(2, 3, 4)}),
    (Beta(), {"concentration1": _positive(2, 3, 4), "concentration0": _positive(2, 3, 4)}),
    (
        ScaledBeta(-1.0, 4.0),
        {"concentration1": _positive(2, 3, 4), "concentration0": _positive(2, 3, 4)},
    ),
    (Bernoulli(), {"logits": torch.randn(2, 3, 4, dtype=torch.float64)}),
    (Binomial(6), {"logits": torch.randn(2, 3, 4, dtype=torch.float64)}),
    (Poisson(), {"rate": _positive(2, 3, 4)}),
    (Categorical(5), {"logits": torch.randn(2, 3, 4, 5, dtype=torch.float64).log_softmax(-1)}),
    (
        Unconstrained(constraints.independent(constraints.positive, 2)),
        {"loc": torch.randn(2, 3, 4, dtype=torch.float64), "scale": _positive(2, 3, 4)},
    ),
]


@pytest.mark.parametrize("family, params", ELEMENTWISE, ids=lambda x: repr(x)[:20])
def test_elementwise_families_take_matrix_sites(family, params):
    assert family.supports_event_shape(MATRIX)
    q = family.distribution(params, MATRIX)
    assert q.batch_shape == (2,) and q.event_shape == MATRIX
    value = q.sample((7,))
    assert value.shape == (7, 2, 3, 4)
    assert q.log_prob(value).shape == (7, 2)
    stats = family.statistics(value, MATRIX)
    moments = family.moments_from_params(params, MATRIX)
    for stat, moment in zip(stats, moments):
        assert stat.shape[1:] == moment.shape
    recovered = family.params_from_moments(moments, MATRIX)
    for key, expected in params.items():
        torch.testing.assert_close(recovered[key], expected, rtol=1e-6, atol=1e-9)
    init = family.init_moments(value.double(), MATRIX)
    assert [m.shape for m in init] == [m.shape[1:] for m in stats]
    assert family.quantiles(params, [0.3, 0.6], MATRIX).shape == (2, 2, 3, 4)
    relocated = family.relocate(params, value[0].double())
    assert {k: v.shape for k, v in relocated.items()} == {k: v.shape for k, v in params.items()}


@pytest.mark.parametrize("name", ["Dirichlet", "Multinomial", "OneHotCategorical"])
def test_last_dim_families_take_an_extra_event_dim(name):
    family = FAMILIES[name](5) if name == "Multinomial" else FAMILIES[name]()
    key = "concentration" if name == "Dirichlet" else "logits"
    params = {key: torch.rand(2, 3, 4, dtype=torch.float64) + 0.5}
    q = family.distribution(params, MATRIX)
    assert q.batch_shape == (2,) and q.event_shape == MATRIX
    moments = family.moments_from_params(params, MATRIX)
    assert moments[0].shape == (2, 3, 4)
    assert family.statistics(q.sample(), MATRIX)[0].shape == (2, 3, 4)


def test_matrix_site_resolves_to_elementwise_families():
    support = constraints.independent(constraints.positive, 2)
    for name in ("Gamma", "LogNormal", "InverseGamma", "Exponential", "HalfNormal"):
        assert resolve_family("w", name, support, MATRIX).name == name


# ------------------------------------------------------------------ ScaledBeta


def test_scaled_beta_density_matches_scipy():
    family = ScaledBeta(-2.0, 3.0)
    params = {"concentration1": float64(0.7, 4.0), "concentration0": float64(2.0, 1.5)}
    q = family.distribution(params, torch.Size())
    z = float64(-1.5, 2.9)
    expected = scipy.stats.beta.logpdf(z.numpy(), [0.7, 4.0], [2.0, 1.5], loc=-2.0, scale=5.0)
    torch.testing.assert_close(q.log_prob(z), torch.tensor(expected))
    torch.testing.assert_close(q.mean, -2.0 + 5.0 * float64(0.7 / 2.7, 4.0 / 5.5))
    assert q.has_rsample and q.rsample().shape == (2,)


def test_scaled_beta_statistics_are_the_unit_betas():
    family = ScaledBeta(10.0, 14.0)
    z = float64(10.5, 13.0, 13.999)
    log_u, log_1mu = family.statistics(z, torch.Size())
    torch.testing.assert_close(log_u, ((z - 10) / 4).log())
    torch.testing.assert_close(log_1mu, ((14 - z) / 4).log())


def test_scaled_beta_moments_match_monte_carlo():
    family = ScaledBeta(float64(-1.0, 0.0), float64(1.0, 100.0))
    params = {"concentration1": float64(0.8, 3.0), "concentration0": float64(2.0, 0.6)}
    draws = family.distribution(params, torch.Size()).sample((100_000,))
    for stat, exact in zip(family.statistics(draws, torch.Size()),
                           family.moments_from_params(params, torch.Size())):
        stderr = stat.std(0) / stat.shape[0] ** 0.5
        assert torch.all((stat.mean(0) - exact).abs() <= 6 * stderr)


def test_scaled_beta_from_site_reads_the_bounds():
    prior = dist.Uniform(torch.tensor([0.0, 1.0]), torch.tensor([2.0, 5.0]))
    family = default_family("z", prior.support, prior.event_shape, prior=prior)
    assert isinstance(family, ScaledBeta)
    torch.testing.assert_close(family.low, float64(0.0, 1.0))
    torch.testing.assert_close(family.high, float64(2.0, 5.0))
    half_open = ScaledBeta.from_site("z", constraints.half_open_interval(-3.0, 3.0))
    assert half_open.low.item() == -3.0 and half_open.high.item() == 3.0


def test_scaled_beta_refuses_bounds_that_vary_across_particles():
    # The bound carries a particle dim (10) on top of the site's own shape (3,).
    prior = dist.Uniform(torch.zeros(3), 2.0)
    support = constraints.interval(0.0, torch.rand(10, 3) + 1.0)
    with pytest.raises(ValueError, match=r"Site 'z' .* depend on another latent site.*"
                                         r"Uniform\(0., 1.\)"):
        ScaledBeta.from_site("z", support, prior)


def test_scaled_beta_errors():
    with pytest.raises(ValueError, match=r"Site 'z': the ScaledBeta family needs an interval"):
        ScaledBeta.from_site("z", constraints.positive)
    with pytest.raises(ValueError, match=r"ScaledBeta: the bounds must be finite with low < high"):
        ScaledBeta(1.0, 1.0)
    with pytest.raises(ValueError, match=r"Site 'z' has support .* ScaledBeta\(low=0, high=2\)"):
        resolve_family("z", ScaledBeta(0.0, 2.0), constraints.interval(0.0, 3.0), torch.Size())
    assert resolve_family("z", ScaledBeta(0.0, 3.0), constraints.interval(0.0, 3.0), torch.Size())
    # By name it takes the site's bounds, the unit interval included.
    assert resolve_family("p", "ScaledBeta", constraints.unit_interval, torch.Size()).high == 1.0


def test_scaled_beta_relocate_keeps_an_edge_value_inside():
    family = ScaledBeta(2.0, 4.0)
    params = {"concentration1": float64(3.0), "concentration0": float64(1.0)}
    for edge, centre in ((2.0, 2.0 + 2e-6), (4.0, 4.0 - 2e-6)):
        after = family.relocate(params, torch.tensor(edge))
        torch.testing.assert_close(family.distribution(after, torch.Size()).mean,
                                   float64(centre), rtol=1e-9, atol=0.0)


# --------------------------------------------------------------- Unconstrained

LKJ = dist.LKJCholesky(3, concentration=2.0)


def test_unconstrained_lkj_shapes_and_density():
    family = default_family("L", LKJ.support, LKJ.event_shape, prior=LKJ)
    assert isinstance(family, Unconstrained)
    assert family.unconstrained_shape(LKJ.event_shape) == (3,)
    params = {"loc": torch.randn(5, 3, dtype=torch.float64),
              "scale": torch.rand(5, 3, dtype=torch.float64) + 0.2}
    q = family.distribution(params, LKJ.event_shape)
    assert isinstance(q, dist.TransformedDistribution)
    assert q.batch_shape == (5,) and q.event_shape == (3, 3)
    z = q.rsample((4,))
    assert z.shape == (4, 5, 3, 3) and bool(LKJ.support.check(z).all())
    # log q(z) = log N(u) - log |det J(u)|.
    transform = torch.distributions.biject_to(LKJ.support)
    u = transform.inv(z)
    expected = (dist.Normal(params["loc"], params["scale"]).log_prob(u).sum(-1)
                - transform.log_abs_det_jacobian(u, z))
    torch.testing.assert_close(q.log_prob(z), expected)
    stats = family.statistics(z, LKJ.event_shape)
    torch.testing.assert_close(stats[0], u)
    relocated = family.relocate(params, z[0])
    torch.testing.assert_close(relocated["loc"], u[0])
    torch.testing.assert_close(relocated["scale"], params["scale"])


def test_unconstrained_quantiles_need_an_elementwise_bijection():
    family = Unconstrained(LKJ.support)
    params = {"loc": torch.zeros(3, dtype=torch.float64),
              "scale": torch.ones(3, dtype=torch.float64)}
    with pytest.raises(NotImplementedError, match=r"quantiles are defined per coordinate only"):
        family.quantiles(params, [0.5], LKJ.event_shape)


@pytest.mark.parametrize(
    "support, scipy_ppf",
    [
        (constraints.positive, lambda p, m, s: scipy.stats.lognorm.ppf(p, s, scale=np.exp(m))),
        (constraints.interval(-1.0, 3.0),
         lambda p, m, s: -1.0 + 4.0 * scipy.special.expit(scipy.stats.norm.ppf(p, m, s))),
        # A decreasing bijection: the p-quantile comes from the (1 - p)-quantile of u.
        (constraints.less_than(1.0),
         lambda p, m, s: 1.0 - np.exp(scipy.stats.norm.ppf(1 - p, m, s))),
        (constraints.real, lambda p, m, s: scipy.stats.norm.ppf(p, m, s)),
    ],
    ids=["positive", "interval", "less_than", "real"],
)
def test_unconstrained_quantiles_match_scipy(support, scipy_ppf):
    family = Unconstrained(support)
    params = {"loc": float64(-0.5, 0.3, 1.0), "scale": float64(0.2, 1.0, 2.0)}
    probs = [0.05, 0.5, 0.9]
    result = family.quantiles(params, probs, torch.Size())
    expected = scipy_ppf(np.asarray(probs)[:, None], params["loc"].numpy(), params["scale"].numpy())
    torch.testing.assert_close(result, torch.tensor(expected), rtol=1e-8, atol=1e-12)


def test_unconstrained_noise_compensation_is_normals_on_u():
    moments = (float64(0.5, -1.0), float64(1.25, 5.0))
    family = Unconstrained(constraints.positive)
    for got, expected in zip(family.noise_compensation(moments, torch.Size()),
                             Normal().noise_compensation(moments, torch.Size())):
        torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("support", [
    constraints.real, constraints.positive, constraints.unit_interval,
    constraints.interval(0.0, 5.0), constraints.simplex, constraints.greater_than(2.0),
    pyro_constraints.ordered_vector, constraints.corr_cholesky,
], ids=repr)
def test_unconstrained_is_selectable_for_every_continuous_support(support):
    matrix = support is constraints.corr_cholesky
    event_shape = torch.Size([3, 3] if matrix else [3] * support.event_dim)
    family = resolve_family("x", "Unconstrained", support, event_shape)
    assert isinstance(family, Unconstrained) and family.support is support


def test_unconstrained_errors():
    with pytest.raises(ValueError, match=r"Site 'k' has support .* family 'Unconstrained'"):
        resolve_family("k", "Unconstrained", constraints.nonnegative_integer, torch.Size())
    with pytest.raises(ValueError, match=r"Unconstrained: the support .* has no bijection"):
        Unconstrained(constraints.positive_definite)
    with pytest.raises(ValueError, match=r"Site 'x' has support .* does not match"):
        resolve_family("x", Unconstrained(constraints.greater_than(1.0)),
                       constraints.greater_than(2.0), torch.Size())
    # Same kind, other bounds: the instance's own check.
    with pytest.raises(ValueError,
                       match=r"Site 'x' has support .* pass families=\{'x': 'Unconstrained'\}"):
        resolve_family("x", Unconstrained(constraints.interval(0.0, 2.0)),
                       constraints.interval(0.0, 3.0), torch.Size())


def test_unconstrained_ordered_vector_round_trip():
    support = pyro_constraints.ordered_vector
    family = Unconstrained(support)
    z = dist.Normal(0.0, 1.0).sample((2000, 4)).sort(-1).values.double()
    moments = family.init_moments(z, torch.Size([4]))
    params = family.params_from_moments(moments, torch.Size([4]))
    draws = family.distribution(params, torch.Size([4])).sample((10,))
    assert bool(support.check(draws).all())


# ----------------------------------------------------------- OneHotCategorical


def test_one_hot_statistics_and_init():
    family = OneHotCategorical()
    prior = dist.OneHotCategorical(torch.tensor([0.7, 0.3, 0.0]))
    moments = family.init_moments(prior.sample((500,)), torch.Size([3]))
    params = family.params_from_moments(moments, torch.Size([3]))
    # No category without prior draws is left unproposable.
    assert (torch.softmax(params["logits"], -1) > 1e-4).all()
    value = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    torch.testing.assert_close(family.statistics(value, torch.Size([3]))[0], value)
    probs = float64(0.2, 0.3, 0.5)
    (mean,) = family.moments_from_params({"logits": probs.log()}, torch.Size([3]))
    torch.testing.assert_close(mean, probs)
    quantiles = family.quantiles({"logits": probs.log()}, [0.6, 0.9], torch.Size([3]))
    # Each coordinate is Bernoulli(probs_k): 1 where p > 1 - probs_k.
    expected = torch.tensor([[0.0, 0.0, 1.0], [1.0, 1.0, 1.0]], dtype=torch.float64)
    torch.testing.assert_close(quantiles, expected)
