"""Family.quantiles: marginal quantiles per coordinate, checked against scipy's ppf."""

from typing import Callable, Dict

import numpy as np
import pytest
import scipy.stats
import torch

from tests.helpers.family_cases import CASES, make_case
from pyro_qem.families import FAMILIES, Family, Params

PROBS = [0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99]
CONTINUOUS_RTOL = 1e-8


def _np(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().double().numpy()


def _sigmoid(params: Params) -> np.ndarray:
    return _np(torch.sigmoid(params["logits"]))


def _softmax(params: Params) -> np.ndarray:
    return _np(torch.softmax(params["logits"], -1))


def _categorical_ppf(p: np.ndarray, family: Family, params: Params) -> np.ndarray:
    """The smallest label whose CDF reaches p, by a sorted search per row."""
    cdf = np.cumsum(_softmax(params), -1)
    rows = cdf.reshape(-1, cdf.shape[-1])
    found = [np.searchsorted(row, p.reshape(-1), side="left") for row in rows]
    labels = np.minimum(np.stack(found, -1), cdf.shape[-1] - 1)
    return labels.reshape((len(p),) + cdf.shape[:-1])


def _mvn_sd(params: Params) -> np.ndarray:
    tril = params["scale_tril"]
    return np.sqrt(np.diagonal(_np(tril @ tril.transpose(-1, -2)), axis1=-2, axis2=-1))


def _dirichlet_ppf(p: np.ndarray, params: Params) -> np.ndarray:
    a = _np(params["concentration"])
    return scipy.stats.beta.ppf(p, a, a.sum(-1, keepdims=True) - a)


# scipy's ppf of the same distribution, at p of shape (n, 1, ..., 1).
SCIPY: Dict[str, Callable[[np.ndarray, Family, Params], np.ndarray]] = {
    "Normal": lambda p, f, q: scipy.stats.norm.ppf(p, _np(q["loc"]), _np(q["scale"])),
    "MultivariateNormal": lambda p, f, q: scipy.stats.norm.ppf(p, _np(q["loc"]), _mvn_sd(q)),
    "LogNormal": lambda p, f, q: scipy.stats.lognorm.ppf(
        p, _np(q["scale"]), scale=np.exp(_np(q["loc"]))
    ),
    "Gamma": lambda p, f, q: scipy.stats.gamma.ppf(
        p, _np(q["concentration"]), scale=1 / _np(q["rate"])
    ),
    "InverseGamma": lambda p, f, q: scipy.stats.invgamma.ppf(
        p, _np(q["concentration"]), scale=_np(q["rate"])
    ),
    "Exponential": lambda p, f, q: scipy.stats.expon.ppf(p, scale=1 / _np(q["rate"])),
    "HalfNormal": lambda p, f, q: scipy.stats.halfnorm.ppf(p, scale=_np(q["scale"])),
    "Beta": lambda p, f, q: scipy.stats.beta.ppf(
        p, _np(q["concentration1"]), _np(q["concentration0"])
    ),
    "Dirichlet": lambda p, f, q: _dirichlet_ppf(p, q),
    "Bernoulli": lambda p, f, q: scipy.stats.bernoulli.ppf(p, _sigmoid(q)),
    "Binomial": lambda p, f, q: scipy.stats.binom.ppf(p, _np(f.total_count), _sigmoid(q)),
    "Poisson": lambda p, f, q: scipy.stats.poisson.ppf(p, _np(q["rate"])),
    "Categorical": _categorical_ppf,
    "Multinomial": lambda p, f, q: scipy.stats.binom.ppf(p, f.total_count, _softmax(q)),
    "ScaledBeta": lambda p, f, q: scipy.stats.beta.ppf(
        p, _np(q["concentration1"]), _np(q["concentration0"]), loc=_np(f.low),
        scale=_np(f.high - f.low),
    ),
    # The case's support is greater_than(2): a LogNormal shifted by 2.
    "Unconstrained": lambda p, f, q: scipy.stats.lognorm.ppf(
        p, _np(q["scale"]), loc=2.0, scale=np.exp(_np(q["loc"]))
    ),
    "OneHotCategorical": lambda p, f, q: scipy.stats.bernoulli.ppf(p, _softmax(q)),
    # On the arc loc +- pi, as VonMises.inverse_cdf.
    "VonMises": lambda p, f, q: scipy.stats.vonmises.ppf(p, _np(q["concentration"]), loc=_np(q["loc"])),
}
DISCRETE = {"Bernoulli", "Binomial", "Poisson", "Categorical", "Multinomial", "OneHotCategorical"}


def test_every_family_is_covered():
    assert set(SCIPY) == set(FAMILIES) == set(CASES)


@pytest.mark.parametrize("name", sorted(SCIPY))
def test_quantiles_match_scipy(name):
    family, event_shape, params = make_case(name)
    q = family.distribution(params, event_shape)
    result = family.quantiles(params, torch.tensor(PROBS, dtype=torch.float64), event_shape)
    assert result.shape == (len(PROBS),) + q.batch_shape + q.event_shape
    assert result.dtype == torch.float64
    p = np.asarray(PROBS).reshape((-1,) + (1,) * (result.dim() - 1))
    # InverseGamma's tiny shapes put some quantiles past float64's range (inf).
    with np.errstate(divide="ignore", over="ignore"):
        reference = SCIPY[name](p, family, params)
    expected = torch.tensor(np.broadcast_to(reference, result.shape), dtype=torch.float64)
    rtol = 0.0 if name in DISCRETE else CONTINUOUS_RTOL
    # VonMises inverts its CDF on a grid (no closed form): within 5e-5 radians (its
    # case's spreads reach the whole circle, 2 pi).
    atol = 5e-5 if name == "VonMises" else 0.0
    torch.testing.assert_close(result, expected, rtol=rtol, atol=atol)


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_sequence_and_a_tensor_give_the_same_quantiles(name):
    family, event_shape, params = make_case(name)
    from_list = family.quantiles(params, [0.2, 0.7], event_shape)
    from_tensor = family.quantiles(
        params, torch.tensor([0.2, 0.7], dtype=torch.float64), event_shape
    )
    torch.testing.assert_close(from_list, from_tensor, rtol=0.0, atol=0.0)


def test_float32_params_give_float64_quantiles():
    family, event_shape, params = make_case("Gamma")
    params32 = {key: value.float() for key, value in params.items()}
    result = family.quantiles(params32, [0.5], event_shape)
    assert result.dtype == torch.float64
    expected = family.quantiles({k: v.double() for k, v in params32.items()}, [0.5], event_shape)
    torch.testing.assert_close(result, expected, rtol=0.0, atol=0.0)


def test_vector_site_broadcasts_its_params():
    family = FAMILIES["Normal"]()
    params = {"loc": torch.zeros(3, dtype=torch.float64), "scale": torch.tensor(2.0)}
    result = family.quantiles(params, [0.5, 0.975], torch.Size([3]))
    assert result.shape == (2, 3)
    torch.testing.assert_close(result[1], torch.full((3,), 3.919927969080108, dtype=torch.float64))


@pytest.mark.parametrize("probs", [[0.5, 1.0], [0.0], [-0.1, 0.5], [], [float("nan")]])
@pytest.mark.parametrize("name", sorted(CASES))
def test_probabilities_outside_the_open_unit_interval_are_rejected(name, probs):
    family, event_shape, params = make_case(name)
    with pytest.raises(ValueError, match=r"quantiles: probabilities must lie in \(0, 1\)"):
        family.quantiles(params, probs, event_shape)


def test_check_probs_returns_a_float64_vector():
    probs = Family.check_probs([0.25, 0.5])
    assert probs.dtype == torch.float64 and probs.tolist() == [0.25, 0.5]
