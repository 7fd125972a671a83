"""QEM's M-step: weighted sufficient statistics of each site's particles, the noise
compensation, smoothing into the guide's state, and iterate averaging (in each family's
averaging coordinates, :meth:`~pyro_qem.families.Family.to_average`).

For a moment-matched site with family statistics T, one update is
``m <- (1 - lr) m + lr (sum_k w_k T(z_k) + lr sum_k w_k^2 c(m))``, per plate element,
where w are the site's group's posterior particle weights and ``c`` the family's noise
compensation (:meth:`~pyro_qem.families.Family.noise_compensation`). Groups outside
the subsampled plates of a minibatch step (and every group with ``update="regression"``)
are fitted by regression instead (:mod:`pyro_qem.infer.regression`).
"""

from __future__ import annotations

from typing import AbstractSet, Dict, List, Mapping, Sequence, Tuple, Union

import torch

from ..families import Family
from ..guides.qem_guide import QEMGuide
from ..handlers import SiteRecord, is_subsampled
from ..model import SiteInfo, selection_of
from .regression import regression_kind, regression_update, score_update
from .update_choice import AUTO_REGRESSION_LR

# A running average restarts where the iterate has become this much more concentrated.
RESTART_RATIO = 2.0
# The moment update's step for a minibatch regression group whose weights have not yet
# spread over enough particles (see moment_update).
FALLBACK_LR = 0.5


def weighted_statistics(family: Family, value: torch.Tensor, weight: torch.Tensor,
                        site: SiteInfo) -> List[torch.Tensor]:
    """``sum_k w_k T(z_k)`` per plate element, in float64.

    ``value`` holds the site's particles in dim 0 of its batch part (the site's own
    particle dim is the leftmost of its value), ``weight`` the group's normalised
    weights in the same layout.
    """
    value = value.double() if value.is_floating_point() else value
    weight = weight.double()
    batch_ndim = value.dim() - len(site.event_shape)
    out = []
    for stat in family.statistics(value, site.event_shape):
        trailing = stat.dim() - batch_ndim
        moment = (weight.reshape(weight.shape + (1,) * trailing) * stat.double()).sum(0)
        out.append(moment.reshape(moment.shape[moment.dim() - trailing - len(site.batch_shape):]))
    return out


def noise_compensated(family: Family, estimates: Sequence[torch.Tensor], current: Sequence[torch.Tensor],
                      weight: torch.Tensor, lr: float, site: SiteInfo) -> List[torch.Tensor]:
    """``estimates + lr * sum_k w_k^2 * compensation``: the family's correction for the
    shrinkage that noisy weights cause under smoothing, scaled by how noisy they are
    (``sum_k w_k^2`` is 1 / ESS of the site's group, per plate element)."""
    compensation = family.noise_compensation(current, site.event_shape)
    if compensation is None:
        return list(estimates)
    squares = _per_element(inverse_ess(weight), site)
    batch_ndim = len(site.batch_shape)
    out = []
    for estimate, term in zip(estimates, compensation):
        trailing = estimate.dim() - batch_ndim
        out.append(estimate + lr * squares.reshape(squares.shape + (1,) * trailing) * term.to(estimate))
    return out


def inverse_ess(weight: torch.Tensor) -> torch.Tensor:
    """``sum_k w_k^2`` over the particle dim (0): 1 / the weights' effective sample size."""
    weight = weight.double()
    return (weight * weight).sum(0)


def _per_element(tensor: torch.Tensor, site: SiteInfo) -> torch.Tensor:
    batch_ndim = len(site.batch_shape)
    return tensor.reshape(tensor.shape[tensor.dim() - batch_ndim:])


