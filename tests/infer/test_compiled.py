"""The compiled step (``Inference(compile=...)``) is the eager step: same seed, same
particles, same fit, to 1e-10 in float64 (the replayed graph runs the same kernels, so
the trace mode is exact; a fused graph only reorders float64 sums). What it cannot
cover falls back to eager steps with one warning.

Most tests fix ``update="moments"``, so that every step from the second can be recorded;
with the default ``"auto"`` the steps that refit a degenerate group by regression run
eagerly (the last test)."""

import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_qem import AutoQEM, Inference
from pyro_qem.infer import CompileFallbackWarning, RobbinsMonro


def model(y, scale=2.0):
    """mu, tau -> theta_j -> y_ji, with a positive scale parameter (LogNormal family)."""
    mu = pyro.sample("mu", dist.Normal(torch.zeros((), dtype=y.dtype), 5.0))
    tau = pyro.sample("tau", dist.LogNormal(torch.zeros((), dtype=y.dtype), 1.0))
    with pyro.plate("groups", y.shape[0], dim=-2):
        theta = pyro.sample("theta", dist.Normal(mu, tau))
        with pyro.plate("items", y.shape[1], dim=-1):
            pyro.sample("y", dist.Normal(theta, scale), obs=y)


def data(seed=0, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    return (3.0 + 2.0 * torch.randn(6, 1, generator=generator)
            + torch.randn(6, 4, generator=generator)).to(dtype)


def fit(compile, steps, y, *, model=model, seed=0, **kwargs):
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    guide = AutoQEM(model)
    kwargs.setdefault("update", "moments")  # every step recordable (see test_auto_update_...)
    inference = Inference(model, guide, K=7, compile=compile, **kwargs)
    losses = [inference.step(*(y if isinstance(y, tuple) else (y,))) for _ in range(steps)]
    return losses, {k: v.detach().clone() for k, v in guide.state.tensors.items()}, inference


def assert_same_fit(a, b, tol):
    (losses_a, state_a, _), (losses_b, state_b, _) = a, b
    assert torch.allclose(torch.tensor(losses_a, dtype=torch.float64),
                          torch.tensor(losses_b, dtype=torch.float64), rtol=tol, atol=0)
    assert state_a.keys() == state_b.keys()
    for key in state_a:
        assert torch.allclose(state_a[key], state_b[key], rtol=tol, atol=tol), key


def test_trace_mode_replays_the_eager_fit_exactly_with_averaging_and_a_schedule():
    y = data()
    kwargs = dict(lr=RobbinsMonro(0.5, 3, 0.6), average_from=6)
    eager = fit(False, 20, y, **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CompileFallbackWarning)
        traced = fit("trace", 20, y, **kwargs)
    inference = traced[2]
    # Two recordings (before and after the average starts), each made at the second
    # step with its key and checked at the third; the rest replayed.
    assert len(inference.compiled.graphs) == 2
    assert inference.compiled.compiled_steps == 12
    assert eager[0] == traced[0]
    for key in eager[1]:
        assert torch.equal(eager[1][key], traced[1][key]), key


@pytest.mark.parametrize("mode", [True, "cudagraphs"])
def test_inductor_mode_equals_the_eager_fit_in_float64(mode):
    # "cudagraphs" on a CPU is the inductor compilation with the outputs copied out.
    y = data()
    eager = fit(False, 12, y, lr=0.2, average_from=8)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CompileFallbackWarning)
        compiled = fit(mode, 12, y, lr=0.2, average_from=8)
    assert compiled[2].compiled.compiled_steps == 4
    assert_same_fit(eager, compiled, 1e-10)


def test_new_data_of_the_same_shape_are_inputs_not_constants():
    ys = [data(seed) for seed in range(6)]

    def run(compile):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        guide = AutoQEM(model)
        inference = Inference(model, guide, K=7, lr=0.3, compile=compile, update="moments")
        losses = [inference.step(y) for y in ys + ys]
        return losses, inference

    eager, (traced, inference) = run(False)[0], run("trace")
    assert inference.compiled.compiled_steps == 8
    assert eager == traced


