"""Posterior draws: joint importance resampling over particle indices, or draws of q.

:func:`sample_posterior` walks the plated contraction of one particle run in reverse
(Pyro's :class:`~pyro.ops.rings.SampleRing`, the machinery of
:func:`pyro.infer.discrete.infer_discrete`): it samples the particle index of each
group in the order the contraction eliminated it, conditioned on the indices already
drawn, separately for every plate element. A draw therefore follows the coupling
between sites that the mean-field q lacks (in non-centred eight schools, independent q
draws of ``theta = mu + tau * z`` came out 13-15% too wide; joint draws had the exact
spread).

:func:`sample_guide` draws each site independently from the fitted q.
"""

from __future__ import annotations

import math
import warnings
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
from pyro.ops.contract import contract_tensor_tree
from pyro.ops.einsum.adjoint import require_backward
from pyro.ops.rings import SampleRing

from ..estimator import LogFactor
from ..estimator.contraction import term_tree, varying_groups
from ..estimator.estimate import local_dims
from ..estimator.linked import fold_links, link_order, row_index
from ..estimator.memory import LARGEST_FACTOR_COPIES, MemoryBudgetError
from ..guides.qem_guide import QEMGuide
from ..infer.pipeline import WeightedRun
from ..model.structure import PARTICLE_SETS
from .sites import check_count, plate_layout, select_outputs, select_sites, weighted_run

from ..infer.inference import Inference


# One vectorised run holds at most this many factor entries over all its particle
# sets (the largest factor of one set times the number of sets; also at most what the
# inference's memory budget allows): 2^23 float32 entries are 32 MB. Each run costs a
# backward pass per draw taken from its sets, so fewer, larger runs save passes
# (radon's 2000 draws: 0.47 s at 2^21 entries, 0.37 s at 2^23, one thread); past that
# the sets' arithmetic is what remains (2^25: slower again).
SETS_ENTRIES = 1 << 23


# draws_per_run="auto" takes as many draws from each particle set as keep the design
# effect of the repeats at most 1 + REPEAT_COST (effective draws >= 80% of the draws).
# Taking more (about the set's ESS of its worst-resolved group, 50% efficiency) cut
# radon's 2000 draws from 0.35-0.41x to 0.11-0.14x of the fit's time, but the joint
# draws' worst mean errors over 90 coordinates rose from 0.055-0.092 to 0.076-0.100
# NUTS sds (benchmarks.funnel, seeds 0-2): at the README's 2000 draws, accuracy first.
REPEAT_COST = 0.25


class JointDraws(dict):
    """The dict of :func:`sample_posterior` (``{site: draws}``) and how it was drawn.

    :ivar draws_per_set: joint draws taken from each particle set.
    :ivar num_sets: independent particle sets drawn.
    :ivar effective_draws: the number of independent draws with the same Monte Carlo
        error for the worst-resolved group: ``num_samples / (1 + (draws_per_set - 1)
        * rho)``, where ``rho = sum_k w_k^2`` (averaged over plate elements and sets)
        is the chance that two draws from one set repeat that group's particle
        (sampled groups only: an enumerated site's draws are exact given the set).
    """

    draws_per_set: int = 1
    num_sets: int = 0
    effective_draws: float = 0.0


