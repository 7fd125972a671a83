"""The memory estimate of a step, and the refusal of a step that exceeds the budget."""

import time

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_qem import AutoQEM, Inference
from pyro_qem.estimator.memory import MemoryBudgetError, factor_sizes, least_factor_sizes

Y = torch.randn(8, dtype=torch.float64)


def hierarchy(y):
    mu = pyro.sample("mu", dist.Normal(torch.zeros((), dtype=y.dtype), 5.0))
    with pyro.plate("schools", 8):
        theta = pyro.sample("theta", dist.Normal(mu, 2.0))
        pyro.sample("obs", dist.Normal(theta, 1.0), obs=y)


def test_factor_sizes_are_the_shapes_the_estimator_computes():
    inference = Inference(hierarchy, AutoQEM(hierarchy), K=7)
    run = inference.run_particles(Y)
    sizes = {s.site: s for s in factor_sizes(run.sites)}
    for record in run.sites:
        assert sizes[record.name].shape == record.fn.log_prob(record.value).shape
    # theta depends on mu's particles and its own: K x K x 8.
    assert sizes["theta"].shape == (7, 7, 8)
    assert sizes["theta"].bytes == 7 * 7 * 8 * 8


def test_a_huge_K_is_refused_quickly_naming_the_largest_factor():
    inference = Inference(hierarchy, AutoQEM(hierarchy), K=10 ** 4)
    start = time.perf_counter()
    with pytest.raises(MemoryBudgetError, match=r"site 'theta'.*\(10000, 10000, 8\)"):
        inference.step(Y)
    assert time.perf_counter() - start < 5.0  # a second on an idle machine


def test_budget_is_configurable():
    Inference(hierarchy, AutoQEM(hierarchy), K=10, max_memory=2 ** 30).step(Y)
    pyro.clear_param_store()
    with pytest.raises(MemoryBudgetError, match="max_memory"):
        Inference(hierarchy, AutoQEM(hierarchy), K=10, max_memory=1000).step(Y)


@pytest.mark.parametrize("bad", [0, -1, "4GB", True])
def test_bad_budget_is_an_error(bad):
    with pytest.raises(ValueError, match="max_memory"):
        Inference(hierarchy, AutoQEM(hierarchy), K=10, max_memory=bad)


def test_lower_bounds_before_the_run_never_exceed_the_run_s_factors():
    inference = Inference(hierarchy, AutoQEM(hierarchy), K=7)
    run = inference.run_particles(Y)
    actual = {s.site: s.bytes for s in factor_sizes(run.sites)}
    bounds = {s.site: s for s in least_factor_sizes(run.structure, 7)}
    assert set(bounds) == set(actual)
    assert all(bounds[name].bytes <= actual[name] for name in actual)
    assert bounds["theta"].shape == (7, 7, 8) and bounds["obs"].shape == (7, 8)


def test_a_step_too_large_for_the_budget_is_refused_before_the_model_runs():
    """The model's own K-particle tensors (here a K x N x P product) are never built."""
    calls = []

    def regression(x, y):
        beta = pyro.sample("beta", dist.Normal(torch.zeros(3, dtype=x.dtype), 1.0).to_event(1))
        calls.append(beta.shape)
        with pyro.plate("data", len(y)):
            pyro.sample("y", dist.Normal((x * beta).sum(-1), 1.0), obs=y)

    x, y = torch.randn(10000, 3, dtype=torch.float64), torch.randn(10000, dtype=torch.float64)
    inference = Inference(regression, AutoQEM(regression), K=2000, max_memory=2 ** 27)
    with pytest.raises(MemoryBudgetError, match=r"Before running the model.*site 'y'.*\(2000, 10000\)"):
        inference.step(x, y)
    assert all(len(shape) < 2 or shape[0] != 2000 for shape in calls)
