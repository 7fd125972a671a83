"""Discover a model's sites once, with a prototype trace, and check what QEM supports.

Like :class:`pyro.infer.autoguide.AutoGuide`, a guide runs the model once under
``poutine.block(poutine.trace(...))`` on its first call. A subsampled plate is walked
chunk by chunk (one run per minibatch-sized chunk) so that every plate element gets its
own initial q.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import warnings
from dataclasses import dataclass, field
from typing import Callable, Dict, FrozenSet, Iterable, List, Mapping, Optional, Sequence, Tuple

import torch

import pyro.distributions as dist
import pyro.poutine as poutine
from pyro.infer.autoguide.initialization import InitMessenger
from pyro.infer.inspect import get_dependencies
from pyro.poutine.trace_struct import Trace
from pyro.poutine.util import site_is_factor, site_is_subsample

from ..handlers import IndexProbe, IndexUse, PlateChunkMessenger, is_subsampled
from ..handlers.rest_density import rest_log_density
from .links import data_links, find_links
from .plate_independence import check_plate_independence
from .site_checks import check_something_to_infer, check_latent_distribution, check_observed
from .structure import ModelStructure, PlateInfo, SiteInfo, group_sites


@contextlib.contextmanager
def rng_preserved():
    """Leave the global RNG streams as they were, so discovering a model (which draws
    from its prior) does not change what the next step samples: a guide restored from
    the param store then takes exactly the step the original would have taken."""
    devices = [torch.cuda.current_device()] if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        yield


@dataclass
class Prototype:
    """One set-up run of the model: its trace and the indices each subsampled plate
    visited (every element appears in at least one run)."""

    trace: Trace
    indices: Dict[str, torch.Tensor]
    index_uses: List[IndexUse] = field(default_factory=list)
    # site -> latent sites its log density depends on (first run only; None if unknown)
    dependencies: Optional[Dict[str, FrozenSet[str]]] = None
    # masked latent site -> its masked elements that no other site reads (first run)
    absent: Dict[str, torch.Tensor] = field(default_factory=dict)


def prototype_traces(model: Callable, args: tuple, kwargs: dict, init_loc_fn: Callable) -> List[Prototype]:
    """Runs of ``model`` with values from ``init_loc_fn`` that together visit every
    element of every subsampled plate (one run when nothing is subsampled).

    Subsampled plates that share a site (nested plates) are walked through every
    combination of their chunks, so that each element of such a site (outer chunk i
    with inner chunk j, for all i and j) is seen; plates that never share a site are
    walked side by side. The first run also records which latent sites each site's
    log density depends on (:attr:`Prototype.dependencies`).
    """
    runs: List[Prototype] = []
    plan: List[Dict[str, int]] = [{}]
    done: List[Dict[str, int]] = []
    num_chunks: Dict[str, int] = {}
    shared: List[FrozenSet[str]] = []
    with rng_preserved(), poutine.block():
        while len(done) < len(plan):
            chunk = plan[len(done)]
            chunker = PlateChunkMessenger(chunk)
            init = InitMessenger(_chunked_init(init_loc_fn, chunker))
            # The probe sits inside the trace, so the trace keeps plain values.
            probe = IndexProbe()
            traced = poutine.trace(probe(chunker(init(_with_plate_advice(model)))))
            trace = traced.get_trace(*args, **kwargs)
            uses = list(probe.uses)
            if not uses and not runs and _has_plated_latent(trace):
                # Only the first run's uses are read (discover); only a plated latent
                # can be indexed.
                uses = _uses_without_init(model, chunk, args, kwargs)
            runs.append(Prototype(trace, dict(chunker.indices), uses))
            done.append(chunk)
            together = _plates_sharing_sites(trace, set(chunker.indices))
            if any(name not in num_chunks for name in chunker.num_chunks) or \
                    any(t not in shared for t in together):
                num_chunks.update(chunker.num_chunks)
                shared = sorted(set(shared) | set(together), key=sorted)
                # A plate a run did not name took chunk 0 in it.
                seen = {tuple(c.get(n, 0) for n in sorted(num_chunks)) for c in done}
                plan = done + [c for c in _chunk_plan(num_chunks, shared)
                               if tuple(c.get(n, 0) for n in sorted(num_chunks)) not in seen]
        runs[0].dependencies = prior_dependencies(model, args, kwargs)
        runs[0].absent = masked_unread(model, args, kwargs, runs[0].trace)
        check_plate_independence(model, args, kwargs, runs[0].trace)
    return runs


def element_mask(node) -> Optional[torch.Tensor]:
    """A sample site's mask over its batch shape (True: counted), from
    ``poutine.mask`` and from a masked distribution (``fn.mask(m)``, also under
    ``.to_event``: an element counts unless all its components are masked), or None
    when nothing is masked."""
    fn = node["fn"]
    inner, reinterpreted = _mask_wrapped(fn)
    if node["mask"] is None and not isinstance(inner, dist.MaskedDistribution):
        return None
    shape = fn.batch_shape
    mask = torch.ones(shape, dtype=torch.bool)
    if node["mask"] is not None:
        mask = mask & torch.as_tensor(node["mask"], dtype=torch.bool)
    if isinstance(inner, dist.MaskedDistribution):
        masked = torch.as_tensor(inner._mask, dtype=torch.bool).expand(inner.batch_shape)
        if reinterpreted:
            masked = masked.any(tuple(range(-reinterpreted, 0)))
        mask = mask & masked.expand(shape)
    return None if bool(mask.all()) else mask


def _mask_wrapped(fn) -> Tuple[object, int]:
    """``fn`` without its Independent and Expanded wrappers, and the number of batch
    dims the wrappers reinterpreted as event dims."""
    inner, reinterpreted = fn, 0
    while isinstance(inner, (dist.Independent, dist.ExpandedDistribution)):
        if isinstance(inner, dist.Independent):
            reinterpreted += inner.reinterpreted_batch_ndims
        inner = inner.base_dist
    return inner, reinterpreted


def masked_unread(model: Callable, args: tuple, kwargs: dict, trace: Trace) -> Dict[str, torch.Tensor]:
    """For each latent site with masked-out elements: those elements whose value no
    other site's (masked, scaled) log density depends on, found for a continuous site
    by differentiating the rest of the model with respect to it at two prior draws.

    Why: Pyro's ``poutine.mask`` on a latent drops its prior there. Where another site
    still reads the value, the element has a flat prior (as in SVI or NUTS); where
    nothing reads it (Pyro's ``obs_mask`` imputation at observed entries, padding), it
    is absent, and its particles should keep uniform weights rather than chase a
    flat, improper posterior. A discrete site's masked elements all count as absent (no
    derivative tells them apart); those of a site in a subsampled plate are left to the
    estimator, which treats them as absent too.
    """
    found: Dict[str, torch.Tensor] = {}
    for name, node in trace.nodes.items():
        if node["type"] != "sample" or node["is_observed"] or site_is_subsample(node):
            continue
        mask = element_mask(node)
        if mask is None or any(is_subsampled(f) for f in node["cond_indep_stack"]):
            continue
        if node["fn"].support.is_discrete:
            # No derivative to tell: every masked element is absent (a flat prior on
            # an unread Poisson count would let its q's rate grow without end).
            found[name] = ~mask
            continue
        read = _elements_read(model, args, kwargs, trace, name)
        if read is not None:
            found[name] = ~mask & ~read
    return {name: unread for name, unread in found.items() if bool(unread.any())}


def _elements_read(model: Callable, args: tuple, kwargs: dict, trace: Trace, name: str
                   ) -> Optional[torch.Tensor]:
    """Per element of site ``name`` (batch shape): whether the log density of the
    rest of the model depends on its value, at two random values; None where that
    cannot be computed (the elements then count as read)."""
    node = trace.nodes[name]
    fn = node["fn"]
    event_ndim = len(fn.event_shape)
    read = torch.zeros(fn.batch_shape, dtype=torch.bool)
    for _ in range(2):
        try:
            value = fn.sample().detach().clone().requires_grad_(True)
            with torch.enable_grad():
                rest = rest_log_density(model, args, kwargs, trace, name, value)
                if not rest.requires_grad:
                    return read
                (grad,) = torch.autograd.grad(rest, value, allow_unused=True)
        except Exception:  # noqa: BLE001 - the elements then count as read
            return None
        if grad is None:
            return read
        moved = grad.detach() != 0
        moved = moved.any(tuple(range(-event_ndim, 0))) if event_ndim else moved
        read = read | moved.expand(fn.batch_shape)
    return read


def _has_plated_latent(trace: Trace) -> bool:
    return any(node["type"] == "sample" and not node["is_observed"] and not site_is_subsample(node)
               and any(f.vectorized for f in node["cond_indep_stack"])
               for node in trace.nodes.values())


def _uses_without_init(model: Callable, chunk: Dict[str, int], args: tuple, kwargs: dict
                       ) -> List[IndexUse]:
    """The index uses of a run with prior draws instead of ``init_loc_fn``'s values.

    Pyro hands a reparameterised site (``poutine.reparam`` with ``LocScaleReparam``)
    its init value before the reparameterisation, which then computes the latent it
    samples from that value, not the value from the latent: an index of the site's
    value is then invisible to the probe. Without init the value comes from the latent.
    Returns no uses where the model cannot run on prior draws (e.g. a flat prior).
    """
    probe = IndexProbe()
    try:
        probe(PlateChunkMessenger(dict(chunk))(model))(*args, **kwargs)
    except Exception:  # noqa: BLE001 - only a second look; the init run stands
        return []
    return list(probe.uses)


def _plates_sharing_sites(trace: Trace, subsampled) -> List[FrozenSet[str]]:
    """The sets of subsampled plates that some sample site is in together."""
    found = set()
    for node in trace.nodes.values():
        if node["type"] != "sample" or site_is_subsample(node):
            continue
        plates = frozenset(f.name for f in node["cond_indep_stack"] if f.name in subsampled)
        if len(plates) > 1:
            found.add(plates)
    return sorted(found, key=sorted)


def _chunk_plan(num_chunks: Mapping[str, int], shared: Sequence[FrozenSet[str]]) -> List[Dict[str, int]]:
    """Chunk assignments ``{plate: chunk}`` that visit every combination of chunks of
    plates that share a site. Plates are joined into components (plates linked through
    shared sites); each component runs through the product of its plates' chunks, and
    the components run side by side (a shorter one wraps around)."""
    parent = {name: name for name in num_chunks}

    def root(name):
        while parent[name] != name:
            name = parent[name]
        return name

    for plates in shared:
        plates = [p for p in plates if p in parent]
        for other in plates[1:]:
            parent[root(other)] = root(plates[0])
    components: Dict[str, List[str]] = {}
    for name in num_chunks:
        components.setdefault(root(name), []).append(name)
    combos = []
    for names in components.values():
        ranges = [range(num_chunks[n]) for n in names]
        combos.append([dict(zip(names, c)) for c in itertools.product(*ranges)])
    length = max((len(c) for c in combos), default=1)
    plan = []
    for i in range(length):
        chunk: Dict[str, int] = {}
        for component in combos:
            chunk.update(component[i % len(component)])
        plan.append(chunk)
    return plan


def prior_dependencies(model: Callable, args: tuple, kwargs: dict) -> Optional[Dict[str, FrozenSet[str]]]:
    """site -> the latent sites its log density depends on (through any computation,
    reductions included), by Pyro's provenance tracking; None where the model cannot
    be traced that way (the check that uses it is then left to the shapes alone)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            found = get_dependencies(model, args, kwargs)["prior_dependencies"]
    except Exception:
        return None
    return {site: frozenset(u for u in upstream if u != site) for site, upstream in found.items()}


