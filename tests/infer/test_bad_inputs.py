"""Bad models and data get a clear error naming the site or plate and what to do,
never a traceback from deep inside torch, a NaN, or a silently wrong answer."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer.autoguide import init_to_value
from torch.distributions import constraints

from pyro_qem import AutoQEM, Inference, sample_posterior
from pyro_qem.estimator import estimate
from pyro_qem.estimator.contraction import check_finite
from pyro_qem.estimator.factors import LogFactor
from pyro_qem.families import Normal, support_kind
from pyro_qem.handlers import SiteRecorder
from pyro_qem.infer.checks import particle_run_errors
from pyro_qem.infer.pipeline import run_particles


def step(model, *args, K=5, **kwargs):
    return Inference(model, AutoQEM(model, **kwargs), K=K).step(*args)


def global_mean(y):
    theta = pyro.sample("theta", dist.Normal(0.0, 1.0))
    with pyro.plate("data", 10):
        pyro.sample("obs", dist.Normal(theta, 1.0), obs=y)


def local_means(y):
    with pyro.plate("data", len(y)):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        pyro.sample("obs", dist.Normal(mu, 1.0), obs=y)


# ------------------------------------------------------- 1. data shape vs plates

def test_data_shorter_than_its_plate():
    with pytest.raises(ValueError, match=r"Observed site 'obs' has data of shape \(7,\).*"
                       r"pyro.plate\('data'\) has size 10 but the data has size 7.*len\(data\)"):
        step(global_mean, torch.randn(7))


def test_data_with_an_extra_trailing_dim():
    with pytest.raises(ValueError, match=r"Observed site 'obs' has data of shape \(10, 2\), but "
                       r"expected shape \(10,\).*to_event"):
        step(global_mean, torch.randn(10, 2))


@pytest.mark.parametrize("shape", [(3, 10), (5, 10)])
def test_data_with_an_extra_leading_dim(shape):
    # With K equal to the extra dim (3 here, K = 3) the data used to pair with the
    # particles silently.
    with pytest.raises(ValueError, match=r"Observed site 'obs' has data of shape .*leading "
                       r"dims .* belong to no pyro.plate.*pyro.plate\('obs_plate'"):
        step(global_mean, torch.randn(shape), K=3)


def test_data_vector_without_a_plate():
    def model(y):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        pyro.sample("obs", dist.Normal(mu, 1.0), obs=y)

    with pytest.raises(ValueError, match=r"Observed site 'obs' has data of shape \(3,\).*pyro.plate"):
        step(model, torch.randn(3), K=3)


def test_distribution_batch_shape_against_its_plate():
    def model(y):
        theta = pyro.sample("theta", dist.Normal(0.0, 1.0))
        with pyro.plate("data", 10):
            pyro.sample("obs", dist.Normal(theta + torch.zeros(7), 1.0), obs=y)

    with pytest.raises(ValueError, match=r"plate\('data'\) at site obs dim -1, 10 vs 7.*Size the plate"):
        AutoQEM(model).setup(torch.randn(7))


@pytest.mark.parametrize("obs", [1.0, [1.0, 2.0]])
def test_data_that_is_not_a_tensor(obs):
    def model(y):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        pyro.sample("obs", dist.Normal(mu, 1.0), obs=y)

    with pytest.raises(TypeError, match="Observed site 'obs' has obs= of type .*torch.as_tensor"):
        AutoQEM(model).setup(obs)


def test_data_that_is_not_a_tensor_after_set_up():
    """Set-up checks the first call's data; later calls (steps, outputs) get the same
    error instead of an AttributeError from deep inside the estimator."""
    def model(y):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("d", len(y)):
            pyro.sample("obs", dist.Normal(mu, 1.0), obs=y)

    y = torch.randn(5)
    inference = Inference(model, AutoQEM(model), K=5)
    inference.step(y)
    for bad in (y.numpy(), y.tolist()):
        with pytest.raises(TypeError, match="Observed site 'obs' has obs= of type"):
            inference.step(bad)
    with pytest.raises(TypeError, match="Observed site 'obs' has obs= of type list"):
        sample_posterior(inference, y.tolist(), num_samples=3)


def test_broadcast_data_is_still_accepted():
    # A value that broadcasts to the plate (Pyro's semantics) is not an error.
    assert torch.isfinite(torch.tensor(step(global_mean, torch.randn(1, 10))))


# -------------------------------------------------- 2. data outside the support

def likelihood_model(likelihood):
    def model(y):
        rate = pyro.sample("rate", dist.Gamma(2.0, 1.0))
        with pyro.plate("data", len(y)):
            pyro.sample("obs", likelihood(rate), obs=y)

    return model


@pytest.mark.parametrize("likelihood, y, example", [
    (lambda r: dist.HalfNormal(r), [1.0, -1.0, 2.0], r"HalfNormal.*>= 0.0\), e.g. \[-1.0\]"),
    (lambda r: dist.Exponential(r), [1.0, -2.0, 2.0], r"Exponential.*e.g. \[-2.0\]"),
    (lambda r: dist.Gamma(r, 1.0), [-1.0, -3.0, 2.0], r"Gamma.*e.g. \[-1.0, -3.0\]"),
    (lambda r: dist.Poisson(r), [1.0, 1.5, 2.0], r"Poisson.*integers >= 0\), e.g. \[1.5\]"),
    (lambda r: dist.Bernoulli(probs=r / (1 + r)), [1.0, 2.0, 0.0], r"Bernoulli.*0 or 1\), e.g. \[2.0\]"),
])
@pytest.mark.parametrize("validate", [True, False])
def test_data_outside_the_support(likelihood, y, example, validate):
    # Without validation a non-integer Poisson count gave a finite, wrong estimate.
    with pyro.validation_enabled(validate), pytest.raises(
            ValueError, match=r"Observed site 'obs' has \d value\(s\) outside the support.*" + example
            + ".*obs_mask"):
        AutoQEM(likelihood_model(likelihood)).setup(torch.tensor(y))


def test_masked_out_values_are_not_checked():
    def model(y, mask):
        rate = pyro.sample("rate", dist.Gamma(2.0, 1.0))
        with pyro.plate("data", len(y)), pyro.poutine.mask(mask=mask):
            pyro.sample("obs", dist.Poisson(rate), obs=y)

    AutoQEM(model).setup(torch.tensor([1.0, 1.5, 2.0]), torch.tensor([True, False, True]))


def test_support_with_bounds_from_a_latent_is_not_checked_at_set_up():
    # Uniform(0, b) with b latent: y = 3 is outside (0, b) at b's set-up value, but
    # inside it for larger b, so the data are fine.
    def model(y):
        b = pyro.sample("b", dist.Gamma(2.0, 1.0))
        with pyro.plate("data", len(y)):
            pyro.sample("obs", dist.Uniform(0.0, b), obs=y)

    AutoQEM(model, init_loc_fn=init_to_value(values={"b": torch.tensor(1.0)})).setup(torch.tensor([3.0]))



def test_data_outside_the_support_of_some_particles_weighs_them_zero():
    """k ~ Binomial(N, p) with N ~ Poisson(10) latent: particles with N < k put the data
    outside the support. They have zero weight (Pyro's validation raised before, from
    the first step). Exact: N - k | k ~ Poisson(10 (1 - p)), mean 11 and sd sqrt(7)
    (q, a Poisson, has the mean; its sd is sqrt(mean), so the spread is checked on
    joint draws). Tolerance: 4000 draws (effective >= 3200): the mean's SE is 0.018
    sd and the sd's 1.3%; 0.1 sd and 10% allow for q's own error too."""
    def model(k):
        n = pyro.sample("N", dist.Poisson(10.0))
        pyro.sample("k", dist.Binomial(n, 0.3), obs=k)

    pyro.set_rng_seed(0)
    guide = AutoQEM(model)
    inference = Inference(model, guide, K=30, lr=0.1, average_from=300)
    for _ in range(600):
        inference.step(torch.tensor(4.0))
    sd = 7 ** 0.5
    assert abs(guide.distributions()["N"].mean - 11.0) / sd < 0.1
    draws = sample_posterior(inference, torch.tensor(4.0), num_samples=4000)["N"].double()
    assert draws.min() >= 4
    assert abs(draws.mean() - 11.0) / sd < 0.1 and abs(draws.std() / sd - 1) < 0.1

# ------------------------------------------------------- 3. interval supports

def test_uniform_with_a_latent_bound():
    def model(y):
        b = pyro.sample("b", dist.Gamma(4.0, 2.0))
        x = pyro.sample("x", dist.Uniform(0.0, b))
        pyro.sample("obs", dist.Normal(x, 1.0), obs=y)

    with pytest.raises(ValueError, match=r"Site 'x'.*pyro.deterministic"):
        step(model, torch.tensor(1.0))


class IntervalNormal(Normal):
    """A q for an interval(0, 2) site, as an interval family would match one."""

    name = "IntervalNormal"
    support = constraints.interval(0.0, 2.0)


def test_dependent_support_is_refused_even_with_a_matching_family():
    # Once a family accepts the set-up support, the bounds' particle dims give the
    # dependence away at the first draw.
    def model(y):
        b = pyro.sample("b", dist.Gamma(4.0, 2.0))
        x = pyro.sample("x", dist.Uniform(0.0, b))
        pyro.sample("obs", dist.Normal(x, 1.0), obs=y)

    guide = AutoQEM(model, init_loc_fn=init_to_value(values={"b": torch.tensor(2.0)}),
                    families={"x": IntervalNormal})
    with pytest.raises(ValueError, match=r"Site 'x' has a dependent support.*Interval.*Uniform\(0, b\)"
                       r".*pyro.deterministic\('x', low \+ \(high - low\) \* u, event_dim=0\)"):
        Inference(model, guide, K=5).step(torch.tensor(1.0))


@pytest.mark.parametrize("prior, advice", [
    (lambda s: dist.Pareto(s, 3.0), r"GreaterThanEq.*pyro.deterministic\('x', low \+ y, event_dim=0\)"),
    (lambda s: dist.Binomial(s.round() + 1, 0.5), r"IntegerInterval.*Poisson\(rate \* p\)"),
])
def test_other_dependent_supports(prior, advice):
    def model(y):
        s = pyro.sample("s", dist.Gamma(4.0, 2.0))
        x = pyro.sample("x", prior(s))
        pyro.sample("obs", dist.Normal(x, 1.0), obs=y)

    if support_kind(prior(torch.tensor(2.0)).support) is None:
        pytest.skip("no family for this support yet")
    with pytest.raises(ValueError, match=r"Site 'x' has a dependent support.*" + advice):
        step(model, torch.tensor(1.0))


def test_bounds_that_vary_over_a_plate_are_fixed():
    # One bound per plate element (data, not a latent) is a fixed support.
    def model(y):
        with pyro.plate("data", 3):
            x = pyro.sample("x", dist.Uniform(torch.zeros(3), torch.tensor([1.0, 2.0, 3.0])))
            pyro.sample("obs", dist.Normal(x, 1.0), obs=y)

    if support_kind(constraints.interval(0.0, 5.0)) is None:
        pytest.skip("no interval family yet")
    assert torch.isfinite(torch.tensor(step(model, torch.ones(3))))


def test_uniform_with_fixed_bounds_fits_or_names_the_site_and_the_families():
    # Fixed bounds are a support an interval family may handle; where none does, the
    # error lists the families by support and how to reparameterise.
    def model(y):
        x = pyro.sample("x", dist.Uniform(0.0, 5.0))
        pyro.sample("obs", dist.Normal(x, 1.0), obs=y)

    if support_kind(constraints.interval(0.0, 5.0)) is None:
        with pytest.raises(ValueError, match=r"Site 'x' has support Interval.*Families by support"
                           r".*Reparameterise"):
            step(model, torch.tensor(1.0))
    else:
        assert torch.isfinite(torch.tensor(step(model, torch.tensor(1.0))))


# -------------------------------------------- 4. distributions q cannot replace

def test_delta_latent():
    def model(y):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        x = pyro.sample("x", dist.Delta(torch.tensor(1.0)))
        pyro.sample("obs", dist.Normal(x + mu, 1.0), obs=y)

    with pytest.raises(ValueError, match=r"Latent site 'x' has a Delta.*pyro.deterministic\('x', value\)"):
        step(model, torch.tensor(1.0))


# ------------------------------------------- 5. control flow on sampled values

def branching(y):
    z = pyro.sample("z", dist.Normal(0.0, 1.0))
    mu = 1.0 if z > 0 else -1.0
    pyro.sample("obs", dist.Normal(mu, 1.0), obs=y)


def item_call(y):
    z = pyro.sample("z", dist.Normal(0.0, 1.0))
    pyro.sample("obs", dist.Normal(z.item(), 1.0), obs=y)


def run_checked(model, *args, K=5):
    """A particle run as :func:`pyro_qem.infer.pipeline.run_particles` does it, with
    its model call inside :func:`particle_run_errors`."""
    guide = AutoQEM(model)
    guide.setup(*args)
    recorder = SiteRecorder()
    with recorder, guide.particles(K), particle_run_errors(recorder, K):
        model(*args)


@pytest.mark.parametrize("model", [branching, item_call])
def test_control_flow_on_a_sampled_value(model):
    with pytest.raises(ValueError, match=r"failed after latent site 'z' while running with K=5.*"
                       r"control flow on a sampled value.*torch.where"):
        run_checked(model, torch.tensor(1.0))


def test_other_particle_errors_keep_their_type_and_name_the_site():
    def model(y):
        theta = pyro.sample("theta", dist.Normal(0.0, 1.0))
        with pyro.plate("data", 10):
            pyro.sample("obs", dist.Normal(theta, 1.0).expand([10]), obs=y)

    with pytest.raises(RuntimeError, match=r"expand.*failed after latent site 'theta'.*Vindex"):
        run_checked(model, torch.randn(10))



def indexed_from_the_left(county, y, num_counties):
    """``a[county]`` as written for SVI: it runs with one value per site, but with K
    particles on the left the index lands on the particle dim."""
    with pyro.plate("county", num_counties):
        a = pyro.sample("a", dist.Normal(0.0, 1.0))
    with pyro.plate("house", len(county)):
        pyro.sample("y", dist.Normal(a[county], 1.0), obs=y)


@pytest.mark.parametrize("num_counties, K, error", [
    (5, 30, ValueError),   # the index picks particles: a shape that does not fit the plate
    (35, 30, IndexError),  # more counties than particles: out of the particle dim's range
    (40, 50, ValueError),  # it fits the plate's shape: no index of the county dim is seen
])
def test_an_index_from_the_left_says_to_index_from_the_right(num_counties, K, error):
    county = torch.arange(40) % num_counties
    with pytest.raises(error, match=r"a\[\.\.\., county\].*a\[county\]"):
        step(indexed_from_the_left, county, torch.randn(40), num_counties, K=K)

def test_errors_of_pyro_qem_pass_through_unchanged():
    recorder = SiteRecorder()
    with pytest.raises(ValueError, match="^Site 'a' is wrong$"):
        with particle_run_errors(recorder, 5):
            raise ValueError("Site 'a' is wrong")


def test_control_flow_in_a_step():
    with pytest.raises(ValueError, match=r"latent site 'z'.*torch.where"):
        step(branching, torch.tensor(1.0))


# --------------------------------------------------- 6. nothing to infer

def test_model_with_only_observed_sites():
    def model(y):
        pyro.sample("obs", dist.Normal(0.0, 1.0), obs=y)

    with pytest.raises(ValueError, match=r"no latent sample sites.*nothing to infer.*Predictive"):
        step(model, torch.tensor(1.0))


def test_model_without_sample_sites():
    with pytest.raises(ValueError, match=r"no latent sample sites.*log_prob_sum"):
        step(lambda y: None, torch.tensor(1.0))


def test_model_with_only_parameters_is_still_fitted():
    def model(y):
        m = pyro.param("m", torch.tensor(0.0))
        with pyro.plate("data", 3):
            pyro.sample("obs", dist.Normal(m, 1.0), obs=y)

    pyro.clear_param_store()
    inference = Inference(model, AutoQEM(model), K=3, optim=pyro.optim.Adam({"lr": 0.01}))
    assert torch.isfinite(torch.tensor(inference.step(torch.randn(3))))


# ---------------------------------------------- 7. plate sizes after set-up

@pytest.mark.parametrize("size", [12, 8])
def test_plate_of_a_latent_site_changes_size(size):
    inference = Inference(local_means, AutoQEM(local_means), K=3)
    inference.step(torch.randn(10))
    with pytest.raises(ValueError, match=rf"pyro.plate\('data'\) has size {size} in this run but had "
                       r"size 10 when the guide was set up.*'mu'.*create a new guide"):
        inference.step(torch.randn(size))
    with pytest.raises(ValueError, match=r"pyro.plate\('data'\) has size"):
        inference.evaluate_loss(torch.randn(size))


def test_plate_of_data_only_may_change_size():
    # The q's of global sites do not depend on the number of data points, so a
    # held-out set of another size can be scored.
    def model(y):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("data", len(y)):
            pyro.sample("obs", dist.Normal(mu, 1.0), obs=y)

    inference = Inference(model, AutoQEM(model), K=3)
    inference.step(torch.randn(10))
    assert torch.isfinite(torch.tensor(inference.evaluate_loss(torch.randn(12))))


# -------------------------------------------------- 8. log_prob errors

def test_log_prob_error_names_the_site_and_shapes_without_particles():
    # Data of another length after set-up: the set-up checks have passed, so the
    # distribution's own error is the first to see it.
    guide = AutoQEM(global_mean)
    guide.setup(torch.randn(10))
    run = run_particles(global_mean, guide, 4, (torch.randn(7),), {})
    with pytest.raises(ValueError, match=r"Observed site 'obs': Normal.log_prob failed.*value has "
                       r"shape \(7,\) and the distribution batch shape \(10,\) and event shape \(\)"):
        estimate(run.sites, run.structure, 4)


def test_log_prob_error_at_a_step_after_set_up():
    model = likelihood_model(lambda r: dist.HalfNormal(r))
    inference = Inference(model, AutoQEM(model), K=4)
    inference.step(torch.tensor([1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match=r"Observed site 'obs': HalfNormal.log_prob failed.*support.*"
                       r"value has shape \(3,\) and the distribution batch shape \(3,\)"):
        inference.step(torch.tensor([1.0, -2.0, 3.0]))


def test_log_prob_error_keeps_its_type():
    class NoDensity(dist.Normal):
        def log_prob(self, value):
            raise NotImplementedError("no density")

    def model(y):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("data", 3):
            pyro.sample("obs", NoDensity(mu, 1.0), obs=y)

    with pytest.raises(NotImplementedError, match=r"Observed site 'obs': NoDensity.log_prob failed "
                       r"\(NotImplementedError: no density\)") as info:
        step(model, torch.randn(3))
    assert isinstance(info.value.__cause__, NotImplementedError)


# ----------------------------------------------- 9. non-finite log P_hat

def test_minus_inf_names_the_site():
    # A likelihood whose support depends on a latent (not checked at set-up): y = 100
    # lies outside (0, b) for every particle of b.
    def model(y):
        b = pyro.sample("b", dist.Gamma(2.0, 2.0))
        with pyro.plate("data", len(y)):
            pyro.sample("obs", dist.Uniform(0.0, b), obs=y)

    with pyro.validation_enabled(False), pytest.raises(
            FloatingPointError, match=r"log P_hat is -inf: site 'obs' has log density -inf for every "
                                      r"particle at 1 of 2 plate elements.*support"):
        step(model, torch.tensor([0.5, 100.0]))


def test_nan_names_the_site():
    def model(y):
        sigma = pyro.sample("sigma", dist.Normal(0.0, 1.0))
        pyro.sample("obs", dist.Normal(0.0, sigma), obs=y)

    with pyro.validation_enabled(False), pytest.raises(
            FloatingPointError, match=r"log P_hat is nan: site 'obs' has NaN log density"):
        step(model, torch.tensor(1.0), K=20,
             init_loc_fn=init_to_value(values={"sigma": torch.tensor(1.0)}))


def poisson_glm(X, y):
    a = pyro.sample("a", dist.Normal(torch.tensor(0.0, dtype=X.dtype), 100.0))
    b = pyro.sample("b", dist.Normal(torch.zeros(X.shape[1], dtype=X.dtype), 10.0).to_event(1))
    with pyro.plate("rows", X.shape[0]):
        pyro.sample("y", dist.Poisson((a + (X * b).sum(-1)).exp()), obs=y)


def test_rates_that_overflow_at_a_wide_start_advise_a_narrower_one():
    """A Normal(0, 100) intercept under exp(): the initial q's draws give rates of
    exp(+-200), whose Poisson log densities are NaN. The error says to start narrower,
    and that start fits (intercept within 0.1 of the simulated 1.0 with 2000 rows)."""
    generator = torch.Generator().manual_seed(4)
    X = 0.3 * torch.randn(2000, 10, generator=generator)
    y = torch.poisson((1.0 + X @ (0.5 * torch.randn(10, generator=generator))).exp(),
                      generator=generator)
    pyro.set_rng_seed(0)
    with pyro.validation_enabled(False), pytest.raises(
            FloatingPointError, match=r"site 'y' has NaN log density.*init_scale=0\.1"):
        Inference(poisson_glm, AutoQEM(poisson_glm), K=30).step(X, y)
    guide = AutoQEM(poisson_glm, init_scale=0.1)
    inference = Inference(poisson_glm, guide, K=30)
    for _ in range(100):
        inference.step(X, y)
    assert abs(guide.distributions()["a"].mean.item() - 1.0) < 0.1


def test_check_finite_names_only_the_guilty_factor():
    ok = LogFactor("mu", torch.zeros(3), "a", frozenset())
    dead = LogFactor("obs", torch.tensor([[0.0, float("-inf")], [1.0, float("-inf")]]), "ab",
                     frozenset("b"))
    with pytest.raises(FloatingPointError, match=r"site 'obs' has log density -inf for every "
                       r"particle at 1 of 2 plate elements\. No combination"):
        check_finite(torch.tensor(float("-inf")), [ok, dead])
    check_finite(torch.tensor(0.0), [ok, dead])


def test_data_of_another_length_at_a_step_names_the_site():
    inference = Inference(global_mean, AutoQEM(global_mean), K=4)
    inference.step(torch.randn(10))
    with pytest.raises(ValueError, match=r"Observed site 'obs'"):
        inference.step(torch.randn(7))


@pytest.mark.parametrize("enumerate_z", [True, False])
def test_mixture_components_in_a_plate_indexed_by_the_assignment_are_refused_clearly(enumerate_z):
    """Pyro's mixture tutorial form: each row reads every component's particles
    through its latent assignment, which no plated contraction can sum; the error
    says so and gives the vector-site form."""
    from pyro.ops.indexing import Vindex

    def gmm(y):
        weights = pyro.sample("weights", dist.Dirichlet(torch.ones(2)))
        with pyro.plate("components", 2):
            locs = pyro.sample("locs", dist.Normal(0.0, 2.0))
        with pyro.plate("data", len(y)):
            z = pyro.sample("z", dist.Categorical(weights),
                            infer={"enumerate": "parallel"} if enumerate_z else {})
            pyro.sample("obs", dist.Normal(Vindex(locs)[..., z], 1.0), obs=y)

    with pytest.raises(ValueError, match=r"index is itself a latent site.*to_event"):
        step(gmm, torch.tensor([-2.0, -1.5, 1.0, 2.0, 1.7]))


def test_stacking_latents_of_different_groups_says_to_group_them():
    def model(y):
        a = pyro.sample("a", dist.Normal(0.0, 1.0))
        b = pyro.sample("b", dist.Normal(0.0, 1.0))
        ab = torch.stack([a, b], -1)
        with pyro.plate("data", len(y)):
            pyro.sample("y", dist.Normal(ab[..., 0] + ab[..., 1], 1.0), obs=y)

    with pytest.raises(RuntimeError, match=r"stack expects.*put them in one group"):
        step(model, torch.randn(4))
    # Grouped, they share a particle dim and stack.
    assert math.isfinite(step(model, torch.randn(4), groups=[["a", "b"]]))


def test_a_hand_written_log_density_of_data_says_how_to_keep_the_particle_dims():
    def model(y):
        mu = pyro.sample("mu", dist.Normal(0.0, 3.0))
        pyro.factor("f", dist.Normal(mu, 1.0).log_prob(y).sum())

    with pytest.raises(ValueError, match=r"not broadcastable.*failed after latent site 'mu'.*"
                                         r"observe the data in a pyro.plate"):
        step(model, torch.randn(10))


def test_a_latents_event_dims_used_as_a_plates_batch_dims_are_named():
    """A shape-(1,) vector latent broadcast over a plate runs in Pyro; under QEM its
    particles would land left of their dim, and the error says whose and what to do."""
    def model(y):
        mu = pyro.sample("mu", dist.Normal(torch.zeros(1), 2.0).to_event(1))
        with pyro.plate("d", len(y)):
            pyro.sample("y", dist.Normal(mu, 1.0), obs=y)

    with pytest.raises(ValueError, match=r"Site 'y' uses the event dims of latent 'mu' "
                                         r"\(event shape \(1,\)\).*mu\[\.\.\., 0\]"):
        Inference(model, AutoQEM(model), K=4).step(torch.randn(6))


def test_a_constant_bound_broadcast_against_a_latent_parameter_is_not_dependent():
    """Binomial(10, p) with p latent: its support's bound 10 is broadcast to p's
    particle shape but has one value there, so the site is fitted (against exact
    enumeration over n and a grid over p) instead of refused as a dependent support."""
    y = torch.tensor([6.0, 7.0])

    def model(y):
        p = pyro.sample("p", dist.Beta(2.0, 2.0))
        n = pyro.sample("n", dist.Binomial(10, p))
        with pyro.plate("d", len(y)):
            pyro.sample("y", dist.Normal(n, 1.0), obs=y)

    grid = torch.linspace(1e-4, 1 - 1e-4, 4001, dtype=torch.float64)
    counts = torch.arange(11, dtype=torch.float64)
    log_joint = (dist.Beta(2.0, 2.0).log_prob(grid)[:, None]
                 + dist.Binomial(10, grid[:, None]).log_prob(counts)
                 + dist.Normal(counts, 1.0).log_prob(y.double()[:, None, None]).sum(0))
    w = (log_joint - log_joint.max()).exp()
    w = w / w.sum()
    mean_n = (w * counts).sum()
    sd_n = ((w * counts ** 2).sum() - mean_n ** 2).sqrt()
    pyro.set_rng_seed(0)
    inference = Inference(model, AutoQEM(model), K=30, lr=0.1, average_from=150)
    for _ in range(300):
        inference.step(y)
    n = sample_posterior(inference, y, num_samples=2000)["n"].double()
    # >= 1600 effective draws: SE of the mean 0.025 sd, of the sd ~0.02.
    assert abs(n.mean() - mean_n) / sd_n < 0.15
    assert abs(n.std() / sd_n - 1) < 0.1


def test_parameters_that_break_a_constraint_for_some_particle_combinations_are_explained():
    def model(y):
        low = pyro.sample("low", dist.Normal(0.0, 1.0))
        high = pyro.sample("high", dist.Normal(1.0, 1.0))  # overlaps low
        u = pyro.sample("u", dist.Uniform(low, high))
        pyro.sample("y", dist.Normal(u, 1.0), obs=y)

    pyro.set_rng_seed(0)
    with pytest.raises(ValueError, match=r"after latent site 'high'.*parameter 'low' of a "
                                         r"Uniform is outside its constraint.*high = low \+ width"):
        Inference(model, AutoQEM(model), K=30).step(torch.tensor(1.0))


def test_a_global_vector_looked_up_along_its_event_dim_in_a_plate_gets_advice():
    """mu_vec[..., group] with mu_vec a .to_event(1) latent outside the plates: its event
    dim becomes the plate's and its particles move; the error says to sample it in a
    plate of its own (an indexed group)."""
    group = torch.arange(6) % 3

    def model(y):
        mu_vec = pyro.sample("mu_vec", dist.Normal(torch.zeros(3), 5.0).to_event(1))
        with pyro.plate("el", 6):
            pyro.sample("y", dist.Normal(mu_vec[..., group], 1.0), obs=y)

    def with_children(y):
        mu_vec = pyro.sample("mu_vec", dist.Normal(torch.zeros(3), 5.0).to_event(1))
        with pyro.plate("el", 6):
            theta = pyro.sample("theta", dist.Normal(mu_vec[..., group], 1.0))
            pyro.sample("y", dist.Normal(theta, 0.5), obs=y)

    for m in (model, with_children):
        with pytest.raises(ValueError, match=r"'mu_vec' is a vector latent outside every plate.*"
                                             r"with pyro.plate\('group', 3\)"):
            Inference(m, AutoQEM(m), K=4).step(torch.randn(6))
