"""The contracted Normal log density equals ``fn.log_prob`` (values and gradients)."""

import pytest
import torch

import pyro.distributions as dist
from pyro_qem.estimator import log_prob as lp


@pytest.mark.parametrize("value_shape,loc_shape,scale_shape", [
    ((30, 1, 300, 1, 18), (1, 30, 1, 1, 18), (1, 30, 1, 1, 18)),   # movielens' z prior
    ((10, 1, 7, 5), (1, 10, 7, 5), (1, 10, 1, 5)),                 # a shared plate dim
    ((10, 1, 1, 4), (12, 1, 4), (4,)),                             # fewer param dims
    ((1, 6, 3), (8, 1, 3), (8, 1, 3)),                             # the value the small side
])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_log_prob(value_shape, loc_shape, scale_shape, dtype):
    torch.manual_seed(0)
    raw = [3.0 + torch.randn(value_shape, dtype=torch.float64),
           3.0 + torch.randn(loc_shape, dtype=torch.float64),
           0.5 + torch.rand(scale_shape, dtype=torch.float64)]
    ours = [t.to(dtype).requires_grad_() for t in raw]
    exact = [t.clone().requires_grad_() for t in raw]  # float64 log_prob: the reference
    got = lp.log_prob(dist.Normal(ours[1], ours[2]).to_event(1), ours[0])
    want = dist.Normal(exact[1], exact[2]).to_event(1).log_prob(exact[0])
    assert got.shape == want.shape and got.dtype == dtype
    # float32: the inputs' own rounding (values ~3, 18 terms) moves log p by ~1e-5.
    tol = dict(rtol=1e-5, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-9)
    torch.testing.assert_close(got.double(), want, **tol)
    weights = torch.rand(want.shape, dtype=torch.float64)
    grads = torch.autograd.grad((got.double() * weights).sum(), ours)
    expected = torch.autograd.grad((want * weights).sum(), exact)
    # Gradients sum up to 9000 such terms, with cancellation: scale the float32 slack.
    grad_tol = dict(rtol=1e-4, atol=2e-3) if dtype == torch.float32 else tol
    for g, e in zip(grads, expected):
        torch.testing.assert_close(g.double(), e, **grad_tol)


def test_far_from_the_centre_is_declined():
    # Per-user locations 1e5 scales apart: expanding the square would lose precision,
    # so the shortcut declines and log_prob falls back to the distribution's own.
    offsets = torch.arange(4.0, dtype=torch.float64).unsqueeze(-1) * 1e5
    value = torch.randn(30, 1, 4, 3, dtype=torch.float64) + offsets
    loc, scale = offsets.expand(30, 4, 3), torch.ones(30, 4, 3, dtype=torch.float64)
    assert lp._expanded(value, loc, scale, torch.Size([30, 30, 4])) is None
    fn = dist.Normal(loc, scale).to_event(1)
    torch.testing.assert_close(lp.log_prob(fn, value), fn.log_prob(value))


@pytest.mark.parametrize("fn", [
    dist.Normal(torch.zeros(30, 1, 18), torch.ones(30, 1, 18)),                  # no event dim
    dist.StudentT(3.0, torch.zeros(30, 1, 18), torch.ones(30, 1, 18)).to_event(1),
    dist.Normal(torch.zeros(30, 1, 18), torch.ones(30, 1, 18)).mask(False).to_event(1),
])
def test_other_distributions_use_their_own_log_prob(fn):
    value = torch.randn(20, 1, 1, 18)
    torch.testing.assert_close(lp.log_prob(fn, value), fn.log_prob(value))


def test_plate_expanded_parameters_give_the_same_density_and_gradients():
    # pyro.plate expands loc and scale to the plate's size (stride-0 views): the
    # contraction treats those dims as broadcast (one matrix product), with the same
    # values and gradients as the unexpanded parameters.
    torch.manual_seed(1)
    value = torch.randn(30, 1, 300, 18, dtype=torch.float64)
    loc = torch.randn(1, 30, 1, 18, dtype=torch.float64, requires_grad=True)
    scale = (0.5 + torch.rand(1, 30, 1, 18, dtype=torch.float64)).requires_grad_()
    expanded = dist.Normal(loc.expand(1, 30, 300, 18), scale.expand(1, 30, 300, 18))
    assert expanded.loc.stride(2) == 0
    got = lp.log_prob(expanded.to_event(1), value)
    want = dist.Normal(loc, scale).to_event(1).log_prob(value)
    assert got.shape == want.shape == (30, 30, 300)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-9)
    weights = torch.rand(want.shape, dtype=torch.float64)
    for g, e in zip(torch.autograd.grad((got * weights).sum(), (loc, scale)),
                    torch.autograd.grad((want * weights).sum(), (loc, scale))):
        torch.testing.assert_close(g, e, rtol=1e-9, atol=1e-8)
    assert lp._compact(expanded.loc).shape == (1, 30, 1, 18)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_plain_normal_with_a_broadcast_scale_matches_log_prob(dtype):
    # A noise sd read by every particle and row: stored expanded by Normal itself.
    torch.manual_seed(1)
    value = torch.randn(8, dtype=dtype)
    loc = torch.randn(30, 1, 30, 8, dtype=dtype, requires_grad=True)
    scale = (0.5 + torch.rand(30, 1, 1, 1, dtype=dtype)).requires_grad_()
    fn = dist.Normal(loc, scale)
    got, want = lp.log_prob(fn, value), fn.log_prob(value)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got, want, **tol)
    # The scale's gradient sums 7200 terms: float32 rounding grows with it.
    grad_tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else tol
    for g, e in zip(torch.autograd.grad(got.sum(), [loc, scale]),
                    torch.autograd.grad(want.sum(), [loc, scale])):
        torch.testing.assert_close(g, e, **grad_tol)
    # Data outside the support are refused as by Normal.log_prob itself.
    with pytest.raises(ValueError):
        lp.log_prob(dist.Normal(0.0, 1.0, validate_args=True), torch.tensor(float("nan")))
