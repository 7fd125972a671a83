"""One particle run's estimate: its factors, the source terms, and ``log P_hat``.

This is the numeric core of a step, tensors in and tensors out: the recorded sites'
distributions and values (with each latent site's ``log q``) become packed log factors,
the contraction gives ``log P_hat``, and its gradient with respect to the zero source
terms gives every particle group's posterior weights. Nothing here runs the model or
touches Pyro's handlers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, FrozenSet, List, Mapping, Optional, Sequence

import torch

from ..handlers import SiteRecord
from ..model.structure import ModelStructure
from .contraction import (Chunking, JointSource, Source, check_finite, make_joint_source,
                          make_sources, normalised_weights)
from .factors import LogFactor, log_factors, subsample_scales
from .linked import PlateLink, contract_terms
from .memory import plan_contraction


@dataclass(frozen=True)
class PlateReduction:
    """How a plate whose elements are split across processes is reduced.

    :ivar reduce: completes a plate-reduced term (this process's sum over its
        elements) to the sum over every process's elements, keeping the gradient to
        the local term (e.g. ``x + (all_reduce(x.detach()) - x.detach())``).
    :ivar scale: the plate's ``N / B`` over all processes (``B`` the elements of this
        step on every process together): it replaces the ``N / B_r`` of this process's
        own subsample; 1 when the processes together cover the plate.

    Example::

        reduction = PlateReduction(lambda x: x + (total(x.detach()) - x.detach()), 1.0)
        estimate(records, structure, K, plate_reducers={"row": reduction})
    """

    reduce: Callable[[torch.Tensor], torch.Tensor]
    scale: float = 1.0


@dataclass
class Estimate:
    """The contraction of one particle run.

    :ivar factors: the model's packed log factors (no source terms).
    :ivar sources: one zero source term per particle group (empty if not asked for).
    :ivar plate_scales: ``N / B`` per subsampled plate symbol (over all processes for a
        sharded plate; a sharded plate that the processes cover is not listed).
    :ivar log_p_hat: the scalar ``log P_hat`` (differentiable in the sources and in
        whatever the factors depend on); None for ``estimate(..., contract=False)``.
    """

    factors: List[LogFactor]
    sources: List[Source]
    plate_scales: Dict[str, float]
    log_p_hat: Optional[torch.Tensor]
    links: Dict[str, PlateLink] = field(default_factory=dict)
    #: The chunking the contraction used to stay within ``max_memory`` (None: whole).
    chunking: Optional[Chunking] = None
    #: One :class:`~pyro_qem.estimator.contraction.JointSource` per deterministic site
    #: asked for (``estimate(..., joint=...)``), contracted with the rest.
    joint_sources: List[JointSource] = field(default_factory=list)

    def joint_weights(self) -> Dict[str, torch.Tensor]:
        """Each joint source's normalised weights (see :class:`JointSource`)."""
        if not self.joint_sources:
            return {}
        grads = torch.autograd.grad(self.log_p_hat, [j.tensor for j in self.joint_sources],
                                    retain_graph=True)
        return {j.name: j.weights(g) for j, g in zip(self.joint_sources, grads)}

    def weights(self, source_grads: Sequence[torch.Tensor] = None) -> Dict[int, torch.Tensor]:
        """Each group's normalised particle weights (broadcast layout, particles in dim
        0), from the gradients of ``log P_hat`` at the source terms (computed here when
        not given)."""
        if source_grads is None:
            source_grads = torch.autograd.grad(self.log_p_hat, [s.tensor for s in self.sources])
        return normalised_weights(self.sources, source_grads)


