"""The plated log-space contraction: log P_hat, and posterior weights by source terms.

The sum over all K^n particle combinations is a sum-product over the factor graph,
done by Pyro's tensor variable elimination (:func:`pyro.ops.contract.contract_to_tensor`,
the routine behind :func:`pyro.ops.contract.einsum`). Within a plate, each element
logsumexps its own particle dims before the plate is reduced; that order is what
variable elimination guarantees.

Subsampled plates need one change that ``einsum`` cannot express: the plate-reduced
term (the sum over the B elements of their per-element logsumexp) is multiplied by
N / B. :class:`PlateScaledLogRing` does exactly that in the ring's ``product``.

A plate whose elements are split across processes (a sharded data plate) needs one
more: its plate-reduced term, the sum over this process's elements, is completed by a
*plate reducer* (a callable, e.g. a differentiable all-reduce over the processes)
before the scale. The estimator only calls it; what it does is the caller's business.

The same ring skips the log-space einsum where it does not pay: where nothing is summed
across operands (a permutation, or a product of factors with no particle dim to
eliminate; Pyro's log einsum exponentiates and takes logs of the whole operand even
then, a third of a bus step for a 30 x 30 x 900 factor only being transposed), and where
the whole product is small enough to build (below ``DIRECT_LIMIT`` entries), when one
broadcast sum and a logsumexp beat the einsum's planning and exp/log round trips.

A plate can also be contracted in chunks of its elements (:class:`Chunking`), when the
contraction's intermediates inside it would not fit in memory (the choice is
:func:`pyro_qem.estimator.memory.plan_contraction`'s): its plate-reduced term is a sum over
its elements, so each chunk's is contracted apart and the chunks' terms add. Each chunk
is recomputed in the backward pass (:func:`torch.utils.checkpoint.checkpoint`), so the
autograd graph holds one chunk's intermediates at a time, not all of them.
"""

from __future__ import annotations

import functools
import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from pyro.ops.contract import contract_to_tensor
from pyro.ops.rings import LogRing
from pyro.ops.special import safe_log
from torch.utils.checkpoint import checkpoint

from ..model.structure import ModelStructure
from ..handlers import SiteRecord
from ..model.structure import GroupInfo, Symbols
from .factors import LogFactor


# Products with at most this many entries are built whole (see the module docstring).
DIRECT_LIMIT = 1 << 16

# plate symbol -> a function completing that plate's reduced term (this process's sum
# over its elements) to the sum over all elements; it must keep the gradient to the
# local term, e.g. ``x + (all_reduce(x.detach()) - x.detach())``.
PlateReducers = Mapping[str, Callable[[torch.Tensor], torch.Tensor]]


class PlateScaledLogRing(LogRing):
    """:class:`~pyro.ops.rings.LogRing` whose product over a subsampled plate is
    scaled by ``N / B`` after the sum over the minibatch elements, and whose product
    over a sharded plate is completed by that plate's reducer (before the scale).

    :param plate_scales: plate symbol -> ``N / B``.
    :param plate_reducers: plate symbol -> reducer (see :data:`PlateReducers`).
    """

    def __init__(self, cache=None, dim_to_size=None, plate_scales: Mapping[str, float] = (),
                 plate_reducers: PlateReducers = ()):
        super().__init__(cache=cache, dim_to_size=dim_to_size)
        self._plate_scales = dict(plate_scales)
        self._plate_reducers = dict(plate_reducers)

    def sumproduct(self, terms, dims):
        inputs = [term._pyro_dims for term in terms]
        present = set("".join(inputs))
        summed = sorted(present & set(dims))
        sizes = {d: n for term, names in zip(terms, inputs) for d, n in zip(names, term.shape)}
        if summed and len(terms) > 1 and math.prod(sizes.values()) > DIRECT_LIMIT:
            return super().sumproduct(terms, dims)
        # Small enough to build the whole product: a broadcast sum in log space, then one
        # logsumexp, without the einsum's planning and exp/log round trips.
        output = "".join(sorted(present - set(summed)))
        full = output + "".join(summed)
        result = functools.reduce(torch.add, (_aligned(t, d, full) for t, d in zip(terms, inputs)))
        if summed:
            result = _logsumexp(result, list(range(len(output), len(full))))
        result._pyro_dims = output
        return result

    def product(self, term, ordinal):
        scale = 1.0
        for dim in ordinal:
            if dim in term._pyro_dims:
                scale *= self._plate_scales.get(dim, 1.0)
        result = super().product(term, ordinal)
        reducers = [self._plate_reducers[d] for d in sorted(ordinal)
                    if d in term._pyro_dims and d in self._plate_reducers]
        if len(reducers) > 1:
            raise NotImplementedError("one product reduces two sharded plates at once; "
                                      "shard one plate only")
        if reducers:
            # Cached by term: a reducer may be a collective, which every process must
            # call the same number of times.
            key = "reduced", id(term), frozenset(ordinal)
            if key not in self._cache:
                dims = result._pyro_dims
                reduced = reducers[0](result)
                reduced._pyro_dims = dims
                self._cache[key] = reduced
            result = self._cache[key]
        if scale != 1.0:
            dims = result._pyro_dims
            result = result * scale
            result._pyro_dims = dims
        return result