@torch.no_grad()
def moment_update(guide: QEMGuide, records: Sequence[SiteRecord], subsamples: Mapping[str, torch.Tensor],
                  weights: Mapping[int, torch.Tensor], lr: float, average: bool = False,
                  compensate: bool = True,
                  update: Union[str, None, AbstractSet[int]] = "moments") -> None:
    """Move every moment-matched site's state towards its weighted moments.

    :param records: the particle run's site records.
    :param subsamples: the run's subsampled plate indices (only those elements move).
    :param weights: each group's normalised particle weights.
    :param lr: the smoothing step in (0, 1].
    :param average: also fold the new state into the running average of the iterates.
    :param compensate: add each family's noise compensation.
    :param update: ``"moments"``: full-batch steps match moments; ``"regression"``:
        they fit natural parameters by regression too, as minibatch steps do for sites
        outside the subsampled plates (:mod:`pyro_qem.infer.regression`); a set of
        group indices: those groups by regression, the others by moments
        (:class:`~pyro_qem.infer.update_choice.UpdateChoice`); None: as
        ``"regression"``.
    """
    structure = guide.structure
    subsampled = {f.name for r in records for f in r.frames if is_subsampled(f)}
    regressed, jump = set(), set()
    if isinstance(update, str):
        update = None if update == "regression" else frozenset()
    # update="auto" (full batch) refits its degenerate groups with a bounded step.
    auto = bool(update) and not subsampled
    regression_lr = min(lr, AUTO_REGRESSION_LR) if auto else lr
    for group, (kind, members) in _regression_groups(guide, records, subsampled, weights,
                                                     update).items():
        fit = regression_update if kind == "least_squares" else score_update
        updated = fit(guide, structure.groups[group], members, weights[group], subsamples,
                      regression_lr)
        if updated is None and auto:
            # This group's ordinary moment update, below.
            # The halving jump collapsed q onto one particle there: with log-weights
            # thousands of nats apart (40 means under a Normal(0, 100) prior) the
            # regression never took over, and q ended 430-760 sd off at 1e-4 of the
            # posterior sd.
            continue
        if updated is None:
            # Too few particles of positive weight: q is still far wider than the
            # posterior. Move halfway to the weighted moments (for a Normal: variance
            # halved, location halfway to the weighted mean) until the weights spread
            # and the regression takes over. With lr = 0.1 a 1e5-row regression took 55
            # steps to get there; jumping all the way (lr = 1) collapsed q onto one
            # particle, 1e-4 of the posterior sd.
            jump.add(group)
            continue
        regressed.add(group)
        for record, new in zip(members, updated):
            if average:
                site = structure.sites[record.name]
                _average(guide, site, guide.families[record.name], new,
                         selection_of(record.frames, subsamples), restarts=not subsampled)
    for record in records:
        family = guide.families.get(record.name)
        if record.draw is None or family is None or record.draw.group in regressed:
            continue
        site = structure.sites[record.name]
        weight = weights[record.draw.group]
        estimates = weighted_statistics(family, record.value, weight, site)
        selection = selection_of(record.frames, subsamples)
        if record.draw.group in jump:
            guide.state.update(site.name, family.stat_names, estimates, max(lr, FALLBACK_LR),
                               selection, len(site.batch_shape))
            continue
        if compensate:
            current = guide.state.selected(site.name, family.stat_names, selection,
                                           len(site.batch_shape))
            estimates = noise_compensated(family, estimates, current, weight, lr, site)
        batch_ndim = len(site.batch_shape)
        new = guide.state.update(site.name, family.stat_names, estimates, lr, selection, batch_ndim)
        if average:
            _average(guide, site, family, new, selection)
    guide.state.count_update()


def _regression_groups(guide: QEMGuide, records: Sequence[SiteRecord], subsampled: set,
                       weights: Mapping[int, torch.Tensor], full_batch
                       ) -> Dict[int, Tuple[str, List[SiteRecord]]]:
    """group -> (:func:`~pyro_qem.infer.regression.regression_kind`, its records in the
    group's site order) for the groups this step fits by regression: in a minibatch
    step those outside every subsampled plate; in a full-batch step those in
    ``full_batch`` (a set of group indices; None: every group)."""
    if not subsampled and full_batch is not None and not full_batch:
        return {}
    by_name = {r.name: r for r in records if r.draw is not None}
    out = {}
    for group in guide.structure.groups:
        if group.index not in weights or group.plates & subsampled \
                or not all(name in by_name for name in group.sites):
            continue
        if not subsampled and full_batch is not None and group.index not in full_batch:
            continue
        kind = regression_kind(guide, group, weights[group.index].shape[0])
        if kind is not None:
            out[group.index] = (kind, [by_name[name] for name in group.sites])
    return out


def _average(guide: QEMGuide, site: SiteInfo, family: Family, new: Sequence[torch.Tensor],
             selection, restarts: bool = True) -> None:
    """Fold the new iterate into the running average, in the family's averaging
    coordinates (:meth:`~pyro_qem.families.Family.to_average`: natural parameters for
    Normal coordinates), so that the iterates' wander does not widen the averaged q.

    :param restarts: restart elements where q is still narrowing. Off for the minibatch
        regression: there a plate element whose rows are rare in minibatches gets
        occasional sharp steps (one row scaled by N / B) that are part of the average,
        not a sign of q still shrinking (restarting at them made county effects of a
        hierarchy 0.7x too narrow)."""
    state, batch_ndim = guide.state, len(site.batch_shape)
    coordinates = family.to_average(tuple(new), site.event_shape)
    if not state.has_average(site.name):
        full = family.to_average(state.moments(site.name, family.stat_names), site.event_shape)
        state.update_average(site.name, coordinates, selection, batch_ndim, full)
        return
    average = state.average(site.name, list(coordinates), selection, batch_ndim)
    restart = _still_narrowing(family, coordinates, average, batch_ndim) if restarts else None
    state.update_average(site.name, coordinates, selection, batch_ndim, coordinates, restart)


def _still_narrowing(family: Family, current, average, batch_ndim: int):
    """Per plate element: whether the current iterate is more than
    :data:`RESTART_RATIO` times as concentrated as the running average in any
    coordinate (see :meth:`~pyro_qem.families.Family.concentration`)."""
    now, before = family.concentration(current), family.concentration(average)
    if now is None:
        return None
    narrower = now > RESTART_RATIO * before
    return narrower.reshape(narrower.shape[:batch_ndim] + (-1,)).any(-1) if narrower.dim() > batch_ndim \
        else narrower
