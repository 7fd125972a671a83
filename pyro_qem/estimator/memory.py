"""How much memory a step will need, known before the estimator allocates it.

A particle run's records already say the shape of every log density the estimator is
about to compute: the broadcast of the site's distribution batch shape and its value's
batch shape (particle dims included), which for a site depending on two particle groups
is K x K x plate sizes. The estimator holds all of these at once, and the contraction
and its backward pass need a few times the largest of them again. :func:`check_memory`
refuses a step whose estimate exceeds the budget, naming the largest factor, before any
of it is allocated.

The contraction's own intermediates can be far larger than any factor: inside a plate,
the product of factors over the particle dims of several outer groups (three groups'
K x K x N factors sharing a local group make a K x K x K x N term, and the einsum may
build K^4 x N on the way). :func:`plan_contraction` estimates the contraction's peak,
backward pass included, before any of it is allocated, by running the contraction on
``meta`` tensors (shapes without data) and following the bytes alive after every
operation; when the factors plus that peak exceed the budget, it chooses a plate and a
number of chunks that fit (:class:`~pyro_qem.estimator.contraction.Chunking`), or
refuses with :class:`MemoryBudgetError` saying why chunking cannot help.
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import Dict, FrozenSet, List, Mapping, Optional, Sequence, Tuple

import torch
from pyro.distributions.util import broadcast_shape
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from ..handlers import SiteRecord
from ..handlers.noncentring import SUFFIX
from ..model.structure import ModelStructure
from .contraction import Chunking, PlateReducers, chunk_obstacle
from .factors import LogFactor
from .linked import PlateLink, contract_terms, fold_links

# Live at once: every factor, plus this many copies of the largest (the log density's
# temporaries, the contraction's exp/log round trip, the backward pass for the weights).
LARGEST_FACTOR_COPIES = 4
# The default budget: this fraction of the memory available when Inference is created.
DEFAULT_BUDGET_FRACTION = 0.5


class MemoryBudgetError(MemoryError):
    """A step would need more memory than the budget allows."""


@dataclass(frozen=True)
class FactorSize:
    """The log density of one site in one particle run: its shape and bytes."""

    site: str
    shape: torch.Size
    bytes: int


def factor_sizes(records: Sequence[SiteRecord]) -> List[FactorSize]:
    """The shape and size in bytes of every site's log density in this run (computed
    from shapes only: nothing is evaluated)."""
    sizes = []
    for record in records:
        if record.is_deterministic:
            continue
        fn, value = record.fn, record.value
        event_dim = len(fn.event_shape)
        value_batch = value.shape[:value.dim() - event_dim] if value.dim() >= event_dim else ()
        try:
            shape = torch.Size(broadcast_shape(tuple(fn.batch_shape), tuple(value_batch)))
        except ValueError:
            continue  # not broadcastable: log_factors names the site and the shapes
        # Densities count as float64: the estimator widens where it needs to.
        sizes.append(FactorSize(record.name, shape, math.prod(shape) * 8))
    return sizes


def estimated_peak_bytes(sizes: Sequence[FactorSize]) -> int:
    """The estimated peak memory of weighing a run with these factors."""
    if not sizes:
        return 0
    return sum(s.bytes for s in sizes) + LARGEST_FACTOR_COPIES * max(s.bytes for s in sizes)


def least_factor_sizes(structure: ModelStructure, num_particles: int) -> List[FactorSize]:
    """Lower bounds of every site's log density in a step, from the structure alone,
    before the model runs: K per particle group the site depends on (its own and its
    parents' by provenance at set-up; 2 for an enumerated group), times the site's plate
    sizes (the smallest size an observed site showed at a plate's dim, for minibatches).
    """
    run_size = {name: plate.size for name, plate in structure.plates.items()}
    for batch in structure.observed.values():
        for name, plate in structure.plates.items():
            if len(batch) >= -plate.dim and batch[plate.dim] > 1:
                run_size[name] = min(run_size[name], batch[plate.dim])
    enumerated = {structure.group_of(n).index for n, s in structure.sites.items() if s.enumerated}

    def particles(names) -> List[int]:
        groups = {structure.group_of(n).index for n in names if n in structure.sites}
        return [2 if g in enumerated else num_particles for g in sorted(groups)]

    sizes = []
    for name, site in structure.sites.items():
        shape = particles({name} | structure.parents.get(name, frozenset()))
        shape += [run_size[p] for p in site.plates]
        sizes.append(FactorSize(name, torch.Size(shape), math.prod(shape) * 8))
    for name, batch in structure.observed.items():
        shape = particles(structure.parents.get(name, frozenset())) + list(batch)
        sizes.append(FactorSize(name, torch.Size(shape), math.prod(shape) * 8))
    return sizes


def check_memory(records: Sequence[SiteRecord], structure: ModelStructure, num_particles: int,
                 budget: float) -> int:
    """Raise :class:`MemoryBudgetError` when weighing this run would exceed ``budget``
    bytes, naming the largest factor and what to do.

    :returns: the number of entries of the largest factor.
    """
    sizes = factor_sizes(records)
    peak = estimated_peak_bytes(sizes)
    if peak <= budget:
        return max((s.bytes // 8 for s in sizes), default=0)
    raise _refusal(sizes, peak, budget, structure, num_particles, "This step would need")


# A log density with at least this many entries makes each step take about a second
# or more on a CPU (2^24 float64 entries: 134 MB).
COSTLY_ENTRIES = 1 << 24


def costly_factor_advice(records: Sequence[SiteRecord], structure: ModelStructure,
                         num_particles: int) -> Optional[str]:
    """Advice when the run's largest log density has :data:`COSTLY_ENTRIES` entries or
    more and spans the particle dims of two or more plate-free groups (each its own
    dim, so the size is K to their number times the rows): putting those groups' sites
    in one group makes it K times the rows. None otherwise."""
    sizes = factor_sizes(records)
    if not sizes:
        return None
    largest = max(sizes, key=lambda s: s.bytes)
    entries = largest.bytes // 8
    if entries < COSTLY_ENTRIES:
        return None
    nesting = structure.max_plate_nesting
    spanned = [structure.group_at_dim(d) for d in range(-len(largest.shape), -nesting)
               if largest.shape[d] > 1]
    globals_ = [g for g in spanned if g is not None and not g.plates]
    if len(globals_) < 2:
        return _noncentring_advice(largest, entries, [g for g in spanned if g is not None],
                                   num_particles)
    sites = [name for name in structure.sites if any(name in g.sites for g in globals_)]
    return (
        f"Site '{largest.site}''s log density has {entries:,} entries (shape "
        f"{tuple(largest.shape)}): it reads {len(globals_)} global latent groups, each in its "
        f"own particle dim, so every step sums K^{len(globals_)} = "
        f"{num_particles ** len(globals_):,} combinations per row and takes seconds. "
        f"Putting them in one particle group costs K per row instead: AutoQEM(model, "
        f"groups=[{sites!r}]) (check the fit with diagnose; the separate dims resolve "
        "more combinations, which some posteriors, e.g. mixtures, need)."
    )


def _noncentring_advice(largest: "FactorSize", entries: int, spanned: Sequence,
                        num_particles: int) -> Optional[str]:
    """Advice when a costly factor spans three or more particle groups, one of them a
    non-centred site's (AutoQEM's default ``noncentre="auto"``): each non-centred latent
    brings its parents' particle dims to every site that reads it (a three-level
    hierarchy's likelihood: K^3 per row, where the centred proposals' is K^2)."""
    decentered = sorted(name[:-len(SUFFIX)] for g in spanned for name in g.sites if name.endswith(SUFFIX))
    if len(spanned) < 3 or not decentered:
        return None
    return (
        f"Site '{largest.site}''s log density has {entries:,} entries (shape "
        f"{tuple(largest.shape)}): it spans {len(spanned)} particle groups, K^{len(spanned)} = "
        f"{num_particles ** len(spanned):,} combinations per row, because the non-centred "
        f"proposals of {decentered} (AutoQEM's default noncentre='auto') make every site "
        "that reads them read their parents' particle dims too. A step costs about K times "
        "one with centred proposals: AutoQEM(model, noncentre=None) is that much faster, "
        "but a centred hierarchy's scale parameters can come out too narrow (0.56-0.64x "
        "NUTS's sd on the radon hierarchies); a smaller K, or the compiled step "
        "(Inference(..., compile='inductor')), also help."
    )


def check_memory_before_run(structure: ModelStructure, num_particles: int, budget: float) -> None:
    """Raise :class:`MemoryBudgetError` before the model runs when even the lower
    bounds of :func:`least_factor_sizes` exceed ``budget`` (the model's own tensors
    with K particles, e.g. a K x N x P product, are never allocated then)."""
    sizes = least_factor_sizes(structure, num_particles)
    peak = estimated_peak_bytes(sizes)
    if peak > budget:
        raise _refusal(sizes, peak, budget, structure, num_particles,
                       "Before running the model: this step would need at least")


def _refusal(sizes: Sequence[FactorSize], peak: int, budget: float, structure: ModelStructure,
             num_particles: int, opening: str) -> MemoryBudgetError:
    largest = max(sizes, key=lambda s: s.bytes)
    return MemoryBudgetError(
        f"{opening} about {_gb(peak)} (budget {_gb(budget)}): the largest factor, "
        f"site '{largest.site}''s log density over the particle dims of the groups it "
        f"depends on, has shape {tuple(largest.shape)} ({_gb(largest.bytes)}) at K = "
        f"{num_particles}. Its size grows as K to the number of particle groups it "
        f"depends on ({len(structure.groups)} groups in the model). Use a smaller K, put "
        "sites that depend on each other in one group (AutoQEM(..., groups=[[...]]) costs K, not K^2, per pair), "
        "or raise Inference(..., max_memory=<bytes>) if the machine has the memory."
    )


def _gb(num_bytes: float) -> str:
    if num_bytes >= 2 ** 26:
        return f"{num_bytes / 2 ** 30:.2f} GiB"
    if num_bytes >= 2 ** 20:
        return f"{num_bytes / 2 ** 20:.1f} MiB"
    return f"{num_bytes / 2 ** 10:.1f} KiB"


def available_memory(device: Optional[torch.device] = None) -> float:
    """Bytes of memory available now: free GPU memory for a CUDA device, else the
    operating system's available RAM (``MemAvailable``), else half the physical RAM."""
    if device is not None and device.type == "cuda" and torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info(device)
        return float(free)
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return 0.5 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return float("inf")