def _logsumexp(term: torch.Tensor, positions: List[int]) -> torch.Tensor:
    # Shift and safe_log as Pyro's log einsum does: an all -inf slice gets a zero
    # gradient, not NaN.
    shift = term.detach().amax(dim=positions, keepdim=True).clamp(min=torch.finfo(term.dtype).min)
    return safe_log((term - shift).exp().sum(positions)) + shift.squeeze(tuple(positions))


def _aligned(term: torch.Tensor, dims: str, output: str) -> torch.Tensor:
    """``term`` (named by ``dims``) permuted to ``output``'s order, with size-1 dims
    where it lacks one of ``output``'s."""
    term = term.permute([dims.index(d) for d in output if d in dims])
    sizes = iter(term.shape)
    return term.reshape([next(sizes) if d in dims else 1 for d in output])


def term_tree(factors: Sequence[LogFactor]
              ) -> Tuple["OrderedDict[frozenset, List[torch.Tensor]]", Dict[str, int], List[torch.Tensor]]:
    """The factors as :mod:`pyro.ops.contract` takes them: ``ordinal -> terms``, each a
    fresh tensor object tagged with its dims, in the widest dtype of the factors (a
    model may mix float32 priors with float64 data); the size of every dim; and the
    terms in the order of ``factors``."""
    tree: "OrderedDict[frozenset, List[torch.Tensor]]" = OrderedDict()
    dim_to_size: Dict[str, int] = {}
    terms = []
    dtype = functools.reduce(torch.promote_types, (f.tensor.dtype for f in factors))
    for factor in factors:
        term = factor.tensor.to(dtype)[...]  # a fresh object: the ring tags it with _pyro_dims
        term._pyro_dims = factor.dims
        tree.setdefault(factor.ordinal, []).append(term)
        dim_to_size.update(zip(factor.dims, term.shape))
        terms.append(term)
    return tree, dim_to_size, terms


def plate_ring(dim_to_size: Dict[str, int], plate_scales: Mapping[str, float],
               plate_reducers: PlateReducers = ()) -> PlateScaledLogRing:
    """A fresh :class:`PlateScaledLogRing` for one contraction."""
    return PlateScaledLogRing(cache={}, dim_to_size=dim_to_size, plate_scales=plate_scales,
                              plate_reducers=plate_reducers)


@dataclass(frozen=True)
class Chunking:
    """Contract plate ``plate`` (its symbol) in ``num_chunks`` chunks of its elements
    (as equal as the plate's size allows)."""

    plate: str
    num_chunks: int


