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
from ..estimator import LogFactor
from ..estimator.contraction import varying_groups
from ..estimator.estimate import local_dims
from ..estimator.linked import fold_links, link_order, row_index
from ..estimator.memory import LARGEST_FACTOR_COPIES, MemoryBudgetError
from ..guides.qem_guide import QEMGuide
from ..infer.pipeline import WeightedRun
from ..model.structure import PARTICLE_SETS
from .degenerate import pooled_chances, repeat_chances, warn_degenerate
from .index_sampler import DRAWS, SampleTree
from .sites import check_count, plate_layout, select_outputs, select_sites, weighted_run

from ..infer.inference import Inference


# One vectorised run holds at most this many factor entries over all its particle
# sets (the largest factor of one set times the number of sets; also at most what the
# inference's memory budget allows): 2^23 float32 entries are 32 MB. Fewer, larger runs
# save the per-run overhead until the sets' arithmetic is all that remains (radon's
# 2000 draws, one thread: 2^21 0.90 s, 2^22 0.73 s, 2^23 0.77 s, 2^24 1.46 s).
SETS_ENTRIES = 1 << 22


# draws_per_run="auto" takes 1 + REPEAT_COST / rho draws from each set, rho = sum_k
# w_k^2 of the worst-resolved sampled group in the median set (Kish's design effect
# 1 + (n - 1) rho is then at most 1 + REPEAT_COST): about the set's ESS, where the cost per effective draw
# levels off. On radon (K = 30, rho ~ 0.04) that is ~25 draws per set, 2000 draws at
# 0.07-0.10x of the fit's time (was 7 per set at REPEAT_COST = 0.25, 0.38x); measured
# design effects (batch means over 40 sets, 40 replicates agreeing): 1.4 for the 85
# county intercepts, 2.8-3.7 for the global mean and scale, whose weights are
# correlated with their values (Kish's formula says 2), 1.1 and 1.6-2.0 at 10 per set.
REPEAT_COST = 1.0


# draws_per_run="auto" averages rho over the first set and one run of at most this many
# more (the run also gives draws).
PILOT_SETS = 16


# The effective draws are measured by batch means over the sets (see JointDraws) from
# this many sets on: the between-set variance of one coordinate from S sets has a
# relative sd of about sqrt(2 / (S - 1)), 0.32 at 20 sets (averaged over a site's
# coordinates, less); with fewer sets Kish's formula is reported.
MEASURED_FROM_SETS = 20