def default_budget(device: Optional[torch.device] = None) -> float:
    """:data:`DEFAULT_BUDGET_FRACTION` of :func:`available_memory`."""
    return DEFAULT_BUDGET_FRACTION * available_memory(device)


# -- The contraction's peak, and chunking ---------------------------------------------

# Below this bound on the contraction's bytes beyond its factors (this many copies,
# per term, of the product of every dim's size: no intermediate is larger than that
# product), the contraction is not simulated at all: a normal model pays nothing.
COPIES_PER_TERM = 2
# Chunk counts up to this are checked by simulating them; larger ones are read off the
# peaks of 2 and 4 chunks (the peak falls as a constant plus a part over the count).
VERIFY_CHUNKS = 64
# How many plans (and simulated peaks) are remembered, by the layout of the terms.
CACHE_SIZE = 64
# The share of the budget a plan may fill: the rest is for what the simulation does
# not see (the allocator's own overhead, small tensors, the weights' normalisation).
# Measured with one-step peak RSS: 6-10% above the estimate at a 64 MiB budget.
PLAN_FRACTION = 0.9


@dataclass(frozen=True)
class Simulation:
    """What :func:`simulate_contraction` saw: the peak of the bytes alive beyond the
    terms themselves, and the largest single tensor the contraction made."""

    peak: int
    largest_shape: Tuple[int, ...]
    largest_bytes: int


