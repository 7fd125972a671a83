"""Many joint draws of particle indices from one contraction, in one backward pass.

Pyro's :class:`~pyro.ops.rings.SampleRing` walks a contracted factor graph back from
its root and samples every eliminated dim conditioned on the ones sampled before it;
one pass gives one joint draw. Here the same pass carries a batch of ``n`` draws in an
extra named dim (:data:`DRAWS`): where the pass starts (or reaches a part of the graph
no earlier draw conditions) it samples ``n`` indices at once, and every later step
gathers its operands at each draw's parent indices, so the ``n`` draws cost one pass of
batched arithmetic instead of ``n`` passes of small ones.

The ``n`` draws of one step are *stratified* (Latin hypercube sampling of the uniform
each inverse-CDF draw uses): along the draws dim the uniforms are ``(pi_i + V_i) / n``
for an independent random permutation ``pi`` per plate element and independent
``V_i ~ U(0, 1)``. Each draw's uniform is then marginally uniform, and independent of
the uniforms of every other step and plate element, so each draw is exactly a draw of
the SampleRing (the conditional of every dim given its parents); only the dependence
*between* draws changes: where the draws share a distribution (all of them at the
root, and every draw with the same parents below it) a particle of weight ``w`` is
drawn ``n w`` times up to rounding, not ``Binomial(n, w)`` times. A Latin hypercube's
variance for the mean of any square-integrable function is at most ``n / (n - 1)``
times that of independent draws (Owen 1997), and far below it where the weights are
spread over many particles.
"""

from __future__ import annotations

import contextlib
import contextvars
import operator
from functools import reduce
from typing import Dict, Iterator, Optional, Sequence, Tuple

import torch
from pyro.ops import packed
from pyro.ops.contract import contract_tensor_tree
from pyro.ops.einsum.adjoint import (
    SAMPLE_SYMBOL,
    Backward,
    require_backward,
    transpose,
    unflatten,
)
from pyro.ops.einsum.util import Tensordot
from pyro.ops.rings import LogRing, _SampleProductBackward
import pyro.ops.einsum.torch_log

from ..estimator import LogFactor
from ..estimator.contraction import term_tree

# The name of the draws' dim in the backward pass's messages: never an einsum symbol of
# the estimator (those are letters, then characters from U+00C0 on), and after Pyro's
# sample symbol (a space) in sort order.
DRAWS = "~"

_NUM_DRAWS: contextvars.ContextVar[int] = contextvars.ContextVar("pyro_qem_num_draws")


def stratified_categorical(logits: torch.Tensor, draws_axis: Optional[int] = None,
                           num_draws: Optional[int] = None) -> torch.Tensor:
    """Indices drawn from the rows of ``logits`` (last dim: categories), their uniforms
    stratified along the draws (see the module docstring).

    :param logits: ``batch + (categories,)``, unnormalised log probabilities.
    :param draws_axis: the batch axis (non-negative) that holds the draws, one per row;
        or None: ``num_draws`` draws from every row, in a new leading axis (the rows'
        cumulative weights are computed once, not once per draw).
    :returns: long tensor ``batch``, or ``(num_draws,) + batch``.
    """
    logits = logits.double()
    top = logits.amax(-1)
    if not bool(torch.isfinite(top).all()) or bool(torch.isnan(logits).any()):
        raise ValueError(
            "Joint draws: for some plate element every particle of a particle set has zero "
            "posterior weight (log density -inf) or a NaN weight, so there is nothing to "
            "draw. The model gives no support where the fitted q proposes, or its log "
            "density is NaN there: check the model's support and data, and that the fit "
            "converged (pyro_qem.diagnose)."
        )
    probs = torch.softmax(logits, -1)
    cdf = probs.cumsum(-1)
    if draws_axis is not None:
        cdf = cdf.movedim(draws_axis, -2)
    else:
        cdf = cdf.unsqueeze(-2)
    shape = cdf.shape[:-2] + (num_draws if draws_axis is None else cdf.shape[-2],)
    # A random permutation of the n strata per plate element (argsort of uniforms).
    strata = torch.rand(shape, device=logits.device).argsort(-1)
    u = (strata + torch.rand(shape, dtype=cdf.dtype, device=logits.device)) / shape[-1]
    total = cdf[..., -1]
    if draws_axis is not None:
        u = (u * total).unsqueeze(-1)
        index = torch.searchsorted(cdf.contiguous(), u, right=True).squeeze(-1)
    else:
        u = u * total
        index = torch.searchsorted(cdf.squeeze(-2).contiguous(), u, right=True)
    # Rounding can put u at the total: take the last category with positive weight.
    positions = torch.arange(probs.shape[-1], device=logits.device)
    last = torch.where(probs > 0, positions, 0).amax(-1)
    if draws_axis is not None:
        return torch.minimum(index, last.movedim(draws_axis, -1)).movedim(-1, draws_axis)
    return torch.minimum(index, last.unsqueeze(-1)).movedim(-1, 0)


