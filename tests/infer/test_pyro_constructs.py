"""pyro.factor, poutine.mask, obs_mask and pyro.deterministic inside models."""

import math

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch

from pyro_qem import AutoQEM, Inference


def observed(y):
    mu = pyro.sample("mu", dist.Normal(0.0, 2.0))
    with pyro.plate("items", len(y)):
        theta = pyro.sample("theta", dist.Normal(mu, 1.0))
        pyro.sample("obs", dist.Normal(theta, 0.5), obs=y)


def factored(y):
    mu = pyro.sample("mu", dist.Normal(0.0, 2.0))
    with pyro.plate("items", len(y)):
        theta = pyro.sample("theta", dist.Normal(mu, 1.0))
        pyro.factor("lik", dist.Normal(theta, 0.5).log_prob(y))


Y = torch.tensor([0.7, -1.3, 0.4])


def losses(model, y, steps=5, seed=0):
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    inference = Inference(model, AutoQEM(model), K=10)
    return [inference.step(y) for _ in range(steps)]


def test_factor_equals_observed_site():
    assert losses(factored, Y) == pytest.approx(losses(observed, Y), rel=1e-6)


def test_masked_observations_contribute_nothing():
    """Masking element 2 gives the same log P_hat as a likelihood that leaves it out,
    for the same particles (the latent theta_2 stays, weighted by its prior)."""
    mask = torch.tensor([True, True, False])

    def masked(y):
        mu = pyro.sample("mu", dist.Normal(0.0, 2.0))
        with pyro.plate("items", len(y)):
            theta = pyro.sample("theta", dist.Normal(mu, 1.0))
            with poutine.mask(mask=mask):
                pyro.sample("obs", dist.Normal(theta, 0.5), obs=y)

    def partial(y):
        mu = pyro.sample("mu", dist.Normal(0.0, 2.0))
        with pyro.plate("items", len(y)):
            theta = pyro.sample("theta", dist.Normal(mu, 1.0))
            pyro.factor("lik", torch.where(mask, dist.Normal(theta, 0.5).log_prob(y), 0.0))

    assert losses(masked, Y) == pytest.approx(losses(partial, Y), rel=1e-6)


def test_obs_mask_imputes_missing_values():
    """mu ~ N(0, 1), y_i ~ N(mu, 1); y_4 missing: mu | y ~ N(sum / 4, 1/4) and the
    missing y_4 | y ~ N(sum / 4, 1 + 1/4)."""
    y = torch.tensor([0.5, 1.5, 1.0, float("nan")])
    mask = ~torch.isnan(y)

    def model(y):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("items", 4):
            pyro.sample("obs", dist.Normal(mu, 1.0), obs=torch.nan_to_num(y), obs_mask=mask)

    guide = AutoQEM(model)
    inference = Inference(model, guide, K=30, lr=0.1, average_from=200)
    for _ in range(400):
        inference.step(y)
    q = guide.distributions()
    mean = torch.nan_to_num(y).sum() / 4
    assert abs(q["mu"].mean - mean) < 0.05 * 0.5
    assert abs(q["mu"].stddev / 0.5 - 1) < 0.05
    missing = q["obs_unobserved"]
    assert abs(missing.mean[3] - mean) < 0.05 * math.sqrt(1.25)
    assert abs(missing.stddev[3] / math.sqrt(1.25) - 1) < 0.05



# Masked latents. Pyro drops a masked-out element's prior: where another site reads
# the value it has a flat prior (posterior = likelihood); where nothing reads it
# (obs_mask at observed entries, padding) it is absent. Before, the mask dropped the
# particles' log q along with the prior, which made every masked element's "prior"
# q itself: the fit shrank them step after step (sd 0.13-0.15 against an exact 1.0).

PRIOR_MASK = torch.tensor([True, True, True, False, False])
Y5 = torch.tensor([0.5, -1.0, 2.0, 1.5, -0.5])


def masked_prior(how, mask_data):
    """theta_i ~ N(0, 1) with the prior masked out at i = 3, 4 (by poutine.mask or a
    masked distribution), y_i ~ N(theta_i, 1), its data masked there too if asked."""
    def model(y):
        with pyro.plate("items", 5):
            if how == "poutine":
                with poutine.mask(mask=PRIOR_MASK):
                    theta = pyro.sample("theta", dist.Normal(0.0, 1.0))
            else:
                theta = pyro.sample("theta", dist.Normal(0.0, 1.0).mask(PRIOR_MASK))
            with poutine.mask(mask=PRIOR_MASK if mask_data else True):
                pyro.sample("obs", dist.Normal(theta, 1.0), obs=y)

    return model


