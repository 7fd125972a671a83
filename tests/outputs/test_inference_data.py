"""ArviZ conversion: groups, shapes, dims named after plates, and ArviZ's own functions."""

import matplotlib

matplotlib.use("Agg")

import arviz as az  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import pyro  # noqa: E402
import pyro.distributions as dist  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from tests.helpers.fitted_models import J, I, fit_model, hierarchy, hierarchy_data, restore  # noqa: E402
from pyro_qem.infer.fit import FitHistory  # noqa: E402
from pyro_qem import AutoQEM, Inference  # noqa: E402
from pyro_qem.outputs import sample_guide, to_inference_data  # noqa: E402


@pytest.fixture(scope="module")
def fitted():
    return fit_model(hierarchy, hierarchy_data(), steps=100)


def test_groups_shapes_and_coords(fitted):
    inference = restore(fitted)
    history = FitHistory()
    for loss in (3.0, 2.0, 1.0):
        history.record(loss)
    labels = ["a", "b", "c", "d"]
    idata = to_inference_data(inference, hierarchy_data(), num_samples=40, num_chains=2,
                              history=history, coords={"groups": labels})
    for group in ("posterior", "posterior_predictive", "log_likelihood", "observed_data",
                  "sample_stats"):
        assert hasattr(idata, group), group
    posterior = idata.posterior
    assert posterior["mu"].dims == ("chain", "draw")
    assert posterior["theta"].dims == ("chain", "draw", "groups")
    assert posterior["theta"].shape == (2, 20, J)
    assert list(posterior["groups"].values) == labels
    assert idata.log_likelihood["y"].dims == ("chain", "draw", "groups", "items")
    assert idata.posterior_predictive["y"].shape == (2, 20, J, I)
    assert idata.observed_data["y"].dims == ("groups", "items")
    stats = idata.sample_stats
    assert stats["loss"].dims == ("qem_step",) and stats["loss"].shape == (3,)
    assert stats["ess_theta"].dims == ("groups",)
    assert list(stats["groups"].values) == labels
    assert "chain" not in stats.dims and stats.attrs["K"] == 30


@pytest.mark.filterwarnings("ignore:The figure layout has changed:UserWarning")
def test_arviz_functions_run(fitted):
    inference = restore(fitted)
    idata = to_inference_data(inference, hierarchy_data(), num_samples=100)
    summary = az.summary(idata)
    assert "theta[0]" in summary.index
    # az.summary rounds to 3 decimals.
    assert summary.loc["mu", "mean"] == pytest.approx(float(idata.posterior["mu"].mean()), abs=1e-3)
    loo = az.loo(idata, pointwise=True)
    assert loo.pareto_k.shape == (J, I)
    axes = az.plot_trace(idata, var_names=["mu", "theta"])
    assert axes.shape == (2, 2)
    az.plot_forest(idata, var_names=["theta"])
    plt.close("all")


def test_guide_draws_and_argument_checks(fitted):
    inference = restore(fitted)
    y = hierarchy_data()
    idata = to_inference_data(inference, y, draws=sample_guide(fitted.guide, 30))
    assert idata.posterior["theta"].shape == (1, 30, J)
    with pytest.raises(ValueError, match="method must be 'joint' or 'guide'"):
        to_inference_data(inference, y, method="mcmc")
    with pytest.raises(ValueError, match="num_chains must be a positive int dividing"):
        to_inference_data(inference, y, draws=sample_guide(fitted.guide, 30), num_chains=4)
    draws = sample_guide(fitted.guide, 10)
    with pytest.raises(ValueError, match=r"coords\['groups'\] has 3 labels.*has 4 elements"):
        to_inference_data(inference, y, draws=draws, coords={"groups": ["a", "b", "c"]})
    with pytest.raises(ValueError, match=r"coords\['group'\]: the model has no pyro.plate\('group'\)"):
        to_inference_data(inference, y, draws=draws, coords={"group": list("abcd")})