def log_marginal(factors: Sequence[LogFactor], plate_scales: Mapping[str, float],
                 plate_reducers: PlateReducers = (), chunking: Optional[Chunking] = None
                 ) -> torch.Tensor:
    """``log P_hat``: contract all factors to a scalar.

    :param factors: packed factors; plate symbols are those in their ordinals.
    :param plate_scales: ``N / B`` per subsampled plate symbol.
    :param plate_reducers: plate symbol -> the reducer that completes the plate's
        reduced terms across processes (sharded plates only).
    :param chunking: contract this plate in chunks (see :func:`chunk_obstacle` for
        the plates that can be); None: the whole contraction at once.
    :raises ValueError: when ``chunking`` names a plate that cannot be chunked.
    """
    if chunking is not None and chunking.num_chunks > 1:
        return _chunked_log_marginal(factors, dict(plate_scales), dict(plate_reducers), chunking)
    tree, dim_to_size, _ = term_tree(factors)
    plates = frozenset().union(*(f.ordinal for f in factors))
    ring = plate_ring(dim_to_size, plate_scales, plate_reducers)
    return contract_to_tensor(tree, set(dim_to_size) - plates, ring=ring)


def chunk_obstacle(factors: Sequence[LogFactor], plate: str,
                   plate_reducers: PlateReducers = ()) -> Optional[str]:
    """Why ``plate`` (a symbol) cannot be contracted in chunks, or None if it can.

    Chunking contracts the factors inside the plate (those whose ordinal holds it,
    nested plates included) to one term in the plate context around it, a chunk of
    elements at a time. That is exact when every factor inside carries the plate's dim,
    when each plate nested in it is nested in it alone (no factor outside it has such a
    plate: crossed plates), and when no nested plate is split across processes (its
    reducer, a collective, would be called once per chunk).
    """
    inside = [f for f in factors if plate in f.ordinal]
    if not inside:
        return "no factor is in it"
    if any(plate not in f.dims for f in inside):
        return "a factor in it does not carry its dim"
    if _plate_size(inside, plate) < 2:
        return "it has one element"
    target = frozenset.intersection(*(f.ordinal for f in inside)) - {plate}
    nested = frozenset().union(*(f.ordinal for f in inside)) - target - {plate}
    outer = frozenset().union(*(f.ordinal for f in factors if plate not in f.ordinal))
    if nested & outer:
        return "plates nested in it are also used outside it (crossed plates)"
    if nested & set(dict(plate_reducers)):
        return "a plate nested in it is split across processes"
    return None


def _plate_size(inside: Sequence[LogFactor], plate: str) -> int:
    return inside[0].tensor.shape[inside[0].dims.index(plate)]


