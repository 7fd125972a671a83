"""Quantiles of the families' distributions, per coordinate (marginal quantiles for
vector families), for :meth:`pyro_qem.QEMGuide.quantiles` and ``median``."""

from __future__ import annotations

from typing import Callable, Dict, Sequence

import numpy as np
import scipy.special
import scipy.stats
import torch

import pyro.distributions as dist


def quantiles(q: dist.Distribution, probs: Sequence[float]) -> torch.Tensor:
    """Quantiles of ``q`` at ``probs``: a tensor of shape ``(len(probs),) + batch + event``.

    Continuous families use their exact inverse CDF (torch or scipy); discrete ones the
    smallest support value whose CDF reaches the probability.
    """
    while isinstance(q, dist.Independent):
        q = q.base_dist
    p = torch.as_tensor(list(probs), dtype=torch.float64)
    if p.numel() == 0 or ((p <= 0) | (p >= 1)).any():
        raise ValueError(f"quantiles: probabilities must lie in (0, 1), got {list(probs)}.")
    for kind, rule in _RULES.items():
        if isinstance(q, kind):
            shape = (len(p),) + (1,) * (len(q.batch_shape) + len(q.event_shape))
            return rule(q, p.reshape(shape)).to(_dtype(q))
    raise NotImplementedError(f"quantiles: no rule for {type(q).__name__}.")


def _dtype(q: dist.Distribution) -> torch.dtype:
    for value in q.__dict__.values():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            return value.dtype
    return torch.get_default_dtype()


def _scipy(fn: Callable, *args: torch.Tensor) -> torch.Tensor:
    arrays = np.broadcast_arrays(*(a.detach().double().cpu().numpy() for a in args))
    return torch.as_tensor(fn(*arrays), device=args[-1].device)


def _normal(q, p):
    return q.loc.double() + q.scale.double() * torch.special.ndtri(p)


def _lognormal(q, p):
    return torch.exp(_normal(q.base_dist, p))


def _gamma(q, p):
    return _scipy(scipy.special.gammaincinv, q.concentration, p) / q.rate.double()


def _inverse_gamma(q, p):
    base = q.base_dist
    return base.rate.double() / _scipy(scipy.special.gammaincinv, base.concentration, 1 - p)


def _beta(q, p):
    return _scipy(scipy.special.betaincinv, q.concentration1, q.concentration0, p)


def _dirichlet(q, p):
    alpha = q.concentration.double()
    return _scipy(scipy.special.betaincinv, alpha, alpha.sum(-1, keepdim=True) - alpha, p)


def _mvn(q, p):
    return q.loc.double() + q.covariance_matrix.double().diagonal(dim1=-2, dim2=-1).sqrt() * torch.special.ndtri(p)


def _exponential(q, p):
    return -torch.log1p(-p) / q.rate.double()


def _half_normal(q, p):
    return q.scale.double() * torch.special.ndtri((1 + p) / 2)


def _poisson(q, p):
    return _scipy(scipy.stats.poisson.ppf, p, q.rate)


def _binomial(q, p):
    return _scipy(scipy.stats.binom.ppf, p, q.total_count, q.probs)


def _bernoulli(q, p):
    return (p > 1 - q.probs.double()).double()


def _categorical(q, p):
    cdf = q.probs.double().cumsum(-1)
    return (cdf < p.unsqueeze(-1)).sum(-1).double().clamp_max(q.probs.shape[-1] - 1)


def _multinomial(q, p):
    return _scipy(scipy.stats.binom.ppf, p, q.total_count, q.probs)


# Order matters: subclasses (HalfNormal, LogNormal, InverseGamma) before their bases.
_RULES: Dict[type, Callable] = {
    dist.HalfNormal: _half_normal,
    dist.LogNormal: _lognormal,
    dist.InverseGamma: _inverse_gamma,
    dist.Normal: _normal,
    dist.MultivariateNormal: _mvn,
    dist.Gamma: _gamma,
    dist.Beta: _beta,
    dist.Dirichlet: _dirichlet,
    dist.Exponential: _exponential,
    dist.Poisson: _poisson,
    dist.Binomial: _binomial,
    dist.Bernoulli: _bernoulli,
    dist.Categorical: _categorical,
    dist.Multinomial: _multinomial,
}
