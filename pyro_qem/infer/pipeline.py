"""The one particle pipeline: run the model with K particles per latent site, then
weigh them. :meth:`~pyro_qem.infer.Inference.step`, :meth:`~pyro_qem.infer.Inference.evaluate_loss`
and every output in :mod:`pyro_qem.outputs` go through these two functions.

``run_particles`` is the only part that needs Pyro's handlers (the guide draws the
particles, :class:`~pyro_qem.handlers.SiteRecorder` records the sites); ``weigh`` is
the numeric part (:func:`pyro_qem.estimator.estimate`).
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import pyro
import torch

from ..estimator import Estimate, LogFactor, Source, estimate
from ..estimator.estimate import PlateReduction
from ..guides.qem_guide import QEMGuide
from ..handlers import IndexProbe, SiteRecord, SiteRecorder
from ..model import ModelStructure, Symbols
from ..model.structure import PARTICLE_SETS
from ..model.links import run_indices
from .checks import particle_run_errors


@dataclass
class ParticleRun:
    """One run of the model with K particles per latent site (or per group).

    :ivar structure: the model's structure (from the guide's set-up).
    :ivar sites: a record of every sample site, in model order; latent sites carry the
        guide's :class:`~pyro_qem.handlers.ParticleDraw`.
    :ivar subsamples: the indices of each subsampled plate in this run.
    :ivar params: every ``pyro.param`` the model and guide read (unconstrained leaves).
    :ivar links: for each linked plate (``structure.links``), this run's index of its
        rows into the parent plate.
    :ivar plate_reducers: plate name -> how a plate split across processes is reduced
        (empty for a single-process run; :mod:`pyro_qem.infer.distributed`).
    """

    structure: ModelStructure
    num_particles: int
    sites: List[SiteRecord]
    subsamples: Dict[str, torch.Tensor]
    params: Dict[str, torch.Tensor]
    links: Dict[str, torch.Tensor] = field(default_factory=dict)
    plate_reducers: Dict[str, PlateReduction] = field(default_factory=dict)
    #: The memory budget its contraction is planned for (``Inference(max_memory=...)``;
    #: None: contracted whole).
    max_memory: Optional[float] = None

    @property
    def latent(self) -> Dict[str, SiteRecord]:
        """The records of the latent sites, by name."""
        return {r.name: r for r in self.sites if r.draw is not None}

    @property
    def sites_by_name(self) -> Dict[str, SiteRecord]:
        """Every site's record, by name."""
        return {r.name: r for r in self.sites}


def run_particles(model: Callable, guide: QEMGuide, num_particles: int, args: tuple,
                  kwargs: dict, reparameterized: bool = True,
                  num_sets: int = 1,
                  particle_hook: Optional[Callable] = None,
                  averaged: bool = False) -> ParticleRun:
    """Run ``model(*args, **kwargs)`` once with ``num_particles`` particles of every
    latent site drawn from ``guide`` (set up on the first call), recording every site.

    :param particle_hook: ``hook(site, particles, selection) -> particles`` for the
        guide's draws (:attr:`~pyro_qem.guides.QEMGuide.particle_hook`), e.g. rank 0's
        particles of the global sites in a distributed fit.
    :param num_sets: run this many independent particle sets in one vectorised model
        call, inside the plate of
        :meth:`~pyro_qem.model.ModelStructure.particle_sets_plate` (the run's
        structure then has that plate; outputs that need many fresh runs use it).
    :param averaged: propose from the running average of q's iterates where the guide
        keeps one (outputs), not from the current iterate (steps).
    """
    structure = guide.setup(*args, **kwargs)
    sets = None
    if num_sets > 1:
        structure = structure.with_particle_sets(num_sets)
        sets = structure.plates[PARTICLE_SETS]
    recorder = SiteRecorder()
    # The probe hands indexed latents to the model as IndexedValue, after the recorder
    # has kept their plain values; a model without indexed groups runs without it.
    probe = IndexProbe(structure.indexed_sites) if structure.links else contextlib.nullcontext()
    sets_plate = (pyro.plate(sets.name, sets.size, dim=sets.dim) if sets is not None
                  else contextlib.nullcontext())
    guide.particle_hook = particle_hook
    try:
        with recorder, probe, guide.particles(num_particles, reparameterized, sets, averaged) as draws, \
                particle_run_errors(recorder, num_particles), sets_plate:
            model(*args, **kwargs)
    finally:
        guide.particle_hook = None
    for record in recorder.sites:
        record.draw = draws.get(record.name)
    links = {}
    if structure.links:
        links = run_indices(probe.uses, structure.links, _plate_sizes(recorder.sites))
        _check_links_found(structure, links, recorder.sites)
    return ParticleRun(structure, num_particles, recorder.sites, recorder.subsamples,
                       recorder.params, links)


