"""MultivariateNormal family: a full-covariance q for real-vector sites."""

from __future__ import annotations

from typing import Optional

import torch
from torch.distributions import constraints

import pyro.distributions as dist

from .base import Family, Moments, Params
from .support import unwrap_prior
from .normal import floored_variance, normal_inverse_cdf

# Eigenvalues of the correlation matrix are floored at this times its dimension: the
# correlation matrix is scale-free, so rescaling a coordinate leaves the floor alone,
# and the factor D stays above float64 roundoff in the reconstruction.
CORRELATION_EIGEN_FLOOR = 1e-10


def regularised_covariance(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """``E zz^T - E z E z^T``, symmetrised and made positive definite.

    Each variance is floored relative to its ``E z_i^2`` (as in :class:`Normal`); the
    correlation matrix is symmetrised and its eigenvalues floored, so Monte Carlo noise
    or a collapsed estimate yields a narrow but valid covariance.

    :param first: ``batch + (D,)`` mean.
    :param second: ``batch + (D, D)`` second moment.
    :returns: ``batch + (D, D)`` covariance.
    """
    cov = second - first.unsqueeze(-1) * first.unsqueeze(-2)
    cov = 0.5 * (cov + cov.transpose(-1, -2))
    var = floored_variance(first, torch.diagonal(second, dim1=-2, dim2=-1))
    sd = var.sqrt()
    corr = cov / (sd.unsqueeze(-1) * sd.unsqueeze(-2))
    corr = corr.clamp(-1.0, 1.0)
    corr.diagonal(dim1=-2, dim2=-1).fill_(1.0)
    eigvals, eigvecs = torch.linalg.eigh(corr)
    eigvals = eigvals.clamp_min(CORRELATION_EIGEN_FLOOR * first.shape[-1])
    corr = (eigvecs * eigvals.unsqueeze(-2)) @ eigvecs.transpose(-1, -2)
    # Rescale to a unit diagonal: the floor must not inflate the variances.
    d = torch.diagonal(corr, dim1=-2, dim2=-1).sqrt()
    scale = sd / d
    cov = corr * scale.unsqueeze(-1) * scale.unsqueeze(-2)
    return 0.5 * (cov + cov.transpose(-1, -2))


class MultivariateNormal(Family):
    """q(z) = MultivariateNormal(loc, scale_tril) for a real-vector site (event dim 1).

    Statistics ``(z, z z^T)``; M-step ``loc = E z``, ``cov = E zz^T - E z E z^T``
    (symmetrised, with floors relative to each coordinate's scale), ``scale_tril`` its
    Cholesky factor.

    Example::

        fam = MultivariateNormal()
        m = (torch.zeros(2, dtype=torch.float64),
             torch.tensor([[1.0, 0.5], [0.5, 1.0]], dtype=torch.float64))
        fam.params_from_moments(m, torch.Size([2]))  # loc 0, scale_tril chol([[1, .5], [.5, 1]])
    """

    name = "MultivariateNormal"
    support = constraints.real_vector
    stat_names = ("z", "zzT")
    event_dims = (1,)

    def coupled_coordinates(self, event_shape: torch.Size) -> int:
        return event_shape[-1]

    @classmethod
    def preferred_for(cls, prior: Optional[torch.distributions.Distribution]) -> bool:
        """True for a MultivariateNormal prior (a GP's latent values, correlated
        effects): a full covariance there is what the prior already couples, and a
        per-coordinate q of it comes out several times too wide (a Poisson GP of 11
        latent values: f's q up to 13x the posterior sd)."""
        return (isinstance(unwrap_prior(prior), torch.distributions.MultivariateNormal)
                and len(prior.event_shape) == 1)

    def concentration(self, coordinates: Params) -> torch.Tensor:
        return coordinates["precision"].diagonal(dim1=-2, dim2=-1)

    def statistics(self, value: torch.Tensor, event_shape: torch.Size) -> Moments:
        return value, value.unsqueeze(-1) * value.unsqueeze(-2)

    def params_from_moments(self, moments: Moments, event_shape: torch.Size) -> Params:
        first, second = moments
        cov = regularised_covariance(first.double(), second.double())
        scale_tril = torch.linalg.cholesky(cov).to(first.dtype)
        return {"loc": first, "scale_tril": scale_tril}

    def to_average(self, moments: Moments, event_shape: torch.Size) -> Params:
        # Natural parameters (precision times mean, precision): a wandering mean does
        # not widen the average, and early wide iterates weigh little.
        first, second = moments
        precision = torch.cholesky_inverse(torch.linalg.cholesky(regularised_covariance(first, second)))
        return {"precision_loc": (precision @ first.unsqueeze(-1)).squeeze(-1), "precision": precision}

    def from_average(self, coordinates: Params, event_shape: torch.Size) -> Moments:
        chol = torch.linalg.cholesky(coordinates["precision"])
        covariance = torch.cholesky_inverse(chol)
        loc = (covariance @ coordinates["precision_loc"].unsqueeze(-1)).squeeze(-1)
        return loc, covariance + loc.unsqueeze(-1) * loc.unsqueeze(-2)

    def noise_compensation(self, moments: Moments, event_shape: torch.Size) -> Moments:
        first, second = moments
        # Normal's, for the whole covariance: E[m m^T] grows by Cov(step).
        return torch.zeros_like(first), regularised_covariance(first.double(), second.double())

    def relocate(self, params: Params, value: torch.Tensor) -> Params:
        """``params`` with ``loc = value``; the covariance is kept."""
        return {**params, "loc": value.detach().double().expand_as(params["loc"])}

    def inverse_cdf(
        self, params: Params, probs: torch.Tensor, event_shape: torch.Size
    ) -> torch.Tensor:
        """Each coordinate's Normal marginal, with sd the root of the covariance diagonal."""
        # The diagonal of L L^T is the row-wise sum of squares of L.
        sd = params["scale_tril"].double().square().sum(-1).sqrt()
        return normal_inverse_cdf(params["loc"], sd, probs)

    def moments_from_params(self, params: Params, event_shape: torch.Size) -> Moments:
        loc, tril = params["loc"], params["scale_tril"]
        cov = tril @ tril.transpose(-1, -2)
        return loc, cov + loc.unsqueeze(-1) * loc.unsqueeze(-2)

    def distribution(self, params: Params, event_shape: torch.Size) -> dist.Distribution:
        return dist.MultivariateNormal(params["loc"], scale_tril=params["scale_tril"])
