"""Initial q of each site: moment-matched to draws of its prior.

Each site's family is matched to draws of the site's prior given its parents at the
values of the set-up run (``init_loc_fn``, default Pyro's ``init_to_median``), with
statistics robust to heavy tails (:meth:`~pyro_qem.families.Family.init_moments`).
An explicit ``init_loc_fn`` also moves each q's location (or, for families without one,
its mean) to the strategy's value (:meth:`~pyro_qem.families.Family.relocate`);
``init_scale`` sets the scale of families that have one. Subsampled plates are assembled from the set-up runs' chunks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Mapping, Optional, Sequence, Union

import torch
from torch.distributions import biject_to

from ..families import Family
from ..model import Prototype, SiteInfo, scatter_, selection_of

# Prior draws per site; enough for quantiles to within a few percent.
NUM_INIT_DRAWS = 2000


@dataclass
class InitOptions:
    """How q starts: ``init_loc_fn`` given explicitly moves q's centre to its values;
    ``init_scale`` (float or ``{site: float}``) sets scales."""

    init_loc_fn: Optional[Callable] = None
    init_scale: Union[None, float, Mapping[str, float]] = None

    def __post_init__(self) -> None:
        if self.init_loc_fn is not None and not callable(self.init_loc_fn):
            raise TypeError(
                f"init_loc_fn must be callable (e.g. pyro.infer.autoguide.init_to_median), "
                f"got {type(self.init_loc_fn).__name__}."
            )
        scales = self.init_scale.items() if isinstance(self.init_scale, Mapping) else \
            [(None, self.init_scale)] if self.init_scale is not None else []
        for site, scale in scales:
            _check_scale(site, scale)

    def scale_of(self, name: str) -> Optional[float]:
        if isinstance(self.init_scale, Mapping):
            return self.init_scale.get(name)
        return self.init_scale


def _check_scale(site: Optional[str], scale) -> None:
    what = "init_scale" if site is None else f"init_scale['{site}']"
    try:
        value = float(scale)
    except (TypeError, ValueError):
        raise TypeError(f"{what} must be a positive float, got {scale!r}.") from None
    if not (value > 0 and value < float("inf")):
        raise ValueError(
            f"{what} must be a positive, finite float (the initial scale of q), got {scale!r}. "
            "A zero scale gives every particle the same value, so q could never move; "
            "leave it None to take the scale from the prior."
        )


def default_init_loc(site) -> torch.Tensor:
    """Pyro's ``init_to_median`` for continuous sites, a prior draw for discrete ones
    (whose median Pyro refuses to compute), and for a flat prior that cannot be sampled
    the image of 0 under the bijection onto its support."""
    from pyro.infer.autoguide.initialization import init_to_median, init_to_sample

    fn = site["fn"]
    if fn.support.is_discrete:
        return init_to_sample(site)
    try:
        return init_to_median(site)
    except NotImplementedError:
        return _flat_start(fn)


#: Prior draws behind the medians that decide which elements to non-centre: with
#: Pyro's default 15, the radon hierarchies' plans swung between 11 and 68 of 85
#: counties non-centred from seed to seed (the ratio goes as the scales' squares), and
#: the correlated-slopes model's tau sd between 0.69x and 0.88x NUTS's with them.
PLAN_MEDIAN_SAMPLES = 1001


def plan_init_loc(site) -> torch.Tensor:
    """:func:`default_init_loc` with the median of :data:`PLAN_MEDIAN_SAMPLES` prior
    draws: the values at which :func:`~pyro_qem.handlers.noncentring.noncentring_plan`
    weighs data against prior, stable from seed to seed."""
    from pyro.infer.autoguide.initialization import init_to_median

    fn = site["fn"]
    if fn.support.is_discrete:
        return default_init_loc(site)
    try:
        return init_to_median(site, num_samples=PLAN_MEDIAN_SAMPLES)
    except NotImplementedError:
        return _flat_start(fn)


def init_to_sample_or_feasible(site) -> torch.Tensor:
    """A prior draw (Pyro's ``init_to_sample``), or for a flat prior that cannot be
    sampled the image of 0 under the bijection onto its support."""
    from pyro.infer.autoguide.initialization import init_to_sample

    try:
        return init_to_sample(site)
    except NotImplementedError:
        return _flat_start(site["fn"])


def _flat_start(fn) -> torch.Tensor:
    # A prior that cannot be sampled (a flat ImproperUniform): the point of its support
    # that its bijection maps 0 to, as NUTS starts from.
    return biject_to(fn.support)(torch.zeros(fn.shape()))


def _init_draws(site: SiteInfo, node, options: InitOptions) -> torch.Tensor:
    """Draws of the site's prior; for a prior that cannot be sampled (a flat
    ``ImproperUniform``), draws around the set-up value instead: the value moved to the
    unconstrained space, plus Normal noise of ``init_scale`` (default 1), mapped back."""
    fn = node["fn"]
    try:
        return fn.sample((NUM_INIT_DRAWS,))
    except NotImplementedError:
        pass
    transform = biject_to(fn.support)
    centre = transform.inv(node["value"].detach().double())
    scale = options.scale_of(site.name) or 1.0
    noise = torch.randn((NUM_INIT_DRAWS,) + centre.shape, dtype=centre.dtype, device=centre.device)
    return transform(centre + scale * noise)


def initial_state(site: SiteInfo, family: Family, prototypes: Sequence[Prototype],
                  options: InitOptions) -> List[torch.Tensor]:
    """The site's initial mean parameters at full plate sizes (float64)."""
    state: List[torch.Tensor] = []
    batch_ndim = len(site.batch_shape)
    for prototype in prototypes:
        node = prototype.trace.nodes[site.name]
        moments = initial_moments(site, family, node, options)
        frames = [f for f in node["cond_indep_stack"] if f.vectorized]
        selection = selection_of(frames, prototype.indices)
        if not state:
            state = [m.new_zeros(site.batch_shape + m.shape[batch_ndim:]) for m in moments]
        for full, m in zip(state, moments):
            scatter_(full, selection, m, m.dim() - batch_ndim)
    return state


def initial_moments(site: SiteInfo, family: Family, node, options: InitOptions):
    """Moments for one set-up run's elements of the site."""
    moments = family.init_moments(_init_draws(site, node, options), site.event_shape)
    relocate_to = node["value"] if options.init_loc_fn is not None else None
    scale = options.scale_of(site.name)
    if relocate_to is None and scale is None:
        return moments
    params = dict(family.params_from_moments(moments, site.event_shape))
    if relocate_to is not None:
        try:
            params = family.relocate(params, relocate_to.detach().double())
        except NotImplementedError as error:
            raise NotImplementedError(f"Site '{site.name}': {error}") from error
    if scale is not None:
        if "scale" not in params:
            raise ValueError(
                f"Site '{site.name}': init_scale was given but its family {family.name} "
                "has no 'scale' parameter. Give init_scale as a dict that leaves this "
                "site out."
            )
        params["scale"] = torch.as_tensor(scale, dtype=torch.float64).expand_as(params["scale"])
    return family.moments_from_params(params, site.event_shape)
