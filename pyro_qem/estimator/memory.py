"""How much memory a step will need, known before the estimator allocates it.

A particle run's records already say the shape of every log density the estimator is
about to compute: the broadcast of the site's distribution batch shape and its value's
batch shape (particle dims included), which for a site depending on two particle groups
is K x K x plate sizes. The estimator holds all of these at once, and the contraction
and its backward pass need a few times the largest of them again. :func:`check_memory`
refuses a step whose estimate exceeds the budget, naming the largest factor, before any
of it is allocated.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import List, Optional, Sequence

import torch
from pyro.distributions.util import broadcast_shape

from ..handlers import SiteRecord
from ..model.structure import ModelStructure

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
    return f"{num_bytes / 2 ** 20:.1f} MiB"


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