def _with_plate_advice(model: Callable) -> Callable:
    """``model``, with advice added to Pyro's error for a distribution whose batch shape
    does not fit its plate (Pyro's message names the site, plate and sizes only)."""

    def run(*args, **kwargs):
        try:
            return model(*args, **kwargs)
        except AssertionError as error:
            name = _sizeless_subsampled_plate(error)
            if name is None:
                raise
            raise ValueError(
                f"pyro.plate('{name}') was given subsample= or subsample_size= but no size: "
                "Pyro needs a subsampled plate's full size. Pass it, e.g. "
                f"pyro.plate('{name}', len(data), subsample_size=B) (pyro_qem then chooses "
                "the minibatch and sees every element at set-up)."
            ) from error
        except ValueError as error:
            if not str(error).startswith("Shape mismatch inside plate"):
                raise
            raise ValueError(
                f"{error}: the site's distribution has a batch dim of another size than "
                "the plate. Size the plate from the data (pyro.plate(name, len(data))), "
                "make the parameters' lengths match it, or give dims that are not the "
                "plate's an event shape (.to_event)."
            ) from error

    return run


def _sizeless_subsampled_plate(error: AssertionError) -> Optional[str]:
    """The plate's name if ``error`` is the assertion Pyro raises for a plate given
    ``subsample`` or ``subsample_size`` without a size, else None."""
    tb = error.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None or tb.tb_frame.f_code.co_name != "_subsample" \
            or not tb.tb_frame.f_code.co_filename.endswith("subsample_messenger.py"):
        return None
    local = tb.tb_frame.f_locals
    return str(local.get("name")) if local.get("size") is None else None


