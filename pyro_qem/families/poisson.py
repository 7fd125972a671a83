"""Poisson family: nonnegative-integer sites."""

from __future__ import annotations

import scipy.stats
import torch
from torch.distributions import constraints

import pyro.distributions as dist

from ._special import CENTRE_MARGIN, scipy_elementwise
from .base import ANY_EVENT_DIMS, Family, Moments, Params

# A rate this small proposes nothing but zeros, yet stays finite in float32 logs.
RATE_FLOOR = 1e-12


class Poisson(Family):
    """q(z) = Poisson(rate), independently per coordinate.

    Statistic ``z``; M-step ``rate = E z``, floored at 1e-12.

    Example::

        fam = Poisson()
        fam.params_from_moments((torch.tensor(3.5, dtype=torch.float64),), torch.Size())
    """

    name = "Poisson"
    support = constraints.nonnegative_integer
    stat_names = ("z",)
    event_dims = ANY_EVENT_DIMS
    default_for = ("nonnegative_integer",)

    def statistics(self, value: torch.Tensor, event_shape: torch.Size) -> Moments:
        return (value.to(torch.promote_types(value.dtype, torch.get_default_dtype())),)

    def params_from_moments(self, moments: Moments, event_shape: torch.Size) -> Params:
        return {"rate": moments[0].clamp_min(RATE_FLOOR)}

    def moments_from_params(self, params: Params, event_shape: torch.Size) -> Moments:
        return (params["rate"],)

    def distribution(self, params: Params, event_shape: torch.Size) -> dist.Distribution:
        return dist.Poisson(params["rate"]).to_event(len(event_shape))

    def relocate(self, params: Params, value: torch.Tensor) -> Params:
        """``params`` with the mean ``rate`` at ``value``."""
        rate = value.detach().double().clamp_min(CENTRE_MARGIN)
        return {**params, "rate": rate.expand_as(params["rate"])}

    def inverse_cdf(
        self, params: Params, probs: torch.Tensor, event_shape: torch.Size
    ) -> torch.Tensor:
        return scipy_elementwise(scipy.stats.poisson.ppf, probs, params["rate"])
