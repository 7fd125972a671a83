"""The base class of QEM guides: an effect handler that draws particles for a model.

A QEM guide intercepts each latent sample site of the model in a single pass (like
:class:`pyro.poutine.guide.GuideMessenger`, but without expanding to the prior's batch
shape, which breaks once particle dims exist). Inside :meth:`QEMGuide.particles` it
draws K values of each site from its q, in the site's own dim to the left of the plate
dims, and records log q for the estimator. The q's themselves are moment-matched
exponential families (:mod:`pyro_qem.families`) whose smoothed mean parameters live in
tensors the guide owns and mirrors in Pyro's param store
(:class:`~pyro_qem.guides.state.MomentState`). The M-step that moves them lives in
:mod:`pyro_qem.infer.mstep`.
"""

from __future__ import annotations

import contextlib
from abc import abstractmethod
from typing import Callable, Dict, Iterable, Iterator, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch.distributions import constraints

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
from pyro.distributions.util import broadcast_shape
from pyro.poutine.messenger import Messenger
from pyro.poutine.trace_messenger import TraceMessenger
from pyro.poutine.trace_struct import Trace
from pyro.poutine.util import prune_subsample_sites, site_is_subsample

from ..families import Family
from ..handlers import ParamCollector, ParticleDraw
from ..handlers.noncentring import NonCentring, decentered_name, noncentring_plan
from ..model import ModelStructure, PlateInfo, Prototype, Selection, SiteInfo, discover, gather
from ..model import prior_dependencies, prototype_traces, rng_preserved, selection_of
from .grouping import standardised_groups, undrawable_noncentred
from .initialisation import InitOptions, default_init_loc, initial_state, plan_init_loc
from .layout import enumerated_support, in_dim, in_sets_dim, is_observed
from .state import MomentState


