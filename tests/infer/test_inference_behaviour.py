"""Inference behaviour beyond exact answers: invariance, resuming, shapes, dtypes."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer.autoguide import init_to_value

from pyro_qem import AutoQEM, Inference
from tests.helpers.models import radon_data, radon_like


def losses(c, dtype, steps=50):
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    x, y = radon_data(dtype)
    guide = AutoQEM(radon_like)
    inference = Inference(radon_like, guide, K=10, lr=0.3)
    return torch.tensor([inference.step(x, y, c) for _ in range(steps)], dtype=torch.float64)


@pytest.mark.parametrize("dtype, rtol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_rescaling_a_latent_leaves_the_losses_unchanged(dtype, rtol):
    """Particles of the rescaled site are exactly the original ones divided by c (same
    RNG draws, moments transform affinely, floors are relative), so only rounding
    differs: ~1e-16 relative per operation in float64, ~1e-7 in float32, amplified by
    the 50 EM steps and the ~100-term sums (measured: 3e-16 and 2e-7 relative)."""
    original = losses(1.0, dtype)
    rescaled = losses(1000.0, dtype)
    assert torch.allclose(rescaled, original, rtol=rtol, atol=0)


def test_gradient_free_update_keeps_state_in_param_store_and_resumes(tmp_path):
    x, y = radon_data(torch.float32)
    guide = AutoQEM(radon_like)
    inference = Inference(radon_like, guide, K=10, lr=0.2)
    for _ in range(20):
        inference.step(x, y)
    pyro.get_param_store().save(tmp_path / "params.pt")
    rng = torch.get_rng_state()
    expected = [inference.step(x, y) for _ in range(3)]

    pyro.clear_param_store()
    pyro.get_param_store().load(tmp_path / "params.pt")
    torch.set_rng_state(rng)
    resumed = Inference(radon_like, AutoQEM(radon_like), K=10, lr=0.2)
    assert [resumed.step(x, y) for _ in range(3)] == expected


def test_new_inference_on_same_guide_continues():
    x, y = radon_data(torch.float32)
    guide = AutoQEM(radon_like)
    first = Inference(radon_like, guide, K=10, lr=0.3)
    for _ in range(30):
        first.step(x, y)
    before = {k: v.mean.clone() for k, v in guide.distributions().items()}
    second = Inference(radon_like, guide, K=10, lr=0.01)
    second.step(x, y)
    after = guide.distributions()
    # A continued fit moves by at most lr times the moment change: no re-initialisation.
    for name in before:
        assert torch.allclose(after[name].mean, before[name], atol=0.05)
    assert guide.state.num_updates() == 31


def test_distributions_have_model_shapes():
    x, y = radon_data(torch.float32)
    guide = AutoQEM(radon_like)
    Inference(radon_like, guide, K=5).step(x, y)
    q = guide.distributions()
    assert q["global_mean"].batch_shape == ()
    assert q["state_mean"].batch_shape == (4, 1)
    assert q["beta"].batch_shape == (4, 1)
    assert q["state_mean"].mean.dtype == torch.float32


def test_float64_model_gives_float64_particles():
    x, y = radon_data(torch.float64)
    guide = AutoQEM(radon_like)
    inference = Inference(radon_like, guide, K=5)
    run = inference.run_particles(x, y)
    latent = [r for r in run.sites if not r.is_observed]
    assert all(r.value.dtype == torch.float64 for r in latent)
    assert guide.distributions()["beta"].mean.dtype == torch.float64


def test_vector_site_posterior():
    """z ~ N(0, 1)^3 (one vector site), y_n ~ N(z, 1) for n = 1..5: z | y ~ N(sum y / 6, 1/6)."""
    y = torch.tensor([[0.5, -1.0, 2.0]] * 5) + torch.randn(5, 3)

    def model(y):
        z = pyro.sample("z", dist.Normal(torch.zeros(3), 1.0).to_event(1))
        with pyro.plate("data", 5):
            pyro.sample("obs", dist.Normal(z, 1.0).to_event(1), obs=y)

    guide = AutoQEM(model)
    inference = Inference(model, guide, K=30, lr=0.1, average_from=100)
    for _ in range(300):
        inference.step(y)
    q = guide.distributions()["z"]
    assert q.event_shape == (3,) and q.batch_shape == ()
    sd = (1 / 6) ** 0.5
    assert torch.allclose(q.mean, y.sum(0) / 6, atol=0.05 * sd)
    assert torch.allclose(q.stddev, torch.full((3,), sd), rtol=0.05)


def test_init_loc_and_scale():
    x, y = radon_data(torch.float32)
    values = {"global_mean": torch.tensor(2.0), "state_mean": torch.full((4, 1), -1.0),
              "beta": torch.zeros(4, 1)}
    guide = AutoQEM(radon_like, init_loc_fn=init_to_value(values=values),
                    init_scale={"state_mean": 0.01})
    guide.setup(x, y)
    q = guide.distributions()
    assert torch.allclose(q["global_mean"].mean, torch.tensor(2.0))
    assert torch.allclose(q["state_mean"].mean, torch.full((4, 1), -1.0))
    assert torch.allclose(q["state_mean"].stddev, torch.full((4, 1), 0.01))


def test_float32_priors_with_float64_data():
    def model(y):
        mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
        with pyro.plate("items", 5):
            pyro.sample("obs", dist.Normal(mu, 1.0), obs=y)

    y = torch.randn(5, dtype=torch.float64)
    inference = Inference(model, AutoQEM(model), K=10)
    assert torch.isfinite(torch.tensor(inference.step(y)))


def normal_mean(y):
    z = pyro.sample("z", dist.Normal(0.0, 1.0))
    with pyro.plate("data", y.shape[0]):
        pyro.sample("y", dist.Normal(z, 1.0), obs=y)


def one_step_state(compensate: bool, lr: float):
    """The (z, z2) state after one step from the same start and random numbers."""
    pyro.clear_param_store()
    pyro.set_rng_seed(3)
    y = torch.tensor([0.3, 1.2, 0.8, -0.1, 0.9])
    guide = AutoQEM(normal_mean)
    guide.setup(y)
    first, second = guide.state.moments("z", ("z", "z2"))
    variance = (second - first ** 2).item()
    Inference(normal_mean, guide, K=10, lr=lr, noise_compensation=compensate).step(y)
    return guide.state.moments("z", ("z", "z2")), variance


def test_noise_compensation_adds_lr_squared_sum_of_squared_weights_times_variance():
    lr = 0.5
    (z_plain, z2_plain), variance = one_step_state(False, lr)
    (z_comp, z2_comp), _ = one_step_state(True, lr)
    assert torch.equal(z_plain, z_comp)  # the mean's update is untouched
    # E z^2 gains lr * (lr * sum_k w_k^2 * Var_q z), with 1/K <= sum_k w_k^2 <= 1.
    added = (z2_comp - z2_plain).item()
    assert lr ** 2 * variance / 10 <= added <= lr ** 2 * variance


def student_t_regression(x, y):
    a = pyro.sample("a", dist.Normal(0.0, 5.0))
    b = pyro.sample("b", dist.Normal(0.0, 5.0))
    nu = pyro.sample("nu", dist.Gamma(2.0, 0.1))
    s = pyro.sample("s", dist.HalfNormal(2.0))
    with pyro.plate("data", len(x)):
        pyro.sample("y", dist.StudentT(nu, a + b * x, s), obs=y)


def test_a_likelihood_over_several_global_groups_warns_once_with_the_grouping(monkeypatch):
    """Four global latents in separate particle dims make the likelihood K^4 x N: at
    K = 30 and 60 rows, 2.8 s a step. The first step says so and how to group them
    (the threshold is lowered here so that the test's factor, 4^4 x 20, stays small)."""
    import pyro_qem.estimator.memory as memory
    from pyro_qem import SlowStepWarning

    monkeypatch.setattr(memory, "COSTLY_ENTRIES", 4 ** 4 * 20)
    x = torch.linspace(-1, 1, 20)
    y = 1.0 + 2.0 * x
    inference = Inference(student_t_regression, AutoQEM(student_t_regression), K=4)
    with pytest.warns(SlowStepWarning, match=r"Site 'y'.*5,120 entries.*K\^4 = 256.*"
                                             r"groups=\[\['a', 'b', 'nu', 's'\]\]"):
        inference.step(x, y)
    inference.step(x, y)  # once: a second warning would fail here (warnings are errors)
    grouped = AutoQEM(student_t_regression, groups=[["a", "b", "nu", "s"]])
    Inference(student_t_regression, grouped, K=4).step(x, y)  # K x N: no warning


def three_levels(y):
    """mu, tau -> beta_year -> alpha_(year, borough) -> y_(year, borough, row): a
    three-level hierarchy whose middle and lower scales AutoQEM non-centres."""
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    tau = pyro.sample("tau", dist.HalfNormal(1.0))
    with pyro.plate("year", y.shape[0], dim=-3):
        beta = pyro.sample("beta", dist.Normal(mu, tau))
        sigma = pyro.sample("sigma", dist.HalfNormal(1.0))
        with pyro.plate("borough", y.shape[1], dim=-2):
            alpha = pyro.sample("alpha", dist.Normal(beta, sigma))
            with pyro.plate("row", y.shape[2], dim=-1):
                pyro.sample("y", dist.Normal(alpha, 1.0), obs=y)


def test_non_centred_proposals_that_multiply_a_costly_likelihood_say_so_once(monkeypatch):
    """Non-centred, alpha reads the year group's and the global group's particles: the
    likelihood spans three particle groups (K^3 per row) where centred proposals span
    two (bus at K = 30: 510 against 16 ms a step). The first step says which sites and
    what noncentre=None costs; centred, the same step is quiet (threshold lowered so
    that the test's factor, 4^3 x 24, stays small)."""
    import pyro_qem.estimator.memory as memory
    from pyro_qem import SlowStepWarning

    monkeypatch.setattr(memory, "COSTLY_ENTRIES", 4 ** 3 * 24)
    y = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(0))
    guide = AutoQEM(three_levels, groups=[["mu", "tau"], ["beta", "sigma"]])
    inference = Inference(three_levels, guide, K=4)
    with pytest.warns(SlowStepWarning, match=r"Site 'y'.*1,536 entries.*K\^3 = 64.*"
                                             r"\['alpha', 'beta'\].*noncentre=None"):
        inference.step(y)
    inference.step(y)  # once
    centred = AutoQEM(three_levels, groups=[["mu", "tau"], ["beta", "sigma"]], noncentre=None)
    Inference(three_levels, centred, K=4).step(y)  # K^2 per row: no warning
