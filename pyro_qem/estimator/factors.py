"""Turn a recorded particle run into the log-space factors of the estimator.

Latent site i contributes ``log p(z_i | pa) - log q_i(z_i) - log K`` (``-log K`` once
per group; an enumerated site contributes ``log p(z_i | pa)`` over its support), an
observed site ``log p(x | pa)``. Log densities are *unscaled* by
subsampled plates: the estimator scales each plate-reduced term by N / B instead,
after each plate element's logsumexp over its particles (scaling the densities would
raise every particle's weight to the power N / B). Each factor is packed: singleton dims squeezed away, the rest named by one
symbol per particle group and per plate, as :mod:`pyro.ops.contract` expects.
"""

from __future__ import annotations

import functools
import math
import re
from collections import OrderedDict
from dataclasses import dataclass
from typing import Dict, FrozenSet, List, Optional, Sequence

import torch
from torch.distributions import constraints
from pyro.ops.contract import contract_to_tensor
from pyro.ops.rings import LogRing

from ..model.structure import ModelStructure, Symbols
from ..handlers import SiteRecord, is_subsampled, user_scale
from .log_prob import log_prob


@dataclass
class LogFactor:
    """A packed log-space factor: ``tensor`` has one dim per symbol in ``dims``."""

    name: str
    tensor: torch.Tensor
    dims: str
    ordinal: FrozenSet[str]


def plate_user_scale(record: SiteRecord):
    """The site's scale without the ``N / B`` factors of its subsampled plates."""
    return user_scale(record.scale, record.frames)


def log_factors(records: Sequence[SiteRecord], structure: ModelStructure, symbols: Symbols,
                num_particles: int) -> List[LogFactor]:
    """The estimator's factors for one particle run of the model."""
    factors: List[LogFactor] = []
    log_k = math.log(num_particles)
    groups_done = set()
    for record in records:
        if record.is_deterministic:
            continue
        log_density = _site_log_prob(record, structure)
        scale = plate_user_scale(record)
        scaled = not _is_one(scale)
        if scaled:
            log_density = log_density * scale
        if record.is_observed:
            factor = _masked(log_density, record.mask)
        else:
            factor = _latent_factor(record, log_density, structure)
            group = structure.group_of(record.name)
            if group.index not in groups_done and not record.draw.enumerated:
                groups_done.add(group.index)
                factor = factor - log_k
        packed = pack(record, factor, structure, symbols)
        if scaled:
            _check_scale_of_enumerated(record, packed, structure, symbols)
        factors.append(packed)
    if not structure.links:
        _check_contractible(factors, symbols)
    return factors


def _is_one(scale) -> bool:
    if isinstance(scale, (int, float)):
        return scale == 1
    return bool(torch.all(torch.as_tensor(scale) == 1))


def _check_scale_of_enumerated(record: SiteRecord, factor: "LogFactor", structure: ModelStructure,
                               symbols: Symbols) -> None:
    # Pyro (TraceEnum_ELBO) scales the log of the factor *after* summing out the
    # enumerated values; scaling each value's log density first, as the particle
    # factors are scaled, gives another posterior. The contraction sums enumerated
    # values and particles together, so that order cannot be kept: refuse.
    enumerated = [name for name, site in structure.sites.items() if site.enumerated
                  and symbols.group[structure.group_of(name).index] in factor.dims]
    if not enumerated:
        return
    raise NotImplementedError(
        f"Site '{record.name}' has a poutine.scale (scale {_describe(record.scale)}, "
        "subsampling aside) and its log density depends on the enumerated site(s) "
        f"{enumerated} (infer={{'enumerate': 'parallel'}}). Pyro scales the log of such a "
        "factor after summing out the enumerated values, which pyro_qem's contraction "
        "cannot do. Remove the poutine.scale around the enumerated site and the sites "
        "that depend on it, or drop the enumeration (the site is then sampled with a "
        "moment-matched q, and the scale applies to it like to any other site)."
    )


def _describe(scale) -> str:
    if isinstance(scale, (int, float)):
        return f"{scale:g}"
    return f"tensor of shape {tuple(torch.as_tensor(scale).shape)}"


