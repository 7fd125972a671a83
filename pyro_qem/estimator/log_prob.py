"""Log densities of the recorded sites, with one shortcut that matters at scale.

A vector Normal site whose parameters come from another particle group broadcasts its
K particles against the K particles of its parents: ``Normal(mu, sigma).log_prob(z)``
then builds the whole ``K x K x plate x D`` tensor of squared differences before summing
over ``D``. Expanding the square turns the sum over ``D`` into one contraction of a
value-side tensor ``(z^2, z)`` with a parameter-side tensor ``(1/sigma^2, -2 mu/sigma^2)``
(a matrix product), which on the movielens benchmark (K = 30, 300 users, D = 18) took
1.3 ms instead of 41 ms.
"""

from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch
from opt_einsum import get_symbol
from torch.distributions import Independent, Normal

import pyro.distributions as dist

from ..handlers.trace_guards import decided

# The expansion subtracts large terms; after centring they are bounded by this many
# squared scales, where float64 still leaves ~1e-8 nats of rounding.
MAX_STANDARDISED_SQUARE = 1e8
# Worth it only when the broadcast is this much bigger than the inputs.
MIN_BROADCAST_GAIN = 4


def log_prob(fn: torch.distributions.Distribution, value: torch.Tensor) -> torch.Tensor:
    """``fn.log_prob(value)``, by a contraction where ``fn`` is a Normal with one event
    dim whose batch broadcasts against ``value``'s to a much larger tensor, and with the
    scale's terms on the scale's own elements where ``fn`` is a plain Normal."""
    if type(fn) in (Normal, dist.Normal):
        return _normal_log_prob(fn, value)
    normal = _diagonal_normal(fn)
    if normal is None or value.dim() < 1:
        return fn.log_prob(value)
    loc, scale = normal.loc, normal.scale
    batch = torch.broadcast_shapes(value.shape[:-1], loc.shape[:-1], scale.shape[:-1])
    size = value.shape[-1]
    inputs = value.numel() + loc.numel() + scale.numel()
    if math.prod(batch) * size < MIN_BROADCAST_GAIN * inputs:
        return fn.log_prob(value)
    # pyro.plate expands a site's distribution to the plate's size: a stride-0 view
    # whose copies the contraction would otherwise treat as distinct (one small matrix
    # product per plate element instead of one matrix product).
    result = _expanded(_compact(value), _compact(loc), _compact(scale), batch)
    return fn.log_prob(value) if result is None else result


def _normal_log_prob(fn: Normal, value: torch.Tensor) -> torch.Tensor:
    """``Normal.log_prob``, with ``1 / scale`` and ``log scale`` taken before broadcasting:
    the scale is stored expanded to the batch shape (a noise sd read by every particle
    and row), and torch's own formula takes its square and log once per element of the
    broadcast (on a 30 x 30 x 30 x 8 factor, 2.4x the time of the rest)."""
    if fn._validate_args:
        fn._validate_sample(value)
    scale = _compact(fn.scale)
    # The same formula as torch's, rearranged: -(x - m)^2 / (2 s^2) - log s - log sqrt(2 pi).
    standardised = (value - fn.loc) * scale.reciprocal()
    return -0.5 * standardised.square() - (scale.log() + _HALF_LOG_2PI)


_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def _compact(t: torch.Tensor) -> torch.Tensor:
    """``t`` with every broadcast (stride-0) dim of size > 1 narrowed to size 1."""
    for dim, (size, stride) in enumerate(zip(t.shape, t.stride())):
        if stride == 0 and size > 1:
            t = t.narrow(dim, 0, 1)
    return t


def _diagonal_normal(fn) -> Optional[Normal]:
    # Exact types only: a subclass may change log_prob.
    if (isinstance(fn, Independent) and fn.reinterpreted_batch_ndims == 1
            and type(fn.base_dist) in (Normal, dist.Normal)):
        return fn.base_dist
    return None


def _expanded(value: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor,
              batch: torch.Size) -> Optional[torch.Tensor]:
    dtype = value.dtype
    value, loc, scale = (t.double() for t in (value, loc, scale))
    # Centre each coordinate so that the expanded terms stay small.
    centre = loc.detach().reshape(-1, loc.shape[-1]).mean(0)
    value, loc = value - centre, loc - centre
    params = torch.broadcast_shapes(loc.shape, scale.shape)
    loc, scale = loc.expand(params), scale.expand(params)
    precision = scale.reciprocal().square()
    bound = (value.detach().square().amax() + loc.detach().square().amax()) * precision.detach().amax()
    if not decided(bound < MAX_STANDARDISED_SQUARE):
        return None
    value_side = torch.cat([value.square(), value], -1)
    param_side = torch.cat([precision, -2.0 * precision * loc], -1)
    cross = _broadcast_inner(value_side, param_side, batch)
    quadratic = cross + (precision * loc.square()).sum(-1)
    normaliser = scale.log().sum(-1) + 0.5 * value.shape[-1] * math.log(2 * math.pi)
    return (-0.5 * quadratic - normaliser).expand(batch).to(dtype)


def _broadcast_inner(a: torch.Tensor, b: torch.Tensor, batch: torch.Size) -> torch.Tensor:
    """``(a * b).sum(-1)`` broadcast to ``batch``, as one einsum that never builds the
    broadcast product (dims where only one side is bigger than 1 become matrix dims)."""
    a, b = _left_padded(a, len(batch)), _left_padded(b, len(batch))
    a_dims: List[str] = []
    b_dims: List[str] = []
    squeeze_a: List[int] = []
    squeeze_b: List[int] = []
    out = ""
    for i in range(len(batch)):
        symbol = get_symbol(i)
        if a.shape[i] > 1:
            a_dims.append(symbol)
        else:
            squeeze_a.append(i)
        if b.shape[i] > 1:
            b_dims.append(symbol)
        else:
            squeeze_b.append(i)
        if a.shape[i] > 1 or b.shape[i] > 1:
            out += symbol
    inner = get_symbol(len(batch))
    equation = f"{''.join(a_dims)}{inner},{''.join(b_dims)}{inner}->{out}"
    result = torch.einsum(equation, _squeezed(a, squeeze_a), _squeezed(b, squeeze_b))
    # Dims of size 1 on both sides are left out of the einsum: put them back.
    return result.reshape(_sizes(a, b, batch))


def _left_padded(t: torch.Tensor, batch_dims: int) -> torch.Tensor:
    return t.reshape((1,) * (batch_dims + 1 - t.dim()) + t.shape)


def _squeezed(t: torch.Tensor, dims: List[int]) -> torch.Tensor:
    return t.squeeze(tuple(dims)) if dims else t


def _sizes(a: torch.Tensor, b: torch.Tensor, batch: torch.Size) -> Tuple[int, ...]:
    return tuple(max(a.shape[i], b.shape[i]) for i in range(len(batch)))
