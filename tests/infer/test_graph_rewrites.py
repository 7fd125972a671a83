"""Broadcast products summed over a dim become einsum contractions in a recorded step
(pyro_qem.infer.graph_rewrites)."""

import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch.fx.experimental.proxy_tensor import make_fx

from pyro_qem import AutoQEM, Inference
from pyro_qem.infer import CompileFallbackWarning
from pyro_qem.infer.graph_rewrites import contract_products


def recorded(fn, *inputs):
    graph_module = make_fx(fn)(*inputs)
    expected = fn(*inputs)
    return graph_module, expected


def einsums(graph_module):
    return sum(node.target is torch.ops.aten.einsum.default for node in graph_module.graph.nodes)


@pytest.mark.parametrize("dims, keepdim", [([-1], False), ([-1, -3], True), ([1, -1], False)])
def test_a_broadcast_product_summed_becomes_one_einsum_with_the_same_values(dims, keepdim):
    """Two particle dims of z against per-user features: the product (K, K, users,
    films, genres) never exists; the sums agree to float64 rounding."""
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(6, 5, 100, 1, 7, generator=generator, dtype=torch.float64)
    x = torch.randn(100, 3, 7, generator=generator, dtype=torch.float64)

    def fn(z, x):
        return (2.0 * z * x).sum(dims, keepdim=keepdim)

    graph_module, expected = recorded(fn, z, x)
    assert contract_products(graph_module) == 1
    assert einsums(graph_module) == 1
    assert not any(node.target is torch.ops.aten.sum.dim_IntList for node in graph_module.graph.nodes)
    (result,) = [graph_module(z, x)]
    assert result.shape == expected.shape
    assert torch.allclose(result, expected, rtol=1e-12, atol=1e-12)


def test_products_without_an_outer_structure_or_too_small_are_left_alone():
    generator = torch.Generator().manual_seed(1)
    a = torch.randn(300, 200, generator=generator, dtype=torch.float64)
    b = torch.randn(300, 200, generator=generator, dtype=torch.float64)
    small = torch.randn(3, 1, 4, generator=generator, dtype=torch.float64)
    features = torch.randn(5, 4, generator=generator, dtype=torch.float64)

    def fn(a, b, small, features):
        batched_dot = (a * b).sum(-1)  # no dim of its own from either operand
        tiny = (small * features).sum(-1)  # 60 entries: not worth a BLAS call
        product = a * b
        reused = product.sum(-1) + product.mean(-1)  # the product is needed anyway
        return batched_dot, tiny, reused

    graph_module, _ = recorded(fn, a, b, small, features)
    assert contract_products(graph_module) == 0


def test_mixed_dtypes_are_left_to_the_eager_promotion():
    z = torch.randn(30, 1, 64, dtype=torch.float32)
    x = torch.randn(2000, 64, dtype=torch.float64)
    graph_module, expected = recorded(lambda z, x: (z * x).sum(-1), z, x)
    assert contract_products(graph_module) == 0
    assert torch.equal(graph_module(z, x), expected)


def ratings(x, rating):
    """Per-user coefficients z (non-centred by AutoQEM: two particle dims) dotted with
    each film's features, as a movielens-style model writes it."""
    genres = x.shape[-1]
    mu = pyro.sample("mu", dist.Normal(torch.zeros(genres, dtype=x.dtype), 1.0).to_event(1))
    psi = pyro.sample("psi", dist.Normal(torch.zeros(genres, dtype=x.dtype), 1.0).to_event(1))
    with pyro.plate("user", x.shape[0], dim=-2):
        z = pyro.sample("z", dist.Normal(mu, psi.exp()).to_event(1))
        with pyro.plate("film", x.shape[1], dim=-1):
            pyro.sample("rating", dist.Bernoulli(logits=(z * x).sum(-1)), obs=rating)


@pytest.mark.parametrize("mode", ["trace", "inductor"])
def test_a_compiled_step_with_a_contracted_product_equals_the_eager_fit(mode):
    generator = torch.Generator().manual_seed(2)
    x = (torch.rand(40, 4, 6, generator=generator) < 0.3).double()
    rating = torch.bernoulli(torch.full((40, 4), 0.4, dtype=torch.float64), generator=generator)

    def fit(compile):
        pyro.set_rng_seed(0)
        guide = AutoQEM(ratings, groups=[["mu", "psi"]])
        inference = Inference(ratings, guide, K=8, lr=0.2, compile=compile, update="moments")
        losses = [inference.step(x, rating) for _ in range(8)]
        return losses, guide.state.tensors, inference

    eager_losses, eager_state, _ = fit(False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CompileFallbackWarning)
        losses, state, inference = fit(mode)
    assert inference.compiled.compiled_steps == 4  # steps 4-8; 1 eager, 2 recorded, 3 checked
    # One recording; its K x K x users x films x genres product became an einsum.
    assert len(inference.compiled.graphs) == 1 and inference.compiled.contracted_products == 1
    assert torch.allclose(torch.tensor(losses), torch.tensor(eager_losses), rtol=1e-10, atol=0)
    for key in eager_state:
        assert torch.allclose(state[key], eager_state[key], rtol=1e-10, atol=1e-10), key
