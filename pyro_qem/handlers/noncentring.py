"""Non-centred proposals for hierarchical scales: ``z = loc + scale * eps``.

A latent ``z ~ Normal(loc, scale)`` whose scale is another latent (``theta ~
Normal(mu, tau)`` in a centred hierarchy) puts the posterior in a funnel: where ``tau``
is small every ``theta`` must sit close to ``mu``. A proposal q(theta) that does not
depend on ``tau`` then has few particles in the funnel's neck, the importance-weighted
estimate is biased low there, and ``tau`` comes out too narrow (radon's varying-slope
scale: 0.60x the NUTS sd at K = 30). Proposing the standardised value instead,
``eps ~ q(eps)`` and ``z = loc + scale * eps`` for every particle of ``loc`` and
``scale``, removes the funnel from what q must cover (the same posterior, written as
Stan users write "non-centred" models).

:class:`NonCentring` is the effect handler that does the rewrite (what
:class:`pyro.infer.reparam.LocScaleReparam` with ``centered=0`` does): the site ``z`` becomes
a deterministic site (recorded as ``pyro.deterministic`` records one, so it has no log
density of its own) whose value is computed from the new latent site ``z_decentered``,
standard normal with the site's plates but no dependence on ``loc`` or ``scale`` (so its
log density does not broadcast over their particles). It handles ``Normal``, ``Normal``
with ``.to_event``, and ``MultivariateNormal`` (``z = loc + scale_tril @ eps``).
:func:`hierarchical_sites` finds the sites to rewrite: those whose scale depends on
another latent site, or whose loc depends on latents outside the plates only.
"""

from __future__ import annotations

import warnings
from typing import Callable, Dict, FrozenSet, Mapping, Optional

import torch

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
from pyro.infer.autoguide.initialization import InitMessenger
from pyro.poutine.messenger import Messenger
from pyro.poutine.reparam_messenger import _get_init_messengers
from pyro.poutine.util import site_is_subsample
from torch.distributions import Independent, MultivariateNormal, Normal, biject_to

from .record import is_subsampled, user_scale
from .rest_density import rest_log_density

#: The suffix of the standardised site that replaces a non-centred site ``z``.
SUFFIX = "_decentered"


def decentered_name(name: str) -> str:
    """The name of the latent site that carries ``name``'s standardised value."""
    return name + SUFFIX


def _unwrapped(fn):
    """``fn`` without its ``Independent`` wrappers."""
    while isinstance(fn, Independent):
        fn = fn.base_dist
    return fn


def loc_scale_kind(fn) -> Optional[str]:
    """``"normal"`` or ``"mvn"`` for the priors :class:`NonCentring` rewrites, else None.
    Exact types only: a subclass may change what its parameters mean."""
    base = _unwrapped(fn)
    if type(base) in (Normal, dist.Normal):
        return "normal"
    if type(base) in (MultivariateNormal, dist.MultivariateNormal):
        return "mvn"
    return None


def _scale_of(fn) -> torch.Tensor:
    base = _unwrapped(fn)
    return base.scale_tril if loc_scale_kind(fn) == "mvn" else base.scale


#: An element stays centred where its data's information times its prior variance is
#: at least this (see :func:`noncentring_plan`).
CENTRED_FROM = 100.0

#: A site whose loc alone reads the global latents is non-centred only where most of
#: its elements have information x prior variance below this: the centred proposal
#: measured right down to 0.1 (theta ~ Normal(mu, 1) over 10-200 elements: mu's sd
#: 0.95-1.02x exact) and wrong only below it (0.01: 0.63-0.87x), while a site
#: proposed standardised loses the q of the site itself (``guide.distributions()``).
PRIOR_DOMINATED_BELOW = 0.3

#: Per site, which plate elements keep the centred proposal (a bool tensor of the
#: site's batch shape), or None: every element non-centred.
Plan = Dict[str, Optional[torch.Tensor]]