def _check_contractible(factors: Sequence["LogFactor"], symbols: Symbols) -> None:
    """Raise, naming the plates and sites, where :mod:`pyro.ops.contract` cannot
    contract the factors (its own message names only einsum symbols). The check runs
    the contraction on size-1 stand-ins once per distinct layout of factors."""
    signature = tuple((f.dims, tuple(sorted(f.ordinal))) for f in factors)
    problem = _contraction_problem(signature)
    if problem is None:
        return
    kind, message = problem
    names = symbols.plate_names
    plates = sorted({names[d] for d in re.findall(r"\[([^\]]*)\]", message)[0].split(", ")
                     if d in names}) if "[" in message else []
    plate_symbols = {symbols.plate[p] for p in plates}
    sites = [f.name for f in factors if plate_symbols and plate_symbols <= f.ordinal]
    leaf = frozenset(plate_symbols)
    inside: Dict[tuple, List[str]] = {}
    for f in factors:
        if f.ordinal and f.ordinal < leaf:
            inside.setdefault(tuple(sorted(names[d] for d in f.ordinal)), []).append(f.name)
    where = "; ".join(f"{sites_} in plate(s) {list(p)}" for p, sites_ in sorted(inside.items()))
    raise kind(
        f"pyro_qem cannot contract this model: site(s) {sites} in the crossed plates "
        f"{plates} depend on latent sites that are in different, non-nested plates "
        f"({where or 'see the model'}), so the plates do not form a tree. Tensor variable "
        "elimination (here as in Pyro's TraceEnum_ELBO) sums particles only over "
        "tree-structured plates. Nest the plates (e.g. put one latent inside both "
        "plates), or make one of them a Python loop of sites. "
        f"(pyro.ops.contract: {_named(message, names)})"
    )


@functools.lru_cache(maxsize=256)
def _contraction_problem(signature) -> Optional[tuple]:
    tree: "OrderedDict[frozenset, list]" = OrderedDict()
    plates, dims = set(), set()
    for names, ordinal in signature:
        term = torch.zeros((1,) * len(names))
        term._pyro_dims = names
        tree.setdefault(frozenset(ordinal), []).append(term)
        plates |= set(ordinal)
        dims |= set(names)
    try:
        contract_to_tensor(tree, dims - plates, ring=LogRing(cache={}, dim_to_size=dict.fromkeys(dims, 1)))
    except (NotImplementedError, ValueError) as error:
        return type(error), str(error)
    return None


def _named(message: str, names: Dict[str, str]) -> str:
    return re.sub(r"\[([^\]]*)\]", lambda m: "[" + ", ".join(
        repr(names.get(d, d)) for d in m.group(1).split(", ")) + "]", message)


def _site_log_prob(record: SiteRecord, structure: ModelStructure) -> torch.Tensor:
    """The site's log density; an error from the distribution is re-raised naming the
    site, as Pyro's own message names neither it nor the shapes the model declared."""
    try:
        return log_prob(record.fn, record.value)
    except Exception as error:
        if record.is_observed and _outside_a_latent_support(record.fn, error):
            return _log_prob_in_support(record.fn, record.value)
        raise _with_message(error, _log_prob_message(record, structure, error)) from error


def observed_log_prob(fn: torch.distributions.Distribution, value: torch.Tensor) -> torch.Tensor:
    """``fn.log_prob(value)`` of observed data, -inf (not Pyro's validation error)
    where latent parameters put the data outside the support (see
    :func:`_outside_a_latent_support`)."""
    try:
        return fn.log_prob(value)
    except ValueError as error:
        if not _outside_a_latent_support(fn, error):
            raise
        return _log_prob_in_support(fn, value)


def _outside_a_latent_support(fn: torch.distributions.Distribution, error: Exception) -> bool:
    """Whether ``error`` is the distribution's support check failing on data whose
    support comes from latent parameters (``Binomial(N, p)`` with ``N`` latent,
    ``Uniform(0, b)`` with ``b`` latent): some particles then put the data outside it.
    The set-up checks refused data outside a support fixed by the model."""
    if not isinstance(error, ValueError) or "to be within the support" not in str(error):
        return False
    support = fn.support
    while isinstance(support, constraints.independent):
        support = support.base_constraint
    bounds = [getattr(support, name, None) for name in ("lower_bound", "upper_bound")]
    return any(isinstance(b, torch.Tensor) and b.numel() > 1 for b in bounds)