def check_plates(name: str, stack) -> None:
    """Refuse the plates QEM cannot handle, naming the site and the plate: a
    vectorised plate without a size, and a subsampled sequential plate."""
    for frame in stack:
        if frame.vectorized and (frame.size is None or frame.size < 0):
            raise ValueError(
                f"Site '{name}' is in pyro.plate('{frame.name}'), which has no size "
                "(pyro.plate(name) without a size broadcasts to whatever the site's shape "
                "is). pyro_qem gives every plate element its own q and needs to know the "
                f"plate's size: pass it, e.g. pyro.plate('{frame.name}', len(data))."
            )
        if not frame.vectorized and frame.full_size is not None and frame.size != frame.full_size:
            raise NotImplementedError(
                f"Site '{name}' is inside a sequential pyro.plate('{frame.name}') (used as a "
                f"Python iterator: for i in pyro.plate(...)) that subsamples {frame.size} of "
                f"{frame.full_size} elements. pyro_qem subsamples only vectorised plates: write "
                f"`with pyro.plate('{frame.name}', {frame.full_size}, subsample_size="
                f"{frame.size}) as idx:` with the sites vectorised over idx, or iterate over "
                "the whole plate (no subsample_size)."
            )


def _chunked_init(init_loc_fn: Callable, chunker: PlateChunkMessenger) -> Callable:
    """Let ``init_to_value(values=...)`` give full-size values for subsampled sites."""

    def init(site):
        check_plates(site["name"], site["cond_indep_stack"])
        check_latent_distribution(site["name"], site["fn"])
        value = init_loc_fn(site)
        event_dim = site["fn"].event_dim
        for frame in site["cond_indep_stack"]:
            index = chunker.indices.get(frame.name)
            dim = frame.dim - event_dim if frame.vectorized else None
            if index is not None and value.dim() >= -dim and value.shape[dim] == frame.full_size:
                value = value.index_select(dim, index)
        return value

    return init


