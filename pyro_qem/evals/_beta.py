"""Exact one-dimensional integrals over independent Beta posteriors.

``Beta(a, b)`` posteriors are represented by ``(a, b)`` pairs. Every quantity is a single
adaptive quadrature over one variable's posterior (restricted to where its density exceeds
about 1e-16 of its mass), with closed-form Beta CDFs for the others.
"""

import numpy as np
from scipy.integrate import quad
from scipy.optimize import brentq
from scipy.special import betainc, betaincinv, betaln, expit, logit, xlog1py, xlogy

BetaParams = tuple[float, float]
_TAIL = 1e-15
_QUAD = {"epsabs": 1e-13, "epsrel": 1e-11, "limit": 400}


def _pdf(x: float, ab: BetaParams) -> float:
    a, b = ab
    return float(np.exp(xlogy(a - 1, x) + xlog1py(b - 1, -x) - betaln(a, b)))


def _cdf(x: float, ab: BetaParams) -> float:
    return float(betainc(ab[0], ab[1], min(max(x, 0.0), 1.0)))


def _integrate(fn, ab: BetaParams) -> float:
    """``E[fn(Y)]`` for ``Y ~ Beta(ab)``, by adaptive quadrature over its bulk."""
    a, b = ab
    lo, hi = float(betaincinv(a, b, _TAIL)), float(betaincinv(a, b, 1 - _TAIL))
    mid = float(betaincinv(a, b, 0.5))
    points = [mid] if lo < mid < hi else None
    value, _ = quad(lambda y: _pdf(y, ab) * fn(y), lo, hi, points=points, **_QUAD)
    return value


def prob_greater(x: BetaParams, y: BetaParams) -> float:
    """``P(X > Y)`` for independent ``X ~ Beta(x)``, ``Y ~ Beta(y)``."""
    return _integrate(lambda v: 1.0 - _cdf(v, x), y)


def prob_largest(params: list[BetaParams], index: int) -> float:
    """``P(X_index > X_j for all j != index)`` for independent Beta variables."""
    others = [ab for j, ab in enumerate(params) if j != index]
    return _integrate(lambda v: float(np.prod([_cdf(v, ab) for ab in others])), params[index])


def difference_cdf(value: float, x: BetaParams, y: BetaParams) -> float:
    """``P(X - Y <= value)``."""
    return _integrate(lambda v: _cdf(value + v, x), y)


def log_odds_ratio_cdf(value: float, x: BetaParams, y: BetaParams) -> float:
    """``P(logit X - logit Y <= value)``."""
    return _integrate(lambda v: _cdf(float(expit(value + logit(v))), x), y)


def difference_quantile(prob: float, x: BetaParams, y: BetaParams) -> float:
    """The ``prob`` quantile of ``X - Y``."""
    return float(brentq(lambda c: difference_cdf(c, x, y) - prob, -1.0, 1.0, xtol=1e-12))


def log_odds_ratio_quantile(prob: float, x: BetaParams, y: BetaParams) -> float:
    """The ``prob`` quantile of ``logit X - logit Y``."""
    ends = [float(logit(betaincinv(*ab, t))) for ab in (x, y) for t in (1e-12, 1 - 1e-12)]
    lo, hi = ends[0] - ends[3], ends[1] - ends[2]
    return float(brentq(lambda c: log_odds_ratio_cdf(c, x, y) - prob, lo, hi, xtol=1e-12))
