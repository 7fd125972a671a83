"""LogNormal family: a Normal on ``log z`` for positive sites."""

from __future__ import annotations

import torch
from torch.distributions import constraints

import pyro.distributions as dist

from ._special import safe_log
from .base import ANY_EVENT_DIMS, Family, Moments, Params
from .normal import Normal, NormalCoordinates, normal_inverse_cdf

# The variance of log z is the squared relative spread of z, so its floor is absolute
# and still scale-invariant; 1e-12 matches Normal's relative variance floor.
LOG_VARIANCE_FLOOR = 1e-12


class LogNormal(NormalCoordinates, Family):
    """q(z) = LogNormal(loc, scale), independently per coordinate.

    Statistics ``(log z, (log z)^2)``; the M-step is Normal's on ``log z``.

    Example::

        fam = LogNormal()
        q = fam.distribution({"loc": torch.tensor(0.0), "scale": torch.tensor(0.5)},
                             torch.Size())
    """

    name = "LogNormal"
    support = constraints.positive
    stat_names = ("log_z", "log_z2")
    event_dims = ANY_EVENT_DIMS

    def statistics(self, value: torch.Tensor, event_shape: torch.Size) -> Moments:
        log_z = safe_log(value)
        return log_z, log_z.square()

    def params_from_moments(self, moments: Moments, event_shape: torch.Size) -> Params:
        first, second = moments
        variance = (second - first.square()).clamp_min(LOG_VARIANCE_FLOOR)
        return {"loc": first, "scale": variance.sqrt()}

    def moments_from_params(self, params: Params, event_shape: torch.Size) -> Moments:
        loc, scale = params["loc"], params["scale"]
        return loc, loc.square() + scale.square()

    def relocate(self, params: Params, value: torch.Tensor) -> Params:
        """``params`` with the median ``exp(loc)`` at ``value``; the log-scale is kept."""
        # 1e-300 keeps log finite for a centre of exactly 0, the edge of the support.
        loc = value.detach().double().clamp_min(1e-300).log()
        return {**params, "loc": loc.expand_as(params["loc"])}

    def inverse_cdf(
        self, params: Params, probs: torch.Tensor, event_shape: torch.Size
    ) -> torch.Tensor:
        return normal_inverse_cdf(params["loc"], params["scale"], probs).exp()

    def noise_compensation(self, moments: Moments, event_shape: torch.Size) -> Moments:
        first, second = moments
        # Normal's, on log z.
        return torch.zeros_like(first), (second - first.square()).clamp_min(LOG_VARIANCE_FLOOR)

    def distribution(self, params: Params, event_shape: torch.Size) -> dist.Distribution:
        return dist.LogNormal(params["loc"], params["scale"]).to_event(len(event_shape))

    def init_moments(self, draws: torch.Tensor, event_shape: torch.Size) -> Moments:
        """Normal's robust (median, interquartile range) start, on ``log z``."""
        return Normal().init_moments(safe_log(draws.double()), event_shape)
