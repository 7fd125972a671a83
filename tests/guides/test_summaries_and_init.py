"""guide.median(), guide.quantiles() and initialisation through Pyro's init strategies."""

import pyro
import pyro.distributions as dist
import pytest
import scipy.stats
import torch
from pyro.infer.autoguide import init_to_median, init_to_value

from pyro_qem import AutoQEM


def model(y):
    mu = pyro.sample("mu", dist.Normal(0.0, 2.0))
    tau = pyro.sample("tau", dist.Gamma(2.0, 2.0))
    p = pyro.sample("p", dist.Beta(2.0, 3.0))
    with pyro.plate("items", 3):
        pyro.sample("obs", dist.Normal(mu, tau * p), obs=y)


Y = torch.tensor([0.3, -0.2, 0.5])


def test_quantiles_and_median_match_scipy():
    guide = AutoQEM(model)
    qs = guide.quantiles([0.05, 0.5, 0.95], Y)
    q = guide.distributions()
    assert set(qs) == {"mu", "tau", "p"}
    expected = {
        "mu": scipy.stats.norm(q["mu"].loc.item(), q["mu"].scale.item()),
        "tau": scipy.stats.gamma(q["tau"].concentration.item(), scale=1 / q["tau"].rate.item()),
        "p": scipy.stats.beta(q["p"].concentration1.item(), q["p"].concentration0.item()),
    }
    for name, ref in expected.items():
        assert qs[name].shape == (3,)
        assert torch.allclose(qs[name].double(), torch.tensor(ref.ppf([0.05, 0.5, 0.95])), rtol=1e-5)
        assert torch.allclose(guide.median()[name].double(), torch.tensor(ref.median()), rtol=1e-5)


def test_quantiles_reject_bad_probabilities():
    guide = AutoQEM(model)
    with pytest.raises(ValueError, match="probabilities must lie in \\(0, 1\\)"):
        guide.quantiles([0.5, 1.0], Y)


def test_init_to_value_sets_each_family_centre():
    values = {"mu": torch.tensor(1.5), "tau": torch.tensor(0.7), "p": torch.tensor(0.2)}
    guide = AutoQEM(model, init_loc_fn=init_to_value(values=values))
    guide.setup(Y)
    q = guide.distributions()
    assert torch.allclose(q["mu"].mean, values["mu"])
    assert torch.allclose(q["tau"].mean, values["tau"], rtol=1e-5)  # Gamma: its mean
    assert torch.allclose(q["p"].mean, values["p"], rtol=1e-5)  # Beta: its mean


def test_init_to_median_strategy_is_accepted():
    guide = AutoQEM(model, init_loc_fn=init_to_median(num_samples=51))
    guide.setup(Y)
    # the prior median of mu is 0 (up to the 51-draw estimate)
    assert abs(guide.distributions()["mu"].mean.item()) < 0.5


def test_default_init_matches_prior_spread_for_heavy_tails():
    def cauchy(y):
        s = pyro.sample("s", dist.HalfCauchy(1.0))
        pyro.sample("obs", dist.Normal(0.0, s), obs=y)

    guide = AutoQEM(cauchy)
    guide.setup(torch.tensor(0.3))
    q = guide.distributions()["s"]
    assert torch.isfinite(q.mean) and 0.1 < q.mean.item() < 10