def discover(
    prototype: Prototype,
    groups: Optional[Sequence[Iterable[str]]] = None,
    max_plate_nesting: Optional[int] = None,
) -> ModelStructure:
    """Read a prototype run into a :class:`ModelStructure`, raising on what QEM
    cannot handle (each error names the site and says what to do)."""
    trace, chunked = prototype.trace, set(prototype.indices)
    sites: Dict[str, SiteInfo] = {}
    observed: Dict[str, torch.Size] = {}
    plates: Dict[str, PlateInfo] = {}
    needed = 0
    for name, node in trace.nodes.items():
        if node["type"] != "sample" or site_is_subsample(node):
            continue
        _check_not_markov(node)
        check_plates(name, node["cond_indep_stack"])
        frames = [f for f in node["cond_indep_stack"] if f.vectorized]
        for frame in frames:
            plates[frame.name] = _plate_info(frame, name, chunked)
        batch_shape = _full_batch_shape(node["fn"].batch_shape, frames)
        needed = max([needed, len(batch_shape)] + [-f.dim for f in frames])
        if node["is_observed"]:
            if not site_is_factor(node) and not node["infer"].get("_deterministic"):
                check_observed(node, frames)
            observed[name] = batch_shape
            continue
        check_latent_distribution(name, node["fn"])
        _check_batch_dims_are_plates(name, batch_shape, frames)
        sites[name] = SiteInfo(
            name=name,
            support=node["fn"].support,
            batch_shape=batch_shape,
            event_shape=node["fn"].event_shape,
            plates=tuple(f.name for f in frames),
            dtype=node["value"].dtype,
            device=node["value"].device,
            enumerated=_is_enumerated(node),
        )
    check_something_to_infer(sites, trace)
    nesting = _resolve_max_plate_nesting(max_plate_nesting, needed)
    links, indexed = find_links(prototype.index_uses, _plate_sizes(trace))
    if groups is None and links:
        groups = _default_groups(sites, indexed)
    grouped = group_sites(sites, groups, nesting)
    _check_tensor_dims(grouped, nesting, sites)
    structure = ModelStructure(
        max_plate_nesting=nesting,
        sites=sites,
        groups=grouped,
        plates=plates,
        observed=observed,
        links=links,
        indexed_sites=indexed,
        data_links=data_links(prototype.index_uses, links, _plate_sizes(trace)),
    )
    outside = _outside_parents(trace, structure, prototype.dependencies)
    parents = {name: frozenset(p for p in upstream if p in sites)
               for name, upstream in (prototype.dependencies or {}).items()}
    absent = {name: mask for name, mask in prototype.absent.items() if name in sites}
    return dataclasses.replace(structure, outside_parents=outside, parents=parents, absent=absent)


