"""Warn when the particle weights behind an output are degenerate.

Joint draws and weighted moments reweight K particles per group by their posterior
weights. Where one particle carries nearly all of a group's weight in every set (an
effective sample size near 1), the draws repeat q's particles and the moments are q's,
not the posterior's: q has not converged (a wide start still shrinking onto a narrow
posterior) or sits far from it (50 logistic-regression coefficients in one site after
200 updates at K = 30: ESS 1.0, q 8 sd off and 2-5x too wide, and nothing else said
so). :func:`warn_degenerate` says so when an output is computed, naming the sites.
"""

from __future__ import annotations

import warnings
from typing import Dict, Iterable, Mapping, Sequence

import torch

from ..infer.pipeline import WeightedRun
from ..model.structure import PARTICLE_SETS, ModelStructure


class QEMDiagnosticWarning(UserWarning):
    """The importance weights say a posterior estimate cannot be trusted."""


#: A group's mean effective sample size below which its weights are degenerate (at
#: K >= 3; ``1 + (K - 1) / 4`` for K = 2, whose largest ESS is 2).
DEGENERATE_ESS = 1.5


def repeat_chances(run: WeightedRun) -> Dict[int, torch.Tensor]:
    """Per sampled group, each set's mean chance that two draws from the set pick the
    same particle of the group (``sum_k w_k^2`` per plate element, averaged over them):
    ``{group index: tensor (sets,)}``.

    Enumerated groups are left out: their dim holds the whole support, and two draws
    from one set that pick the same value are two exact draws from its conditional
    posterior, not a repeated Monte Carlo particle (a confidently assigned mixture label
    has ``sum_k w_k^2`` near 1 and would otherwise force one draw per set). With no
    sampled group every draw is exact given the set: no chances."""
    sites = run.structure.sites
    sampled = {g.index for g in run.structure.groups
               if not any(sites[name].enumerated for name in g.sites)}
    sets = run.structure.plates.get(PARTICLE_SETS)
    chances = {}
    for source in run.sources:
        if source.group not in sampled:
            continue
        chance = (run.weights[source.group] ** 2).sum(source.particle_dim, keepdim=True)
        if sets is not None and chance.dim() >= -sets.dim:
            chance = chance.movedim(chance.dim() + sets.dim, 0)
            chances[source.group] = chance.reshape(chance.shape[0], -1).mean(1)
        else:
            chances[source.group] = chance.mean().reshape(1)
    return chances


def pooled_chances(per_run: Iterable[Mapping[int, torch.Tensor]]) -> Dict[int, torch.Tensor]:
    """:func:`repeat_chances` of several weighed runs of one fit, concatenated per group."""
    pooled: Dict[int, list] = {}
    for chances in per_run:
        for group, chance in chances.items():
            pooled.setdefault(group, []).append(chance)
    return {group: torch.cat(parts) for group, parts in pooled.items()}


def warn_degenerate(chances: Mapping[int, torch.Tensor], structure: ModelStructure,
                    num_particles: int, what: str) -> None:
    """Warn (:class:`QEMDiagnosticWarning`) for each sampled group whose weights'
    effective sample size ``1 / mean(sum_k w_k^2)``, over its sets and plate elements,
    is below :data:`DEGENERATE_ESS`: ``what`` (the output) then reweights one particle
    per set.

    :param chances: :func:`repeat_chances` (or :func:`pooled_chances`) of the output's
        weighed runs.
    :param structure: the runs' model structure (names the groups' sites).
    :param num_particles: K.
    :param what: the output's name, for the message.
    """
    if num_particles < 2:
        return
    floor = min(DEGENERATE_ESS, 1 + (num_particles - 1) / 4)
    for group, chance in sorted(chances.items()):
        ess = 1.0 / chance.double().mean().item()
        if ess < floor:
            _warn(structure.groups[group].sites, ess, num_particles, chance.numel(), what)


def _warn(sites: Sequence[str], ess: float, K: int, sets: int, what: str) -> None:
    warnings.warn(
        f"{what}: the particle weights of sites {list(sites)} have an effective sample size "
        f"of {ess:.2f} of K = {K} (over {sets} particle set(s)): one particle carries nearly "
        "all the weight, so these results repeat q's particles and show q, not the "
        "posterior. q has not converged (run more steps) or is far from the posterior: use "
        "more particles (larger K), Inference(..., update='auto') for Gaussian sites, or "
        "split a large group with groups=...; check diagnose(inference, ...).",
        QEMDiagnosticWarning,
        stacklevel=3,
    )