def sample_posterior(
    inference: Inference,
    *args,
    num_samples: int = 1000,
    draws_per_run: Union[int, str] = "auto",
    sites: Optional[Sequence[str]] = None,
    **kwargs,
) -> JointDraws:
    """Joint posterior draws by importance resampling of particle indices.

    Each draw comes from a set of K particles per group, resampled jointly (each
    distributed as sampling-importance-resampling with K particles: close to the
    posterior once q overlaps it). Fresh sets are independent; they are drawn many at a
    time, as one vectorised model run inside an extra plate (one tensor dim left of the
    particle dims; see :meth:`~pyro_qem.model.ModelStructure.with_particle_sets`), as
    many as keep that run's largest factor below ``SETS_ENTRIES`` entries. A model
    that cannot run with that extra batch dim falls back to one run per set, with a
    warning.

    Several draws from one set cost only a backward pass each but can repeat a
    particle: with ``draws_per_run="auto"`` (default) each set gives as many draws as
    keep the effective number of independent draws at 80% of ``num_samples`` or more
    (from the particle weights of the first set: one draw per set when they are
    degenerate). The result reports what it got (:class:`JointDraws`). Pass an int for
    a fixed number per set (``draws_per_run=1``: strictly independent draws; about
    ``1 / sum_k w_k^2`` of the worst-resolved group, the set's ESS, is the cheapest
    per independent draw, at about 50% efficiency).

    Example::

        draws = sample_posterior(inference, y, num_samples=500)
        draws.effective_draws            # independent-draw equivalent
        Predictive(model, posterior_samples=dict(draws))(None)

    :param inference: the :class:`~pyro_qem.infer.Inference` that fitted the guide.
    :param args: the model's arguments (all plate elements: no subsampling).
    :param num_samples: the number of joint draws.
    :param draws_per_run: draws taken from each particle set, or ``"auto"``.
    :param sites: latent site names (default: all).
    :param kwargs: the model's keyword arguments.
    :returns: ``{site: tensor (num_samples,) + batch_shape + event_shape}``, a
        :class:`JointDraws`.
    """
    check_count("num_samples", num_samples)
    if draws_per_run != "auto":
        check_count("draws_per_run", draws_per_run)
    first = weighted_run(inference, args, kwargs, "sample_posterior", weights=True)
    rho = _repeat_chance(first)
    per_set = draws_per_run if draws_per_run != "auto" else (
        num_samples if rho == 0 else 1 + int(REPEAT_COST / rho))
    per_set = _agreed(inference, min(per_set, num_samples))
    num_sets = math.ceil(num_samples / per_set)
    chunks = [resample_run(first, per_set, sites)]
    for run in particle_sets(inference, args, kwargs, num_sets - 1, "sample_posterior", first):
        chunks.append(resample_run(run, per_set, sites))
    draws = JointDraws({name: torch.cat([c[name] for c in chunks])[:num_samples]
                        for name in chunks[0]})
    draws.draws_per_set, draws.num_sets = per_set, num_sets
    draws.effective_draws = num_samples / (1 + (per_set - 1) * rho)
    return draws


def _repeat_chance(run: WeightedRun) -> float:
    """The largest over sampled groups of the mean chance that two draws from one set
    pick the same particle of the group (``sum_k w_k^2`` per plate element).

    Enumerated groups are left out: their dim holds the whole support, and two draws
    from one set that pick the same value are two exact draws from its conditional
    posterior, not a repeated Monte Carlo particle (a confidently assigned mixture label
    has ``sum_k w_k^2`` near 1 and would otherwise force one draw per set). With no
    sampled group every draw is exact given the set: chance 0."""
    sites = run.structure.sites
    sampled = {g.index for g in run.structure.groups
               if not any(sites[name].enumerated for name in g.sites)}
    chances = [(run.weights[s.group] ** 2).sum(s.particle_dim).mean().item()
               for s in run.sources if s.group in sampled]
    return max(chances, default=0.0)


def _agreed(inference: Inference, count: int) -> int:
    """``count`` as the first process decides it in a distributed fit (each process
    sizes it from its own rows; they must run the same sets), else ``count``."""
    group = inference.process_group
    if group is None:
        return count
    return int(group.broadcast(torch.tensor([count]), "the draws' set sizes")[0])