class _PeakTracker(TorchDispatchMode):
    """Follows every storage the operations create while active: the bytes alive (a
    storage counts until nothing holds it, the autograd graph's saved tensors
    included), their peak, and the largest single tensor. Storages of ``ignore`` (the
    inputs) and views of a counted storage are not counted again."""

    def __init__(self, ignore: Sequence[int]):
        super().__init__()
        self._ignore = set(ignore)
        self._live: Dict[int, Tuple[StorageWeakRef, int]] = {}
        self._alive = 0
        self.peak = 0
        self.largest: Tuple[int, Tuple[int, ...]] = (0, ())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for key in [k for k, (ref, _) in self._live.items() if ref.expired()]:
            self._alive -= self._live.pop(key)[1]
        for tensor in tree_flatten(out)[0]:
            if not isinstance(tensor, torch.Tensor):
                continue
            storage = tensor.untyped_storage()
            key = storage._cdata
            if key in self._ignore or key in self._live:
                continue
            size = storage.nbytes()
            self._live[key] = (StorageWeakRef(storage), size)
            self._alive += size
            if size > self.largest[0]:
                self.largest = (size, tuple(tensor.shape))
        self.peak = max(self.peak, self._alive)
        return out


def _meta(tensor: torch.Tensor) -> torch.Tensor:
    """A data-less stand-in with ``tensor``'s shape, strides, dtype and grad flag."""
    stand_in = torch.empty_strided(tensor.shape, tensor.stride(), dtype=tensor.dtype, device="meta")
    return stand_in.requires_grad_(tensor.requires_grad)