def _log_prob_in_support(fn: torch.distributions.Distribution, value: torch.Tensor) -> torch.Tensor:
    """``fn.log_prob(value)`` without the support check, -inf where ``value`` is outside
    the support (those particles have zero weight, as the model says)."""
    validate = fn._validate_args
    fn._validate_args = False
    try:
        result = fn.log_prob(value)
    finally:
        fn._validate_args = validate
    inside = fn.support.check(value)
    return torch.where(inside, result, result.new_full((), -math.inf))


def _log_prob_message(record: SiteRecord, structure: ModelStructure, error: Exception) -> str:
    # Shapes as the model sees them: the particle dims left of the plates are dropped.
    fn, nesting = record.fn, structure.max_plate_nesting
    event_shape = tuple(fn.event_shape)
    value = getattr(record.value, "shape", None)
    value_shape = ("not a tensor" if value is None
                   else tuple(_trailing(value, nesting + len(event_shape))))
    kind = "Observed" if record.is_observed else "Latent"
    cause = " ".join(str(error).split())  # torch may break its message over lines
    return (
        f"{kind} site '{record.name}': {type(fn).__name__}.log_prob failed "
        f"({type(error).__name__}: {cause}). Without particle dims, the value has shape "
        f"{value_shape} and the distribution batch shape {tuple(_trailing(fn.batch_shape, nesting))} and event "
        f"shape {event_shape}. Check that the data (or the value) has the site's shape and "
        "lies in its support, and that the distribution's parameters broadcast against "
        "its plates; data passed to a step must be shaped as at set-up."
    )


def _trailing(shape: torch.Size, keep: int) -> torch.Size:
    return shape[max(0, len(shape) - keep):]


def _with_message(error: Exception, message: str) -> Exception:
    """A new exception of ``error``'s type (ValueError if that type will not take a
    single message) carrying ``message``."""
    try:
        new = type(error)(message)
    except Exception:
        return ValueError(message)
    return new if str(new) == message else ValueError(message)


def _latent_factor(record: SiteRecord, log_density: torch.Tensor, structure: ModelStructure
                   ) -> torch.Tensor:
    """``log p - log q`` of a latent site, with Pyro's mask semantics: a masked-out
    element has a flat prior (its ``log p`` is dropped, ``log q`` kept: the particles
    were drawn from q), unless no other site reads its value
    (:attr:`~pyro_qem.model.ModelStructure.absent`), where the factor is 0 and its
    particles keep uniform weights. In a subsampled plate every masked element counts
    as absent (which elements are read is only known at full size)."""
    log_q = record.draw.log_q
    if any(is_subsampled(f) for f in record.frames):
        return _masked(log_density - log_q, record.mask)
    factor = _masked(log_density, record.mask) - log_q
    absent = structure.absent.get(record.name)
    if absent is not None:
        factor = torch.where(absent.to(factor.device), factor.new_zeros(()), factor)
    return factor


def _masked(log_density: torch.Tensor, mask) -> torch.Tensor:
    # Where masked out, the particles carry no information: the factor is 0 so that
    # (with -log K) their logsumexp is exactly 0 and their weights are uniform.
    if mask is None or mask is True:
        return log_density
    if mask is False:
        return torch.zeros_like(log_density)
    return torch.where(mask, log_density, log_density.new_zeros(()))


