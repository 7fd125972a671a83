"""Weighted moments and joint draws against the exact posterior of a Gaussian hierarchy,
and the reverse walk against the source-term marginals of the same particle run."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from scipy import stats

from tests.helpers.models import mixture
from tests.helpers.fitted_models import (
    J,
    Fitted,
    fit_model,
    hierarchy,
    hierarchy_data,
    hierarchy_posterior,
    restore,
)
from pyro_qem import AutoQEM, Inference
from pyro_qem.outputs import (
    moment_runs,
    posterior_moments,
    resample_run,
    sample_guide,
    sample_posterior,
)
from pyro_qem.outputs.sites import weighted_run


@pytest.fixture(scope="module")
def fitted() -> Fitted:
    return fit_model(hierarchy, hierarchy_data(), steps=200)


def test_weighted_moments_match_exact_posterior_within_monte_carlo_error(fitted):
    inference = restore(fitted)
    y = hierarchy_data()
    mean, cov = hierarchy_posterior(y)
    num_runs = 20
    first = moment_runs(inference, y, num_runs=num_runs)
    second = moment_runs(inference, y, fn=lambda z: z ** 2, num_runs=num_runs)
    assert first["mu"].shape == (num_runs,) and first["theta"].shape == (num_runs, J, 1)
    for name, exact_mean, exact_sq in [
        ("mu", mean[:1], cov[0, 0] + mean[0] ** 2),
        ("theta", mean[1:], cov.diagonal()[1:] + mean[1:] ** 2),
    ]:
        for runs, exact in ((first[name], exact_mean), (second[name], exact_sq)):
            estimate = runs.mean(0).reshape(-1)
            stderr = runs.std(0).reshape(-1) / num_runs ** 0.5
            # 4 standard errors; 0.002 covers the self-normalised estimator's O(1/K)
            # bias at a converged q, which is far below the run-to-run noise here.
            assert ((estimate - exact).abs() < 4 * stderr + 0.002).all(), (name, estimate, exact)


def test_moments_statistic_per_site_and_event_dims(fitted):
    inference = restore(fitted)
    y = hierarchy_data()
    out = posterior_moments(inference, y, num_runs=2, sites=["theta"],
                            fn={"theta": lambda z: torch.stack([z, z ** 2], -1)})
    assert set(out) == {"theta"} and out["theta"].shape == (J, 1, 2)
    assert (out["theta"][..., 1] > out["theta"][..., 0] ** 2).all()
    with pytest.raises(ValueError, match="no statistic for site 'mu'"):
        posterior_moments(inference, y, num_runs=1, fn={"theta": torch.exp})
    with pytest.raises(ValueError, match=r"sites: \['nope'\] are not latent"):
        posterior_moments(inference, y, sites=["nope"])
    with pytest.raises(ValueError, match="must keep the particle and batch dims"):
        posterior_moments(inference, y, num_runs=1, fn=lambda z: z.sum())
    with pytest.raises(ValueError, match="num_runs must be a positive int"):
        posterior_moments(inference, y, num_runs=0)


def test_joint_draws_pass_ks_against_exact_posterior(fitted):
    """Each draw from a fresh set of particles, so the draws are independent; the
    derived theta_1 - mu checks the coupling that the mean-field q lacks."""
    inference = restore(fitted)
    y = hierarchy_data()
    mean, cov = hierarchy_posterior(y)
    draws = sample_posterior(inference, y, num_samples=300)
    assert draws["mu"].shape == (300,) and draws["theta"].shape == (300, J, 1)
    diff_sd = (cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]).sqrt()
    checks = {
        "mu": (draws["mu"], mean[0], cov[0, 0].sqrt()),
        "theta_1": (draws["theta"][:, 0, 0], mean[1], cov[1, 1].sqrt()),
        "theta_4": (draws["theta"][:, 3, 0], mean[4], cov[4, 4].sqrt()),
        "theta_1 - mu": (draws["theta"][:, 0, 0] - draws["mu"], mean[1] - mean[0], diff_sd),
    }
    p_values = {name: stats.kstest(x.double().numpy(), stats.norm(m.item(), s.item()).cdf).pvalue
                for name, (x, m, s) in checks.items()}
    # Four tests at a 0.2% level each (seeded, so the outcome is fixed).
    assert min(p_values.values()) > 0.002, p_values


def test_resampled_indices_follow_source_term_marginals(fitted):
    """Many draws from ONE particle run: the frequency of each particle, per plate
    element, is its source-term weight (binomial error)."""
    inference = restore(fitted)
    run = weighted_run(inference, (hierarchy_data(),), {}, "test")
    num = 1000
    draws = resample_run(run, num)
    for name in ("mu", "theta"):
        particles = run.records[name].value.reshape(run.records[name].value.shape[0], -1)
        picked = draws[name].reshape(num, -1)
        index = (picked[:, None, :] == particles[None]).float().argmax(1)
        freq = torch.nn.functional.one_hot(index, particles.shape[0]).double().mean(0)
        weight = run.weights[run.structure.group_of(name).index].reshape(particles.shape[0], -1).T
        se = (weight * (1 - weight) / num).sqrt()
        assert ((freq - weight).abs() < 5 * se + 1e-3).all(), name


def test_guide_draws_have_leading_sample_dim(fitted):
    restore(fitted)
    draws = sample_guide(fitted.guide, 50)
    assert draws["mu"].shape == (50,) and draws["theta"].shape == (50, J, 1)
    with pytest.raises(ValueError, match="num_samples must be a positive int"):
        sample_guide(fitted.guide, 0)
    with pytest.raises(TypeError, match="guide must be a pyro_qem QEM guide"):
        sample_guide(object(), 10)


def subsampled(y):
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    with pyro.plate("data", len(y), subsample_size=5) as index:
        pyro.sample("obs", dist.Normal(mu, 1.0), obs=y[index])


def test_subsampled_plate_is_refused_with_advice():
    y = torch.randn(20)
    inference = Inference(subsampled, AutoQEM(subsampled), K=5)
    with pytest.raises(ValueError, match=r"pyro.plate\('data'\) is subsampled \(5 of 20"):
        posterior_moments(inference, y, num_runs=1)


def test_enumerated_site_draws_follow_its_marginal():
    """An exactly enumerated discrete site is resampled over its support like any
    particle dim: draw frequencies match its weighted posterior probabilities."""
    y = torch.tensor([-2.0, -1.5, 0.2, 1.0, 2.5])
    inference = Inference(mixture, AutoQEM(mixture), K=10, lr=0.2)
    for _ in range(30):
        inference.step(y)
    run = weighted_run(inference, (y,), {}, "test")
    probs = run.weights[run.structure.group_of("c").index].reshape(2, -1)[1]
    draws = resample_run(run, 400)
    assert draws["locs"].shape == (400, 2) and draws["c"].shape == (400, 5)
    se = (probs * (1 - probs) / 400).sqrt()
    assert ((draws["c"].double().mean(0) - probs).abs() < 5 * se + 1e-3).all()


def test_guide_draws_skip_enumerated_sites_and_refuse_them_by_name():
    y = torch.tensor([-2.0, -1.5, 0.2, 1.0, 2.5])
    inference = Inference(mixture, AutoQEM(mixture), K=5)
    inference.step(y)
    draws = sample_guide(inference.guide, 7)
    assert set(draws) == {"locs"} and draws["locs"].shape == (7, 2)
    with pytest.raises(ValueError, match=r"\['c'\] are enumerated exactly.*sample_posterior"):
        sample_guide(inference.guide, 7, sites=["c"])
    # The joint draws of the same sites, enumerated site included, come quickly too.
    joint = sample_posterior(inference, y, num_samples=50)
    assert joint["c"].shape == (50, 5) and joint["locs"].shape == (50, 2)