class QEMGuide(Messenger):
    """Base class for guides fitted by QEM; subclass it to write a guide by hand.

    A subclass says how each latent site is fitted, in :meth:`get_family`: return a
    :class:`~pyro_qem.families.Family` for a site fitted by moment matching, or None for
    a site whose q the subclass builds itself in :meth:`get_posterior` from
    ``pyro.param`` s (fitted by gradient on ``-log P_hat`` when
    :class:`~pyro_qem.infer.Inference` is given an ``optim``; e.g. a regression or amortised
    component). Sites with ``infer={"enumerate": "parallel"}`` in the model are summed
    over their support exactly and need neither. Sites are discovered
    on the first call (:meth:`setup`), and q is initialised from the prior: each site's
    family is moment-matched to draws of its prior, given its parents at the values of
    ``init_loc_fn``, with statistics robust to heavy tails. ``init_loc_fn`` (one of
    Pyro's ``init_to_*`` strategies) also sets the location of location families, and
    ``init_scale`` (a float or ``{site: float}``) their scale.

    :param model: the Pyro model.
    :param groups: lists of latent site names that share one particle dim.
    :param max_plate_nesting: found from the model when None.
    :param init_loc_fn: optional Pyro init strategy for the location of q.
    :param init_scale: optional initial scale of q (float or per-site dict).
    :param prefix: the prefix of this guide's names in the param store (default: the
        class name, or ``<class name>_2``, ... when another live guide's state already
        holds it; see :attr:`prefix`).
    :param noncentre: latent ``Normal``/``MultivariateNormal`` sites to propose in
        standardised form (see :mod:`pyro_qem.handlers.noncentring`): a list of site
        names, ``"auto"`` (every such site whose scale depends on another latent site:
        the scales of hierarchies, which otherwise sit in a funnel; elements whose
        data dominate their prior stay centred, see
        :func:`~pyro_qem.handlers.noncentring.noncentring_plan`) or None. A
        non-centred site ``z`` becomes a deterministic site computed from a new latent
        ``z_decentered`` (which has the q); :func:`~pyro_qem.outputs.sample_posterior`
        returns ``z`` itself. Names in ``groups`` (and AutoQEM's ``families``) may
        still say ``z``.
    """

    def __init__(
        self,
        model: Callable,
        *,
        groups: Optional[Sequence[Iterable[str]]] = None,
        max_plate_nesting: Optional[int] = None,
        init_loc_fn: Optional[Callable] = None,
        init_scale: Union[None, float, Mapping[str, float]] = None,
        prefix: Optional[str] = None,
        noncentre: Union[None, str, Sequence[str]] = None,
    ) -> None:
        super().__init__()
        if not (noncentre is None or noncentre == "auto"
                or (not isinstance(noncentre, str) and all(isinstance(n, str) for n in noncentre))):
            raise ValueError(
                f"noncentre must be None, 'auto' or a list of site names, got {noncentre!r}."
            )
        self.noncentre = noncentre if noncentre is None or noncentre == "auto" else list(noncentre)
        #: Per site proposed in standardised form (resolved at set-up), which plate
        #: elements stay centred (None: none do).
        self.noncentring_plan: Dict[str, Optional[torch.Tensor]] = {}
        # hook(site, centred mask) -> mask, called at set-up for each candidate of
        # noncentre="auto": a distributed fit makes every process use rank 0's choice.
        self.plan_hook: Optional[Callable] = None
        if max_plate_nesting is not None and max_plate_nesting < 0:
            raise ValueError(f"max_plate_nesting must be >= 0 or None, got {max_plate_nesting}.")
        self.model = model
        self.groups = [list(g) for g in groups] if groups is not None else None
        self.max_plate_nesting = max_plate_nesting
        self.init = InitOptions(init_loc_fn, init_scale)
        self.state = MomentState(prefix, type(self).__name__)
        self.structure: Optional[ModelStructure] = None
        self.families: Dict[str, Family] = {}
        self._num_particles: Optional[int] = None
        self._averaged = False
        # hook(site, particles, selection) -> particles, called at each drawn (not
        # enumerated) site before log q is taken: a distributed fit gives every
        # process rank 0's particles of the global sites through it.
        self.particle_hook: Optional[Callable] = None
        self._reparameterized = True
        self.selection: Selection = []
        self._subsamples: Dict[str, torch.Tensor] = {}
        self._draws: Dict[str, Optional[torch.Tensor]] = {}
        self.particle_draws: Dict[str, ParticleDraw] = {}

    @property
    def prefix(self) -> str:
        """The prefix of this guide's names in Pyro's param store."""
        return self.state.prefix

    def state_dict(self) -> Dict[str, object]:
        """The fitted state: ``{"prefix": ..., "state": {<stat>.<site>: tensor}}``
        (copies). :meth:`load_state_dict` on a guide of the same model restores it.

        Example::

            torch.save(guide.state_dict(), "fit.pt")
            new_guide = AutoQEM(model)
            new_guide.load_state_dict(torch.load("fit.pt"))
        """
        return {"prefix": self.state.prefix, "state": self.state.state_dict()}

    def load_state_dict(self, state_dict: Mapping[str, object]) -> None:
        """Restore a fit from :meth:`state_dict`: it is used from the next step on (at
        set-up, if the guide has not been set up yet)."""
        if not isinstance(state_dict, Mapping) or "state" not in state_dict:
            raise TypeError(
                "load_state_dict expects the dict returned by guide.state_dict() (with a "
                f"'state' entry), got {type(state_dict).__name__}."
            )
        state = state_dict["state"]
        if self.structure is not None:
            self._check_state_keys(state)
        self.state.load_state_dict(state)

    def _check_state_keys(self, state: Mapping[str, torch.Tensor]) -> None:
        for name, family in self.families.items():
            missing = [s for s in family.stat_names if f"{s}.{name}" not in state]
            if missing:
                raise ValueError(
                    f"load_state_dict: no state for site '{name}' (missing {missing}); the "
                    "state_dict comes from a guide of another model."
                )

    def __getstate__(self) -> dict:
        # What torch.save(guide) keeps: the model, options, structure and fitted state;
        # not the handler's per-run scratch space.
        state = self.__dict__.copy()
        for key in ("_last_trace", "_subsamples", "_draws", "particle_draws", "plan_hook"):
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._subsamples, self._draws, self.particle_draws = {}, {}, {}
        self._sets = None
        self.particle_hook = None
        self.plan_hook = None
        if self.structure is not None:
            # A set-up guide skips set-up from now on: claim its names here.
            self.state.rejoin()

    # ----------------------------------------------------------------- set-up

    @abstractmethod
    def get_family(self, site: SiteInfo, prior: dist.Distribution) -> Optional[Family]:
        """The family of q for a latent site, or None if :meth:`get_posterior` builds
        its q (called once per site, at set-up, with the site's prior)."""

    def get_posterior(self, name: str, prior: dist.Distribution) -> dist.Distribution:
        """q for a gradient-fitted site (one :meth:`get_family` answered None for).

        Build it from ``pyro.param`` s; its batch shape must broadcast with the site's
        (plates included). Called at every draw, inside the model run; for a site in a
        subsampled plate, :attr:`selection` holds ``(dim, indices)`` of the minibatch
        (see :func:`~pyro_qem.model.gather`).
        """
        raise NotImplementedError(
            f"{type(self).__name__}.get_family returned None for site '{name}', so the "
            "guide must build its q in get_posterior(name, prior)."
        )

    def setup(self, *args, **kwargs) -> ModelStructure:
        """Discover the model's sites and initialise missing state (first call only)."""
        if self.structure is not None:
            return self.structure
        self.noncentring_plan = self._resolve_noncentre(args, kwargs)
        prototypes, structure = self._discovered(args, kwargs)
        blocked = {}
        if self.noncentred and structure.links:
            # Only indexed plates let a site's loc or scale read another plate's latents.
            with rng_preserved():
                parents = prior_dependencies(self.model, args, kwargs) or {}
            blocked = undrawable_noncentred(structure, self.noncentred, parents)
        if blocked:
            if self.noncentre != "auto":
                name, parents = next(iter(blocked.items()))
                raise ValueError(
                    f"noncentre: site '{name}' reads {parents}, latent(s) of a plate it is "
                    "not in (through an index), in its loc or scale: its non-centred value "
                    "would vary over another plate's particles, which the outputs cannot "
                    "draw or weigh. Leave it centred (drop it from noncentre=), or use "
                    "noncentre='auto', which does."
                )
            for name in blocked:
                del self.noncentring_plan[name]
            prototypes, structure = self._discovered(args, kwargs)
        first = prototypes[0].trace.nodes
        families = {name: self.get_family(site, first[name]["fn"])
                    for name, site in structure.sites.items() if not site.enumerated}
        families = {name: family for name, family in families.items() if family is not None}
        self.state.claim([f"{s}.{name}" for name, f in families.items() for s in f.stat_names]
                         + ["num_updates"])
        with rng_preserved():
            for name, family in families.items():
                site = structure.sites[name]
                self.state.initialise(
                    name, family.stat_names,
                    lambda: initial_state(site, family, prototypes, self.init),
                )
            self.structure, self.families = structure, families
            self.init_gradient_sites(prototypes)
        return structure

    def _discovered(self, args: tuple, kwargs: dict) -> Tuple[list, ModelStructure]:
        """The prototype traces and the structure of the model as the current
        non-centring plan rewrites it (with the default groups of its standardised
        latents when ``groups`` is not given)."""
        prototypes = prototype_traces(self.model_run, args, kwargs,
                                      self.init.init_loc_fn or default_init_loc)
        self._check_noncentred(prototypes[0].trace)
        groups = None if self.groups is None else [[self.site_name(n) for n in g] for g in self.groups]
        structure = discover(prototypes[0], groups, self.max_plate_nesting)
        if self.groups is None and self.noncentred:
            regrouped = standardised_groups(structure, self.noncentred)
            if regrouped is not None:
                structure = discover(prototypes[0], regrouped, self.max_plate_nesting)
        return prototypes, structure

    def _resolve_noncentre(self, args: tuple, kwargs: dict) -> Dict[str, Optional[torch.Tensor]]:
        if self.noncentre is None:
            return {}
        if self.noncentre == "auto":
            with rng_preserved():
                return noncentring_plan(self.model, args, kwargs,
                                        self.init.init_loc_fn or plan_init_loc,
                                        agree=self.plan_hook)
        return dict.fromkeys(self.noncentre)

    def _check_noncentred(self, trace: Trace) -> None:
        missing = [n for n in self.noncentred if n not in trace.nodes]
        if missing:
            raise ValueError(
                f"noncentre: {missing} are not sample sites of the model (sites: "
                f"{sorted(n for n, s in trace.nodes.items() if s['type'] == 'sample')})."
            )

    @property
    def noncentred(self) -> Tuple[str, ...]:
        """The sites proposed in standardised form (set at set-up)."""
        return tuple(self.noncentring_plan)

    def _rewrite(self):
        """The handler that rewrites the non-centred sites (a no-op without any)."""
        return NonCentring(self.noncentring_plan) if self.noncentring_plan else contextlib.nullcontext()

    def site_name(self, name: str) -> str:
        """The latent site that holds ``name``'s q: ``name`` itself, or
        ``name + "_decentered"`` for a non-centred site."""
        return decentered_name(name) if name in self.noncentred else name

    def model_run(self, *args, **kwargs):
        """Run the model as this guide sees it (non-centred sites rewritten)."""
        return self.rewritten(self.model)(*args, **kwargs)

    def rewritten(self, fn: Callable) -> Callable:
        """``fn`` (a model) with this guide's non-centred sites rewritten to their
        standardised latents, the sites q covers (``fn`` itself when none are)."""
        if not self.noncentring_plan:
            return fn

        def run(*args, **kwargs):
            with self._rewrite():
                return fn(*args, **kwargs)

        return run

    def init_gradient_sites(self, prototypes: Sequence[Prototype]) -> None:
        """Hook for subclasses: create the parameters of gradient-fitted sites at set-up
        (from the set-up runs, e.g. with :func:`~pyro_qem.guides.initialisation.initial_state`).
        By default they are created lazily in :meth:`get_posterior`."""

    # ------------------------------------------------------------ the handler

    @contextlib.contextmanager
    def particles(self, num_particles: int, reparameterized: bool = True,
                  sets: Optional[PlateInfo] = None, averaged: bool = False,
                  ) -> Iterator[Dict[str, ParticleDraw]]:
        """Within this context the guide draws ``num_particles`` values per site; the
        context yields a dict that fills with a :class:`~pyro_qem.handlers.ParticleDraw`
        per latent site as the model runs.

        :param reparameterized: draw gradient-fitted sites with ``rsample`` (for
            gradients through the particles, as MP-VI needs); False for RWS.
        :param sets: the plate of independent particle sets
            (:meth:`~pyro_qem.model.ModelStructure.particle_sets_plate`) when the model
            runs inside it: each set gets its own ``num_particles`` draws.
        :param averaged: draw moment-matched sites from the running average of the
            iterates where one is kept (as outputs do), not from the current iterate.
        """
        self._num_particles = num_particles
        self._averaged = averaged
        self._sets = sets
        self._reparameterized = reparameterized
        self.particle_draws = {}
        try:
            # The rewrite is entered inside the guide, so it reaches a site first.
            with self, self._rewrite():
                yield self.particle_draws
        finally:
            self._num_particles = None
            self._sets = None
            self._averaged = False

    def __enter__(self):
        self._subsamples = {}
        return super().__enter__()

    def __call__(self, *args, **kwargs) -> Dict[str, torch.Tensor]:
        """Draw one value of every latent site from q, like any Pyro guide.

        Under ``poutine.trace`` the latent sites appear with ``fn = q`` (observed and
        deterministic sites of the model are hidden), so the guide works in
        ``pyro.infer.Predictive(model, guide=guide)`` and in ``SVI(model, guide, optim,
        Trace_ELBO())``, which then fits q's mean parameters by gradient.

        :returns: ``{site: value}`` for every latent site.
        """
        self.setup(*args, **kwargs)
        self._draws = dict.fromkeys(self.structure.sites)
        tracer = TraceMessenger()
        # Non-centred sites stay visible: Predictive(model, guide=guide) replays them.
        noncentred = frozenset(self.noncentring_plan)
        with poutine.block(hide_fn=lambda m: is_observed(m) and m["name"] not in noncentred), \
                tracer, self, self._rewrite():
            self.model(*args, **kwargs)
        self._last_trace = tracer.trace
        return {name: value for name, value in self._draws.items() if value is not None}

    def get_traces(self) -> Tuple[Trace, Trace]:
        """``(model_trace, guide_trace)`` of the last call, as
        :meth:`pyro.poutine.guide.GuideMessenger.get_traces` gives them: Pyro's ELBOs
        use this to run a guide that intercepts the model in one pass."""
        guide_trace = prune_subsample_sites(self._last_trace)
        model_trace = guide_trace.copy()
        for name, site in list(guide_trace.nodes.items()):
            if site["type"] != "sample" or site["is_observed"]:
                del guide_trace.nodes[name]
                continue
            model_site = model_trace.nodes[name].copy()
            model_site["fn"] = site["infer"]["prior"]
            model_trace.nodes[name] = model_site
        return model_trace, guide_trace

    def _pyro_sample(self, msg) -> None:
        if msg["is_observed"] or site_is_subsample(msg):
            return
        if self.structure is not None and msg["name"] in self.structure.observed:
            self._unobserved(msg["name"])
            return
        site = self._site(msg["name"])
        self._check_plate_sizes(site, msg)
        if self._num_particles is None:
            self._draw_one(site, msg)
        else:
            self._draw_particles(site, msg)

    def _check_plate_sizes(self, site: SiteInfo, msg) -> None:
        # q holds parameters per element of each plate the site is in, sized at set-up:
        # a plate of another size would pair q's elements with the wrong data (or fail
        # deep in Pyro's broadcasting, at a later site).
        for frame in msg["cond_indep_stack"]:
            plate = self.structure.plates.get(frame.name)
            size = frame.full_size if frame.full_size is not None else frame.size
            if plate is None or not frame.vectorized or size == plate.size:
                continue
            raise ValueError(
                f"pyro.plate('{frame.name}') has size {size} in this run but had size "
                f"{plate.size} when the guide was set up, and latent site '{site.name}' is "
                "inside it (q has parameters per plate element). A guide fits one data set: "
                "pass data of the same size to every step, or create a new guide (e.g. "
                "AutoQEM(model)) for the new data."
            )

    def _check_fixed_support(self, site: SiteInfo, prior) -> None:
        # q was fitted to the support the site had at set-up. Bounds that carry particle
        # dims (Uniform(0, b) with b latent) change from particle to particle, so q's
        # particles would fall outside the support of some particles of the parent.
        support = prior.support
        while isinstance(support, constraints.independent):
            support = support.base_constraint
        own_dims = self.structure.max_plate_nesting + len(site.event_shape)
        sets_dim = None if self._sets is None else self._sets.dim - len(site.event_shape)
        for bound in vars(support).values():
            if not isinstance(bound, torch.Tensor):
                continue
            # The particle-sets plate expands the prior over its dim, like a model plate.
            lead = [i for i, n in enumerate(bound.shape[:-own_dims or None])
                    if n > 1 and (sets_dim is None or i != bound.dim() + sets_dim)]
            # A constant bound broadcast against a latent parameter (Pareto(1., alpha),
            # Binomial(10, p)) has the particle dims too, with one value along them.
            if lead and not bool((bound.amax(lead) == bound.amin(lead)).all()):
                raise ValueError(
                    f"Site '{site.name}' has a dependent support: the bounds of its "
                    f"{type(support).__name__.lstrip('_')} support depend on another latent "
                    "site (as in Uniform(0, b) with b sampled), so they change from particle "
                    "to particle, and q (fitted to one fixed support) cannot follow them. "
                    "Reparameterise onto a fixed support: "
                    + _fixed_support_advice(site.name, support)
                )

    def _unobserved(self, name: str) -> None:
        # A site observed at set-up but not now is a prediction (e.g. Predictive with
        # obs=None): the model samples it. In a fit that is a mistake.
        if self._num_particles is not None:
            raise ValueError(
                f"Site '{name}' was observed when the guide was set up but has no data in "
                "this step. Pass the same observed data to every step."
            )

    def _draw_particles(self, site: SiteInfo, msg) -> None:
        group = self.structure.group_of(site.name)
        params = None
        if site.enumerated:
            value = enumerated_support(msg["fn"], group.dim)
            log_q = msg["fn"].log_prob(value).new_zeros(())
        else:
            if site.name in self.families:
                self._check_fixed_support(site, msg["fn"])
            q, params = self._q(site, msg, differentiable=False)
            draw = q.rsample if self._reparameterized and q.has_rsample else q.sample
            if self._sets is None:
                value = in_dim(draw((self._num_particles,)), q, group.dim)
            else:
                value = in_sets_dim(draw((self._sets.size, self._num_particles)), q,
                                    group.dim, self._sets.dim)
            if self.particle_hook is not None:
                value = self.particle_hook(site, value, self._selection(msg))
            log_q = q.log_prob(value)
        self.particle_draws[site.name] = ParticleDraw(log_q, group.index, site.enumerated, params)
        msg["value"] = value
        msg["done"] = True

    def _q(self, site: SiteInfo, msg, differentiable: bool):
        """q of the site on this run's plate elements, and the parameters it read
        (None for a moment-matched site)."""
        if site.name in self.families:
            # Particles come from the family's proposal; Pyro's own draws (outside
            # Inference: Predictive, SVI) from q itself.
            return self.proposal(site, self._selection(msg), averaged=self._averaged,
                                 differentiable=differentiable,
                                 num_particles=None if differentiable else self._num_particles), None
        self.selection = self._selection(msg)
        with ParamCollector() as collector:
            q = self.get_posterior(site.name, msg["fn"])
        return q, collector.params

    def _draw_one(self, site: SiteInfo, msg) -> None:
        # Only swap the distribution: plates entered outside the guide (e.g. the
        # vectorised draws of Predictive(parallel=True)) still broadcast q, and Pyro's
        # default sampling then draws (rsample where q is reparameterised). Enumerated
        # sites are left to the model, as Pyro's guides leave them.
        if site.enumerated:
            return
        q, _ = self._q(site, msg, differentiable=True)
        prior = msg["fn"]
        if prior.batch_shape != q.batch_shape:
            shape = broadcast_shape(q.batch_shape, prior.batch_shape)
            q, prior = q.expand(shape), prior.expand(shape)
        msg["infer"]["prior"] = prior
        msg["fn"] = q

    def _pyro_post_sample(self, msg) -> None:
        if site_is_subsample(msg):
            self._subsamples[msg["name"]] = msg["value"]
            return
        prior = msg["infer"].get("prior") if msg["infer"] else None
        if self._num_particles is None and prior is not None and msg["name"] in self._draws:
            if prior.batch_shape != msg["fn"].batch_shape:
                msg["infer"]["prior"] = prior.expand(msg["fn"].batch_shape)
            self._draws[msg["name"]] = msg["value"]

    def _site(self, name: str) -> SiteInfo:
        if self.structure is None:
            raise RuntimeError("The guide has not been set up; call guide.setup(*args) first.")
        try:
            return self.structure.sites[name]
        except KeyError:
            raise ValueError(
                f"Site '{name}' was not in the model when the guide was set up (latent "
                f"sites: {sorted(self.structure.sites)}). Models whose latent sites change "
                "between calls are not supported: create a new guide."
            ) from None

    def _selection(self, msg) -> Selection:
        frames = [f for f in msg["cond_indep_stack"] if f.vectorized]
        return selection_of(frames, self._subsamples)

    # ------------------------------------------------------------- q and state

    def proposal(self, site: SiteInfo, selection: Selection = (), averaged: bool = False,
                 differentiable: bool = False, num_particles: Optional[int] = None):
        """q of ``site`` on the plate elements ``selection`` picks, in the model's dtype.

        :param differentiable: read the state through ``pyro.param`` so that gradient
            methods (e.g. SVI) see and fit it.
        :param num_particles: K, when the distribution is to propose K particles: then
            it is the family's proposal (:meth:`~pyro_qem.families.Family.proposal_params`;
            q itself for every continuous family).
        """
        family = self.families[site.name]
        batch_ndim = len(site.batch_shape)
        if differentiable:
            for stat in family.stat_names:
                self.state.leaf(f"{stat}.{site.name}")  # registered in the param store
            moments = tuple(pyro.param(self.state.name(s, site.name)) for s in family.stat_names)
            moments = tuple(gather(m, selection, m.dim() - batch_ndim) for m in moments)
        else:
            moments = self._moments(site, family, selection, averaged)
        params = family.params_from_moments(moments, site.event_shape)
        if num_particles is not None:
            params = family.proposal_params(params, num_particles)
        dtype = _float_dtype(site)
        params = {k: v.to(dtype=dtype, device=site.device) for k, v in params.items()}
        return family.distribution(params, site.event_shape)

    def _moments(self, site: SiteInfo, family: Family, selection: Selection, averaged: bool):
        """The site's mean parameters on the selected elements: the running average of
        the iterates (through the family's averaging coordinates) where asked and kept."""
        batch_ndim = len(site.batch_shape)
        if averaged and self.state.has_average(site.name):
            names = self.state.average_names(site.name)
            coordinates = self.state.average(site.name, names, selection, batch_ndim)
            return family.from_average(coordinates, site.event_shape)
        return self.state.selected(site.name, family.stat_names, selection, batch_ndim)

    def distributions(self, averaged: bool = True) -> Dict[str, dist.Distribution]:
        """Site name -> current q of each moment-matched site, with the batch and event
        shape the site has in the model (full plate sizes). ``averaged`` uses the running
        average of the iterates where :class:`~pyro_qem.infer.Inference` kept one. Enumerated
        and gradient-fitted sites have no fixed q and are left out; a non-centred site's q
        is that of ``<site>_decentered``."""
        if self.structure is None:
            raise RuntimeError("The guide has no distributions before its first step.")
        return PerSite(self.noncentred, {name: self.proposal(self.structure.sites[name], (), averaged)
                                         for name in self.families})

    @torch.no_grad()
    def quantiles(self, quantiles: Sequence[float], *args, **kwargs) -> Dict[str, torch.Tensor]:
        """Marginal quantiles of each moment-matched site's q, as Pyro's AutoGuides give
        them: ``{site: tensor of shape (len(quantiles),) + site shape}``. Pass the
        model's arguments if the guide has not been set up yet."""
        if self.structure is None:
            self._setup_to_read("quantiles", args, kwargs)
        if isinstance(quantiles, (int, float)) or (isinstance(quantiles, torch.Tensor) and quantiles.dim() == 0):
            raise TypeError(f"quantiles must be a list of probabilities, e.g. [{float(quantiles)}] "
                            "or [0.05, 0.5, 0.95].")
        probs = torch.as_tensor(list(quantiles), dtype=torch.float64)
        out = {}
        for name, family in self.families.items():
            site = self.structure.sites[name]
            moments = self._moments(site, family, (), averaged=True)
            params = family.params_from_moments(moments, site.event_shape)
            try:
                values = family.quantiles(params, probs, site.event_shape)
            except NotImplementedError as error:
                raise NotImplementedError(f"Site '{name}': {error}") from error
            out[name] = values.to(dtype=_float_dtype(site), device=site.device)
        return PerSite(self.noncentred, out)

    def _setup_to_read(self, what: str, args: tuple, kwargs: dict) -> None:
        """Set the guide up from the model's arguments before reading its fit, saying
        what to pass where the model needs arguments and none were given."""
        try:
            self.setup(*args, **kwargs)
        except TypeError as error:
            if args or kwargs:
                raise
            raise TypeError(
                f"guide.{what}(): the guide has not been set up in this process (no step "
                f"taken; a loaded state_dict is applied at set-up) and the model needs its "
                f"arguments ({error}). Pass them, e.g. guide.{what}(..., y), or call "
                "guide.setup(y) first."
            ) from error

    @torch.no_grad()
    def median(self, *args, **kwargs) -> Dict[str, torch.Tensor]:
        """The median of each moment-matched site's q (per coordinate)."""
        if self.structure is None:
            self._setup_to_read("median", args, kwargs)
        return PerSite(self.noncentred, {name: value[0] for name, value in
                                         self.quantiles([0.5], *args, **kwargs).items()})