class JointDraws(dict):
    """The dict of :func:`sample_posterior` (``{site: draws}``) and how it was drawn.

    :ivar draws_per_set: joint draws taken from each particle set.
    :ivar num_sets: independent particle sets drawn.
    :ivar effective_draws: the number of independent draws with the same Monte Carlo
        error in a posterior mean, for the worst-resolved site: ``num_samples`` over
        the largest of :attr:`site_effective_draws`' design effects. With
        ``MEASURED_FROM_SETS`` sets or more it is measured, by batch means: the sets
        are independent, so the variance between their draws' means is the design
        effect times ``sigma^2 / draws_per_set``. With fewer, it is Kish's
        ``num_samples / (1 + (draws_per_set - 1) * rho)``, ``rho = sum_k w_k^2`` of the
        worst-resolved sampled group (averaged over plate elements and sets: the
        chance that two draws from one set repeat its particle), which understates
        the design effect of a group whose weights are correlated with its values
        (radon's global mean: 2.8-3.7 measured where the formula gives 2). At most
        ``num_samples``.
    :ivar site_effective_draws: ``{site: measured effective draws}`` (each site's
        design effect averaged over its coordinates); empty where not measured.
    """

    draws_per_set: int = 1
    num_sets: int = 0
    effective_draws: float = 0.0
    site_effective_draws: Dict[str, float] = {}


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

    Several draws from one set cost one batched backward pass between them, and are
    stratified (each particle of weight ``w`` drawn about ``n w`` times, not
    ``Binomial(n, w)``: :mod:`pyro_qem.outputs.index_sampler`), but repeat the set's
    particles: they are worth fewer independent draws. With ``draws_per_run="auto"``
    (default) each set gives about its effective sample size of draws, ``1 + 1 /
    sum_k w_k^2`` for the worst-resolved sampled group (the median over up to 17
    sets), where the cost per effective draw levels off: on a 90-parameter radon
    hierarchy 2000 draws cost under a tenth of the 600-step fit and are worth ~1400
    independent draws for the county effects and ~600 for the global mean. The result
    reports what it got (:class:`JointDraws`: ``effective_draws``, measured from the
    sets). Pass an int for a fixed number per set (``draws_per_run=1``: strictly
    independent draws, one model run's share each).

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
    sets = ParticleSets(inference, args, kwargs, "sample_posterior", first)
    runs = [first]
    if draws_per_run == "auto" and repeat_chances(first) and num_samples > 1 and sets.per_run > 1:
        # One set's sum_k w_k^2 of a global group is a single noisy number (radon: the
        # draws per set it gave ranged 12-25 between calls): look at more sets.
        runs.append(sets.run(PILOT_SETS, weights=True))
    by_group = pooled_chances(repeat_chances(run) for run in runs)
    warn_degenerate(by_group, first.structure, inference.K, "sample_posterior")
    chances = list(by_group.values())
    # The bound below needs the mean chance; the draws per set follow the median set
    # (a rare set with one dominant particle would otherwise halve them).
    rho = max((c.mean().item() for c in chances), default=0.0)
    typical = max((c.median().item() for c in chances), default=0.0)
    per_set = draws_per_run if draws_per_run != "auto" else (
        num_samples if typical == 0 else 1 + int(REPEAT_COST / typical))
    per_set = _agreed(inference, min(per_set, num_samples))
    num_sets = math.ceil(num_samples / per_set)
    chunks = []
    for run in runs:
        if inference.sharding is not None and chunks:
            # Each process's local draws of the run before consumed its own amount of
            # the random stream: realign it, so that the global sites' draws agree.
            inference.sharding.synchronise_random_stream()
        chunks.append(resample_run(run, per_set, sites))
    counts = [_num_sets(run) for run in runs]
    del runs, first, run  # a run holds all its factors: resample each as it comes
    while sum(counts) < num_sets:
        run = sets.run(num_sets - sum(counts))
        chunks.append(resample_run(run, per_set, sites))
        counts.append(_num_sets(run))
    draws = JointDraws({name: torch.cat([c[name] for c in chunks])[:num_samples]
                        for name in chunks[0]})
    draws.draws_per_set, draws.num_sets = per_set, num_sets
    bound = num_samples / (1 + (per_set - 1) * rho)
    measured = _measured_design_effects(chunks, counts, per_set)
    draws.site_effective_draws = {name: min(float(num_samples), num_samples / deff)
                                  for name, deff in measured.items()}
    draws.effective_draws = (min(draws.site_effective_draws.values())
                             if draws.site_effective_draws else bound)
    return draws


def _num_sets(run: WeightedRun) -> int:
    sets = run.structure.plates.get(PARTICLE_SETS)
    return 1 if sets is None else sets.size


def _measured_design_effects(chunks: Sequence[Dict[str, torch.Tensor]], set_counts: Sequence[int],
                             per_set: int) -> Dict[str, float]:
    """Per site, the design effect of draws taken ``per_set`` at a time from independent
    sets, measured by batch means: the variance between the sets' means of a coordinate
    is ``deff * sigma^2 / per_set``. Averaged over the site's coordinates (those that
    vary); empty below ``MEASURED_FROM_SETS`` sets or with one draw per set (design
    effect 1 by construction)."""
    if per_set == 1 or sum(set_counts) < MEASURED_FROM_SETS:
        return {}
    out = {}
    for name in chunks[0]:
        # Running sums, a run at a time: the draws of a site with many coordinates
        # are not copied whole again.
        means, total, squares, count_all = [], 0.0, 0.0, 0
        for chunk, count in zip(chunks, set_counts):
            value = chunk[name].reshape(per_set, count, -1).double()
            means.append(value.mean(0))
            total = total + value.sum((0, 1))
            squares = squares + value.square().sum((0, 1))
            count_all += per_set * count
        means = torch.cat(means)
        mean = total / count_all
        spread = (squares / count_all - mean.square()).clamp(min=0) * count_all / (count_all - 1)
        varying = spread > 1e-12 * mean.abs().clamp(min=1e-300).square()
        if not varying.any():
            continue
        deff = per_set * means.var(0)[varying] / spread[varying]
        out[name] = max(deff.mean().item(), 1e-12)
    return out


def _agreed(inference: Inference, count: int) -> int:
    """``count`` as the first process decides it in a distributed fit (each process
    sizes it from its own rows; they must run the same sets), else ``count``."""
    group = inference.process_group
    if group is None:
        return count
    return int(group.broadcast(torch.tensor([count]), "the draws' set sizes")[0])


class ParticleSets:
    """Weighted runs of independent particle sets, several sets per vectorised model
    run (see :func:`sample_posterior`).

    :param first: a run of one set, whose factor sizes set the number per run
        (:attr:`per_run`).
    """

    def __init__(self, inference: Inference, args: tuple, kwargs: dict, what: str,
                 first: WeightedRun) -> None:
        self.inference, self.args, self.kwargs, self.what = inference, args, kwargs, what
        largest = max(f.tensor.numel() for f in first.factors)
        fits = SETS_ENTRIES // max(largest, 1)
        budget = first.run.max_memory
        if budget is not None:
            nbytes = max(f.tensor.numel() * f.tensor.element_size() for f in first.factors)
            fits = min(fits, budget // max(1, (LARGEST_FACTOR_COPIES + 2) * nbytes))
        self.per_run = _agreed(inference, max(1, int(fits)))

    def run(self, max_sets: int, weights: bool = False) -> WeightedRun:
        """One run of ``min(max_sets, per_run)`` sets (one set per run from then on if
        the model fails with the sets' extra batch dim, with a warning).

        :param weights: compute the sets' marginal weights too (a backward pass).
        """
        while True:
            size = min(self.per_run, max_sets)
            try:
                return weighted_run(self.inference, self.args, self.kwargs, self.what,
                                    weights=weights, num_sets=size, contract=weights)
            except MemoryBudgetError:
                raise
            except Exception as error:
                if size == 1:
                    raise
                warnings.warn(
                    f"{self.what}: the model failed when run for {size} particle sets at "
                    f"once in an extra batch dim ({type(error).__name__}: {error}); drawing "
                    "one set per model run instead (slower). Models that broadcast over "
                    "dims left of their plates (as they must over the particle dims) avoid "
                    "this.",
                    RuntimeWarning,
                    stacklevel=4,
                )
                self.per_run = 1


def resample_run(run: WeightedRun, num_draws: int, sites: Optional[Sequence[str]] = None
                 ) -> Dict[str, torch.Tensor]:
    """``num_draws`` joint draws from each particle set of one weighted run (see
    :func:`sample_posterior`): ``{site: (num_draws * sets,) + batch_shape +
    event_shape}`` (draw-major: the sets' first draws, then their second ones, ...),
    deterministic sites (``pyro.deterministic``, non-centred sites) included."""
    names, derived = _output_sites(run, sites)
    draws: Dict[str, List[torch.Tensor]] = {name: [] for name in names + derived}
    for indices in _index_draws(run, num_draws):
        for name in names:
            group = run.structure.group_of(name)
            draws[name].append(_gather(run, name, indices[group.index]))
        for name in derived:
            draws[name].append(_gather_derived(run, run.run.sites_by_name[name], indices))
    return {name: torch.cat(values) for name, values in draws.items()}


def _output_sites(run: WeightedRun, sites: Optional[Sequence[str]]) -> Tuple[List[str], List[str]]:
    """The requested latent sites and the requested deterministic sites (by default
    all latent sites, and the deterministic ones a draw fixes: see
    :func:`~pyro_qem.outputs.sites.select_outputs`)."""
    return select_outputs(run.run, sites, "sample_posterior")


def _gather_derived(run: WeightedRun, record, indices: Dict[int, torch.Tensor]) -> torch.Tensor:
    """A deterministic site's drawn values, ``(draws * sets,) + the plates' batch shape
    + event_shape``: its value at the drawn particle of every group it depends on."""
    structure = run.structure
    event_shape = record.fn.event_shape
    event_ndim = len(event_shape)
    value = record.value.detach()
    own = {f.name for f in record.frames}
    for i, group in enumerate(varying_groups(value, event_ndim, structure)):
        index = indices[group.index]
        for target in group.plates - own:
            index = _read_by_rows(run, index, structure.reading_plate(own, target), target)
        value = _gather_dim(value, index, group.dim - event_ndim, event_ndim, has_draws=i > 0)
    plates = structure.max_plate_nesting
    value = value.reshape((1,) * max(0, plates + event_ndim - value.dim()) + value.shape)
    # Left of the plates only the draws' dim, the particle sets' dim and size-1
    # particle dims remain.
    lead = value.dim() - event_ndim - plates
    value = value.reshape((-1,) + value.shape[lead:])
    batch, trimmed = plate_layout(record, plates)
    count = _draw_count(run, indices)
    value = value.expand((count,) + batch + tuple(event_shape))
    return value.reshape((count,) + trimmed + tuple(event_shape))


def _read_by_rows(run: WeightedRun, index: torch.Tensor, rows: str, target: str) -> torch.Tensor:
    """A group's drawn indices over plate ``target`` (counties), read by the rows of
    plate ``rows`` (houses; each row its county's index), in the rows' plate dim: what
    a deterministic site of the rows, computed from ``a[..., county]``, was computed
    from. ``index`` has a leading draws dim, then the broadcast layout."""
    structure, symbols = run.structure, run.symbols
    element = row_index(symbols.plate[rows], symbols.plate[target], run.estimate.links)
    row_dim, target_dim = structure.plates[rows].dim, structure.plates[target].dim
    width = max(index.dim() - 1, -row_dim, -target_dim)
    index = index.reshape(index.shape[:1] + (1,) * (width + 1 - index.dim()) + index.shape[1:])
    index = index.index_select(index.dim() + target_dim, element.to(index.device))
    if row_dim != target_dim:
        # The group does not vary over the rows' plate (size 1 there): swap the two.
        index = index.transpose(index.dim() + target_dim, index.dim() + row_dim)
    return index


def _draw_count(run: WeightedRun, indices: Dict[int, torch.Tensor]) -> int:
    """The number of draws in ``indices`` (their leading dim) times the particle sets."""
    return next(iter(indices.values())).shape[0] * _num_sets(run)


def _gather_dim(value: torch.Tensor, index: torch.Tensor, dim: int, event_ndim: int,
                has_draws: bool = False) -> torch.Tensor:
    """``value`` at ``index`` along the (negative) particle dim ``dim``, with a leading
    dim of the draws.

    :param index: a leading dim of the draws, then the group's broadcast layout over
        the batch dims (size 1 in the particle dim).
    :param has_draws: whether ``value`` has the leading draws dim already (from an
        earlier gather: a deterministic site drawn at several groups' indices).
    """
    own = value.dim() - 1 if has_draws else value.dim()
    body = max(index.dim() - 1 + event_ndim, own)
    index = index.reshape(index.shape[:1] + (1,) * (body - event_ndim - index.dim() + 1)
                          + index.shape[1:] + (1,) * event_ndim)
    lead = value.shape[:1] if has_draws else (1,)
    value = value.reshape(lead + (1,) * (body - own) + value.shape[len(value.shape) - own:])
    # Broadcast by hand: torch.broadcast_shapes imports sympy on its first call (~1 s).
    shape = [max(a, b) for a, b in zip(index.shape, value.shape)]
    shape[dim] = value.shape[dim]
    value = value.expand(shape)
    shape[dim] = 1
    return value.gather(dim, index.expand(shape))


def _index_draws(run: WeightedRun, num_draws: int) -> Iterator[Dict[int, torch.Tensor]]:
    """Yield ``{group: particle indices}`` for ``num_draws`` draws, a batch of draws at a
    time, each index tensor in the group's broadcast layout (size 1 in the particle
    dim) after a leading dim of the batch's draws.

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
    outer = SampleTree(factors, query_of)
    # Row plates with latents of their own; the others (observed rows only) have
    # nothing to draw.
    sampled_rows = [link for link in reversed(link_order(links))
                    if any(f.name in query_of for f in rows_of[link.child])]
    group_symbols = set(run.symbols.group.values())
    per_draw = max(_per_draw_entries(f, group_symbols)
                   for f in factors + [f for fs in rows_of.values() for f in fs])
    batch = max(1, min(num_draws, SETS_ENTRIES // per_draw))
    for start in range(0, num_draws, batch):
        size = min(batch, num_draws - start)
        drawn = outer.draw(size)
        for link in sampled_rows:
            conditioned = [_conditioned(f, drawn, link.child, links, run, size)
                           for f in rows_of[link.child]]
            drawn.update(SampleTree(conditioned, query_of).draw(size))
        yield {group: _index_layout(run, group, index, dims) for group, (index, dims) in drawn.items()}


def _per_draw_entries(factor: LogFactor, group_symbols: set) -> int:
    """About the entries one draw's backward step builds from ``factor``: the factor
    less its largest particle dim, which the draw's parents fix."""
    sizes = [n for d, n in zip(factor.dims, factor.tensor.shape) if d in group_symbols]
    return max(1, factor.tensor.numel() // max(sizes, default=1))


def _detached(factor: LogFactor) -> LogFactor:
    return LogFactor(factor.name, factor.tensor.detach(), factor.dims, factor.ordinal)


def _conditioned(factor: LogFactor, drawn: Dict[int, Tuple[torch.Tensor, str]], child: str,
                 links, run: WeightedRun, num_draws: int) -> LogFactor:
    """``factor`` of a row plate with the particle dims of the groups drawn already
    (the groups its rows read, and any outside the row plate) fixed at their drawn
    indices, row by row and draw by draw: the draws become a plate (:data:`DRAWS`) of
    the result, so that each draw's rows are drawn given its own indices."""
    symbols = run.symbols
    group_of_symbol = {sym: g for g, sym in symbols.group.items()}
    tensor, dims = factor.tensor, factor.dims
    # Every factor of the row plate gets the draws' dim, so that no particle dim of the
    # rows is shared across draws.
    tensor = tensor.expand((num_draws,) + tensor.shape)
    dims = DRAWS + dims
    for symbol in [d for d in factor.dims if d in group_of_symbol and group_of_symbol[d] in drawn]:
        index, index_dims = _rows_view(*drawn[group_of_symbol[symbol]], dims, child, links)
        position = dims.index(symbol)
        shape = list(tensor.shape)
        shape[position] = 1
        aligned = _align(index, index_dims, dims, symbol)
        tensor = tensor.gather(position, aligned.expand(shape)).squeeze(position)
        dims = dims.replace(symbol, "")
    return LogFactor(factor.name, tensor, dims, factor.ordinal | {DRAWS})


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
    """A group's drawn indices (named by ``dims``: plate symbols and :data:`DRAWS`) in
    the group's broadcast layout after a leading dim of the draws."""
    group = run.structure.groups[group_index]
    index = index.movedim(dims.index(DRAWS), 0)
    dims = dims.replace(DRAWS, "")
    plate_dims = [run.structure.plates[run.symbols.plate_names[d]].dim for d in dims]
    order = sorted(range(len(dims)), key=lambda i: plate_dims[i])
    index = index.permute([0] + [1 + i for i in order])
    shape = [1] * max([-group.dim] + [-d for d in plate_dims])
    for position, i in enumerate(order):
        shape[len(shape) + plate_dims[i]] = index.shape[1 + position]
    return index.reshape([index.shape[0]] + shape)


def _gather(run: WeightedRun, name: str, index: torch.Tensor) -> torch.Tensor:
    """The site's drawn values: ``(draws * sets,) + batch_shape + event_shape``."""
    site = run.structure.sites[name]
    event_ndim = len(site.event_shape)
    value = run.records[name].value.detach()
    particle_dim = run.structure.group_of(name).dim - event_ndim
    picked = _gather_dim(value, index, particle_dim, event_ndim)
    return picked.reshape((-1,) + site.batch_shape + site.event_shape)


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
