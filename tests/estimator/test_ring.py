"""The ring's shortcuts (no log-space einsum where nothing is summed across operands, or
where the whole product is small) agree with Pyro's LogRing, values and gradients."""

import pytest
import torch
from pyro.ops.rings import LogRing

from pyro_qem.estimator import contraction
from pyro_qem.estimator.contraction import PlateScaledLogRing


def _named(tensor: torch.Tensor, dims: str) -> torch.Tensor:
    tensor = tensor.clone().requires_grad_()
    tensor._pyro_dims = dims
    return tensor


@pytest.mark.parametrize("case", [
    # (operand dims, summed dims): a permutation, broadcast products, one-operand sums,
    # and the general case that still goes to the einsum.
    (["cab"], ""),
    (["acd", "cd"], ""),
    (["ab", "b", "ba"], ""),
    (["cab"], "a"),
    (["cab"], "ac"),
    (["ab", "bc"], "b"),
    (["ab", "bc", "ca"], "b"),
    (["ab", "bc"], "abc"),
    (["ab"], "z"),
])
@pytest.mark.parametrize("limit", [0, 1 << 16], ids=["einsum", "direct"])
def test_sumproduct_matches_logring(case, limit, monkeypatch):
    monkeypatch.setattr(contraction, "DIRECT_LIMIT", limit)
    inputs, summed = case
    sizes = {"a": 3, "b": 4, "c": 2, "d": 5}
    torch.manual_seed(0)
    raw = [torch.randn([sizes[d] for d in dims], dtype=torch.float64) for dims in inputs]
    raw[0][0] = -float("inf")  # a zero-probability particle must stay exact
    ours = [_named(t, d) for t, d in zip(raw, inputs)]
    theirs = [_named(t, d) for t, d in zip(raw, inputs)]
    got = PlateScaledLogRing(cache={}).sumproduct(ours, summed)
    want = LogRing(cache={}).sumproduct(theirs, summed)
    assert got._pyro_dims == want._pyro_dims
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    finite = want.isfinite()
    weights = torch.rand(want.shape, dtype=torch.float64)
    (got[finite] * weights[finite]).sum().backward()
    (want[finite] * weights[finite]).sum().backward()
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-10, atol=1e-12)
