"""What the outputs share: one weighted particle run of a fitted model (through the
inference's own pipeline, :mod:`pyro_qem.infer.pipeline`), checked for full plates, and
the selection of sites and statistics."""

from __future__ import annotations

from typing import Callable, List, Optional, Sequence

import torch

from ..handlers import SiteRecord, is_subsampled
from ..handlers.noncentring import decentered_name
from ..infer.inference import Inference
from ..infer.pipeline import WeightedRun, weigh
from ..model import ModelStructure, SiteInfo


def check_inference(inference) -> None:
    if not isinstance(inference, Inference):
        raise TypeError(
            f"inference must be a pyro_qem.Inference (the object whose step() fitted the "
            f"guide), got {type(inference).__name__}."
        )


def weighted_run(inference: Inference, args: tuple, kwargs: dict, what: str,
                 weights: bool = True, num_sets: int = 1, contract: bool = True) -> WeightedRun:
    """Run the model once with K particles per group and weigh the particles.

    :param what: the output being computed, for error messages.
    :param weights: compute the marginal weights (a backward pass); resampling does
        not need them.
    :param num_sets: independent particle sets in the one vectorised run (a plate of
        its own, :meth:`~pyro_qem.model.ModelStructure.with_particle_sets`).
    :param contract: compute ``log P_hat`` (see :func:`~pyro_qem.infer.pipeline.weigh`).
    """
    check_inference(inference)
    run = inference._run(args, kwargs, num_sets=num_sets)
    _check_full_plates(run.sites, what)
    return weigh(run, weights=weights, contract=contract)


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


def check_count(name: str, value) -> None:
    """Raise unless ``value`` (the argument ``name``) is a positive int."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}.")


def select_sites(structure: ModelStructure, sites: Optional[Sequence[str]]) -> List[str]:
    """The requested latent sites in model order (all of them when ``sites`` is None)."""
    if sites is None:
        return list(structure.sites)
    if isinstance(sites, str):
        sites = [sites]
    unknown = [s for s in sites if s not in structure.sites]
    noncentred = [s for s in unknown if decentered_name(s) in structure.sites]
    if noncentred:
        name = noncentred[0]
        raise ValueError(
            f"sites: '{name}' is non-centred (the guide proposes '{decentered_name(name)}' "
            f"and computes '{name}' from it), so it has no particles of its own: its joint "
            f"draws come from sample_posterior (which returns '{name}'); ask here for "
            f"'{decentered_name(name)}'."
        )
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