class NonCentring(Messenger):
    """Rewrite each named site ``z ~ Normal(loc, scale)`` (or ``MultivariateNormal(loc,
    scale_tril)``) as a latent ``z_decentered ~ Normal(0, 1)`` (the site's plates and
    event shape) and a deterministic ``z = loc + scale * z_decentered`` (``loc +
    scale_tril @ z_decentered``). The posterior is unchanged.

    Plate elements whose data pin them down are better proposed as written: a plan may
    keep them centred (``z_decentered`` then has the prior ``Normal(loc, scale)`` there
    and ``z`` equals it), see :func:`noncentring_plan`.

    Example::

        with NonCentring(["theta"]):
            trace = poutine.trace(model).get_trace(y)
        trace.nodes["theta_decentered"]   # the latent; "theta" is deterministic

    :param sites: the names of the sites to rewrite (every element non-centred), or a
        :data:`Plan`.
    """

    def __init__(self, sites) -> None:
        super().__init__()
        self.plan: Plan = dict(sites) if isinstance(sites, Mapping) else dict.fromkeys(sites)

    @property
    def sites(self) -> FrozenSet[str]:
        return frozenset(self.plan)

    def _pyro_sample(self, msg) -> None:
        name, fn = msg["name"], msg["fn"]
        if name not in self.plan or site_is_subsample(msg):
            return
        kind = loc_scale_kind(fn)
        if kind is None:
            raise ValueError(
                f"Site '{name}' cannot be non-centred: its prior is {type(fn).__name__}, "
                "and only Normal (with or without .to_event) and MultivariateNormal priors "
                "have a loc and scale to standardise by. Leave it out of noncentre."
            )
        if msg["is_observed"]:
            raise ValueError(
                f"Site '{name}' is observed in this run, so it cannot be non-centred (only "
                "latent sites are). Leave it out of noncentre."
            )
        reweighted = _reweighted(msg)
        if reweighted:
            raise ValueError(
                f"Site '{name}' is {reweighted}, so proposing it standardised would change "
                "the model: the mask or scale would apply to the density of "
                f"'{decentered_name(name)}' instead of '{name}' (they differ by the "
                "Jacobian log scale). Leave it out of noncentre (or create the guide with "
                "noncentre=None)."
            )
        base = _unwrapped(fn)
        event_shape = fn.event_shape
        loc = base.loc
        centred = self.plan[name]
        if centred is None:
            # Standard normal with no batch shape of its own: the plates around the site
            # expand it, and it carries no particle dims of loc or scale.
            # (torch.zeros, not loc.new_zeros: provenance tracking would see loc in it.)
            prior = dist.Normal(torch.zeros((), dtype=loc.dtype, device=loc.device), 1.0)
            prior = prior.expand(event_shape).to_event(len(event_shape))
            eps = _sample_standardised(msg, kind, base, prior, None)
            value = _standardised_to_value(kind, base, eps)
        else:
            c = _aligned(centred, fn, name).to(loc.dtype)
            c_event = c.reshape(c.shape + (1,) * len(event_shape))
            if kind == "mvn":
                eye = torch.eye(event_shape[-1], dtype=loc.dtype, device=loc.device)
                c_matrix = c_event.unsqueeze(-1)
                prior = dist.MultivariateNormal(
                    loc * c_event, scale_tril=base.scale_tril * c_matrix + eye * (1 - c_matrix))
            else:
                prior = dist.Normal(loc * c_event, base.scale * c_event + (1 - c_event))
                prior = prior.to_event(len(event_shape))
            eps = _sample_standardised(msg, kind, base, prior, c_event)
            value = c_event * eps + (1 - c_event) * _standardised_to_value(kind, base, eps)
        # Recorded as pyro.deterministic records a site: a masked Delta marked
        # deterministic, so the estimator and the outputs treat it as a function of the
        # latents, with no log density of its own.
        msg["fn"] = dist.Delta(value, event_dim=len(event_shape)).mask(False)
        msg["value"] = value
        msg["is_observed"] = True
        msg["infer"] = dict(msg["infer"] or {}, _deterministic=True)


