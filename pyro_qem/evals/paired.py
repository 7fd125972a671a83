"""Posterior of the paired model: two models scored on the same questions, with correlated errors.

Two models answer the same N questions. With ``theta_A, theta_B ~ Beta(1, 1)`` and
``rho = 2 Beta(4, 2) - 1``, a latent bivariate normal with means ``(Phi^-1(theta_A),
Phi^-1(theta_B))`` and correlation ``rho``, thresholded at zero, gives the probabilities of the
2x2 table (both right, A only, B only, both wrong); the counts are multinomial.

The three-dimensional posterior is integrated deterministically (:mod:`._grid`) in the smooth
unconstrained coordinates ``(logit theta_B, atanh rho, logit theta_A - logit theta_B)``. On
every fibre of the grid along the last coordinate, both ``theta_A - theta_B`` and the log odds
ratio increase with it, so their CDFs, quantiles and ``P(theta_A > theta_B)`` come out as
accurately as the normaliser.
"""

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy.optimize import brentq
from scipy.special import expit, log_expit, logit, ndtri, xlogy

from ._bvn import bvn_upper
from ._grid import GridPosterior, fit_grid

_HALF_WIDTH = (6.5, 6.5, 6.5)
_SPACING = (0.75, 0.75, 0.5)


@dataclass(frozen=True)
class PairedTable:
    """Counts of the 2x2 table of two models on the same questions."""

    both_right: int
    a_only: int
    b_only: int
    both_wrong: int

    @classmethod
    def from_scores(cls, a: np.ndarray, b: np.ndarray) -> "PairedTable":
        """Tabulate two 0/1 score vectors of equal length."""
        a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
        return cls(int(np.sum(a & b)), int(np.sum(a & ~b)), int(np.sum(~a & b)), int(np.sum(~a & ~b)))

    @property
    def counts(self) -> np.ndarray:
        return np.array([self.both_right, self.a_only, self.b_only, self.both_wrong], dtype=float)


def _probit(theta: np.ndarray, complement: np.ndarray) -> np.ndarray:
    """``Phi^-1(theta)`` computed from whichever of theta, 1 - theta is smaller."""
    return np.where(theta < 0.5, ndtri(theta), -ndtri(complement))


def _log_posterior(q: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Unnormalised log density of ``(logit theta_B, atanh rho, log odds ratio)``."""
    logit_b, z_rho, log_or = q[:, 0], q[:, 1], q[:, 2]
    ta, ca = expit(logit_b + log_or), expit(-logit_b - log_or)
    tb, cb = expit(logit_b), expit(-logit_b)
    with np.errstate(all="ignore"):  # non-finite values far out are mapped to -1e300 later
        both_wrong = bvn_upper(_probit(ta, ca), _probit(tb, cb), np.tanh(z_rho))
    a_only = np.maximum(cb - both_wrong, 0.0)
    b_only = np.maximum(ca - both_wrong, 0.0)
    both_right = np.maximum(ta - a_only, 0.0)
    loglik = (
        xlogy(counts[0], both_right)
        + xlogy(counts[1], a_only)
        + xlogy(counts[2], b_only)
        + xlogy(counts[3], both_wrong)
    )
    # uniform priors on theta_A, theta_B, pushed to logits: theta (1 - theta) each
    log_jac = log_expit(logit_b + log_or) + log_expit(-logit_b - log_or)
    log_jac = log_jac + log_expit(logit_b) + log_expit(-logit_b)
    # rho = 2 Beta(4, 2) - 1 pushed to atanh: (1 + rho)^4 (1 - rho)^2 up to a constant
    log_prior_rho = 4 * log_expit(2 * z_rho) + 2 * log_expit(-2 * z_rho)
    return loglik + log_jac + log_prior_rho


def _initial_point(counts: np.ndarray) -> np.ndarray:
    """A data-based starting point for the mode search."""
    total = counts.sum()
    ta = (counts[0] + counts[1] + 1) / (total + 2)
    tb = (counts[0] + counts[2] + 1) / (total + 2)
    return np.array([logit(tb), np.arctanh(0.3), logit(ta) - logit(tb)])


@lru_cache(maxsize=4096)
def paired_posterior(table: PairedTable) -> GridPosterior:
    """Tabulated posterior of the paired model.

    :param table: the 2x2 counts.
    :returns: a :class:`~pyro_qem.evals._grid.GridPosterior` over
        ``(logit theta_B, atanh rho, logit theta_A - logit theta_B)``.

    Example::

        >>> post = paired_posterior(PairedTable(5, 4, 1, 3))
        >>> 0.85 < 1 - post.prob_last_below(0.0) < 0.99
        True
    """
    counts = table.counts
    return fit_grid(
        lambda q: _log_posterior(q, counts), _initial_point(counts), _HALF_WIDTH, _SPACING
    )


def prob_a_better(table: PairedTable) -> float:
    """Posterior ``P(theta_A > theta_B)`` under the paired model.

    Example::

        >>> round(prob_a_better(PairedTable(5, 2, 2, 3)), 6)
        0.5
    """
    return 1.0 - paired_posterior(table).prob_last_below(0.0)


def difference_cdf(table: PairedTable, value: float) -> float:
    """Posterior ``P(theta_A - theta_B <= value)`` under the paired model."""
    post = paired_posterior(table)
    shifted = expit(post.base[:, 0]) + value
    with np.errstate(divide="ignore", invalid="ignore"):
        threshold = np.where(
            shifted >= 1, np.inf, np.where(shifted <= 0, -np.inf, logit(shifted) - post.base[:, 0])
        )
    return post.prob_last_below(threshold)


def difference_quantile(table: PairedTable, prob: float) -> float:
    """The ``prob`` quantile of ``theta_A - theta_B`` under the paired model."""
    return float(brentq(lambda c: difference_cdf(table, c) - prob, -1.0, 1.0, xtol=1e-12))


def log_odds_ratio_quantile(table: PairedTable, prob: float) -> float:
    """The ``prob`` quantile of ``logit theta_A - logit theta_B`` under the paired model."""
    post = paired_posterior(table)
    span = post.scale * post.nodes
    lo, hi = post.offset.min() + span[0] - 1.0, post.offset.max() + span[-1] + 1.0
    return float(brentq(lambda c: post.prob_last_below(c) - prob, lo, hi, xtol=1e-12))