def fit_q(model, y, site, steps=600):
    pyro.set_rng_seed(0)
    guide = AutoQEM(model)
    inference = Inference(model, guide, K=30, lr=0.1, average_from=300)
    for _ in range(steps):
        inference.step(y)
    return guide.distributions()[site]


@pytest.mark.parametrize("how", ["poutine", "distribution"])
def test_a_masked_prior_that_is_still_read_is_flat(how):
    """theta_i ~ N(0, 1) (masked out for i = 3, 4), y_i ~ N(theta_i, 1): the posterior
    is N(y_i / 2, 1/2) where the prior counts and N(y_i, 1) where it is masked.
    Tolerance: 300 averaged steps of K = 30 (~9000 weighted draws): a mean within
    0.05 sd and an sd within 5% are 4+ standard errors."""
    q = fit_q(masked_prior(how, mask_data=False), Y5, "theta")
    mean = torch.where(PRIOR_MASK, Y5 / 2, Y5)
    sd = torch.where(PRIOR_MASK, torch.tensor(0.5 ** 0.5), torch.tensor(1.0))
    assert ((q.mean - mean).abs() / sd).max() < 0.05, (q.mean, mean)
    assert ((q.stddev / sd - 1).abs()).max() < 0.05, (q.stddev, sd)


def test_a_global_latent_with_its_prior_masked_off_has_a_flat_prior():
    """mu with poutine.mask(mask=False): mu | y ~ N(mean(y), 1 / sqrt(5))."""
    def model(y):
        with poutine.mask(mask=False):
            mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("items", 5):
            pyro.sample("obs", dist.Normal(mu, 1.0), obs=y)

    q = fit_q(model, Y5, "mu")
    sd = 5 ** -0.5
    assert abs(q.mean - Y5.mean()) / sd < 0.05
    assert abs(q.stddev / sd - 1) < 0.05


@pytest.mark.parametrize("how", ["poutine", "distribution"])
def test_padded_latents_that_nothing_reads_keep_their_q(how):
    """Elements 3 and 4 are padding: prior and data masked out. They are absent (their
    particles keep uniform weights, so q does not move on average) instead of chasing
    a flat posterior (a masked distribution made q widen until it overflowed, after
    500 steps); the real elements are exact."""
    q = fit_q(masked_prior(how, mask_data=True), Y5, "theta")
    assert ((q.mean[:3] - Y5[:3] / 2).abs() / 0.5 ** 0.5).max() < 0.05
    assert ((q.stddev[:3] / 0.5 ** 0.5 - 1).abs()).max() < 0.05
    assert torch.isfinite(q.stddev[3:]).all() and (q.stddev[3:] < 3.0).all()

def test_deterministic_values_are_recorded_with_particle_dims():
    def model(y):
        mu = pyro.sample("mu", dist.Normal(0.0, 2.0))
        with pyro.plate("items", len(y)):
            theta = pyro.sample("theta", dist.Normal(mu, 1.0))
            pyro.deterministic("shifted", theta + 1.0)
            pyro.sample("obs", dist.Normal(theta, 0.5), obs=y)

    inference = Inference(model, AutoQEM(model), K=7)
    run = inference.run_particles(Y)
    sites = {r.name: r for r in run.sites}
    assert sites["shifted"].is_deterministic
    assert torch.equal(sites["shifted"].value, sites["theta"].value + 1.0)
    assert sites["shifted"].value.shape[0] == 7
    assert math.isfinite(inference.step(Y))


def test_obs_mask_imputes_missing_counts_and_leaves_the_observed_entries_alone():
    """rate ~ Gamma(2, 0.5), x_i ~ Poisson(rate), x_2 missing: x_2 | x has mean
    E[rate | x] = 14 / 3.5 = 4 (sd 2.27). The latent x_unobserved is masked out at the
    observed entries and nothing reads it there: absent, so its q stays put (a flat
    prior there let the Poisson rate grow without end, 40+ after 600 steps).
    Tolerance: 300 averaged steps of K = 30: 0.1 sd is 4+ standard errors."""
    y = torch.tensor([3.0, 5.0, 0.0, 4.0])
    observed_mask = torch.tensor([True, True, False, True])

    def model(y):
        rate = pyro.sample("rate", dist.Gamma(2.0, 0.5))
        with pyro.plate("items", 4):
            pyro.sample("x", dist.Poisson(rate), obs=y, obs_mask=observed_mask)

    q = fit_q(model, y, "x_unobserved")
    assert abs(q.mean[2] - 4.0) / 2.27 < 0.1
    assert (q.mean[observed_mask] < 10.0).all()