def _sample_standardised(msg, kind: str, base, prior, c_event: Optional[torch.Tensor]) -> torch.Tensor:
    """``pyro.sample`` of the standardised site; where an init strategy
    (``init_to_value``, ...) encloses the model, the site's initial value is carried
    over (standardised), as Pyro's reparameterisers do."""
    for messenger in _get_init_messengers():
        messenger._process_message(msg)
    init = msg["value"]
    msg["value"] = None
    name = decentered_name(msg["name"])
    if init is None:
        return pyro.sample(name, prior)
    offset = init - base.loc
    if kind == "mvn":
        standardised = torch.linalg.solve_triangular(
            base.scale_tril, offset.unsqueeze(-1), upper=False).squeeze(-1)
    else:
        standardised = offset / base.scale
    if c_event is not None:
        standardised = c_event * init + (1 - c_event) * standardised
    return pyro.sample(name, prior, obs=standardised.detach(), infer={"is_observed": False})


def _reweighted(msg) -> Optional[str]:
    """How a site's log density is masked or scaled beyond the ``N / B`` of its
    subsampled plates (which weighs every element alike and keeps the posterior of the
    rest), or None."""
    mask = msg["mask"]
    if mask is False or (isinstance(mask, torch.Tensor) and not bool(mask.all())):
        return "masked (poutine.mask)"
    scale = user_scale(msg["scale"], msg["cond_indep_stack"])
    if isinstance(scale, torch.Tensor):
        if scale.numel() != 1:
            return "scaled element by element (poutine.scale)"
        scale = float(scale)
    if abs(scale - 1.0) > 1e-9:
        return f"scaled by {scale:g} (poutine.scale)"
    return None


def _standardised_to_value(kind: str, base, eps: torch.Tensor) -> torch.Tensor:
    if kind == "mvn":
        return base.loc + (base.scale_tril @ eps.unsqueeze(-1)).squeeze(-1)
    return base.loc + base.scale * eps


def _aligned(centred: torch.Tensor, fn, name: str) -> torch.Tensor:
    """The plan's mask, checked against the site's batch shape in this run."""
    batch = fn.batch_shape
    try:
        torch.broadcast_shapes(centred.shape, batch)
    except RuntimeError:
        raise ValueError(
            f"Site '{name}': its plates have shape {tuple(batch)[-centred.dim():]} in this run "
            f"but {tuple(centred.shape)} when the guide chose which of its elements to "
            "non-centre. Pass the same data to every step, or name the sites to non-centre "
            "(noncentre=[...]) for a model whose plates change."
        ) from None
    return centred