def fits_with_changes(step):
    """Eager and traced fits whose ``step(inference, i)`` changes something between
    steps: their losses, and the traced inference."""
    losses = {}
    for compile in (False, "trace"):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        inference = Inference(model, AutoQEM(model), K=7, lr=0.3, compile=compile, update="moments")
        losses[compile] = [step(inference, i) for i in range(10)]
    return losses[False], losses["trace"], inference


def test_a_changed_non_tensor_argument_is_recorded_anew():
    y = data()
    eager, traced, inference = fits_with_changes(
        lambda inference, i: inference.step(y, 2.0 if i < 5 else 1.5))
    assert eager == traced
    assert len(inference.compiled.graphs) == 2


def test_python_control_flow_on_data_falls_back_once_and_fits_eagerly():
    def branching(y):
        mu = pyro.sample("mu", dist.Normal(torch.zeros((), dtype=y.dtype), 5.0))
        shift = 1.0 if y.sum() > 0 else -1.0  # a Python decision on a tensor's value
        with pyro.plate("items", y.shape[0]):
            pyro.sample("y", dist.Normal(mu + shift, 1.0), obs=y)

    y = data().reshape(-1)
    eager = fit(False, 6, y, model=branching, lr=0.3)
    with pytest.warns(CompileFallbackWarning, match="could not be recorded") as record:
        traced = fit("trace", 6, y, model=branching, lr=0.3)
    assert len([w for w in record if w.category is CompileFallbackWarning]) == 1
    assert traced[2].compiled.disabled is not None
    assert eager[0] == traced[0]


@pytest.mark.filterwarnings("ignore::pyro_qem.infer.SubsampleWarning")
def test_minibatches_are_not_compiled_and_say_so():
    def minibatched(y):
        mu = pyro.sample("mu", dist.Normal(torch.zeros((), dtype=y.dtype), 5.0))
        with pyro.plate("items", y.shape[0], subsample_size=6) as rows:
            pyro.sample("y", dist.Normal(mu, 1.0), obs=y[rows])

    with pytest.warns(CompileFallbackWarning, match="subsampled plate"):
        fit("trace", 4, data().reshape(-1), model=minibatched, lr=0.3)


def test_pyro_params_with_an_optimiser_are_not_compiled():
    def with_param(y):
        shift = pyro.param("shift", torch.zeros((), dtype=y.dtype))
        mu = pyro.sample("mu", dist.Normal(shift, 5.0))
        with pyro.plate("items", y.shape[0]):
            pyro.sample("y", dist.Normal(mu, 1.0), obs=y)

    with pytest.warns(CompileFallbackWarning, match="optim"):
        fit("trace", 4, data().reshape(-1), model=with_param, lr=0.3,
            optim=pyro.optim.Adam({"lr": 0.01}))


def test_the_regression_update_is_not_compiled_and_says_so():
    with pytest.warns(CompileFallbackWarning, match="update='regression'"):
        fit("trace", 4, data(), update="regression")


def test_a_non_finite_replayed_step_raises_the_eager_error_and_keeps_the_state():
    y = data()
    pyro.set_rng_seed(0)
    guide = AutoQEM(model)
    inference = Inference(model, guide, K=7, lr=0.3, compile="trace", update="moments")
    for _ in range(4):
        inference.step(y)
    assert inference.compiled.graphs
    before = {k: v.detach().clone() for k, v in guide.state.tensors.items()}
    bad = y.clone()
    bad[0, 0] = float("inf")
    with pytest.raises((ValueError, FloatingPointError)):
        inference.step(bad)
    for key, value in before.items():
        assert torch.equal(guide.state.tensors[key], value), key


def test_bad_compile_argument_is_refused():
    with pytest.raises(ValueError, match="compile must be"):
        Inference(model, AutoQEM(model), compile="fast")