def simulate_contraction(terms: Sequence[LogFactor], plate_scales: Mapping[str, float],
                         plate_reducers: PlateReducers = (),
                         links: Optional[Mapping[str, PlateLink]] = None,
                         local_dims: Optional[Mapping[str, FrozenSet[str]]] = None,
                         chunking: Optional[Chunking] = None) -> Simulation:
    """Run the contraction of ``terms`` (and, if any term requires grad and grad mode
    is on, its backward pass to every such term) on ``meta`` tensors, the very code of
    :func:`~pyro_qem.estimator.linked.contract_terms`, and measure its memory beyond
    the terms. Nothing is allocated; a reducer (a collective) is replaced by the
    identity, which has its shapes."""
    leaves = [_meta(f.tensor) for f in terms]
    meta_terms = [LogFactor(f.name, leaf, f.dims, f.ordinal) for f, leaf in zip(terms, leaves)]
    meta_links = {symbol: PlateLink(link.child, link.parent, link.index.to("meta"), link.parent_size)
                  for symbol, link in (links or {}).items()}
    reducers = {symbol: (lambda x: x) for symbol in dict(plate_reducers)}
    ignore = [t.untyped_storage()._cdata for t in leaves]
    ignore += [link.index.untyped_storage()._cdata for link in meta_links.values()]
    tracker = _PeakTracker(ignore)
    wanted = [leaf for leaf in leaves if leaf.requires_grad]
    with tracker:
        log_p_hat = contract_terms(meta_terms, plate_scales, reducers, meta_links, local_dims,
                                   chunking)
        if wanted and torch.is_grad_enabled() and log_p_hat.requires_grad:
            torch.autograd.grad(log_p_hat, wanted, allow_unused=True)
    return Simulation(tracker.peak, tracker.largest[1], tracker.largest[0])


def held_bytes(terms: Sequence[LogFactor]) -> int:
    """The bytes of the terms' storages (each once; an expanded factor is its storage)."""
    storages = {}
    for f in terms:
        storage = f.tensor.untyped_storage()
        storages[storage._cdata] = storage.nbytes()
    return sum(storages.values())


def _quick_bound(terms: Sequence[LogFactor], links: Mapping[str, PlateLink]) -> int:
    """An upper bound of the contraction's bytes beyond its terms, without simulating."""
    sizes = {d: n for f in terms for d, n in zip(f.dims, f.tensor.shape)}
    entries = math.prod(sizes.values()) * math.prod(link.parent_size for link in links.values())
    itemsize = max(f.tensor.element_size() for f in terms)
    return (COPIES_PER_TERM * len(terms) + 4) * entries * max(itemsize, 8)


_PLANS: "OrderedDict[tuple, object]" = OrderedDict()
_SIMULATIONS: "OrderedDict[tuple, Simulation]" = OrderedDict()


def _remember(cache: OrderedDict, key: tuple, value) -> None:
    cache[key] = value
    cache.move_to_end(key)
    while len(cache) > CACHE_SIZE:
        cache.popitem(last=False)