def _plate_sizes(records: Sequence[SiteRecord]) -> Dict[str, Tuple[int, int]]:
    return {f.name: (f.dim, f.size) for r in records for f in r.frames}


def _check_links_found(structure: ModelStructure, links: Dict[str, torch.Tensor],
                       records: Sequence[SiteRecord]) -> None:
    present = {f.name for r in records for f in r.frames}
    missing = sorted(child for child in structure.links if child in present and child not in links)
    if missing:
        child = missing[0]
        raise ValueError(
            f"At set-up, rows of pyro.plate('{child}') read latents of "
            f"pyro.plate('{structure.links[child]}') through an integer index, but in this "
            "run no such index was applied. Either the model indexes differently from "
            "call to call (index from the right: a[..., county] with county as long as the "
            "rows' plate; a[county] indexes from the left, which under QEM is the particle "
            "dim), or it reads them through Vindex(a)[..., county] (Vindex turns the "
            "particle dims into index tensors of their own, which hides the rows' index: "
            "write a[..., county] for a data index), or the index is itself a latent site "
            "(a mixture's assignment z in "
            "locs[..., z] or Vindex(locs)[..., z], with locs sampled inside "
            f"pyro.plate('{structure.links[child]}')): then every row reads every "
            "component's particles, which QEM cannot contract. Sample such parameters "
            "as one vector site outside the plate instead, e.g. pyro.sample('locs', "
            "dist.Normal(0., 2.).expand([C]).to_event(1))."
        )


@dataclass
class WeightedRun:
    """A particle run and its estimate: what every posterior output starts from. In a
    distributed fit the run carries its plate reducers, so the estimate (and every
    output read off it) is that of all processes' rows together.

    :ivar weights: each particle group's normalised weights (broadcast layout,
        particles in dim 0), or None when not computed.
    :ivar complements: in a distributed run, one factor per plate-reduced term of the
        sharded plate: the other processes' part of it (detached), at the ordinal the
        term was reduced to. With them, :attr:`factors` contract to the full-data
        ``log P_hat`` in any ring (joint resampling samples the global groups from
        their full-data marginal).
    """

    run: ParticleRun
    estimate: Estimate
    weights: Optional[Dict[int, torch.Tensor]]
    complements: List[LogFactor] = field(default_factory=list)
    #: deterministic site -> the joint weights of the particle groups its value varies
    #: over (``weigh(..., joint=...)``).
    joint_weights: Dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def structure(self) -> ModelStructure:
        return self.run.structure

    @property
    def log_p_hat(self) -> float:
        if self.estimate.log_p_hat is None:
            raise RuntimeError("This run was weighed with contract=False: it has no log P_hat.")
        return self.estimate.log_p_hat.item()

    @property
    def records(self) -> Dict[str, SiteRecord]:
        """The latent sites' records, by name."""
        return self.run.latent

    @property
    def factors(self) -> List[LogFactor]:
        return self.estimate.factors + self.complements

    @property
    def sources(self) -> List[Source]:
        return self.estimate.sources

    @property
    def symbols(self) -> Symbols:
        return self.run.structure.symbols


def weigh(run: ParticleRun, weights: bool = True, contract: bool = True,
          joint: Sequence[str] = ()) -> WeightedRun:
    """Contract a particle run and, if ``weights``, read each group's particle weights
    off the source terms (one backward pass; it runs even under ``torch.no_grad``).
    The source terms are there either way: joint resampling walks back to them.
    ``contract=False`` (without ``weights``) leaves ``log P_hat`` uncomputed, for joint
    resampling, which contracts the factors itself; a distributed run is contracted
    anyway, as resampling needs what the other processes add to each plate. ``joint``
    names deterministic sites whose joint weights to compute as well (for their
    moments)."""
    complements: List[LogFactor] = []
    plates = frozenset(run.structure.symbols.plate.values())
    reducers = {name: dataclasses.replace(r, reduce=_recording(r.reduce, complements, plates))
                for name, r in run.plate_reducers.items()}
    with torch.enable_grad():
        result = estimate(run.sites, run.structure, run.num_particles, links=run.links,
                          plate_reducers=reducers, max_memory=run.max_memory,
                          contract=contract or weights or bool(reducers), joint=joint)
        joint_weights = {k: w.detach() for k, w in result.joint_weights().items()}
        marginals = result.weights() if weights else None
    if result.log_p_hat is not None:
        result.log_p_hat = result.log_p_hat.detach()
    return WeightedRun(run, result, marginals, complements, joint_weights)


def _recording(reduce: Callable, complements: List[LogFactor], plates: frozenset) -> Callable:
    """``reduce``, keeping what it added to each term as a factor of its own."""
    def recorded(term: torch.Tensor) -> torch.Tensor:
        total = reduce(term)
        dims = term._pyro_dims
        complements.append(LogFactor(f"shards:{len(complements)}", (total - term).detach(), dims,
                                     frozenset(d for d in dims if d in plates)))
        return total
    return recorded