class _BatchedEinsumBackward(Backward):
    """The backward step of one einsum: gather the operands at the parents' drawn
    indices (per draw), then draw the einsum's eliminated dims."""

    def __init__(self, output: str, operands: Sequence[torch.Tensor]) -> None:
        self.output = output
        self.operands = operands

    def process(self, message):
        operands = list(self.operands)
        contract_dims = "".join(
            sorted(set().union(*(x._pyro_dims for x in operands)) - set(self.output)))
        batch_dims = self.output
        if message is not None:
            for dim, index in zip(message._pyro_sample_dims, message):
                batch_dims = batch_dims.replace(dim, "")
                for i, x in enumerate(operands):
                    if dim in x._pyro_dims:
                        operands[i] = _gather(x, index, message._pyro_dims[1:], dim)
        sample = None
        if contract_dims:
            if DRAWS not in batch_dims and any(DRAWS in x._pyro_dims for x in operands):
                batch_dims = DRAWS + batch_dims
            dims = batch_dims + contract_dims
            logits = reduce(operator.add, packed.broadcast_all(*operands, dims=dims))
            output_shape = logits.shape[: len(batch_dims)]
            flat = logits.reshape(output_shape + (-1,))
            if DRAWS in batch_dims:
                drawn = stratified_categorical(flat, batch_dims.index(DRAWS))
            else:
                # No draw conditions this part of the graph yet: all draws share it.
                drawn = stratified_categorical(flat, num_draws=_NUM_DRAWS.get())
                batch_dims = DRAWS + batch_dims
            sample = unflatten(drawn, batch_dims, contract_dims, logits.shape[len(output_shape):])
        return _passed_on(self.operands, _combined(sample, message))


def _gather(value: torch.Tensor, index: torch.Tensor, index_dims: str, dim: str) -> torch.Tensor:
    """``value`` (named by its ``_pyro_dims``) at ``index`` (named by ``index_dims``) in
    its dim ``dim``, broadcast over both tensors' other dims (Pyro's ``packed.gather``
    copies the index at the full broadcast size first; this gathers through expanded
    views, so the result is the only tensor built)."""
    value_dims = value._pyro_dims
    dims = "".join(sorted(set(value_dims) | set(index_dims)))
    sizes = dict(zip(value_dims, value.shape))
    sizes.update(zip(index_dims, index.shape))
    position = dims.index(dim)
    value = _aligned(value, value_dims, dims)
    index = _aligned(index, index_dims, dims)
    shape = [sizes[d] for d in dims]
    shape[position] = value.shape[position]
    value = value.expand(shape)
    shape[position] = 1
    result = value.gather(position, index.expand(shape)).squeeze(position)
    result._pyro_dims = dims.replace(dim, "")
    return result


def _aligned(x: torch.Tensor, own: str, dims: str) -> torch.Tensor:
    """``x`` (named by ``own``) permuted to the order of ``dims``, size 1 in the dims it
    lacks."""
    x = x.permute([own.index(d) for d in dims if d in own])
    sizes = iter(x.shape)
    return x.reshape([next(sizes) if d in own else 1 for d in dims])