def test_a_factor_likelihood_scores_but_is_neither_data_nor_predicted():
    """pyro.factor terms (a hand-written likelihood) enter log_likelihood; they have no
    values to show in observed_data or to replicate in posterior_predictive."""
    y = torch.tensor([0.3, -1.1, 0.8, 1.9])

    def model(y):
        mu = pyro.sample("mu", dist.Normal(0.0, 2.0))
        with pyro.plate("d", len(y)):
            pyro.factor("f", dist.Normal(mu, 1.0).log_prob(y))

    pyro.set_rng_seed(0)
    inference = Inference(model, AutoQEM(model), K=10)
    for _ in range(5):
        inference.step(y)
    data = to_inference_data(inference, y, num_samples=20)
    # Nothing else is observed: the groups are empty, and ArviZ leaves them out.
    assert "observed_data" not in data.groups() and "posterior_predictive" not in data.groups()
    mu = torch.as_tensor(data.posterior["mu"].values).reshape(-1)
    expected = dist.Normal(mu[:, None], 1.0).log_prob(y)
    got = torch.as_tensor(data.log_likelihood["f"].values).reshape(20, 4)
    assert torch.allclose(got, expected.to(got.dtype), atol=1e-5)


SIGMA8 = torch.tensor([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])
Y8 = torch.tensor([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0])


def schools(sigma, y=None):
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = pyro.sample("tau", dist.HalfCauchy(5.0))
    with pyro.plate("school", 8):
        theta = pyro.sample("theta", dist.Normal(mu, tau))
        pyro.sample("obs", dist.Normal(theta, sigma), obs=y)


def test_guide_draws_of_a_non_centred_model_carry_the_site_itself():
    """method='guide' draws q, which holds theta_decentered: theta is computed from the
    drawn mu, tau and theta_decentered (it used to fail asking for draws of theta)."""
    pyro.set_rng_seed(0)
    guide = AutoQEM(schools)
    inference = Inference(schools, guide, K=10)
    for _ in range(20):
        inference.step(SIGMA8, Y8)
    assert guide.noncentred == ("theta",)
    data = to_inference_data(inference, SIGMA8, Y8, num_samples=40, method="guide")
    post = {k: torch.as_tensor(data.posterior[k].values).reshape(40, -1).double()
            for k in ("mu", "tau", "theta", "theta_decentered")}
    expected = post["mu"] + post["tau"] * post["theta_decentered"]
    assert torch.allclose(post["theta"], expected, atol=1e-4)
    assert "obs" in data.log_likelihood


def test_guide_draws_of_an_enumerated_model_are_refused_by_name():
    from tests.helpers.models import mixture

    y = torch.tensor([-2.0, -1.5, 0.2, 1.0, 2.5])
    inference = Inference(mixture, AutoQEM(mixture), K=5)
    inference.step(y)
    with pytest.raises(ValueError, match=r"method='guide'.*enumerated site\(s\) \['c'\].*method='joint'"):
        to_inference_data(inference, y, num_samples=10, method="guide")


def test_guide_draws_carry_deterministic_sites_like_the_joint_ones():
    """method='guide' left pyro.deterministic sites out (method='joint' has them): they
    are computed from q's draws, here each row's county mean read through the index."""
    county = torch.tensor([0, 0, 1, 2, 2])
    x = torch.linspace(-1.0, 1.0, 5)
    y = torch.tensor([0.3, -0.2, 1.1, 0.4, 0.8])

    def rows(y, county, x):
        mu = pyro.sample("mu", dist.Normal(0.0, 2.0))
        with pyro.plate("county", 3):
            a = pyro.sample("a", dist.Normal(mu, 1.0))
        with pyro.plate("row", 5):
            pyro.deterministic("m", a[..., county] + 2 * x, event_dim=0)
            pyro.sample("y", dist.Normal(a[..., county], 0.5), obs=y)

    pyro.set_rng_seed(0)
    inference = Inference(rows, AutoQEM(rows), K=10, lr=0.1)
    for _ in range(5):
        inference.step(y, county, x)
    for method in ("joint", "guide"):
        posterior = to_inference_data(inference, y, county, x, num_samples=20, method=method).posterior
        assert set(posterior.data_vars) == {"mu", "a", "m"}, method
        a = torch.as_tensor(posterior["a"].values).reshape(20, 3)
        m = torch.as_tensor(posterior["m"].values).reshape(20, 5)
        assert torch.allclose(m, a[:, county] + 2 * x, atol=1e-5), method
