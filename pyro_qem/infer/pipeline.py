"""The one particle pipeline: run the model with K particles per latent site, then
weigh them. :meth:`~pyro_qem.Inference.step`, :meth:`~pyro_qem.Inference.evaluate_loss`
and every output in :mod:`pyro_qem.outputs` go through these two functions.

``run_particles`` is the only part that needs Pyro's handlers (the guide draws the
particles, :class:`~pyro_qem.handlers.SiteRecorder` records the sites); ``weigh`` is
the numeric part (:func:`pyro_qem.estimator.estimate`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import torch

from ..estimator import Estimate, LogFactor, Source, estimate
from ..guides.qem_guide import QEMGuide
from ..handlers import SiteRecord, SiteRecorder
from ..model import ModelStructure, Symbols


@dataclass
class ParticleRun:
    """One run of the model with K particles per latent site (or per group).

    :ivar structure: the model's structure (from the guide's set-up).
    :ivar sites: a record of every sample site, in model order; latent sites carry the
        guide's :class:`~pyro_qem.handlers.ParticleDraw`.
    :ivar subsamples: the indices of each subsampled plate in this run.
    :ivar params: every ``pyro.param`` the model and guide read (unconstrained leaves).
    """

    structure: ModelStructure
    num_particles: int
    sites: List[SiteRecord]
    subsamples: Dict[str, torch.Tensor]
    params: Dict[str, torch.Tensor]

    @property
    def latent(self) -> Dict[str, SiteRecord]:
        """The records of the latent sites, by name."""
        return {r.name: r for r in self.sites if r.draw is not None}


def run_particles(model: Callable, guide: QEMGuide, num_particles: int, args: tuple,
                  kwargs: dict, reparameterized: bool = True) -> ParticleRun:
    """Run ``model(*args, **kwargs)`` once with ``num_particles`` particles of every
    latent site drawn from ``guide`` (set up on the first call), recording every site."""
    structure = guide.setup(*args, **kwargs)
    recorder = SiteRecorder()
    with recorder, guide.particles(num_particles, reparameterized) as draws:
        model(*args, **kwargs)
    for record in recorder.sites:
        record.draw = draws.get(record.name)
    return ParticleRun(structure, num_particles, recorder.sites, recorder.subsamples,
                       recorder.params)


@dataclass
class WeightedRun:
    """A particle run and its estimate: what every posterior output starts from.

    :ivar weights: each particle group's normalised weights (broadcast layout,
        particles in dim 0), or None when not computed.
    """

    run: ParticleRun
    estimate: Estimate
    weights: Optional[Dict[int, torch.Tensor]]

    @property
    def structure(self) -> ModelStructure:
        return self.run.structure

    @property
    def log_p_hat(self) -> float:
        return self.estimate.log_p_hat.item()

    @property
    def records(self) -> Dict[str, SiteRecord]:
        """The latent sites' records, by name."""
        return self.run.latent

    @property
    def factors(self) -> List[LogFactor]:
        return self.estimate.factors

    @property
    def sources(self) -> List[Source]:
        return self.estimate.sources

    @property
    def symbols(self) -> Symbols:
        return self.run.structure.symbols


def weigh(run: ParticleRun, weights: bool = True) -> WeightedRun:
    """Contract a particle run and, if ``weights``, read each group's particle weights
    off the source terms (one backward pass; it runs even under ``torch.no_grad``).
    The source terms are there either way: joint resampling walks back to them."""
    with torch.enable_grad():
        result = estimate(run.sites, run.structure, run.num_particles)
        marginals = result.weights() if weights else None
    result.log_p_hat = result.log_p_hat.detach()
    return WeightedRun(run, result, marginals)