def plan_contraction(terms: Sequence[LogFactor], plate_scales: Mapping[str, float],
                     plate_reducers: PlateReducers, budget: float,
                     links: Optional[Mapping[str, PlateLink]] = None,
                     local_dims: Optional[Mapping[str, FrozenSet[str]]] = None,
                     plate_names: Optional[Mapping[str, str]] = None) -> Optional[Chunking]:
    """How to contract ``terms`` within ``budget`` bytes (the terms' own bytes
    included, and :data:`PLAN_FRACTION` of it planned for): None for the whole
    contraction at once, else the plate and chunk count.

    A cheap bound settles most steps; otherwise the contraction is simulated
    (:func:`simulate_contraction`), whole and then in chunks of each plate that can be
    chunked (:func:`~pyro_qem.estimator.contraction.chunk_obstacle`); the plan with
    the fewest chunks that fits is chosen. Plans are remembered by the terms' layout
    (dims, shapes, dtypes, grad flags, plates) and the budget, so a fit whose shapes
    repeat simulates once.

    :param plate_names: plate symbol -> plate name, for the refusal's message.
    :raises MemoryBudgetError: when no plan fits, saying why chunking cannot help.
    """
    links = dict(links or {})
    held = held_bytes(terms)
    if held + _quick_bound(terms, links) <= PLAN_FRACTION * budget:
        return None
    signature = (
        tuple((f.dims, tuple(f.tensor.shape), f.tensor.stride(), f.tensor.dtype,
               f.tensor.requires_grad, tuple(sorted(f.ordinal))) for f in terms),
        tuple(sorted(dict(plate_scales).items())), tuple(sorted(dict(plate_reducers))),
        tuple(sorted((s, l.parent, l.parent_size, tuple(l.index.shape)) for s, l in links.items())),
        torch.is_grad_enabled(),
    )
    key = signature + (budget, tuple(sorted(dict(plate_names or {}).items())))
    if key in _PLANS:
        _PLANS.move_to_end(key)
        plan = _PLANS[key]
    else:
        plan = _plan(terms, plate_scales, plate_reducers, budget, links, local_dims, held,
                     signature, plate_names or {})
        _remember(_PLANS, key, plan)
    if isinstance(plan, MemoryBudgetError):
        raise MemoryBudgetError(str(plan))
    return plan


def _plan(terms, plate_scales, plate_reducers, budget, links, local_dims, held, signature,
          plate_names) -> object:
    """:func:`plan_contraction` uncached: a :class:`Chunking`, None, or the
    :class:`MemoryBudgetError` to raise."""
    available = PLAN_FRACTION * budget - held

    def simulate(chunking: Optional[Chunking]) -> Simulation:
        key = signature + (chunking,)
        if key not in _SIMULATIONS:
            _remember(_SIMULATIONS, key, simulate_contraction(
                terms, plate_scales, plate_reducers, links, local_dims, chunking))
        return _SIMULATIONS[key]

    whole = simulate(None)
    if whole.peak <= available:
        return None
    # The plates of the terms that the chunked contraction sees (after folding rows).
    folded = terms
    if links:
        folded, _ = fold_links([LogFactor(f.name, _meta(f.tensor).detach(), f.dims, f.ordinal)
                                for f in terms],
                               {s: PlateLink(l.child, l.parent, l.index.to("meta"), l.parent_size)
                                for s, l in links.items()},
                               local_dims or {}, plate_scales,
                               plate_reducers={s: (lambda x: x) for s in dict(plate_reducers)})
    plates = sorted(frozenset().union(*(f.ordinal for f in folded)))
    name = lambda symbol: repr(plate_names.get(symbol, symbol))  # noqa: E731
    obstacles, fits, misses = [], [], []
    for plate in plates:
        obstacle = chunk_obstacle(folded, plate, plate_reducers)
        if obstacle is not None:
            obstacles.append(f"plate {name(plate)}: {obstacle}")
            continue
        size = next(f.tensor.shape[f.dims.index(plate)] for f in folded if plate in f.dims)
        found = _chunks_that_fit(plate, size, available, simulate)
        (fits if isinstance(found, Chunking) else misses).append(found)
    if fits:
        return min(fits, key=lambda c: c.num_chunks)
    return _contraction_refusal(terms, held, whole, budget, obstacles, misses, name)


