"""Newton solvers for the M-steps that have no closed form, the shared floors, and a
bridge to scipy's special functions for the families' inverse CDFs.

Everything here runs in float64 on whatever device its inputs live on, with a fixed
number of iterations so that no step needs a host synchronisation.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

# Shapes/concentrations are dimensionless, so their bounds are absolute. Below 1e-4
# float32 samplers return only the smallest normal number (or 0.5 for Beta), so q
# stops moving; above 1e10 the float64 difference log E z - E log z (about 1/(2a))
# has lost most of its digits.
SHAPE_MIN = 1e-4
SHAPE_MAX = 1e10
# Only reached when every particle is exactly zero. 1e-15 keeps scale**2 and 1/scale
# finite in float32, so a q built from it never gives NaN log-densities.
ABSOLUTE_SCALE_FLOOR = 1e-15
# Probabilities stay in [PROB_FLOOR, 1 - PROB_FLOOR]: logits stay within +-23.
PROB_FLOOR = 1e-10
# A centre given by init_loc_fn may sit on the edge of a bounded support (a probability
# of 0 or 1, a rate of 0); relocation keeps it this far inside, so q stays proper.
CENTRE_MARGIN = 1e-6

_EULER_GAMMA = 0.5772156649015329
# Relative change below which the Dirichlet Newton iteration has converged.
_NEWTON_TOL = 1e-13


def _log_minus_digamma(a: torch.Tensor) -> torch.Tensor:
    """``log a - digamma(a)``; the asymptotic series avoids cancellation at large ``a``."""
    inv = 1.0 / a
    series = inv * (0.5 + inv * (1.0 / 12 - inv * inv * (1.0 / 120 - inv * inv / 252)))
    return torch.where(a > 20.0, series, torch.log(a) - torch.digamma(a.clamp_max(20.0)))


def gamma_shape(log_gap: torch.Tensor, num_iters: int = 6) -> torch.Tensor:
    """Solve ``log a - digamma(a) = log_gap`` for the Gamma shape ``a``.

    Minka's (2002) generalised Newton iteration on ``1/a``, started from his closed-form
    approximation; it converges to float64 precision within a few steps for every
    ``log_gap > 0``.

    :param log_gap: ``log E z - E log z`` (positive by Jensen), float64.
    :param num_iters: number of Newton steps.
    :returns: the shape, clamped to ``[SHAPE_MIN, SHAPE_MAX]``.
    """
    s = log_gap.double().clamp(_GAP_MIN, _GAP_MAX)
    a = (3.0 - s + ((s - 3.0).square() + 24.0 * s).sqrt()) / (12.0 * s)
    for _ in range(num_iters):
        # d/da (log a - digamma a) = 1/a - trigamma(a) < 0.
        slope = _inv_minus_trigamma(a)
        a = 1.0 / (1.0 / a + (_log_minus_digamma(a) - s) / (a.square() * slope))
        a = a.clamp(SHAPE_MIN, SHAPE_MAX)
    return a


def _inv_minus_trigamma(a: torch.Tensor) -> torch.Tensor:
    """``1/a - trigamma(a)`` (negative), by its asymptotic series at large ``a``."""
    inv = 1.0 / a
    series = -inv.square() * (0.5 + inv * (1.0 / 6 - inv.square() / 30))
    small = 1.0 / a - torch.polygamma(1, a.clamp_max(20.0))
    return torch.where(a > 20.0, series, small)


# log_gap values outside these bounds would give shapes outside [SHAPE_MIN, SHAPE_MAX].
_GAP_MIN = _log_minus_digamma(torch.tensor(SHAPE_MAX, dtype=torch.float64)).item()
_GAP_MAX = _log_minus_digamma(torch.tensor(SHAPE_MIN, dtype=torch.float64)).item()


def digamma_inv(y: torch.Tensor, num_iters: int = 6) -> torch.Tensor:
    """The inverse of digamma, by Newton's method from Minka's starting point.

    :param y: float64 tensor of any shape.
    :param num_iters: number of Newton steps.
    :returns: ``x > 0`` with ``digamma(x) = y``.
    """
    x = torch.where(y >= -2.22, y.clamp_max(700.0).exp() + 0.5, -1.0 / (y + _EULER_GAMMA))
    for _ in range(num_iters):
        x = x - (torch.digamma(x) - y) / torch.polygamma(1, x)
        x = x.clamp_min(torch.finfo(torch.float64).tiny)
    return x


def dirichlet_concentration(
    mean_log: torch.Tensor, num_fixed_point: int = 3, num_newton: int = 16
) -> torch.Tensor:
    """Dirichlet concentrations whose ``E log z`` is ``mean_log`` (last dim = categories).

    Minka's (2000) fixed point ``a <- digamma_inv(digamma(sum a) + E log z)`` brings the
    estimate near the optimum; Newton steps on the (concave) log-likelihood, with the
    Hessian inverted by Sherman-Morrison and each step shortened so that no
    concentration shrinks by more than a factor ten, then converge quadratically.

    :param mean_log: float64 tensor ``batch + (K,)`` of ``E log z``, each entry < 0.
    :returns: concentrations ``batch + (K,)`` clamped to ``[SHAPE_MIN, SHAPE_MAX]``.
    """
    # Beyond these bounds the concentrations would leave [SHAPE_MIN, SHAPE_MAX] anyway.
    mean_log = mean_log.double().clamp(-1e6, -1e-300)
    a = _dirichlet_start(mean_log)
    for _ in range(num_fixed_point):
        a = digamma_inv(torch.digamma(a.sum(-1, keepdim=True)) + mean_log)
        a = a.clamp(SHAPE_MIN, SHAPE_MAX)
    for i in range(num_newton):
        previous, a = a, _dirichlet_newton_step(a, mean_log).clamp(SHAPE_MIN, SHAPE_MAX)
        # Newton converges quadratically, so typical (well-started) calls stop after a
        # few steps; checking every other step keeps host synchronisations rare. A
        # recorded step cannot stop on a value, so it takes every step (converged steps
        # move a by less than the tolerance).
        if i % 2 == 1 and not _recording() and bool(((a - previous).abs() <= _NEWTON_TOL * a).all()):
            break
    return a


def _recording() -> bool:
    """Whether a dispatch-level tracer (``make_fx``, as in the compiled step) is
    recording, so that Python control flow on tensor values is not available."""
    try:
        from torch.fx.experimental.proxy_tensor import get_proxy_mode
    except ImportError:  # older torch: no compiled step either
        return False
    return get_proxy_mode() is not None


def _dirichlet_start(mean_log: torch.Tensor) -> torch.Tensor:
    """Start from the mean ``exp(E log z)`` normalised and the large-precision limit.

    For large precision ``s``, ``sum_k m_k (E log z_k - log m_k) ~ -(K - 1) / (2 s)``.
    """
    log_m = torch.log_softmax(mean_log, -1)
    m = log_m.exp()
    k = mean_log.shape[-1]
    gap = (m * (log_m - mean_log)).sum(-1, keepdim=True).clamp_min(1e-300)
    precision = ((k - 1) / (2.0 * gap)).clamp(SHAPE_MIN, SHAPE_MAX)
    return (precision * m).clamp(SHAPE_MIN, SHAPE_MAX)


def _dirichlet_newton_step(a: torch.Tensor, mean_log: torch.Tensor) -> torch.Tensor:
    """One safeguarded Newton step on ``f(a) = lgamma(sum a) - sum lgamma(a) + a . E log z``."""
    total = a.sum(-1, keepdim=True)
    grad = torch.digamma(total) - torch.digamma(a) + mean_log
    q = -torch.polygamma(1, a)
    z = torch.polygamma(1, total)
    # Hessian = diag(q) + z 11^T; Sherman-Morrison gives H^-1 g = (g - b) / q.
    b = (grad / q).sum(-1, keepdim=True) / (1.0 / z + (1.0 / q).sum(-1, keepdim=True))
    step = (grad - b) / q
    # a_new = a - step; cap the shrink so a stays positive even far from the optimum.
    ratio = (step / (0.9 * a)).amax(-1, keepdim=True).clamp_min(1.0)
    return a - step / ratio


def safe_log(value: torch.Tensor) -> torch.Tensor:
    """``log(value)`` with ``value`` floored at its dtype's smallest normal number.

    Float32 samplers return exact zeros (or ones, for ``1 - z``) at extreme shapes; the
    floor keeps the statistic finite.
    """
    return value.clamp_min(torch.finfo(value.dtype).tiny).log()


def probs_to_logits(probs: torch.Tensor) -> torch.Tensor:
    """Logits of ``probs`` after clamping them to ``[PROB_FLOOR, 1 - PROB_FLOOR]``."""
    probs = probs.double().clamp(PROB_FLOOR, 1.0 - PROB_FLOOR)
    return probs.log() - (-probs).log1p()


def normalised_log_probs(probs: torch.Tensor) -> torch.Tensor:
    """Log of category probabilities floored at ``PROB_FLOOR`` and renormalised (last dim)."""
    probs = probs.double().clamp_min(0.0)
    probs = probs / probs.sum(-1, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)
    probs = probs.clamp_min(PROB_FLOOR)
    return (probs / probs.sum(-1, keepdim=True)).log()


def scipy_elementwise(fn: Callable, *args: torch.Tensor) -> torch.Tensor:
    """``fn`` (a scipy ufunc) on float64 copies of ``args`` broadcast together.

    Torch has no inverse incomplete gamma or beta function, so these inverse CDFs go
    through scipy on the host.

    :returns: a float64 tensor on the device of the last argument.
    """
    arrays = np.broadcast_arrays(*(a.detach().double().cpu().numpy() for a in args))
    return torch.as_tensor(fn(*arrays), dtype=torch.float64, device=args[-1].device)


def defensive_logits(logits: torch.Tensor, num_particles: int, binary: bool = False) -> torch.Tensor:
    """Logits of ``(1 - e) q + e * uniform`` with ``e = min(1 / 2, 1 / K)``: q's
    categories (last dim of ``logits``; a single success logit when ``binary``) mixed
    with the uniform distribution over them, so that every value keeps a probability of
    at least ``e / C`` (see :meth:`~pyro_qem.families.Family.proposal_params`)."""
    mix = min(0.5, 1.0 / num_particles)
    logits = logits.double()
    if binary:
        prob = (1 - mix) * torch.sigmoid(logits) + mix / 2
        return prob.log() - (-prob).log1p()
    probs = (1 - mix) * torch.softmax(logits, -1) + mix / logits.shape[-1]
    return probs.log()