def estimate(records: Sequence[SiteRecord], structure: ModelStructure, num_particles: int,
             with_sources: bool = True, links: Optional[Mapping[str, torch.Tensor]] = None,
             plate_reducers: Optional[Mapping[str, PlateReduction]] = None,
             contract: bool = True, check: bool = True,
             max_memory: Optional[float] = None, float64_weights: bool = False,
             joint: Sequence[str] = ()) -> Estimate:
    """Contract one recorded particle run to ``log P_hat``.

    :param records: every sample site of the run, latent sites with their
        :class:`~pyro_qem.handlers.ParticleDraw`.
    :param structure: the model's structure.
    :param num_particles: K.
    :param with_sources: add the zero source terms whose gradients are the weights.
    :param links: for each plate whose rows read latents of another plate through an
        index (``structure.links``), this run's index: the rows are folded into the
        other plate (:mod:`pyro_qem.estimator.linked`).
    :param plate_reducers: plate name -> :class:`PlateReduction`, for plates whose
        elements are split across processes: every plate-reduced term of the plate is
        completed by its reducer, so ``log P_hat`` (and the weights of the groups outside
        the plate) are those of all elements together.
    :param contract: False: only the factors and source terms, no ``log P_hat`` (None),
        for joint resampling, which contracts them itself.
    :param check: raise when ``log P_hat`` is not finite (a data-dependent test; the
        compiled step traces without it and checks its output instead).
    :param max_memory: a budget in bytes for the factors and their contraction (the
        backward pass for the weights included): when the contraction's estimated peak
        (:func:`~pyro_qem.estimator.memory.plan_contraction`) would exceed it, one
        plate is contracted in chunks of its elements, with the same result. None
        (default): no estimate, the whole contraction at once.
    :param float64_weights: contract in float64 whatever the factors' dtype, so that
        weights down to exp(-745) (not exp(-87), float32's floor) are resolved: the
        regression update (:mod:`pyro_qem.infer.regression`) reads the log joint off
        every particle's weight.
    :param joint: deterministic sites whose joint weights are wanted: each gets a
        :class:`~pyro_qem.estimator.contraction.JointSource` over the particle groups
        its value varies over (its moments need the joint posterior of those groups).
    :raises FloatingPointError: when ``log P_hat`` is not finite and ``check``.
    :raises ~pyro_qem.estimator.memory.MemoryBudgetError: when even chunking cannot
        keep the contraction within ``max_memory``.
    """
    symbols = structure.symbols
    factors = log_factors(records, structure, symbols, num_particles)
    sources = make_sources(records, structure, symbols,
                           torch.float64 if float64_weights else None) if with_sources else []
    by_name = {r.name: r for r in records}
    dtype = torch.float64 if float64_weights else factors[0].tensor.dtype if factors else None
    joint_sources = [make_joint_source(by_name[name], structure, symbols, dtype or torch.get_default_dtype())
                     for name in joint]
    scales = subsample_scales(records, symbols)
    reducers = {}
    for plate, reduction in (plate_reducers or {}).items():
        symbol = symbols.plate[plate]
        reducers[symbol] = reduction.reduce
        scales.pop(symbol, None)
        if reduction.scale != 1.0:
            scales[symbol] = reduction.scale
    plate_links = plate_links_of(records, structure, links or {})
    if not contract:
        return Estimate(factors, sources, scales, None, plate_links, joint_sources=joint_sources)
    terms = factors + [s.factor for s in sources] + [j.factor for j in joint_sources]
    locals_ = local_dims(structure) if plate_links else None
    chunking = None
    if max_memory is not None:
        chunking = plan_contraction(terms, scales, reducers, max_memory, plate_links, locals_,
                                    symbols.plate_names)
    try:
        log_p_hat = contract_terms(terms, scales, reducers, plate_links, locals_, chunking)
    except NotImplementedError as error:
        if "tree-structured plate nesting" not in str(error):
            raise
        raise ValueError(_crossed_message(str(error), symbols.plate_names, plate_links)) from error
    if check:
        check_finite(log_p_hat, factors)
    return Estimate(factors, sources, scales, log_p_hat, plate_links, chunking, joint_sources)


def _crossed_message(error: str, plate_names: Mapping[str, str], plate_links) -> str:
    """Pyro's refusal of factors over plates that do not nest, with the plates named."""
    found = error[error.find("[") + 1:error.find("]")] if "[" in error else ""
    named = [plate_names.get(symbol.strip(), symbol.strip()) for symbol in found.split(",") if symbol.strip()]
    linked = ""
    if plate_links:
        linked = (" Rows that read a group's latent through an index (a[..., county]) are "
                  "folded into that group's plate, so a plate that encloses the rows (time "
                  "periods around houses that read counties) then crosses the groups' plate.")
    return (
        f"Some log density depends on latents of plates that do not nest in one another "
        f"({named}): QEM contracts plates as a tree, each plate inside the other or apart "
        f"(crossed plates would cost K to the power of their sizes).{linked} Such "
        "crossed groupings are not supported: nest one grouping in the other, or model "
        "one of them with latents outside every plate (e.g. a time trend with a global "
        "slope instead of one effect per period)."
    )


def local_dims(structure: ModelStructure) -> Dict[str, FrozenSet[str]]:
    """plate symbol -> the particle dims of the groups inside that plate."""
    symbols = structure.symbols
    found: Dict[str, set] = {}
    for group in structure.groups:
        for plate in group.plates:
            found.setdefault(symbols.plate[plate], set()).add(symbols.group[group.index])
    return {plate: frozenset(dims) for plate, dims in found.items()}


def plate_links_of(records: Sequence[SiteRecord], structure: ModelStructure,
                   links: Mapping[str, torch.Tensor]) -> Dict[str, PlateLink]:
    """The run's :class:`PlateLink` s, keyed by the child plate's symbol.

    :param links: child plate name -> this run's index into its parent plate.
    """
    if not links:
        return {}
    sizes = {f.name: f.size for r in records for f in r.frames}
    symbols = structure.symbols
    out = {}
    for child, index in links.items():
        parent = structure.links[child]
        out[symbols.plate[child]] = PlateLink(symbols.plate[child], symbols.plate[parent],
                                              index, sizes[parent])
    return out