@dataclass(frozen=True)
class _Miss:
    """A plate whose chunks never fit: the peak at one element per chunk (estimated),
    the part that does not shrink with the chunks, and the largest intermediate of a
    chunked run."""

    plate: str
    size: int
    least_peak: float
    fixed: float
    largest: Simulation


def _chunks_that_fit(plate: str, size: int, available: float, simulate) -> object:
    """The fewest chunks of ``plate`` whose simulated peak fits ``available``, or a
    :class:`_Miss`. The peak of c chunks is taken as ``fixed + varying / c`` (the part
    that stays, e.g. the factors' gradients and the contraction outside the plate, and
    the part a chunk holds), read off 2 and 4 chunks and checked by simulation up to
    :data:`VERIFY_CHUNKS` chunks."""
    first = min(2, size)
    peak_2 = simulate(Chunking(plate, first))
    if peak_2.peak <= available:
        return Chunking(plate, first)
    second = min(4, size)
    if second == first:
        return _Miss(plate, size, peak_2.peak, peak_2.peak, peak_2)
    peak_4 = simulate(Chunking(plate, second))
    if peak_4.peak <= available:
        between = Chunking(plate, 3)
        if second == 4 and simulate(between).peak <= available:
            return between
        return Chunking(plate, second)
    # peak(c) = fixed + varying / c through (first, peak_2) and (second, peak_4).
    varying = max(0.0, (peak_2.peak - peak_4.peak) / (1 / first - 1 / second))
    fixed = peak_4.peak - varying / second
    least = fixed + varying / size
    if varying <= 0 or least > available:
        return _Miss(plate, size, least, fixed, peak_4)
    count = min(size, max(second + 1, math.ceil(varying / (available - fixed))))
    while count <= VERIFY_CHUNKS:
        if simulate(Chunking(plate, count)).peak <= available:
            return Chunking(plate, count)
        if count == size:
            return _Miss(plate, size, simulate(Chunking(plate, count)).peak, fixed, peak_4)
        count = min(size, math.ceil(count * 1.5))
    return Chunking(plate, count)


def _contraction_refusal(terms: Sequence[LogFactor], held: int, whole: Simulation,
                         budget: float, obstacles: List[str], misses: List[_Miss],
                         name) -> MemoryBudgetError:
    largest = max(terms, key=lambda f: f.tensor.numel())
    opening = (
        f"This step's contraction would need about {_gb(held + whole.peak)} (budget "
        f"{_gb(budget)}): the factors take {_gb(held)} (the largest, "
        f"'{largest.name}', has shape {tuple(largest.tensor.shape)}, "
        f"{_gb(largest.tensor.numel() * largest.tensor.element_size())}), and the "
        f"contraction's largest intermediate has shape {whole.largest_shape} "
        f"({_gb(whole.largest_bytes)}), a product of factors over the particle dims of "
        "the groups they depend on. "
    )
    reasons = []
    for miss in misses:
        shrinks = miss.largest.largest_bytes < whole.largest_bytes
        reasons.append(
            f"contracting plate {name(miss.plate)} ({miss.size} elements) in chunks still "
            f"needs about {_gb(held + miss.least_peak)} at one element per chunk, because "
            f"about {_gb(held + miss.fixed)} does not shrink with the chunks: the factors, "
            "held whole, their gradients and the contraction outside the plate"
            + ("" if shrinks else
               f", whose largest intermediate, shape {miss.largest.largest_shape} "
               f"({_gb(miss.largest.largest_bytes)}), has no dim of the plate")
        )
    if not misses:
        reasons.append("no plate of the contraction can be chunked ("
                       + ("; ".join(obstacles) if obstacles else "the model has no plate") + ")")
    return MemoryBudgetError(
        opening + "Chunking cannot help: " + "; ".join(reasons) + ". Use a smaller K, put "
        "sites that depend on each other in one group (AutoQEM(..., groups=[[...]]) costs "
        "K, not K^2, per pair), or raise Inference(..., max_memory=<bytes>) if the machine "
        "has the memory."
    )
