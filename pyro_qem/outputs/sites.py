"""What the outputs share: one weighted particle run of a fitted model (through the
inference's own pipeline, :mod:`pyro_qem.infer.pipeline`), checked for full plates, and
the selection of sites and statistics."""

from __future__ import annotations

from typing import Callable, Iterable, List, Optional, Sequence, Tuple

import torch

from ..handlers import SiteRecord, is_subsampled
from ..estimator.contraction import varying_groups
from ..handlers.noncentring import decentered_name
from ..infer.inference import Inference
from ..infer.pipeline import ParticleRun, WeightedRun, weigh
from ..model import ModelStructure, SiteInfo
from ..model.structure import PARTICLE_SETS


def check_inference(inference) -> None:
    if not isinstance(inference, Inference):
        raise TypeError(
            f"inference must be a pyro_qem.Inference (the object whose step() fitted the "
            f"guide), got {type(inference).__name__}."
        )


def weighted_run(inference: Inference, args: tuple, kwargs: dict, what: str,
                 weights: bool = True, num_sets: int = 1, contract: bool = True,
                 joint: Optional[Callable[[ParticleRun], Sequence[str]]] = None) -> WeightedRun:
    """Run the model once with K particles per group and weigh the particles.

    :param what: the output being computed, for error messages.
    :param weights: compute the marginal weights (a backward pass); resampling does
        not need them.
    :param num_sets: independent particle sets in the one vectorised run (a plate of
        its own, :meth:`~pyro_qem.model.ModelStructure.with_particle_sets`).
    :param contract: compute ``log P_hat`` (see :func:`~pyro_qem.infer.pipeline.weigh`).
    :param joint: ``joint(run)`` -> the deterministic sites whose joint weights to
        compute (for their moments).
    """
    check_inference(inference)
    run = inference._run(args, kwargs, num_sets=num_sets)
    _check_full_plates(run.sites, what)
    return weigh(run, weights=weights, contract=contract, joint=joint(run) if joint else ())


def select_outputs(run: ParticleRun, sites: Optional[Sequence[str]], what: str
                   ) -> Tuple[List[str], List[str]]:
    """The requested latent sites, and the requested deterministic sites, in model
    order. By default: every latent site, and every deterministic site whose value a
    draw of the particle groups fixes (non-centred sites, ``pyro.deterministic`` sites
    given an ``event_dim``, in the plates of the groups they read).

    :raises ValueError: for a requested deterministic site that is not of that kind.
    """
    derived = [r for r in run.sites if r.is_deterministic]
    problems = {r.name: _why_not_derivable(run.structure, r) for r in derived}
    if sites is None:
        return select_sites(run.structure, None), [r.name for r in derived if problems[r.name] is None]
    requested = [sites] if isinstance(sites, str) else list(sites)
    for name in requested:
        if problems.get(name) is not None:
            raise ValueError(f"{what}: deterministic site '{name}' {problems[name]}")
    latent = [s for s in requested if s not in problems]
    return (select_sites(run.structure, latent) if latent else [],
            [r.name for r in derived if r.name in requested])


def _why_not_derivable(structure: ModelStructure, record: SiteRecord) -> Optional[str]:
    if record.value.dim() > 0 and len(record.fn.event_shape) >= record.value.dim():
        return ("was recorded with every dim of its value as an event dim (Pyro's default "
                "for pyro.deterministic), so its particle dims cannot be told from its own: "
                "pass event_dim (e.g. pyro.deterministic(name, value, event_dim=0)), or "
                "recompute it from the drawn latents with Predictive(model, "
                "posterior_samples=draws).")
    event_ndim = len(record.fn.event_shape)
    misplaced = _misplaced_dim(structure, record, event_ndim)
    if misplaced is not None:
        return (f"has a value whose batch dims do not line up with the plates and particle "
                f"dims ({misplaced}): it was computed with a reduction or reshape over a "
                "batch dim (e.g. theta.sum(-1) over a plate). Keep the plate dims "
                "(theta.sum(-1, keepdim=True)) or recompute it from the drawn latents with "
                "Predictive(model, posterior_samples=draws).")
    plates = {f.name for f in record.frames}
    for group in varying_groups(record.value, event_ndim, structure):
        if structure.reads_across(plates, group.plates):
            return (f"reads particle group {list(group.sites)} through plates it is not in "
                    f"({sorted(group.plates - plates)}) other than by one index of its "
                    "rows, which is not supported; recompute it from the drawn latents "
                    "with Predictive(model, posterior_samples=draws).")
    return None


def plate_layout(record: SiteRecord, nesting: int) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
    """A deterministic site's batch shape from its plates: over all ``nesting`` plate
    dims (size 1 where it is in no plate), and trimmed to its outermost plate (the
    shape Pyro gives a site in those plates)."""
    batch = [1] * nesting
    for frame in record.frames:
        if frame.name != PARTICLE_SETS:
            batch[nesting + frame.dim] = frame.size
    used = max([-f.dim for f in record.frames if f.name != PARTICLE_SETS], default=0)
    return tuple(batch), tuple(batch[nesting - used:])


def _check_full_plates(records: Sequence[SiteRecord], what: str) -> None:
    check_full_frames((frame for record in records for frame in record.frames), what)


def check_full_frames(frames: Iterable, what: str) -> None:
    """Raise, naming ``what``, if one of these plate frames is subsampled."""
    for frame in frames:
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


def _misplaced_dim(structure: ModelStructure, record: SiteRecord, event_ndim: int) -> Optional[str]:
    """Why the batch dims of a deterministic value are not (particle dims, plate dims)
    right-aligned as every site's are, or None: a plate position must have size 1 or
    its plate's size, and no dim may lie left of the particle dims (and particle sets)."""
    shape = record.value.shape[:record.value.dim() - event_ndim]
    nesting = structure.max_plate_nesting
    frames = {f.dim: f.size for f in record.frames if f.name != PARTICLE_SETS}
    sets = structure.plates.get(PARTICLE_SETS)
    particle_dims = {g.dim for g in structure.groups}
    for position in range(1, len(shape) + 1):
        size, dim = shape[-position], -position
        if size == 1:
            continue
        if position <= nesting:
            if frames.get(dim) != size:
                return f"dim {dim} has size {size}, not that of a plate at dim {dim}"
        elif sets is not None and dim == sets.dim:
            if size != sets.size:
                return f"dim {dim} has size {size}"
        elif dim not in particle_dims:
            return f"dim {dim} of size {size} is left of every particle dim"
    return None


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
            f"and computes '{name}' from it), so it has no q of its own: its joint draws "
            f"and moments come from sample_posterior and posterior_moments; ask here for "
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
