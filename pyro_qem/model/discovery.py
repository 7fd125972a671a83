"""Discover a model's sites once, with a prototype trace, and check what QEM supports.

Like :class:`pyro.infer.autoguide.AutoGuide`, a guide runs the model once under
``poutine.block(poutine.trace(...))`` on its first call. A subsampled plate is walked
chunk by chunk (one run per minibatch-sized chunk) so that every plate element gets its
own initial q.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional, Sequence

import torch
from torch.distributions import Independent, constraints

import pyro.distributions as dist
import pyro.poutine as poutine
from pyro.distributions.torch_distribution import ExpandedDistribution, MaskedDistribution
from pyro.infer.autoguide.initialization import InitMessenger
from pyro.poutine.trace_struct import Trace
from pyro.poutine.util import site_is_factor, site_is_subsample

from ..handlers import PlateChunkMessenger
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


def prototype_traces(model: Callable, args: tuple, kwargs: dict, init_loc_fn: Callable) -> List[Prototype]:
    """Runs of ``model`` with values from ``init_loc_fn`` that together visit every
    element of every subsampled plate (one run when nothing is subsampled)."""
    runs: List[Prototype] = []
    chunk, num_chunks = 0, 1
    with rng_preserved(), poutine.block():
        while chunk < num_chunks:
            chunker = PlateChunkMessenger(chunk)
            init = InitMessenger(_chunked_init(init_loc_fn, chunker))
            trace = poutine.trace(chunker(init(model))).get_trace(*args, **kwargs)
            runs.append(Prototype(trace, dict(chunker.indices)))
            num_chunks = max(chunker.num_chunks.values(), default=1)
            chunk += 1
    return runs


def _chunked_init(init_loc_fn: Callable, chunker: PlateChunkMessenger) -> Callable:
    """Let ``init_to_value(values=...)`` give full-size values for subsampled sites."""

    def init(site):
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
    _check_something_to_infer(sites, trace)
    nesting = _resolve_max_plate_nesting(max_plate_nesting, needed)
    return ModelStructure(
        max_plate_nesting=nesting,
        sites=sites,
        groups=group_sites(sites, groups, nesting),
        plates=plates,
        observed=observed,
    )


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


def _unwrapped(fn):
    """The distribution inside ``Independent``, ``expand`` and ``mask`` wrappers."""
    while isinstance(fn, (Independent, ExpandedDistribution, MaskedDistribution)):
        fn = fn.base_dist
    return fn


def check_latent_distribution(name: str, fn) -> None:
    """Raise for a latent distribution that q's particles cannot stand in for.

    Called before the set-up run asks ``init_loc_fn`` for a value, so that the error
    names the site instead of coming from deep inside the init strategy.
    """
    base = _unwrapped(fn)
    if isinstance(base, dist.Delta):
        raise ValueError(
            f"Latent site '{name}' has a Delta distribution: it is a fixed value, not a "
            "random variable, so no particle drawn from q would hit it exactly (log P_hat "
            f"would be -inf). Record a computed value with pyro.deterministic('{name}', "
            f"value) instead of pyro.sample('{name}', dist.Delta(value))."
        )
    if isinstance(base, dist.ImproperUniform):
        raise NotImplementedError(
            f"Latent site '{name}' has an ImproperUniform (flat, improper) prior, which "
            "cannot be sampled, so pyro_qem cannot initialise q from the prior. Give the "
            "site a proper, wide prior on the same support instead, e.g. dist.Normal(0., "
            "100.) for a real site or dist.HalfNormal(100.) for a positive one."
        )


def _check_something_to_infer(sites: Dict[str, SiteInfo], trace: Trace) -> None:
    # A model with pyro.params but no latent site is still fitted (by gradient on
    # -log P_hat, i.e. maximum likelihood), so only a model with neither is refused.
    if sites or any(node["type"] == "param" for node in trace.nodes.values()):
        return
    raise ValueError(
        "The model has no latent sample sites (every pyro.sample is observed, or there "
        "is none), so there is nothing to infer. To evaluate the likelihood, compute it "
        "directly (poutine.trace(model).get_trace(*args).log_prob_sum()); to simulate "
        "data, use pyro.infer.Predictive(model, num_samples=...)."
    )


def check_observed(node, frames) -> None:
    """Raise where an observed site's data cannot be what its distribution describes:
    not a tensor, NaN/inf, a shape that does not fit the site's plates, or values
    outside the support. Each error names the site and says what to do."""
    name, value = node["name"], node["value"]
    if not isinstance(value, torch.Tensor):
        raise TypeError(
            f"Observed site '{name}' has obs= of type {type(value).__name__}; pyro_qem "
            "needs a torch.Tensor with the site's batch and event shape. Convert it, e.g. "
            "obs=torch.as_tensor(y, dtype=torch.get_default_dtype())."
        )
    _check_finite(name, value)
    _check_observed_shape(name, value, node["fn"], frames)
    _check_in_support(node)


def _check_finite(name: str, value: torch.Tensor) -> None:
    if value.is_floating_point():
        bad = ~torch.isfinite(value)
        if bad.any():
            raise ValueError(
                f"Observed site '{name}' has {int(bad.sum())} NaN/inf values. Drop them, or "
                "pass obs_mask= (or wrap the site in poutine.mask) to leave them out."
            )


def _check_observed_shape(name: str, value: torch.Tensor, fn, frames) -> None:
    """The data must broadcast *to* the distribution's batch and event shape: Pyro
    accepts a bigger value, but here any dim left of the plates is a particle dim, so
    a bigger value would silently pair data with particles."""
    expected = fn.batch_shape + fn.event_shape
    shape = value.shape
    for pos in range(-min(len(shape), len(expected)), 0):
        if shape[pos] not in (1, expected[pos]):
            raise ValueError(_mismatch_message(name, shape, fn, frames, pos))
    extra = shape[: max(0, len(shape) - len(expected))]
    if any(size != 1 for size in extra):
        raise ValueError(
            f"Observed site '{name}' has data of shape {tuple(shape)}, but expected shape "
            f"{tuple(expected)} ({_shapes(fn)}): its leading dims {tuple(extra)} belong to "
            "no pyro.plate. pyro_qem puts particle dims left of the plates, so they would "
            "be mixed up with the particles. Put the site inside a pyro.plate for each data "
            f"dim (e.g. pyro.plate('{name}_plate', {extra[-1]}, dim={-len(fn.batch_shape) - 1})"
            "), or give the distribution that event shape (.to_event)."
        )


def _mismatch_message(name: str, shape: torch.Size, fn, frames, pos: int) -> str:
    expected = fn.batch_shape + fn.event_shape
    batch_dim = pos + len(fn.event_shape)
    plate = next((f.name for f in frames if f.dim == batch_dim), None) if batch_dim < 0 else None
    found = (f"Observed site '{name}' has data of shape {tuple(shape)}, but expected shape "
             f"{tuple(expected)} ({_shapes(fn)}): at dim {pos}")
    if plate is not None:
        advice = (f"pyro.plate('{plate}') has size {expected[pos]} but the data has size "
                  f"{shape[pos]}. Pass data with {expected[pos]} entries along that dim, or "
                  f"size the plate from the data (pyro.plate('{plate}', len(data))).")
    elif batch_dim >= 0:
        advice = (f"the event shape needs size {expected[pos]} but the data has size "
                  f"{shape[pos]}. Reshape the data, or change the distribution's event "
                  "shape (.to_event).")
    else:
        advice = (f"the distribution's parameters have size {expected[pos]} (no plate) but "
                  f"the data has size {shape[pos]}. Reshape the data or the parameters.")
    if len(shape) > len(expected):
        advice += (" If each observation is a vector, give the distribution that event "
                   "shape (e.g. dist.Normal(loc, 1.).expand([2]).to_event(1)) so that its "
                   "last dim is not read as the plate's.")
    return f"{found} {advice}"


def _shapes(fn) -> str:
    return f"batch shape {tuple(fn.batch_shape)}, event shape {tuple(fn.event_shape)}"


def _check_in_support(node) -> None:
    """Observed values outside the support give log densities of -inf or NaN (or,
    without validation, finite nonsense for e.g. a non-integer Poisson count)."""
    support, mask = node["fn"].support, _observed_mask(node)
    if mask is None or mask is False or not _has_fixed_bounds(support):
        return
    value = node["value"]
    bad = ~support.check(value)
    if isinstance(mask, torch.Tensor):
        bad = _any_to_shape(bad & mask, bad.shape)
    if not bad.any():
        return
    base = _unwrapped(node["fn"])
    examples = value.reshape(bad.shape + value.shape[bad.dim():])[bad][:3].tolist()
    raise ValueError(
        f"Observed site '{node['name']}' has {int(bad.sum())} value(s) outside the support "
        f"of its {type(base).__name__} distribution ({support!r}: "
        f"{_describe(support)}), e.g. {examples}. Correct or drop them (or leave them out "
        "with obs_mask= / poutine.mask), or choose a likelihood whose support contains them."
    )


def _observed_mask(node):
    """True, False or a bool tensor over the value's batch dims: where the site counts.
    None when a mask sits inside ``.to_event`` (its dims would not line up)."""
    mask = True if node["mask"] is None else node["mask"]
    fn, inside_event = node["fn"], False
    while isinstance(fn, (Independent, ExpandedDistribution, MaskedDistribution)):
        if isinstance(fn, Independent):
            inside_event = True
        elif isinstance(fn, MaskedDistribution):
            if inside_event:
                return None
            mask = fn._mask if mask is True else mask & fn._mask
        fn = fn.base_dist
    return mask


def _has_fixed_bounds(support) -> bool:
    # A support with tensor bounds (Uniform(0, b), Binomial(n, p)) may depend on a
    # latent site through the set-up value of its parent: only constant bounds are
    # checked, or a correct model could be refused.
    if constraints.is_dependent(support):
        return False
    while isinstance(support, constraints.independent):
        support = support.base_constraint
    return all(isinstance(v, (bool, int, float)) for v in vars(support).values())


def _any_to_shape(bad: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """``bad`` reduced by ``any`` over the dims that broadcasting a mask added."""
    while bad.dim() > len(shape):
        bad = bad.any(0)
    for dim, size in enumerate(shape):
        if size == 1 and bad.shape[dim] != 1:
            bad = bad.any(dim, keepdim=True)
    return bad


_SUPPORT_WORDS = {
    constraints.boolean.__class__: "0 or 1",
    constraints.nonnegative_integer.__class__: "integers >= {lower_bound}",
    constraints.positive.__class__: "values > {lower_bound}",
    constraints.nonnegative.__class__: "values >= {lower_bound}",
    constraints.unit_interval.__class__: "values in [{lower_bound}, {upper_bound}]",
    constraints.integer_interval(0, 1).__class__: "integers in {{{lower_bound}, ..., {upper_bound}}}",
    constraints.simplex.__class__: "nonnegative vectors summing to 1",
}


def _describe(support) -> str:
    while isinstance(support, constraints.independent):
        support = support.base_constraint
    words = _SUPPORT_WORDS.get(type(support))
    return words.format(**vars(support)) if words else "see its support"


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