def chunk_bounds(size: int, num_chunks: int) -> List[Tuple[int, int]]:
    """``num_chunks`` (at most ``size``) consecutive ranges covering ``range(size)``."""
    num_chunks = max(1, min(num_chunks, size))
    return [(i * size // num_chunks, (i + 1) * size // num_chunks) for i in range(num_chunks)]


def _chunked_log_marginal(factors: Sequence[LogFactor], plate_scales: Dict[str, float],
                          plate_reducers: Dict[str, Callable], chunking: Chunking) -> torch.Tensor:
    """:func:`log_marginal` with ``chunking.plate`` contracted a chunk at a time.

    The factors inside the plate are contracted, per chunk, down to the plate context
    around it (their particle dims used nowhere else summed per element, the plate and
    the plates nested in it reduced), keeping the dims they share with the factors
    outside. The plate's reduced term is a sum over its elements, so the chunks' terms
    add; the plate's reducer and ``N / B`` scale apply once to the total, as in the ring's
    product. The total joins the other factors as one factor of the outer context.
    """
    plate = chunking.plate
    obstacle = chunk_obstacle(factors, plate, plate_reducers)
    if obstacle is not None:
        raise ValueError(f"plate symbol {plate!r} cannot be contracted in chunks: {obstacle}")
    inside = [f for f in factors if plate in f.ordinal]
    outside = [f for f in factors if plate not in f.ordinal]
    target = frozenset.intersection(*(f.ordinal for f in inside)) - {plate}
    plates = frozenset().union(*(f.ordinal for f in factors))
    shared = set("".join(f.dims for f in outside))
    local = set("".join(f.dims for f in inside)) - shared - plates
    # Every chunk in the dtype the whole contraction would use.
    dtype = functools.reduce(torch.promote_types, (f.tensor.dtype for f in factors))
    chunk_scales = {d: s for d, s in plate_scales.items() if d != plate}
    chunk_reducers = {d: r for d, r in plate_reducers.items() if d != plate}
    positions = [f.dims.index(plate) for f in inside]
    output_dims: List[str] = []

    def contract_chunk(start: int, stop: int, *tensors: torch.Tensor) -> torch.Tensor:
        pieces = [LogFactor(f.name, t.narrow(pos, start, stop - start).to(dtype), f.dims, f.ordinal)
                  for f, t, pos in zip(inside, tensors, positions)]
        tree, dim_to_size, _ = term_tree(pieces)
        # A fresh ring per call: its cache would otherwise keep this chunk's
        # intermediates alive (and a recomputation in the backward pass would find them).
        ring = plate_ring(dim_to_size, chunk_scales, chunk_reducers)
        term = contract_to_tensor(tree, local & set(dim_to_size), target_ordinal=target, ring=ring)
        # One dim order for every chunk (the ring's order may depend on the sizes).
        order = "".join(sorted(term._pyro_dims))
        output_dims.append(order)
        return _aligned(term, term._pyro_dims, order)

    tensors = [f.tensor for f in inside]
    # Recompute each chunk in the backward pass instead of keeping its intermediates.
    recompute = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    total: Optional[torch.Tensor] = None
    for start, stop in chunk_bounds(_plate_size(inside, plate), chunking.num_chunks):
        if recompute:
            term = checkpoint(contract_chunk, start, stop, *tensors, use_reentrant=False,
                              preserve_rng_state=False)
        else:
            term = contract_chunk(start, stop, *tensors)
        total = term if total is None else total + term
    dims = output_dims[0]
    total._pyro_dims = dims
    if plate in plate_reducers:
        total = plate_reducers[plate](total)
        total._pyro_dims = dims
    if plate_scales.get(plate, 1.0) != 1.0:
        total = total * plate_scales[plate]
    folded = LogFactor(f"chunks:{plate}", total, dims, target)
    return log_marginal(outside + [folded], plate_scales, plate_reducers)


@dataclass
class Source:
    """A zero tensor added to a particle group's factors. ``tensor`` has the group's
    broadcast layout (particles in dim 0, plates at their dims) and ``factor`` is its
    packed view; the gradient of log P_hat with respect to it is the posterior weight
    of each particle, per plate element."""

    group: int
    tensor: torch.Tensor
    factor: LogFactor

    #: The position of the group's particles in ``tensor`` (0 unless a plate of
    #: particle sets lies left of them).
    particle_dim: int = 0


def make_sources(records: Sequence[SiteRecord], structure: ModelStructure,
                 symbols: Symbols, dtype: Optional[torch.dtype] = None) -> List[Source]:
    """One :class:`Source` per particle group that this run sampled (an enumerated
    site's dim holds its support instead of K particles).

    :param dtype: the sources' dtype (default: each group's log q's); float64 sources
        make the whole contraction, and so the weights, float64 (see
        :func:`~pyro_qem.estimator.estimate`'s ``float64_weights``)."""
    sources: List[Source] = []
    seen = set()
    for record in records:
        if record.is_observed or record.name not in structure.sites:
            continue
        group = structure.group_of(record.name)
        if group.index in seen:
            continue
        seen.add(group.index)
        num_particles = record.value.shape[group.dim - len(record.fn.event_shape)]
        frames = sorted(record.frames, key=lambda f: f.dim)
        # A plate left of the group's dim (the particle sets of a vectorised run)
        # widens the layout beyond the group's own dim.
        shape = [1] * max([-group.dim] + [-f.dim for f in frames])
        shape[len(shape) + group.dim] = num_particles
        for frame in frames:
            shape[len(shape) + frame.dim] = frame.size
        log_q = record.draw.log_q
        tensor = torch.zeros(shape, dtype=dtype or log_q.dtype, device=log_q.device,
                             requires_grad=True)
        # The packed view names the non-singleton dims in the tensor's own order.
        named = sorted([(group.dim, symbols.group[group.index], num_particles)]
                       + [(f.dim, symbols.plate[f.name], f.size) for f in frames])
        packed = tensor.reshape([size for _, _, size in named])
        dims = "".join(symbol for _, symbol, _ in named)
        ordinal = frozenset(symbols.plate[f.name] for f in frames)
        sources.append(Source(group.index, tensor, LogFactor(f"source:{group.index}", packed, dims, ordinal),
                              len(shape) + group.dim))
    return sources


@dataclass
class JointSource:
    """A zero tensor over the particle dims of every group a deterministic site's value
    varies over, and over the site's plates: the gradient of log P_hat with respect to
    it is the joint posterior weight of each combination of those groups' particles, per
    plate element (what a moment of the site needs: its value is a function of them).
    ``tensor`` has the value's broadcast layout without its event dims."""

    name: str
    tensor: torch.Tensor
    factor: LogFactor
    #: The positions of the groups' particle dims in ``tensor``.
    particle_dims: Tuple[int, ...]

    def weights(self, grad: torch.Tensor) -> torch.Tensor:
        """``grad`` normalised to sum to 1 over the particle dims."""
        if not self.particle_dims:  # one combination (an empty dim list would sum over every dim)
            return torch.ones_like(grad)
        return grad / grad.sum(self.particle_dims, keepdim=True)


def varying_groups(value: torch.Tensor, event_ndim: int, structure: ModelStructure) -> List[GroupInfo]:
    """The particle groups along whose dims ``value`` (a deterministic site's, in the
    broadcast layout) varies: size above 1 in the group's dim."""
    return [g for g in structure.groups
            if value.dim() >= event_ndim - g.dim and value.shape[g.dim - event_ndim] > 1]


def make_joint_source(record: SiteRecord, structure: ModelStructure, symbols: Symbols,
                      dtype: torch.dtype) -> JointSource:
    """The :class:`JointSource` of a deterministic site's record.

    A group in a plate the site is not in is allowed where the site's rows read it
    through an index (``a[..., county]`` in a house plate): the source is then a factor
    of the rows over that group's particle dim, folded into the groups like the rows'
    likelihood.

    :raises ValueError: when the value varies over a group in another plate that it
        does not read by its rows' index (its weight would mix that plate's elements).
    """
    event_ndim = len(record.fn.event_shape)
    value = record.value
    groups = varying_groups(value, event_ndim, structure)
    plates = {f.name for f in record.frames}
    outside = [g for g in groups if structure.reads_across(plates, g.plates)]
    if outside:
        raise ValueError(
            f"Site '{record.name}' depends on particle group {list(outside[0].sites)} through "
            f"plate(s) {sorted(outside[0].plates - plates)} it is not in."
        )
    width = max([-g.dim for g in groups] + [-f.dim for f in record.frames], default=0)
    shape = [1] * width
    named = []
    for g in groups:
        size = value.shape[g.dim - event_ndim]
        shape[width + g.dim] = size
        named.append((g.dim, symbols.group[g.index], size))
    for f in record.frames:
        shape[width + f.dim] = f.size
        named.append((f.dim, symbols.plate[f.name], f.size))
    named.sort()
    tensor = torch.zeros(shape, dtype=dtype, device=value.device, requires_grad=True)
    packed = tensor.reshape([size for _, _, size in named])
    dims = "".join(symbol for _, symbol, _ in named)
    ordinal = frozenset(symbols.plate[f.name] for f in record.frames)
    return JointSource(record.name, tensor, LogFactor(f"joint:{record.name}", packed, dims, ordinal),
                       tuple(width + g.dim for g in groups))


def log_marginal_and_weights(
    factors: Sequence[LogFactor], sources: Sequence[Source], plate_scales: Mapping[str, float]
) -> Tuple[torch.Tensor, Dict[int, torch.Tensor]]:
    """``log P_hat`` and, by one backward pass through the source terms, each group's
    normalised particle weights (broadcast layout, summing to 1 over dim 0)."""
    log_p_hat = log_marginal(list(factors) + [s.factor for s in sources], plate_scales)
    check_finite(log_p_hat, factors)
    grads = torch.autograd.grad(log_p_hat, [s.tensor for s in sources])
    return log_p_hat.detach(), normalised_weights(sources, grads)


def normalised_weights(sources: Sequence[Source], grads: Sequence[torch.Tensor]) -> Dict[int, torch.Tensor]:
    """Each group's source gradient, normalised to sum to 1 over its particles (in a
    subsampled plate the gradient carries the plate's N / B scale)."""
    return {s.group: g / g.sum(s.particle_dim, keepdim=True) for s, g in zip(sources, grads)}


def check_finite(log_p_hat: torch.Tensor, factors: Sequence[LogFactor] = ()) -> None:
    """Raise if ``log P_hat`` is -inf, +inf or NaN, naming the sites whose factors
    make it so (a NaN or +inf anywhere; -inf for every particle of a plate element).

    :param log_p_hat: the contracted estimate.
    :param factors: the packed factors it was contracted from.
    :raises FloatingPointError: when ``log P_hat`` is not finite.
    """
    if torch.isfinite(log_p_hat):
        return
    culprits = [d for d in map(_nonfinite_description, factors) if d is not None]
    named = ("; ".join(culprits) + ". ") if culprits else ""
    # NaN or +inf densities mostly come from parameters that overflowed (exp() of a
    # draw from a wide prior), which a narrower start avoids; -inf from q missing the
    # support or the posterior, which a wider one may cure.
    overflow = bool(torch.isnan(log_p_hat)) or log_p_hat.item() > 0
    advice = (
        "If the model's parameters overflow at q's initial spread (NaN or inf from exp() "
        "of a draw from a wide prior, e.g. a Poisson rate exp(a) with a ~ Normal(0, 100)), "
        "start q narrower: AutoQEM(model, init_scale=0.1)."
        if overflow else
        "If the guide's initial q misses the posterior, pass init_loc_fn or a wider "
        "init_scale."
    )
    raise FloatingPointError(
        f"log P_hat is {log_p_hat.item()}: {named}No combination of particles has finite "
        "probability under the model. Check that the observed data lie in the support of "
        "their distributions and that each site's parameters are valid (finite, positive "
        f"scales). {advice}"
    )


def _nonfinite_description(factor: LogFactor) -> Optional[str]:
    """What is wrong with one site's factor, or None if it cannot make log P_hat
    non-finite on its own."""
    tensor = factor.tensor.detach()
    if factor.name.startswith("source:") or tensor.numel() == 0:
        return None
    if torch.isnan(tensor).any():
        return f"site '{factor.name}' has NaN log density ({int(tensor.isnan().sum())} entries)"
    if torch.isposinf(tensor).any():
        return f"site '{factor.name}' has +inf log density (a density with a pole, e.g. Gamma at 0)"
    # Particle dims are the factor's dims outside its plates: -inf for all of them at
    # one plate element makes that element's logsumexp, and so log P_hat, -inf.
    particle_dims = tuple(i for i, d in enumerate(factor.dims) if d not in factor.ordinal)
    dead = torch.isneginf(tensor)
    if particle_dims:
        dead = dead.all(particle_dims)
    if not dead.any():
        return None
    if dead.dim() == 0:
        return f"site '{factor.name}' has log density -inf for every particle"
    return (f"site '{factor.name}' has log density -inf for every particle at "
            f"{int(dead.sum())} of {dead.numel()} plate elements")