def _outside_parents(trace: Trace, structure: ModelStructure,
                     dependencies: Optional[Dict[str, FrozenSet[str]]]) -> Dict[str, tuple]:
    """Sites whose log density depends on a latent site in a plate they are not in
    (nor reach through an index): tensor variable elimination cannot sum such a
    graph. Most such dependencies leave a plate or particle dim in the site's log
    density, which the estimator sees; a reduction over the plate (x.mean(), x.sum())
    also reduces the particle dims and hides it, so the provenance found at set-up is
    kept here for the estimator to check."""
    found: Dict[str, tuple] = {}
    for name, upstream in (dependencies or {}).items():
        node = trace.nodes.get(name)
        if node is None or node["type"] != "sample" or node["infer"].get("_deterministic"):
            continue
        own = structure.reachable_plates({f.name for f in node["cond_indep_stack"] if f.vectorized})
        bad = []
        for parent in sorted(upstream):
            site = structure.sites.get(parent)
            if site is None:
                continue
            outside = tuple(sorted(set(site.plates) - own))
            if outside:
                bad.append((parent, outside))
        if bad:
            found[name] = tuple(bad)
    return found


def _default_groups(sites: Dict[str, SiteInfo], indexed: FrozenSet[str]) -> Optional[List[List[str]]]:
    """The default groups of a model with indexed rows. Every row's log density spans
    the particle dims of all the latents it reads, so G separate ones cost K^G per row
    (radon's four globals at K = 30: 4 s a step; a county's intercept and slope apart:
    0.8 s against 13 ms). So the global latents (in no plate) share one particle dim,
    and so do the latents of one plate that rows read through an index (a county's
    intercept and slope: particle k of both is used together)."""
    found: Dict[tuple, List[str]] = {}
    for name, site in sites.items():
        if site.enumerated:
            continue
        if not site.plates:
            found.setdefault((), []).append(name)
        elif name in indexed:
            found.setdefault(tuple(site.plates), []).append(name)
    groups = [members for members in found.values() if len(members) > 1]
    return groups or None


def _plate_sizes(trace: Trace) -> Dict[str, tuple]:
    """plate name -> (dim, size in the set-up run)."""
    return {f.name: (f.dim, f.size) for node in trace.nodes.values() if node["type"] == "sample"
            for f in node["cond_indep_stack"] if f.vectorized}


