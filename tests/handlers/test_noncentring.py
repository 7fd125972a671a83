"""The non-centring rewrite and the search for hierarchical scales."""

import pytest
import torch

import pyro
import pyro.distributions as dist
from pyro import poutine

from pyro.infer.autoguide.initialization import init_to_median

from pyro_qem.handlers.noncentring import NonCentring, noncentring_plan, hierarchical_sites


def hierarchy(y=None):
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    log_tau = pyro.sample("log_tau", dist.Normal(0.0, 1.0))
    with pyro.plate("groups", 3):
        # The scale reaches theta through a computation (exp).
        theta = pyro.sample("theta", dist.Normal(mu, log_tau.exp()))
        fixed = pyro.sample("fixed", dist.Normal(mu, 2.0))
        # Its loc reads a plated latent: standardising would tie it to theta's particles.
        local = pyro.sample("local", dist.Normal(fixed, 1.0))
        pyro.sample("y", dist.Normal(theta + local, 1.0), obs=y)


def vector_model():
    amplitude = pyro.sample("amplitude", dist.LogNormal(0.0, 1.0))
    points = torch.linspace(0, 1, 4)
    cov = amplitude * torch.exp(-(points[:, None] - points) ** 2) + 1e-3 * torch.eye(4)
    pyro.sample("f", dist.MultivariateNormal(torch.zeros(4), covariance_matrix=cov))
    with pyro.plate("rows", 2):
        pyro.sample("h", dist.MultivariateNormal(torch.zeros(4), covariance_matrix=cov))
        pyro.sample("g", dist.Normal(torch.zeros(4), pyro.param("s", torch.ones(4))).to_event(1))


def test_hierarchical_sites_have_a_latent_scale_or_a_loc_read_from_global_latents():
    assert hierarchical_sites(hierarchy, (torch.zeros(3),), {}) == {"theta": "scale", "fixed": "loc"}
    # A pyro.param scale is not a funnel; a covariance built from a latent is, in a
    # plate (f, outside every plate, is left alone).
    assert hierarchical_sites(vector_model, (), {}) == {"h": "scale"}


def test_rewrite_keeps_the_value_a_function_of_the_standardised_latent():
    with NonCentring(["theta", "f"]):
        trace = poutine.trace(hierarchy).get_trace(torch.zeros(3))
        vector = poutine.trace(vector_model).get_trace()
    eps = trace.nodes["theta_decentered"]
    assert not eps["is_observed"] and eps["fn"].batch_shape == (3,)
    assert torch.allclose(eps["fn"].log_prob(eps["value"]),
                          dist.Normal(0.0, 1.0).log_prob(eps["value"]))
    theta = trace.nodes["theta"]
    assert theta["infer"]["_deterministic"] and theta["is_observed"]
    expected = trace.nodes["mu"]["value"] + trace.nodes["log_tau"]["value"].exp() * eps["value"]
    assert torch.allclose(theta["value"], expected)
    # The deterministic site adds no log density.
    assert float(theta["fn"].log_prob(theta["value"]).sum()) == 0.0
    f, z = vector.nodes["f"], vector.nodes["f_decentered"]["value"]
    assert z.shape == (4,)
    scale_tril = dist.MultivariateNormal(
        torch.zeros(4), covariance_matrix=vector.nodes["amplitude"]["value"]
        * torch.exp(-(torch.linspace(0, 1, 4)[:, None] - torch.linspace(0, 1, 4)) ** 2)
        + 1e-3 * torch.eye(4)).scale_tril
    assert torch.allclose(f["value"], scale_tril @ z, atol=1e-6)


def test_rewrite_refuses_sites_it_cannot_standardise():
    def gamma_model():
        rate = pyro.sample("rate", dist.Gamma(2.0, 1.0))
        pyro.sample("x", dist.Gamma(2.0, rate))

    with pytest.raises(ValueError, match="Site 'x' cannot be non-centred: its prior is Gamma"):
        with NonCentring(["x"]):
            gamma_model()
    with pytest.raises(ValueError, match="Site 'y' is observed"):
        with NonCentring(["y"]):
            hierarchy(torch.zeros(3))