def hierarchical_sites(model: Callable, args: tuple, kwargs: dict) -> Dict[str, str]:
    """The children of hierarchical priors: the latent ``Normal``/``MultivariateNormal``
    sites of ``model`` inside a plate whose scale (or ``scale_tril``) depends on another
    latent site, or whose ``loc`` depends on latent sites outside every plate and on no
    latent inside one (``theta ~ Normal(mu, 1.)`` in a plate, ``mu`` global: where the
    data are weak each ``theta`` follows ``mu``, which a proposal that ignores ``mu``
    cannot, and ``mu`` came out 0.6-0.7x as wide as the exact posterior). A loc that
    reads another plated latent is left out: standardising it would tie the site's
    value to that latent's particles too.

    (A single vector outside the plates, such as a Gaussian process's values under a
    latent kernel, is left out: there the standardised proposal measured worse, its
    amplitude 0.34-0.49x the reference sd against 0.65x.) The model is run with
    independent values of every latent site (prior draws; uniform on (-2, 2) in the
    unconstrained space where the prior cannot be sampled), again with new values of
    every latent, and again with new values of the plated latents only (the same data
    and subsamples): a site's scale qualifies where it differs between the first two
    runs, its loc where it differs between them but not between the first and third.
    (Provenance tracking cannot tell: ``Normal(mu, 2.0)`` broadcasts its scale against
    ``mu``.) Empty where the model cannot be run that way.

    :returns: ``{site: "scale" or "loc"}`` (what reads the other latents), in model
        order.

    Runs the model on the global random stream: wrap the call to keep it.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with torch.no_grad(), poutine.block():
                first = poutine.trace(InitMessenger(_random_value)(model)).get_trace(*args, **kwargs)
                second = _rerun(model, args, kwargs, first, keep_globals=False)
                third = _rerun(model, args, kwargs, first, keep_globals=True)
    except Exception:  # noqa: BLE001
        # Set-up runs the model next and reports what is wrong with it; a model that
        # only fails with these random values is fitted without the rewrite.
        return {}
    found = {}
    for name, node in first.nodes.items():
        if node["type"] != "sample" or node["is_observed"] or site_is_subsample(node):
            continue
        if loc_scale_kind(node["fn"]) is None or name not in second.nodes or _reweighted(node):
            continue
        if not any(f.vectorized for f in node["cond_indep_stack"]):
            continue
        if not _same(_scale_of(node["fn"]), _scale_of(second.nodes[name]["fn"])):
            found[name] = "scale"
            continue
        loc = _unwrapped(node["fn"]).loc
        if (not _same(loc, _unwrapped(second.nodes[name]["fn"]).loc) and name in third.nodes
                and _same(loc, _unwrapped(third.nodes[name]["fn"]).loc)):
            found[name] = "loc"
    return found


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.equal(a, b)


def _rerun(model: Callable, args: tuple, kwargs: dict, first, keep_globals: bool):
    """The model's trace with new random latent values, except the subsample indices
    of ``first`` and, if ``keep_globals``, the values of its latents outside every
    plate."""
    kept = first.copy()
    for name, node in list(first.nodes.items()):
        if node["type"] != "sample":
            kept.remove_node(name)
        elif site_is_subsample(node):
            continue
        elif not keep_globals or node["is_observed"] or any(
                f.vectorized for f in node["cond_indep_stack"]):
            kept.remove_node(name)
    again = poutine.replay(InitMessenger(_random_value)(model), trace=kept)
    return poutine.trace(again).get_trace(*args, **kwargs)


def _random_value(site) -> torch.Tensor:
    fn = site["fn"]
    try:
        return fn.sample().detach()
    except NotImplementedError:
        shape = fn.batch_shape + fn.event_shape
        unconstrained = biject_to(fn.support).inv.forward_shape(shape)
        u = torch.rand(unconstrained) * 4.0 - 2.0
        return biject_to(fn.support)(u).detach()


def noncentring_plan(model: Callable, args: tuple, kwargs: dict, init_loc_fn: Callable,
                     agree: Optional[Callable[[Dict[str, torch.Tensor]], Dict[str, torch.Tensor]]] = None
                     ) -> Plan:
    """Which sites (and which of their plate elements) to non-centre: the sites of
    :func:`hierarchical_sites`, each element non-centred where its prior is wider
    than what its data say, centred where the data dominate.

    At the values of ``init_loc_fn``, the log density of everything else in the model
    is differentiated twice with respect to the site (the diagonal: exact where each
    element's data are its own), and ``information * prior variance`` (averaged over
    event dims) is compared with :data:`CENTRED_FROM` (100: the prior variance is taken
    at the prior median of the scale, which overstates a scale whose posterior is
    smaller; a threshold of 1 left radon's varying slopes too narrow on 2 of 3 seeds,
    and 10 or 30 left the LKJ model's slope scale 0.86-0.88x NUTS's on 3 of 3 seeds,
    where 100 met 0.1 sd and 10% on 2 of 3; radon's other models and the 1e5-row
    synthetic hierarchy measured the same at 10 and 100).
    A non-centred proposal suits a prior that dominates
    (few or noisy rows: ``theta = mu + tau * eps`` moves with ``mu`` and ``tau`` as the
    posterior does); with many rows the element's posterior is far narrower than
    ``tau`` and does not move with it, so a standardised proposal would have to cover
    every particle of ``mu`` and ``tau`` at once (measured on 1000 groups of up to 18,000
    rows at K = 10: intercept sds down to 0.46x with every element non-centred). A site
    whose loc alone reads the globals is rewritten only where most of its elements are
    prior-dominated (:data:`PRIOR_DOMINATED_BELOW`). A site in a subsampled plate, or
    one whose curvature cannot be computed, stays centred.

    :param agree: ``agree({site: centred})`` -> the masks to use, called once with
        every candidate outside the subsampled plates, in model order (possibly none):
        a distributed fit makes the processes agree through it.

    Runs the model on the global random stream: wrap the call to keep it.
    """
    masks = _centred_masks(model, args, kwargs, init_loc_fn)
    if agree is not None:
        masks = agree(masks)
    return {name: None if not bool(centred.any()) else centred
            for name, centred in masks.items() if not bool(centred.all())}


def _centred_masks(model: Callable, args: tuple, kwargs: dict, init_loc_fn: Callable
                   ) -> Dict[str, torch.Tensor]:
    """Per candidate outside the subsampled plates (model order): which of its elements
    stay centred."""
    candidates = hierarchical_sites(model, args, kwargs)
    if not candidates:
        return {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with torch.no_grad(), poutine.block():
                start = poutine.trace(InitMessenger(init_loc_fn)(model)).get_trace(*args, **kwargs)
    except Exception:  # noqa: BLE001 - set-up reports a failing model
        return {}
    masks = {}
    for name, kind in candidates.items():
        node = start.nodes[name]
        if any(f.vectorized and is_subsampled(f) for f in node["cond_indep_stack"]):
            continue
        ratio = _information_ratio(model, args, kwargs, start, name)
        centred = torch.ones(node["fn"].batch_shape, dtype=torch.bool) if ratio is None \
            else ratio >= CENTRED_FROM
        if kind == "loc" and ratio is not None and \
                float((ratio < PRIOR_DOMINATED_BELOW).double().mean()) < 0.5:
            centred = torch.ones_like(centred)
        masks[name] = centred
    return masks


def _information_ratio(model: Callable, args: tuple, kwargs: dict, start, name: str
                       ) -> Optional[torch.Tensor]:
    """Per element of site ``name``: (minus the second derivative of the rest of the
    model's log density) x (the prior variance), averaged over event dims; None where
    it cannot be computed."""
    node = start.nodes[name]
    fn = node["fn"]
    event_ndim = len(fn.event_shape)
    value = node["value"].detach().clone().requires_grad_(True)
    try:
        with torch.enable_grad():
            rest = rest_log_density(model, args, kwargs, start, name, value)
            # A site nothing reads (no data: its posterior is its prior) has none.
            (grad,) = torch.autograd.grad(rest, value, create_graph=True, allow_unused=True) \
                if rest.requires_grad else (None,)
            second = None if grad is None or not grad.requires_grad else \
                torch.autograd.grad(grad.sum(), value, allow_unused=True)[0]
    except Exception:  # noqa: BLE001 - any failure only keeps the site centred
        return None
    information = torch.zeros_like(value) if second is None else (-second).clamp_min(0.0)
    base = _unwrapped(fn)
    scale = base.scale_tril.square().sum(-1) if loc_scale_kind(fn) == "mvn" else base.scale.square()
    ratio = (information * scale).detach()
    if not torch.isfinite(ratio).all():
        return None
    ratio = ratio.mean(tuple(range(-event_ndim, 0))) if event_ndim else ratio
    return ratio.expand(fn.batch_shape)