def _full_batch_shape(batch_shape: torch.Size, frames) -> torch.Size:
    shape = list(batch_shape)
    for frame in frames:
        if frame.full_size is not None and -frame.dim <= len(shape) and shape[frame.dim] != 1:
            shape[frame.dim] = frame.full_size
    return torch.Size(shape)


def _plate_info(frame, site: str, chunked) -> PlateInfo:
    full_size = frame.full_size if frame.full_size is not None else frame.size
    if frame.size != full_size and frame.name not in chunked:
        raise NotImplementedError(
            f"Site '{site}' is in pyro.plate('{frame.name}') with explicit subsample= "
            f"indices ({frame.size} of {full_size}). Give subsample_size= instead, so that "
            "pyro_qem can choose the minibatch and see every element once at set-up."
        )
    return PlateInfo(frame.name, frame.dim, full_size)


def _check_not_markov(node) -> None:
    if "_markov_scope" in node["infer"]:
        raise NotImplementedError(
            f"Site '{node['name']}' is inside pyro.markov, which pyro_qem does not support "
            "yet. Remove the markov context (QEM then treats the chain as a plain graph of "
            "sites), or fit this model with pyro.infer.TraceEnum_ELBO."
        )


def _is_enumerated(node) -> bool:
    strategy = node["infer"].get("enumerate")
    if strategy is None:
        return False
    if strategy != "parallel":
        raise NotImplementedError(
            f"Site '{node['name']}' has infer={{'enumerate': {strategy!r}}}; pyro_qem "
            "enumerates only in parallel. Use 'parallel', or drop it to sample the site "
            "with a moment-matched q."
        )
    if not node["fn"].has_enumerate_support:
        raise ValueError(
            f"Site '{node['name']}' asks for enumeration but its distribution "
            f"{type(node['fn']).__name__} has no finite support to enumerate. Drop "
            "infer={'enumerate': 'parallel'} to sample it with a moment-matched q."
        )
    return True


def _check_batch_dims_are_plates(name: str, batch_shape: torch.Size, frames) -> None:
    plate_dims = {f.dim for f in frames}
    for dim in range(-len(batch_shape), 0):
        if batch_shape[dim] > 1 and dim not in plate_dims:
            raise ValueError(
                f"Latent site '{name}' has batch shape {tuple(batch_shape)}, and its dim {dim} "
                "belongs to no pyro.plate. QEM gives each plate element its own particles, "
                "so every batch dim of a latent site must be a plate: declare a vector "
                "site with .to_event(1), or put the site inside pyro.plate(..., dim="
                f"{dim})."
            )


# The most dims a torch tensor may have.
MAX_TENSOR_DIMS = 64


def _check_tensor_dims(groups, nesting: int, sites: Dict[str, SiteInfo]) -> None:
    """Each particle group has its own tensor dim left of the plates, so a site's value
    has (groups + plate dims + event dims) dims; torch refuses more than 64."""
    event = max((len(site.event_shape) for site in sites.values()), default=0)
    needed = len(groups) + nesting + event
    if needed <= MAX_TENSOR_DIMS:
        return
    raise ValueError(
        f"This model has {len(groups)} particle groups (one per latent site unless grouped) "
        f"and {nesting} plate dims{f' and {event} event dims' if event else ''}: QEM would "
        f"need tensors of {needed} dims, but torch supports at most {MAX_TENSOR_DIMS}. "
        "Each latent site gets its own particle dim, so a long chain written as a Python "
        "loop of sites (without pyro.markov, which pyro_qem does not support) exhausts "
        "them. Let sites share a particle dim (AutoQEM(model, groups=[['x0', 'x1', ...], "
        "...]) for sites in the same plates), or write the chain as one vectorised site "
        "(e.g. a .to_event(1) vector, or a site in a pyro.plate)."
    )


def _resolve_max_plate_nesting(given: Optional[int], needed: int) -> int:
    if given is None:
        return needed
    if given < needed:
        raise ValueError(
            f"max_plate_nesting={given} is too small for this model: its sites use "
            f"{needed} batch dims. Pass max_plate_nesting={needed} or leave it None so "
            "that pyro_qem finds it."
        )
    return given