def _combined(sample1, sample2):
    """The draws of this step (``sample1``) joined to those of its parents
    (``sample2``), as Pyro's ``einsum_backward_sample`` joins them, except that the
    batch dims are broadcast apart from the leading dim that lists the sampled dims
    (Pyro's broadcasts that one too, and fails when the two list different numbers of
    dims: an enumerated dim inside a plate, below a dim sampled outside it)."""
    if sample1 is None or sample2 is None:
        return sample2 if sample1 is None else sample1
    for dim, index in zip(sample2._pyro_sample_dims, sample2):
        if dim in sample1._pyro_dims:
            sample1 = _gather(sample1, index, sample2._pyro_dims[1:], dim)
    sizes = {d: n for x in (sample1, sample2) for d, n in zip(x._pyro_dims[1:], x.shape[1:])}
    dims = "".join(sorted(sizes))
    parts = []
    for x in (sample1, sample2):
        own = x._pyro_dims[1:]
        x = x.permute([0] + [1 + own.index(d) for d in dims if d in own])
        x = x.reshape((x.shape[0],) + tuple(sizes[d] if d in own else 1 for d in dims))
        parts.append(x.expand((x.shape[0],) + tuple(sizes[d] for d in dims)))
    sample = torch.cat(parts)
    sample._pyro_dims = SAMPLE_SYMBOL + dims
    sample._pyro_sample_dims = sample1._pyro_sample_dims + sample2._pyro_sample_dims
    return sample


def _passed_on(operands, sample):
    """Each operand's backward step with the part of ``sample`` it holds dims of (as
    in Pyro's ``einsum_backward_sample``)."""
    for x in operands:
        if not hasattr(x, "_pyro_backward"):
            continue
        held = "".join(d for d in sample._pyro_sample_dims if d in x._pyro_dims) if sample is not None else ""
        if not held:
            yield x._pyro_backward, None
        elif held == sample._pyro_sample_dims:
            yield x._pyro_backward, sample
        else:
            part = sample[[sample._pyro_sample_dims.index(d) for d in held]]
            part._pyro_dims = sample._pyro_dims
            part._pyro_sample_dims = held
            yield x._pyro_backward, part


def einsum(equation, *operands):
    """Log-space einsum forward, batched backward draws (an opt_einsum backend: see
    :class:`DrawRing`)."""
    equation = packed.rename_equation(equation, *operands)
    output = equation.split("->")[1]
    result = pyro.ops.einsum.torch_log.einsum(equation, *operands)
    result._pyro_dims = output
    if any(hasattr(x, "_pyro_backward") for x in operands):
        result._pyro_backward = _BatchedEinsumBackward(output, operands)
    return result


tensordot = Tensordot(einsum)

__all__ = ["einsum", "tensordot", "transpose"]


class DrawRing(LogRing):
    """Pyro's sample ring with this module's batched backward draws."""

    _backend = __name__

    def product(self, term, ordinal):
        result = super().product(term, ordinal)
        if hasattr(term, "_pyro_backward"):
            result._pyro_backward = _SampleProductBackward(self, term, ordinal)
        return result


class SampleTree:
    """Factors contracted once; each :meth:`draw` walks back to the source terms (the
    queries) and draws every group's particle index, per plate element, for a batch of
    draws.

    :param factors: the log factors (with the groups' zero source terms among them).
    :param query_of: source factor name -> its group's index.
    """

    def __init__(self, factors: Sequence[LogFactor], query_of: Dict[str, int]) -> None:
        tree, dim_to_size, terms = term_tree(factors)
        self.queries = {}
        for factor, term in zip(factors, terms):
            if factor.name in query_of:
                # A group's zero source term is its query: the backward pass leaves the
                # group's drawn indices on it.
                require_backward(term)
                self.queries[query_of[factor.name]] = term
        plates = frozenset().union(*(f.ordinal for f in factors))
        ring = DrawRing(cache={}, dim_to_size=dim_to_size)
        with torch.no_grad():
            self.tree = contract_tensor_tree(tree, set(dim_to_size) - plates, ring=ring)

    def draw(self, num_draws: int) -> Dict[int, Tuple[torch.Tensor, str]]:
        """``{group: (indices, their dims)}``: the dims are plate symbols and
        :data:`DRAWS` (size ``num_draws``, or the size of a :data:`DRAWS` plate that
        the factors carry)."""
        with torch.no_grad(), _draws(num_draws):
            for terms in self.tree.values():
                for term in terms:
                    if hasattr(term, "_pyro_backward"):
                        term._pyro_backward()
        out = {}
        for group, query in self.queries.items():
            sample = query._pyro_backward_result
            assert sample is not None, "group was not sampled"
            out[group] = (sample[0], sample._pyro_dims[1:])
            query._pyro_backward_result = None
        return out


@contextlib.contextmanager
def _draws(num_draws: int) -> Iterator[None]:
    token = _NUM_DRAWS.set(num_draws)
    try:
        yield
    finally:
        _NUM_DRAWS.reset(token)
