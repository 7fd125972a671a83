"""Exponential and HalfNormal families: one-parameter positive sites."""

from __future__ import annotations

import math

import torch
from torch.distributions import constraints

import pyro.distributions as dist

from ._special import ABSOLUTE_SCALE_FLOOR
from .base import ANY_EVENT_DIMS, Family, Moments, Params


class Exponential(Family):
    """q(z) = Exponential(rate), independently per coordinate.

    Statistic ``z``; M-step ``rate = 1 / E z``.

    Example::

        fam = Exponential()
        fam.params_from_moments((torch.tensor(0.5, dtype=torch.float64),), torch.Size())  # rate 2
    """

    name = "Exponential"
    support = constraints.positive
    stat_names = ("z",)
    event_dims = ANY_EVENT_DIMS

    def statistics(self, value: torch.Tensor, event_shape: torch.Size) -> Moments:
        return (value,)

    def params_from_moments(self, moments: Moments, event_shape: torch.Size) -> Params:
        return {"rate": moments[0].clamp_min(ABSOLUTE_SCALE_FLOOR).reciprocal()}

    def moments_from_params(self, params: Params, event_shape: torch.Size) -> Moments:
        return (params["rate"].reciprocal(),)

    def distribution(self, params: Params, event_shape: torch.Size) -> dist.Distribution:
        return dist.Exponential(params["rate"]).to_event(len(event_shape))

    def relocate(self, params: Params, value: torch.Tensor) -> Params:
        """``params`` with the mean ``1 / rate`` at ``value``."""
        # 1e-300 keeps the rate finite for a centre of exactly 0, the edge of the support.
        rate = value.detach().double().clamp_min(1e-300).reciprocal()
        return {**params, "rate": rate.expand_as(params["rate"])}

    def inverse_cdf(
        self, params: Params, probs: torch.Tensor, event_shape: torch.Size
    ) -> torch.Tensor:
        return -torch.log1p(-probs) / params["rate"].double()


class HalfNormal(Family):
    """q(z) = HalfNormal(scale), independently per coordinate.

    Statistic ``z^2``; M-step ``scale = sqrt(E z^2)``.

    Example::

        fam = HalfNormal()
        fam.params_from_moments((torch.tensor(4.0, dtype=torch.float64),), torch.Size())  # scale 2
    """

    name = "HalfNormal"
    support = constraints.positive
    stat_names = ("z2",)
    event_dims = ANY_EVENT_DIMS

    def statistics(self, value: torch.Tensor, event_shape: torch.Size) -> Moments:
        return (value.square(),)

    def params_from_moments(self, moments: Moments, event_shape: torch.Size) -> Params:
        return {"scale": moments[0].clamp_min(0.0).sqrt().clamp_min(ABSOLUTE_SCALE_FLOOR)}

    def moments_from_params(self, params: Params, event_shape: torch.Size) -> Moments:
        return (params["scale"].square(),)

    def distribution(self, params: Params, event_shape: torch.Size) -> dist.Distribution:
        return dist.HalfNormal(params["scale"]).to_event(len(event_shape))

    def relocate(self, params: Params, value: torch.Tensor) -> Params:
        """``params`` with the mean ``scale * sqrt(2 / pi)`` at ``value``."""
        scale = value.detach().double() * math.sqrt(math.pi / 2)
        return {**params, "scale": scale.expand_as(params["scale"])}

    def inverse_cdf(
        self, params: Params, probs: torch.Tensor, event_shape: torch.Size
    ) -> torch.Tensor:
        # |x| <= z has probability 2 Phi(z / scale) - 1.
        return params["scale"].double() * torch.special.ndtri((1 + probs) / 2)
