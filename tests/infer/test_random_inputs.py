import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch.fx.experimental.proxy_tensor import make_fx

from pyro_qem import AutoQEM, Inference
from pyro_qem.infer import CompileFallbackWarning
from pyro_qem.infer.random_inputs import lift_random_draws, with_draws


def _random_nodes(graph_module):
    return [n for n in graph_module.graph.nodes if n.op == "call_function"
            and torch.Tag.nondeterministic_seeded in getattr(n.target, "tags", ())]


def three_draws(loc, scale):
    a = torch.empty(loc.shape, dtype=loc.dtype).normal_() * scale + loc  # as Pyro draws
    b = torch.rand(loc.shape) * 2.0
    c = torch.randn(3, 1) + a.sum()
    return a + b, c


def test_lifted_draws_are_inputs_made_in_the_recorded_order():
    loc, scale = torch.randn(4, 3), torch.rand(4, 3) + 0.1
    graph_module = make_fx(three_draws)(loc, scale)
    assert len(_random_nodes(graph_module)) == 3
    draws = lift_random_draws(graph_module)
    assert draws is not None and len(draws) == 3
    assert _random_nodes(graph_module) == []          # the graph itself is pure now
    placeholders = [n for n in graph_module.graph.nodes if n.op == "placeholder"]
    assert len(placeholders) == 2 + 3
    torch.manual_seed(7)
    expected = three_draws(loc, scale)
    torch.manual_seed(7)
    lifted = with_draws(graph_module, draws)(loc, scale)
    for x, y in zip(expected, lifted):
        assert torch.equal(x, y)


def test_given_the_draws_in_another_order_the_graph_gives_another_answer():
    # What lifting protects against: a reordered pair of draws changes the result.
    loc, scale = torch.zeros(4, 3), torch.ones(4, 3)
    graph_module = make_fx(three_draws)(loc, scale)
    draws = lift_random_draws(graph_module)
    torch.manual_seed(7)
    expected = three_draws(loc, scale)
    torch.manual_seed(7)
    made = [draw() for draw in draws]
    swapped = graph_module(loc, scale, made[1].view(4, 3), made[0].view(4, 3), made[2])
    assert not torch.equal(expected[0], swapped[0])


def test_a_draw_that_cannot_be_lifted_leaves_the_graph_as_it_was():
    def with_gamma(rate):  # draws whose shapes or parameters are the graph's values
        return torch.randn(5) + torch._standard_gamma(rate) + torch.normal(rate, rate)

    rate = torch.rand(5) + 0.5
    graph_module = make_fx(with_gamma)(rate)
    code = graph_module.code
    assert lift_random_draws(graph_module) is None
    assert graph_module.code == code


def test_a_graph_without_draws_has_nothing_to_lift():
    graph_module = make_fx(lambda x: x.exp().sum())(torch.ones(3))
    assert lift_random_draws(graph_module) == []


@pytest.mark.parametrize("mode", ["inductor", "cudagraphs"])
def test_the_compiled_step_draws_its_particles_outside_the_compiled_graph(mode):
    def model(y):
        mu = pyro.sample("mu", dist.Normal(torch.zeros((), dtype=y.dtype), 10.0))
        tau = pyro.sample("tau", dist.LogNormal(torch.zeros((), dtype=y.dtype), 1.0))
        with pyro.plate("groups", y.shape[0]):
            theta = pyro.sample("theta", dist.Normal(mu, tau))
            pyro.sample("obs", dist.Normal(theta, 1.0), obs=y)

    y = torch.linspace(-2, 3, 8, dtype=torch.float64)
    losses = {}
    for compile_mode in (False, mode):
        pyro.clear_param_store()
        pyro.set_rng_seed(3)
        inference = Inference(model, AutoQEM(model, prefix=f"lift_{compile_mode}"), K=20,
                              compile=compile_mode)
        with warnings.catch_warnings():
            warnings.simplefilter("error", CompileFallbackWarning)
            losses[compile_mode] = [inference.step(y) for _ in range(8)]
    assert inference.compiled.compiled_steps >= 3
    assert losses[False] == pytest.approx(losses[mode], rel=1e-10, abs=1e-10)
