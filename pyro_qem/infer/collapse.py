"""Warn when the fitted q is collapsing, or stuck, under the noise of its own updates.

Smoothing mean parameters with step ``lr`` moves q's variance by a random factor each
update; with weights whose effective sample size (ESS) over a group's K particles is
``n``, the new spread is roughly ``(1 - lr) var + lr var chi2_{n-1} / (n - 1)``, whose
logarithm loses about ``min(lr^2 / (n - 1), lr)`` per step on average even when the
expected variance is kept (noise compensation keeps the mean, not the log). At
``lr = 1`` and K = 2 that is a halving of the spread every step or two: q collapses to a
point. The same degenerate weights can leave q where it started instead: 25
logistic-regression coefficients in one site at lr = 1 and K = 10-30 kept an ESS of
1.00 for 300 updates while the noise compensation held q at its prior's width (27-40x
the posterior's, 78-133 sd off). Either way q is not being fitted. An ESS near 1 also
happens while a wide initial q shrinks onto a narrow posterior, but then
``-log P_hat`` falls; so :class:`CollapseMonitor` warns (once per group, naming its
sites) when the drift has stayed above :data:`DRIFT_LIMIT` for :data:`PATIENCE`
updates in a row and the loss has not fallen over them.
"""

from __future__ import annotations

import warnings
from typing import Callable, Dict, List, Mapping, Optional, Set

import torch

from ..model import ModelStructure

# Expected loss of log-variance per update above which q shrinks by ~e in 20 updates.
DRIFT_LIMIT = 0.05
PATIENCE = 30
# Averaged over this many updates at each end of the window, to compare the losses.
ENDS = 5


class QEMCollapseWarning(UserWarning):
    """The particle weights are too degenerate for the step size: q is collapsing to a
    point or stuck where it started."""


def median_ess(weight: torch.Tensor) -> float:
    """The median over plate elements of ``1 / sum_k w_k^2`` (particles in dim 0)."""
    weight = weight.detach().double()
    ess = 1.0 / (weight * weight).sum(0)
    return ess.reshape(-1).median().item()


class CollapseMonitor:
    """Tracks, per particle group, the consecutive updates in which the expected
    log-variance drift ``min(lr^2 / (ESS - 1), lr)`` exceeds :data:`DRIFT_LIMIT`, with
    their losses, and warns once per group.

    :param num_particles: K.
    :param advice: group index -> an extra sentence for its warning (or ``""``),
        called only when warning.
    """

    def __init__(self, num_particles: int, advice: Optional[Callable[[int], str]] = None) -> None:
        self.num_particles = num_particles
        self.advice = advice
        self.losses: Dict[int, List[float]] = {}
        self.warned: Set[int] = set()

    def observe(self, structure: ModelStructure, weights: Mapping[int, torch.Tensor],
                lr: float, loss: float, skip: Set[int]) -> None:
        """Record one update: its groups' weights, step size and ``-log P_hat``."""
        for group, weight in weights.items():
            if group in self.warned or group in skip:
                continue
            ess = median_ess(weight)
            drift = min(lr ** 2 / max(ess - 1.0, 1e-3), lr)
            window = self.losses.setdefault(group, [])
            if drift <= DRIFT_LIMIT:
                window.clear()
                continue
            window.append(loss)
            if len(window) >= PATIENCE:
                falling = sum(window[:ENDS]) - sum(window[-ENDS:]) > ENDS * 1.0
                if not falling:
                    self.warned.add(group)
                    self._warn(structure, group, ess, drift, lr)
                del window[:len(window) - PATIENCE + 1]

    def _warn(self, structure: ModelStructure, group: int, ess: float, drift: float, lr: float) -> None:
        sites = list(structure.groups[group].sites)
        warnings.warn(
            f"Sites {sites}: for {PATIENCE} updates the particle weights' effective sample "
            f"size has been about {ess:.2f} of K = {self.num_particles} while -log P_hat did "
            f"not fall: moment matching has about one particle to match, so q is not being "
            f"fitted. With lr = {lr:g} the log of q's variance moves by about {drift:.2f} per "
            "update: q either collapses towards a point (its spread too narrow) or stays as "
            "wide as where it started (too wide, its mean off). "
            + (self.advice(group) if self.advice is not None else "")
            + "Use more particles (larger K), a smaller lr (or average_from=...), or "
            "split a large group into smaller ones; check diagnose(inference, ...).",
            QEMCollapseWarning,
            stacklevel=4,
        )