def test_a_step_contracted_in_chunks_is_not_compiled_and_says_so():
    from tests.estimator.test_chunked_contraction import held_bytes, particle_terms, three_globals

    y = torch.randn(200, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    budget = held_bytes(particle_terms(three_globals, (y,), K=10)[2]) + 2 ** 21
    pyro.clear_param_store()
    inference = Inference(three_globals, AutoQEM(three_globals), K=10, lr=0.5, max_memory=budget,
                          compile="trace")
    with pytest.warns(CompileFallbackWarning, match="chunks"):
        for _ in range(3):
            inference.step(y)


def county_model(county, y, num_counties=5):
    """Indexed groups: each row reads its county's intercept through an index column."""
    mu = pyro.sample("mu", dist.Normal(torch.zeros((), dtype=y.dtype), 5.0))
    with pyro.plate("county", num_counties):
        a = pyro.sample("a", dist.Normal(mu, 1.0))
    with pyro.plate("house", len(y)):
        pyro.sample("y", dist.Normal(a[..., county], 1.0), obs=y)


def test_an_indexed_groups_model_is_recorded_and_replays_the_eager_fit():
    county = torch.tensor([0, 0, 1, 2, 2, 2, 4, 4])  # ragged; county 3 has no rows
    y = torch.randn(8, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    eager = fit(False, 10, (county, y), model=county_model, lr=0.3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CompileFallbackWarning)
        traced = fit("trace", 10, (county, y), model=county_model, lr=0.3)
    assert traced[2].compiled.compiled_steps == 6
    assert eager[0] == traced[0]
    for key in eager[1]:
        assert torch.equal(eager[1][key], traced[1][key]), key


def test_a_replayed_index_out_of_range_is_rerun_eagerly_and_raises_the_eager_error():
    county = torch.tensor([0, 0, 1, 2, 2, 2, 4, 4])
    y = torch.randn(8, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    inference = Inference(county_model, AutoQEM(county_model), K=5, lr=0.3, compile="trace", update="moments")
    for _ in range(5):
        inference.step(county, y)
    assert inference.compiled.graphs
    before = {k: v.detach().clone() for k, v in inference.guide.state.tensors.items()}
    with pytest.raises(IndexError, match="out of bounds"):  # the model's own indexing
        inference.step(torch.tensor([0, 0, 1, 2, 2, 2, 4, 5]), y)
    assert inference.compiled.eager_reruns == 1
    for key, value in before.items():
        assert torch.equal(inference.guide.state.tensors[key], value), key


def test_a_value_the_recording_would_bake_in_is_caught_by_the_check():
    def aliasing(y):
        mu = pyro.sample("mu", dist.Normal(torch.zeros((), dtype=y.dtype), 5.0))
        # as_subclass makes an alias that make_fx does not track: the recording would
        # hold the trace's particles as a constant. The check runs the recording with
        # new particles against the eager step, so it shows.
        with pyro.plate("items", y.shape[0]):
            pyro.sample("y", dist.Normal(mu.as_subclass(torch.Tensor), 1.0), obs=y)

    y = data().reshape(-1)
    eager = fit(False, 6, y, model=aliasing, lr=0.3)
    with pytest.warns(CompileFallbackWarning, match="differs from the eager one"):
        traced = fit("trace", 6, y, model=aliasing, lr=0.3)
    assert eager[0] == traced[0]


def test_changing_K_between_steps_is_recorded_anew():
    y = data()

    def step(inference, i):
        inference.K = 7 if i < 5 else 11
        return inference.step(y)

    eager, traced, inference = fits_with_changes(step)
    assert eager == traced
    assert len(inference.compiled.graphs) == 2


def test_arguments_that_change_every_step_stop_the_recording_and_say_so():
    y = data()
    pyro.clear_param_store()
    inference = Inference(model, AutoQEM(model), K=5, lr=0.3, compile="trace", update="moments")
    with pytest.warns(CompileFallbackWarning, match="changed 20 times"):
        for step in range(25):
            inference.step(y, 1.0 + 0.01 * step)  # a new float each step: a new key
    assert not inference.compiled.graphs


def test_an_error_at_the_check_step_leaves_the_recording_to_be_made_again():
    county = torch.tensor([0, 0, 1, 2, 2, 2, 4, 4])
    y = torch.randn(8, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    bad = torch.tensor([0, 0, 1, 2, 2, 2, 4, 9])  # out of range: the model's indexing fails
    inference = Inference(county_model, AutoQEM(county_model), K=5, lr=0.3, compile="trace", update="moments")
    for _ in range(3):  # eager, eager (key seen), recorded
        inference.step(county, y)
    assert inference.compiled.unchecked
    with pytest.raises(IndexError):
        inference.step(bad, y)  # the check step: the eager run raises, nothing is kept
    with warnings.catch_warnings():
        warnings.simplefilter("error", CompileFallbackWarning)
        for _ in range(4):
            inference.step(county, y)
    assert inference.compiled.graphs and inference.compiled.disabled is None


def test_a_one_hot_categorical_site_is_recorded_and_replays_the_eager_fit():
    def membership(y):
        with pyro.plate("problems", y.shape[1]):
            c = pyro.sample("c", dist.OneHotCategorical(torch.ones(3, dtype=y.dtype) / 3))
            locs = torch.tensor([-2.0, 0.0, 2.0], dtype=y.dtype)
            with pyro.plate("items", y.shape[0]):
                pyro.sample("y", dist.Normal((c * locs).sum(-1), 1.0), obs=y)

    y = data()
    eager = fit(False, 8, y, model=membership, lr=0.3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CompileFallbackWarning)
        traced = fit("trace", 8, y, model=membership, lr=0.3)
    assert traced[2].compiled.compiled_steps == 4
    assert eager[0] == traced[0]


def test_a_vonmises_latent_runs_eagerly_saying_why():
    """Its q draws by rejection sampling, which reads tensor values in Python: the
    recording fails and the warning names the cause instead of a cut-off torch text."""
    def angle(y):
        th = pyro.sample("th", dist.VonMises(torch.zeros(()), 1.0))
        with pyro.plate("n", len(y)):
            pyro.sample("y", dist.Normal(th, 1.0), obs=y)

    y = torch.randn(5)
    inference = Inference(angle, AutoQEM(angle), K=10, compile="trace", update="moments")
    with pytest.warns(CompileFallbackWarning, match=r"runs eagerly.*erroring out!\).*"
                                                     r"VonMises latent's q draws by rejection"):
        for _ in range(3):   # recorded once the shapes have repeated
            inference.step(y)


def vector_means(y):
    m = pyro.sample("m", dist.Normal(torch.zeros(y.shape[1], dtype=y.dtype), 10.0).to_event(1))
    with pyro.plate("n", y.shape[0]):
        pyro.sample("y", dist.Normal(m, 1.0).to_event(1), obs=y)


def test_auto_update_runs_regression_steps_eagerly_and_equals_the_eager_fit():
    """With ``update="auto"`` a group whose weights stay degenerate (20 means in one
    vector site at K = 7: ESS ~1.0) is refitted by regression after 25 steps; those
    steps run eagerly, the moment-matching steps before them are recorded and
    replayed. Same fit as the eager one."""
    generator = torch.Generator().manual_seed(0)
    y = (3 * torch.randn(20, generator=generator, dtype=torch.float64)
         + torch.randn(100, 20, generator=generator, dtype=torch.float64))
    eager = fit(False, 80, y, model=vector_means, lr=0.3, update="auto")
    with warnings.catch_warnings():
        warnings.simplefilter("error", CompileFallbackWarning)
        traced = fit("trace", 80, y, model=vector_means, lr=0.3, update="auto")
    moments_only = fit("trace", 80, y, model=vector_means, lr=0.3, update="moments")
    # fewer replays than with moments alone (all but the set-up steps)
    assert 0 < traced[2].compiled.compiled_steps < moments_only[2].compiled.compiled_steps - 40
    # Not bit for bit: LAPACK's least squares (the regression) is not bitwise
    # reproducible across runs, even eagerly.
    assert_same_fit(eager, traced, 1e-10)
