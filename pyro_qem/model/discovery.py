"""Discover a model's sites once, with a prototype trace, and check what QEM supports.

Like :class:`pyro.infer.autoguide.AutoGuide`, a guide runs the model once under
``poutine.block(poutine.trace(...))`` on its first call. A subsampled plate is walked
chunk by chunk (one run per minibatch-sized chunk) so that every plate element gets its
own initial q.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Sequence

import torch

import pyro.poutine as poutine
from pyro.infer.autoguide.initialization import InitMessenger
from pyro.poutine.trace_struct import Trace
from pyro.poutine.util import site_is_factor, site_is_subsample

from ..handlers import IndexProbe, IndexUse, PlateChunkMessenger
from .links import find_links
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


def prototype_traces(model: Callable, args: tuple, kwargs: dict, init_loc_fn: Callable) -> List[Prototype]:
    """Runs of ``model`` with values from ``init_loc_fn`` that together visit every
    element of every subsampled plate (one run when nothing is subsampled)."""
    runs: List[Prototype] = []
    chunk, num_chunks = 0, 1
    with rng_preserved(), poutine.block():
        while chunk < num_chunks:
            chunker = PlateChunkMessenger(chunk)
            init = InitMessenger(_chunked_init(init_loc_fn, chunker))
            # The probe sits inside the trace, so the trace keeps plain values.
            probe = IndexProbe()
            traced = poutine.trace(probe(chunker(init(_with_plate_advice(model)))))
            trace = traced.get_trace(*args, **kwargs)
            runs.append(Prototype(trace, dict(chunker.indices), list(probe.uses)))
            num_chunks = max(chunker.num_chunks.values(), default=1)
            chunk += 1
    return runs


def _with_plate_advice(model: Callable) -> Callable:
    """``model``, with advice added to Pyro's error for a distribution whose batch shape
    does not fit its plate (Pyro's message names the site, plate and sizes only)."""

    def run(*args, **kwargs):
        try:
            return model(*args, **kwargs)
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
    check_something_to_infer(sites, trace)
    nesting = _resolve_max_plate_nesting(max_plate_nesting, needed)
    links, indexed = find_links(prototype.index_uses, _plate_sizes(trace))
    return ModelStructure(
        max_plate_nesting=nesting,
        sites=sites,
        groups=group_sites(sites, groups, nesting),
        plates=plates,
        observed=observed,
        links=links,
        indexed_sites=indexed,
    )


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