def particle_sets(inference: Inference, args: tuple, kwargs: dict, num_sets: int, what: str,
                  first: WeightedRun) -> Iterator[WeightedRun]:
    """Weighted runs (without marginal weights) that hold ``num_sets`` independent
    particle sets in all, several per vectorised run (see :func:`sample_posterior`).

    :param first: a run of one set, whose factor sizes set the number per run.
    """
    largest = max(f.tensor.numel() for f in first.factors)
    fits = SETS_ENTRIES // max(largest, 1)
    budget = first.run.max_memory
    if budget is not None:
        nbytes = max(f.tensor.numel() * f.tensor.element_size() for f in first.factors)
        fits = min(fits, budget // max(1, (LARGEST_FACTOR_COPIES + 2) * nbytes))
    per_run, done = _agreed(inference, max(1, int(fits))), 0
    if any(site.enumerated and site.plates for site in first.structure.sites.values()):
        # Pyro's SampleRing cannot sample an enumerated dim inside a plate when the
        # particle sets' plate encloses it (its backward pass fails to broadcast the
        # sampled indices): one set per run.
        per_run = 1
    while done < num_sets:
        size = min(per_run, num_sets - done)
        try:
            run = weighted_run(inference, args, kwargs, what, weights=False, num_sets=size,
                               contract=False)
        except MemoryBudgetError:
            raise
        except Exception as error:
            if size == 1:
                raise
            warnings.warn(
                f"{what}: the model failed when run for {size} particle sets at once in an "
                f"extra batch dim ({type(error).__name__}: {error}); drawing one set per "
                "model run instead (slower). Models that broadcast over dims left of "
                "their plates (as they must over the particle dims) avoid this.",
                RuntimeWarning,
                stacklevel=3,
            )
            per_run = 1
            continue
        done += size
        yield run


def resample_run(run: WeightedRun, num_draws: int, sites: Optional[Sequence[str]] = None
                 ) -> Dict[str, torch.Tensor]:
    """``num_draws`` joint draws from each particle set of one weighted run (see
    :func:`sample_posterior`): ``{site: (num_draws * sets,) + batch_shape +
    event_shape}``, deterministic sites (``pyro.deterministic``, non-centred sites)
    included."""
    names, derived = _output_sites(run, sites)
    draws: Dict[str, List[torch.Tensor]] = {name: [] for name in names + derived}
    for indices in _index_draws(run, num_draws):
        for name in names:
            group = run.structure.group_of(name)
            draws[name].append(_gather(run, name, indices[group.index]))
        for name in derived:
            draws[name].append(_gather_derived(run, run.run.sites_by_name[name], indices))
    sets = run.structure.plates.get(PARTICLE_SETS)
    if sets is None:
        return {name: torch.stack(values) for name, values in draws.items()}
    return {name: torch.cat(values) for name, values in draws.items()}


def _output_sites(run: WeightedRun, sites: Optional[Sequence[str]]) -> Tuple[List[str], List[str]]:
    """The requested latent sites and the requested deterministic sites (by default
    all latent sites, and the deterministic ones a draw fixes: see
    :func:`~pyro_qem.outputs.sites.select_outputs`)."""
    return select_outputs(run.run, sites, "sample_posterior")


def _gather_derived(run: WeightedRun, record, indices: Dict[int, torch.Tensor]) -> torch.Tensor:
    """A deterministic site's drawn values: its value at the drawn particle of every
    group it depends on, ``(sets,) + the plates' batch shape + event_shape``."""
    structure = run.structure
    event_shape = record.fn.event_shape
    event_ndim = len(event_shape)
    value = record.value.detach()
    for group in varying_groups(value, event_ndim, structure):
        value = _gather_dim(value, indices[group.index], group.dim - event_ndim, event_ndim)
    plates = structure.max_plate_nesting
    value = value.reshape((1,) * max(0, plates + event_ndim - value.dim()) + value.shape)
    # Left of the plates only size-1 particle dims remain, and the particle sets' dim.
    lead = value.dim() - event_ndim - plates
    value = value.reshape((-1,) + value.shape[lead:])
    batch, trimmed = plate_layout(record, plates)
    value = value.expand((value.shape[0],) + batch + tuple(event_shape))
    value = value.reshape((value.shape[0],) + trimmed + tuple(event_shape))
    sets = structure.plates.get(PARTICLE_SETS)
    if sets is None:
        return value[0]
    return value.expand((sets.size,) + value.shape[1:])


def _gather_dim(value: torch.Tensor, index: torch.Tensor, dim: int, event_ndim: int) -> torch.Tensor:
    """``value`` at ``index`` along the (negative) particle dim ``dim``; ``index`` is in
    broadcast layout over the batch dims, size 1 in that dim."""
    ndim = max(index.dim() + event_ndim, value.dim())
    index = index.reshape((1,) * (ndim - event_ndim - index.dim()) + index.shape + (1,) * event_ndim)
    value = value.reshape((1,) * (ndim - value.dim()) + value.shape)
    # Broadcast by hand: torch.broadcast_shapes imports sympy on its first call (~1 s).
    shape = [max(a, b) for a, b in zip(index.shape, value.shape)]
    shape[dim] = value.shape[dim]
    value = value.expand(shape)
    shape[dim] = 1
    return value.gather(dim, index.expand(shape))


def _index_draws(run: WeightedRun, num_draws: int):
    """Yield ``num_draws`` times ``{group: particle index tensor}``, each index in the
    group's broadcast layout with size 1 in the particle dim.

    With indexed plates (rows reading a group latent through ``a[..., index]``) the
    rows are folded into their groups for the contraction; a draw then first samples
    every other group's index from the folded factors, and afterwards each row plate's
    own particles given the indices drawn for the groups its rows read.
    """
    links = run.estimate.links
    factors = [_detached(f) for f in run.factors] + [_detached(s.factor) for s in run.sources]
    query_of = {s.factor.name: s.group for s in run.sources}
    rows_of: Dict[str, List[LogFactor]] = {}
    if links:
        factors, _ = fold_links(factors, links, local_dims(run.structure), {}, rows_of=rows_of)
    outer = _SampleTree(factors, query_of)
    # Row plates with latents of their own; the others (observed rows only) have
    # nothing to draw.
    sampled_rows = [link for link in reversed(link_order(links))
                    if any(f.name in query_of for f in rows_of[link.child])]
    for _ in range(num_draws):
        drawn = outer.draw()
        for link in sampled_rows:
            conditioned = [_conditioned(f, drawn, link.child, links, run) for f in rows_of[link.child]]
            drawn.update(_SampleTree(conditioned, query_of).draw())
        yield {group: _index_layout(run, group, index, dims) for group, (index, dims) in drawn.items()}


def _detached(factor: LogFactor) -> LogFactor:
    return LogFactor(factor.name, factor.tensor.detach(), factor.dims, factor.ordinal)


class _SampleTree:
    """Factors contracted once with Pyro's :class:`~pyro.ops.rings.SampleRing`; each
    :meth:`draw` walks back to the source terms (the queries) and samples every
    group's particle index, per plate element."""

    def __init__(self, factors: Sequence[LogFactor], query_of: Dict[str, int]) -> None:
        tree, dim_to_size, terms = term_tree(factors)
        self.queries = {}
        for factor, term in zip(factors, terms):
            if factor.name in query_of:
                # A group's zero source term is its query: the backward pass leaves the
                # group's sampled index on it.
                require_backward(term)
                self.queries[query_of[factor.name]] = term
        plates = frozenset().union(*(f.ordinal for f in factors))
        ring = SampleRing(cache={}, dim_to_size=dim_to_size)
        with torch.no_grad():
            self.tree = contract_tensor_tree(tree, set(dim_to_size) - plates, ring=ring)

    def draw(self) -> Dict[int, Tuple[torch.Tensor, str]]:
        """``{group: (index over the group's plate symbols, those symbols)}``."""
        with torch.no_grad():
            for terms in self.tree.values():
                for term in terms:
                    if hasattr(term, "_pyro_backward"):
                        term._pyro_backward()
        out = {}
        for group, query in self.queries.items():
            sample = query._pyro_backward_result
            assert sample is not None, "group was not sampled"
            out[group] = (sample[0], sample._pyro_dims[1:])
        return out


def _conditioned(factor: LogFactor, drawn: Dict[int, Tuple[torch.Tensor, str]], child: str,
                 links, run: WeightedRun) -> LogFactor:
    """``factor`` of a row plate with the particle dims of the groups drawn already
    (the groups its rows read, and any outside the row plate) fixed at their drawn
    indices, row by row."""
    symbols = run.symbols
    group_of_symbol = {sym: g for g, sym in symbols.group.items()}
    tensor, dims = factor.tensor, factor.dims
    for symbol in [d for d in factor.dims if d in group_of_symbol and group_of_symbol[d] in drawn]:
        index, index_dims = _rows_view(*drawn[group_of_symbol[symbol]], dims, child, links)
        position = dims.index(symbol)
        shape = list(tensor.shape)
        shape[position] = 1
        aligned = _align(index, index_dims, dims, symbol)
        tensor = tensor.gather(position, aligned.expand(shape)).squeeze(position)
        dims = dims.replace(symbol, "")
    return LogFactor(factor.name, tensor, dims, factor.ordinal)


def _rows_view(index: torch.Tensor, index_dims: str, dims: str, child: str, links
               ) -> Tuple[torch.Tensor, str]:
    """The drawn index of a group, per element of the factor's plates: a group inside a
    plate the rows nest in is read through the links' indexes (its plate's dim becomes
    the rows' dim)."""
    outside = [d for d in index_dims if d not in dims]
    if not outside:
        return index, index_dims
    if len(outside) != 1:
        raise NotImplementedError(
            "sample_posterior: a group in several plates read through an index is not "
            "supported; use posterior_moments, or sample_guide for independent draws."
        )
    position = index_dims.index(outside[0])
    rows = row_index(child, outside[0], links).to(index.device)
    return index.index_select(position, rows), index_dims.replace(outside[0], child)


def _align(index: torch.Tensor, index_dims: str, dims: str, skip: str) -> torch.Tensor:
    """``index`` (named by ``index_dims``) laid out over ``dims``: size 1 for the dims it
    lacks, including the group dim ``skip`` being gathered."""
    order = [d for d in dims if d in index_dims and d != skip]
    index = index.permute([index_dims.index(d) for d in order]) if order else index
    sizes = iter(index.shape)
    return index.reshape([next(sizes) if d in order else 1 for d in dims])


def _index_layout(run: WeightedRun, group_index: int, index: torch.Tensor, dims: str) -> torch.Tensor:
    group = run.structure.groups[group_index]
    plate_dims = [run.structure.plates[run.symbols.plate_names[d]].dim for d in dims]
    order = sorted(range(len(dims)), key=lambda i: plate_dims[i])
    index = index.permute(order)
    shape = [1] * max([-group.dim] + [-d for d in plate_dims])
    for position, i in enumerate(order):
        shape[len(shape) + plate_dims[i]] = index.shape[position]
    return index.reshape(shape)


def _gather(run: WeightedRun, name: str, index: torch.Tensor) -> torch.Tensor:
    """The site's drawn values: ``batch_shape + event_shape``, after a leading dim of
    the particle sets when the run has them."""
    site = run.structure.sites[name]
    event_ndim = len(site.event_shape)
    value = run.records[name].value.detach()
    particle_dim = run.structure.group_of(name).dim - event_ndim
    picked = _gather_dim(value, index, particle_dim, event_ndim)
    sets = run.structure.plates.get(PARTICLE_SETS)
    leading = (sets.size,) if sets is not None else ()
    return picked.reshape(leading + site.batch_shape + site.event_shape)


@torch.no_grad()
def sample_guide(guide: QEMGuide, num_samples: int = 1000, averaged: bool = True,
                 sites: Optional[Sequence[str]] = None) -> Dict[str, torch.Tensor]:
    """Independent draws of every site from the fitted q (mean-field: no coupling
    between sites; use :func:`sample_posterior` for derived quantities).

    A non-centred site ``theta`` has its q on ``theta_decentered``, so the draws hold
    that site instead: give Pyro's ``Predictive`` the draws of
    :func:`sample_posterior` (or ``Predictive(model, guide=guide)``), since with these it
    would redraw ``theta`` from its prior.

    Example::

        draws = sample_guide(guide, 1000)
        draws["theta"].shape       # (1000,) + batch_shape of theta

    :param guide: a fitted QEM guide.
    :param num_samples: the number of draws.
    :param averaged: use the running average of the iterates where there is one.
    :param sites: latent site names (default: all that have a q: enumerated sites are
        summed out exactly and have none).
    :returns: ``{site: tensor (num_samples,) + batch_shape + event_shape}``.
    """
    if not isinstance(guide, QEMGuide):
        raise TypeError(f"guide must be a pyro_qem QEM guide, got {type(guide).__name__}.")
    check_count("num_samples", num_samples)
    qs = guide.distributions(averaged=averaged)
    names = select_sites(guide.structure, sites)
    enumerated = [n for n in names if n not in qs and guide.structure.sites[n].enumerated]
    if enumerated and sites is not None:
        raise ValueError(
            f"sample_guide: site(s) {enumerated} are enumerated exactly, so the guide has "
            "no q to draw them from; use sample_posterior for joint draws that include them."
        )
    return {name: qs[name].sample((num_samples,)) for name in names if name not in enumerated}
