"""A QEM guide outside Inference is an ordinary Pyro guide: Predictive, poutine.trace
and SVI work on it, and joint draws feed Predictive(posterior_samples=...)."""

import pyro
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer import SVI, Predictive, Trace_ELBO
from pyro.optim import Adam
from pyro.poutine.util import site_is_subsample

from tests.helpers.fitted_models import I, J, fit_model, hierarchy, hierarchy_data, restore
from pyro_qem.outputs import sample_posterior


@pytest.fixture(scope="module")
def fitted():
    return fit_model(hierarchy, hierarchy_data(), steps=60)


@pytest.mark.parametrize("parallel", [False, True])
def test_predictive_with_guide(fitted, parallel):
    restore(fitted)
    predictive = Predictive(hierarchy, guide=fitted.guide, num_samples=20, parallel=parallel,
                            return_sites=["mu", "theta", "y"])
    samples = predictive(None)
    assert samples["mu"].reshape(20, -1).shape == (20, 1)
    assert samples["theta"].reshape(20, -1).shape == (20, J)
    assert samples["y"].shape == (20, J, I)
    q = fitted.guide.distributions()["mu"]
    assert abs(samples["mu"].mean() - q.mean) < 5 * q.stddev / 20 ** 0.5


def test_trace_of_guide_has_latent_sites_only(fitted):
    restore(fitted)
    trace = poutine.trace(fitted.guide).get_trace(hierarchy_data())
    sites = [name for name, site in trace.nodes.items()
             if site["type"] == "sample" and not site_is_subsample(site)]
    assert sites == ["mu", "theta"]
    assert trace.nodes["theta"]["value"].shape == (J, 1)


def test_svi_steps_on_the_guide(fitted):
    restore(fitted)
    store = pyro.get_param_store()
    before = {name: value.detach().clone() for name, value in store.items()}
    svi = SVI(hierarchy, fitted.guide, Adam({"lr": 0.01}), Trace_ELBO())
    losses = [svi.step(hierarchy_data()) for _ in range(3)]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert any(not torch.equal(before[name], store[name].detach()) for name in before)


def test_joint_draws_feed_predictive(fitted):
    inference = restore(fitted)
    draws = sample_posterior(inference, hierarchy_data(), num_samples=10, draws_per_run=5)
    samples = Predictive(hierarchy, posterior_samples=draws)(None)
    assert samples["y"].shape == (10, J, I)