def test_plan_keeps_elements_whose_data_dominate_centred():
    # Group 0 has one noisy row, group 1 a thousand precise ones: its posterior is far
    # narrower than tau, so it keeps the centred proposal.
    rows = torch.tensor([0] + [1] * 1000)
    y = torch.randn(1001)

    def model(y):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        tau = pyro.sample("tau", dist.HalfNormal(1.0))
        with pyro.plate("groups", 2):
            a = pyro.sample("a", dist.Normal(mu, tau))
        with pyro.plate("rows", 1001):
            pyro.sample("y", dist.Normal(a[..., rows], 1.0), obs=y)

    plan = noncentring_plan(model, (y,), {}, init_to_median)
    assert list(plan) == ["a"] and plan["a"].tolist() == [False, True]


def test_mixed_plan_centres_some_elements_and_standardises_the_others():
    centred = torch.tensor([True, False, True])
    with NonCentring({"theta": centred}):
        trace = poutine.trace(hierarchy).get_trace(torch.zeros(3))
    eps, theta = trace.nodes["theta_decentered"], trace.nodes["theta"]["value"]
    mu, tau = trace.nodes["mu"]["value"], trace.nodes["log_tau"]["value"].exp()
    expected = torch.where(centred, eps["value"], mu + tau * eps["value"])
    assert torch.allclose(theta, expected)
    # The proposal's prior: the site's own where centred, standard normal elsewhere.
    prior = eps["fn"]
    assert torch.allclose(prior.loc, torch.where(centred, mu, 0.0).expand(3))
    assert torch.allclose(prior.scale, torch.where(centred, tau, 1.0).expand(3))


def _masked(y=None, scale=1.0):
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = pyro.sample("tau", dist.HalfNormal(3.0))
    with pyro.plate("n", 4), poutine.mask(mask=torch.tensor([True, False, True, True])):
        with poutine.scale(scale=scale):
            theta = pyro.sample("theta", dist.Normal(mu, tau))
        pyro.sample("y", dist.Normal(theta, 1.0), obs=y)


def test_masked_or_scaled_sites_are_not_standardised():
    # A mask or scale on theta's density would land on theta_decentered's instead, which
    # differs by the Jacobian log tau: a different model.
    y = torch.zeros(4)
    assert hierarchical_sites(_masked, (y,), {}) == {}
    with pytest.raises(ValueError, match="Site 'theta' is masked.*Leave it out of noncentre"):
        with NonCentring(["theta"]):
            _masked(y)


def test_only_a_subsampled_plate_s_own_scale_is_allowed():
    def model(scale):
        tau = pyro.sample("tau", dist.HalfNormal(1.0))
        with pyro.plate("n", 10, subsample_size=5), poutine.scale(scale=scale):
            pyro.sample("theta", dist.Normal(0.0, tau))

    with NonCentring(["theta"]):
        trace = poutine.trace(model).get_trace(1.0)   # the plate's N / B = 2 only
    assert trace.nodes["theta"]["infer"]["_deterministic"]
    with pytest.raises(ValueError, match=r"Site 'theta' is scaled by 0.5 \(poutine.scale\)"):
        with NonCentring(["theta"]):
            model(0.5)


def test_a_plan_for_other_plate_sizes_is_refused_by_name():
    # The plan was chosen for 2 groups; a run with 3 would pair masks with wrong groups.
    with pytest.raises(ValueError, match=r"Site 'theta': its plates have shape \(3,\) in this run "
                                         r"but \(2,\).*Pass the same data to every step"):
        with NonCentring({"theta": torch.tensor([True, False])}):
            hierarchy(torch.zeros(3))