class PerSite(dict):
    """A dict by latent site whose lookup of a non-centred site's name says where its q
    went instead of a bare KeyError."""

    def __init__(self, noncentred: Sequence[str], items: Mapping) -> None:
        super().__init__(items)
        self.noncentred = tuple(noncentred)

    def __missing__(self, name):
        if name in self.noncentred:
            raise KeyError(
                f"'{name}' is proposed non-centred: the guide fits q to "
                f"'{decentered_name(name)}' and computes '{name}' from it. Its posterior "
                f"comes from sample_posterior or posterior_moments (which return '{name}'); "
                "for a q of the site itself, create the guide with noncentre=None."
            )
        raise KeyError(name)


def _fixed_support_advice(name: str, support: constraints.Constraint) -> str:
    """How to rewrite a site whose support depends on another latent site."""
    if support.is_discrete:
        return ("give the site a distribution whose support does not depend on other latent "
                "sites (e.g. for Binomial(n, p) with n ~ Poisson(rate), the thinned count "
                "Poisson(rate * p)).")
    if hasattr(support, "upper_bound"):
        return (f"u = pyro.sample('{name}_unit', dist.Uniform(0., 1.)) and "
                f"pyro.deterministic('{name}', low + (high - low) * u, event_dim=0) (event_dim "
                "lets the outputs draw it).")
    return (f"y = pyro.sample('{name}_offset', <a positive distribution>) and "
            f"pyro.deterministic('{name}', low + y, event_dim=0) (event_dim lets the "
            "outputs draw it).")


def _float_dtype(site: SiteInfo) -> torch.dtype:
    return site.dtype if site.dtype.is_floating_point else torch.get_default_dtype()
