"""Normal family: scalar sites, and vector or matrix sites with a diagonal covariance."""

from __future__ import annotations

import torch
from torch.distributions import constraints

import pyro.distributions as dist

from .base import ANY_EVENT_DIMS, Family, Moments, Params

# Variances below this fraction of E[z^2] are floored: relative, so that rescaling a
# latent rescales the floor with it and QEM's trajectory stays invariant.
RELATIVE_VARIANCE_FLOOR = 1e-12
# Only reached when every particle is exactly zero. The variance itself must be a
# normal float32 number (> 1.2e-38): Normal.log_prob divides by scale**2, and a
# variance of 1e-60 underflowed to 0 there and gave NaN.
ABSOLUTE_VARIANCE_FLOOR = 1e-30


def floored_variance(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """``E[z^2] - E[z]^2`` floored relative to ``E[z^2]``."""
    floor = (RELATIVE_VARIANCE_FLOOR * second).clamp_min(ABSOLUTE_VARIANCE_FLOOR)
    return torch.maximum(second - first.square(), floor)


def normal_inverse_cdf(loc: torch.Tensor, scale: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """The inverse CDF of Normal(loc, scale) at ``probs``, in float64."""
    return loc.double() + scale.double() * torch.special.ndtri(probs)


class NormalCoordinates:
    """What every family that is a Normal on some coordinate (z itself, log z, or an
    unconstrained u; statistics ``(u, u^2)``, parameters ``loc`` and ``scale``) does
    alike: average its iterates in natural parameters, and give its natural parameters
    for the regression update (:mod:`pyro_qem.infer.regression`). Mixed in before
    :class:`Family`."""

    def to_average(self, moments: Moments, event_shape: torch.Size) -> Params:
        """Natural parameters ``(loc / variance, 1 / variance)``: a wandering centre
        does not widen the average, and early, wider iterates (small precision) weigh
        little against converged ones."""
        first, second = moments
        precision = 1.0 / floored_variance(first, second)
        return {"precision_loc": precision * first, "precision": precision}

    def from_average(self, coordinates: Params, event_shape: torch.Size) -> Moments:
        precision = coordinates["precision"]
        loc = coordinates["precision_loc"] / precision
        return loc, 1.0 / precision + loc * loc

    def concentration(self, coordinates: Params) -> torch.Tensor:
        return coordinates["precision"]

    def natural_from_moments(self, moments: Moments, event_shape: torch.Size):
        """``(loc / variance, -1 / (2 variance))``, the coefficients of ``(u, u^2)``."""
        first, second = moments
        precision = 1.0 / floored_variance(first, second)
        return precision * first, -0.5 * precision

    def moments_from_natural(self, natural, event_shape: torch.Size):
        shift, half_precision = natural
        valid = torch.isfinite(shift) & torch.isfinite(half_precision) & (half_precision < 0)
        variance = -0.5 / torch.where(valid, half_precision, -torch.ones_like(half_precision))
        loc = shift * variance
        return (loc, variance + loc * loc), valid

class Normal(NormalCoordinates, Family):
    """q(z) = Normal(loc, scale), independently per coordinate of a vector site.

    Statistics (z, z^2); M-step ``loc = E z``, ``scale = sqrt(E z^2 - (E z)^2)``.
    """

    name = "Normal"
    support = constraints.real
    stat_names = ("z", "z2")
    event_dims = ANY_EVENT_DIMS
    default_for = ("real",)

    def statistics(self, value: torch.Tensor, event_shape: torch.Size) -> Moments:
        return value, value.square()

    def params_from_moments(self, moments: Moments, event_shape: torch.Size) -> Params:
        first, second = moments
        return {"loc": first, "scale": floored_variance(first, second).sqrt()}

    def moments_from_params(self, params: Params, event_shape: torch.Size) -> Moments:
        loc, scale = params["loc"], params["scale"]
        return loc, loc.square() + scale.square()

    def distribution(self, params: Params, event_shape: torch.Size) -> dist.Distribution:
        return dist.Normal(params["loc"], params["scale"]).to_event(len(event_shape))

    def relocate(self, params: Params, value: torch.Tensor) -> Params:
        """``params`` with ``loc = value``; the scale is kept."""
        return {**params, "loc": value.detach().double().expand_as(params["loc"])}

    def inverse_cdf(
        self, params: Params, probs: torch.Tensor, event_shape: torch.Size
    ) -> torch.Tensor:
        return normal_inverse_cdf(params["loc"], params["scale"], probs)

    def noise_compensation(self, moments: Moments, event_shape: torch.Size) -> Moments:
        first, second = moments
        # E[(E z)^2] grows by Var(step), so E z^2 gets the same: Var z is kept.
        return torch.zeros_like(first), floored_variance(first, second)

    def init_moments(self, draws: torch.Tensor, event_shape: torch.Size) -> Moments:
        """Median and interquartile range of the draws: finite for Cauchy-like priors."""
        draws = draws.double()
        q25, q50, q75 = torch.quantile(
            draws, torch.tensor([0.25, 0.5, 0.75], dtype=draws.dtype, device=draws.device), dim=0
        )
        scale = (q75 - q25) / 1.3489795003921634
        # A prior with a point mass (or a bounded discrete-ish draw) has zero IQR.
        scale = torch.where(scale > 0, scale, draws.std(0).clamp_min(1e-30))
        return self.moments_from_params({"loc": q50, "scale": scale}, event_shape)