def pack(record: SiteRecord, factor: torch.Tensor, structure: ModelStructure,
         symbols: Symbols) -> LogFactor:
    """Squeeze singleton dims of a broadcast factor and name the remaining ones."""
    nesting = structure.max_plate_nesting
    if factor.dim() < nesting:
        factor = factor.reshape((1,) * (nesting - factor.dim()) + factor.shape)
    plate_of_dim = {f.dim: f for f in record.frames}
    shape = list(factor.shape)
    for dim, frame in plate_of_dim.items():
        shape[dim] = frame.size
    factor = factor.expand(shape)
    dims, drop, summed = [], [], []
    for pos in range(-factor.dim(), 0):
        group = structure.group_at_dim(pos)
        if group is not None:
            if factor.shape[pos] == 1:
                drop.append(pos)
            else:
                _check_dependency(record, group, structure)
                dims.append(symbols.group[group.index])
        elif pos in plate_of_dim:
            dims.append(symbols.plate[plate_of_dim[pos].name])
        elif factor.shape[pos] == 1:
            drop.append(pos)
        else:
            _check_unplated_dim(record, pos, factor.shape[pos], structure)
            # An observed site's batch dims outside any plate are independent terms.
            summed.append(pos)
    _check_outside_parents(record, structure)
    _check_parents_kept(record, dims, structure, symbols)
    if summed:
        factor = factor.sum(summed, keepdim=True)
    if drop or summed:
        factor = factor.squeeze(tuple(drop + summed))
    ordinal = frozenset(symbols.plate[f.name] for f in record.frames)
    return LogFactor(record.name, factor, "".join(dims), ordinal)


def _check_unplated_dim(record: SiteRecord, pos: int, size: int, structure: ModelStructure) -> None:
    batch = structure.observed.get(record.name)
    if batch is not None and len(batch) >= -pos and batch[pos] == size:
        return
    # A latent's particles sit left of its event dims: where the site uses those event
    # dims as batch dims (a shape-(1,) vector broadcast over a plate), they arrive
    # exactly that many dims left of the latent's particle dim.
    shifted = [name for group in structure.groups for name in group.sites
               if structure.sites[name].event_shape
               and group.dim - len(structure.sites[name].event_shape) == pos]
    if shifted:
        name = shifted[0]
        event_shape = tuple(structure.sites[name].event_shape)
        advice = (
            f" Sample '{name}' without them (e.g. dist.Normal(0., 2.) for a single value "
            "instead of dist.Normal(torch.zeros(1), 2.).to_event(1)), or take its "
            f"components before using them in a plate ({name}[..., 0], or Vindex)."
            if math.prod(event_shape) == 1 else _event_index_hint([name], structure))
        raise ValueError(
            f"Site '{record.name}' uses the event dims of latent '{name}' (event shape "
            f"{event_shape}) as batch dims: its log density has {name}'s particles at "
            f"position {pos}, not at {name}'s particle dim. Pyro broadcasts the two alike, "
            "but under QEM a latent's particle dims sit left of its event dims, so the "
            f"event dims must not meet a plate.{advice}"
        )
    raise ValueError(
        f"Site '{record.name}': its log density has a dim of size {size} at position {pos} "
        "that is neither one of its plates nor a particle dim. Particle dims moved there: "
        "the model reduced or reshaped a plated or particle-carrying tensor (e.g. "
        "theta.sum(-1) over a plate, or plain indexing where Vindex is needed), or a "
        "variable outside a plate depends on one inside it. Keep plate dims in place "
        "(use pyro.ops.indexing.Vindex) or restructure the model."
    )


def _check_dependency(record: SiteRecord, group, structure: ModelStructure) -> None:
    # Through an index (a[..., county] in the rows' plate), rows may read latents of
    # the plates they nest in: the estimator folds the rows into those plates.
    own = structure.reachable_plates({f.name for f in record.frames})
    outside = sorted(group.plates - own)
    if outside:
        raise ValueError(
            f"Site '{record.name}' depends on {list(group.sites)}, which "
            f"{'is' if len(group.sites) == 1 else 'are'} inside plate(s) {outside} while "
            f"'{record.name}' is not. A variable outside a plate may not depend on one "
            "inside it (tensor variable elimination cannot sum such a graph); move the "
            "site into the plate or restructure the model. If its rows look up their "
            "group's value through an integer index, write the lookup on the latent "
            "itself, from the right: a[..., index] (a vector latent: ab[..., index, :] "
            "or ab[..., index, 0]; latents stacked first, torch.stack([a, b], -1)[..., "
            "index, :]), with the index as long as the rows' plate; other forms "
            "(torch.take_along_dim, a one-hot matrix product) are not recognised as an "
            "index."
        )


