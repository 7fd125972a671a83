"""One particle run of a fitted model, weighted: what every posterior output starts from.

The engine's :meth:`~pyro_qem.Inference.step` builds the same factors and weights and
then updates the guide; the outputs stop before the update.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Sequence

import torch

from ..estimator import LogFactor, Source, Symbols, log_factors, log_marginal_and_weights
from ..estimator import make_sources
from ..guides.structure import ModelStructure, SiteInfo
from ..handlers import SiteRecord, is_subsampled

if TYPE_CHECKING:
    from ..infer.inference import Inference


@dataclass
class WeightedRun:
    """K particles of every latent site, the estimator's factors, and each particle
    group's normalised weights (broadcast layout, particles in dim 0)."""

    structure: ModelStructure
    symbols: Symbols
    records: Dict[str, SiteRecord]
    factors: List[LogFactor]
    sources: List[Source]
    weights: Dict[int, torch.Tensor]
    log_p_hat: float


def check_inference(inference) -> None:
    from ..infer.inference import Inference

    if not isinstance(inference, Inference):
        raise TypeError(
            f"inference must be a pyro_qem.Inference (the object whose step() fitted the "
            f"guide), got {type(inference).__name__}."
        )


def weighted_run(inference: "Inference", args: tuple, kwargs: dict, what: str,
                 weights: bool = True) -> WeightedRun:
    """Run the model once with K particles per group and weight the particles.

    :param what: the output being computed, for error messages.
    :param weights: compute the marginal weights (a backward pass); resampling does
        not need them.
    """
    check_inference(inference)
    run = inference.run_particles(*args, **kwargs)
    structure = inference.guide.structure
    _check_full_plates(run.sites, what)
    symbols = Symbols(structure)
    # The weights are gradients of log P_hat: they need autograd even when the caller
    # is under torch.no_grad().
    with torch.enable_grad():
        factors = log_factors(run.sites, structure, symbols, inference.K)
        sources = make_sources(run.sites, structure, symbols)
        if weights:
            log_p_hat, marginals = log_marginal_and_weights(factors, sources, {})
        else:
            log_p_hat, marginals = torch.tensor(float("nan")), {}
    records = {r.name: r for r in run.sites if r.name in structure.sites and not r.is_observed}
    factors = [LogFactor(f.name, f.tensor.detach(), f.dims, f.ordinal) for f in factors]
    return WeightedRun(structure, symbols, records, factors, sources, marginals, log_p_hat.item())


def _check_full_plates(records: Sequence[SiteRecord], what: str) -> None:
    for record in records:
        for frame in record.frames:
            if is_subsampled(frame):
                raise ValueError(
                    f"{what}: pyro.plate('{frame.name}') is subsampled ({frame.size} of "
                    f"{frame.full_size} elements). Posterior outputs need every plate "
                    "element in one run: call the model without subsample_size (e.g. "
                    "a full-batch version of it) for this output."
                )


def select_sites(structure: ModelStructure, sites: Optional[Sequence[str]]) -> List[str]:
    """The requested latent sites in model order (all of them when ``sites`` is None)."""
    if sites is None:
        return list(structure.sites)
    if isinstance(sites, str):
        sites = [sites]
    unknown = [s for s in sites if s not in structure.sites]
    if unknown:
        raise ValueError(
            f"sites: {unknown} are not latent sample sites of the model (latent sites: "
            f"{sorted(structure.sites)}). Observed sites have no posterior."
        )
    return [s for s in structure.sites if s in sites]


def resolve_fn(fn, site: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The statistic for ``site``: ``fn`` itself, ``fn[site]``, or the identity."""
    if fn is None:
        return lambda z: z
    if callable(fn):
        return fn
    if isinstance(fn, dict):
        if site not in fn:
            raise ValueError(
                f"fn: no statistic for site '{site}' (given for {sorted(fn)}). Pass "
                "sites=... to restrict the sites, or one callable for all of them."
            )
        return fn[site]
    raise TypeError(f"fn must be a callable or a dict site -> callable, got {type(fn).__name__}.")


def to_site_shape(tensor: torch.Tensor, site: SiteInfo, trailing: int) -> torch.Tensor:
    """Drop the leading singleton dims of a reduced broadcast-layout tensor: the result
    has the site's batch shape followed by ``trailing`` dims."""
    keep = len(site.batch_shape) + trailing
    if tensor.dim() < keep:
        return tensor.reshape((1,) * (keep - tensor.dim()) + tensor.shape)
    return tensor.reshape(tensor.shape[tensor.dim() - keep:])