def _check_parents_kept(record: SiteRecord, dims: List[str], structure: ModelStructure,
                        symbols: Symbols) -> None:
    # Each latent the site's log density depends on (by provenance at set-up) must have
    # left its particle dim in it. One that did not was reduced away (z.mean() with no
    # dim), or its particles moved into another group's dim (an unsqueeze on a latent
    # that already has its plate slot), pairing them one to one: a wrong answer.
    parents = structure.parents.get(record.name)
    if not parents:
        return
    lost = sorted(p for p in parents
                  if symbols.group[structure.group_of(p).index] not in dims)
    if not lost:
        return
    raise ValueError(
        f"Site '{record.name}' depends on {lost} (found when the model was traced at "
        f"set-up), but its log density has no particle dim of "
        f"{'that site' if len(lost) == 1 else 'those sites'}: with K particles per latent "
        "site in dims left of the plates, the model reduced over those dims (e.g. "
        "z.mean() or z.sum() without dim=) or moved them (e.g. mu.unsqueeze(-2) on a "
        "latent outside the plate, which already has a size-1 slot for the plate dim, "
        "so that its particles land in another latent's dim; or a.squeeze(-1), "
        "a[..., i, 0] on a latent whose plate is at dim=-2: dropping a batch dim right "
        "of the plates moves the particle dims into the plates' places; keep it, "
        "a[..., i, :] with the rows' plate at dim=-2 too, or declare the plate at "
        "dim=-1). Reduce only over named "
        "rightmost dims (z.sum(-1)), and let broadcasting add plate dims: write "
        "mu + x rather than mu.unsqueeze(-2) + x (the same in a model without particles)."
        + _event_index_hint(lost, structure)
    )


def _event_index_hint(lost: List[str], structure: ModelStructure) -> str:
    """Advice for a vector latent outside the plates looked up along its event dim
    inside one (``mu_vec[..., group]``), which moves its particles left by the event
    dims it had."""
    vectors = [name for name in lost if structure.sites[name].event_shape
               and not structure.sites[name].plates]
    if not vectors:
        return ""
    name = vectors[0]
    size = tuple(structure.sites[name].event_shape)
    return (
        f" '{name}' is a vector latent outside every plate (event shape {size}): looked up "
        f"along its event dim inside a plate ({name}[..., group]), its event dim becomes "
        "the plate's and its particles land one dim left. Sample it in a plate of its own "
        f"instead, with pyro.plate('group', {size[-1]}): {name} = pyro.sample('{name}', "
        f"dist.Normal(0., 5.)), and read {name}[..., group] in the rows' plate: an indexed "
        "group, contracted exactly."
    )


def _check_outside_parents(record: SiteRecord, structure: ModelStructure) -> None:
    # A reduction over a plate (x.mean(), x.sum()) that also reduces the particle dims
    # leaves no dim of the latent's group in the factor, so the check above cannot see
    # the dependency; provenance tracking at set-up found it.
    parents = structure.outside_parents.get(record.name)
    if not parents:
        return
    names = [name for name, _ in parents]
    outside = sorted({p for _, plates in parents for p in plates})
    raise ValueError(
        f"Site '{record.name}' depends on {names}, which "
        f"{'is' if len(names) == 1 else 'are'} inside plate(s) {outside} while "
        f"'{record.name}' is not. A variable outside a plate may not depend on one "
        "inside it (tensor variable elimination cannot sum such a graph); here the "
        "dependency goes through a computation that reduces over the plate (such as "
        "x.mean() or x.sum()), which also mixes the particles of different plate "
        "elements. Move the site into the plate, or restructure the model (e.g. make "
        "the reduced quantity a latent site of its own outside the plate)."
    )


def subsample_scales(records: Sequence[SiteRecord], symbols: Symbols) -> Dict[str, float]:
    """``N / B`` for every subsampled plate in this run, keyed by plate symbol."""
    scales: Dict[str, float] = {}
    for record in records:
        for frame in record.frames:
            if is_subsampled(frame):
                scales[symbols.plate[frame.name]] = frame.full_size / frame.size
    return scales
