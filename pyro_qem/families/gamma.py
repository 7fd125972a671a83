"""Gamma and InverseGamma families: positive sites, shape fitted by Newton's method."""

from __future__ import annotations

import scipy.special
import torch
from torch.distributions import constraints

import pyro.distributions as dist

from ._special import ABSOLUTE_SCALE_FLOOR, gamma_shape, safe_log, scipy_elementwise
from .base import ANY_EVENT_DIMS, Family, Moments, Params


def _shape_and_rate(mean: torch.Tensor, mean_log: torch.Tensor) -> Params:
    """Gamma(shape, rate) with ``E z = mean`` and ``E log z = mean_log`` (float64)."""
    mean = mean.double()
    # The gap is scale-free, so it is taken before the scale is floored: a floored
    # mean must not turn a collapsed q into a very wide one.
    shape = gamma_shape(safe_log(mean) - mean_log.double())
    # The rate is tied to E z, so its floor moves with the site's scale.
    return {"concentration": shape, "rate": shape / mean.clamp_min(ABSOLUTE_SCALE_FLOOR)}


class Gamma(Family):
    """q(z) = Gamma(concentration, rate), independently per coordinate.

    Statistics ``(z, log z)``; the M-step solves ``log a - digamma(a) = log E z - E log z``
    for the shape ``a`` (Minka's generalised Newton) and sets ``rate = a / E z``.

    Example::

        fam = Gamma()
        m = fam.moments_from_params({"concentration": torch.tensor(2.0, dtype=torch.float64),
                                     "rate": torch.tensor(3.0, dtype=torch.float64)},
                                    torch.Size())
        fam.params_from_moments(m, torch.Size())  # concentration 2, rate 3
    """

    name = "Gamma"
    support = constraints.positive
    stat_names = ("z", "log_z")
    event_dims = ANY_EVENT_DIMS
    default_for = ("positive",)

    def concentration(self, coordinates: Params) -> torch.Tensor:
        return coordinates["concentration"]

    def statistics(self, value: torch.Tensor, event_shape: torch.Size) -> Moments:
        return value, safe_log(value)

    def params_from_moments(self, moments: Moments, event_shape: torch.Size) -> Params:
        mean, mean_log = moments
        params = _shape_and_rate(mean, mean_log)
        return {k: v.to(mean.dtype) for k, v in params.items()}

    def moments_from_params(self, params: Params, event_shape: torch.Size) -> Moments:
        a, b = params["concentration"], params["rate"]
        return a / b, torch.digamma(a) - b.log()

    def distribution(self, params: Params, event_shape: torch.Size) -> dist.Distribution:
        return dist.Gamma(params["concentration"], params["rate"]).to_event(len(event_shape))

    def natural_from_moments(self, moments: Moments, event_shape: torch.Size):
        """``(-rate, concentration - 1)``, the coefficients of ``(z, log z)``."""
        params = self.params_from_moments(moments, event_shape)
        return -params["rate"], params["concentration"] - 1.0

    def moments_from_natural(self, natural, event_shape: torch.Size):
        minus_rate, shape_minus_one = natural
        rate, concentration = -minus_rate, shape_minus_one + 1.0
        valid = torch.isfinite(rate) & torch.isfinite(concentration) & (rate > 0) & (concentration > 0)
        one = torch.ones_like(rate)
        params = {"concentration": torch.where(valid, concentration, one),
                  "rate": torch.where(valid, rate, one)}
        return self.moments_from_params(params, event_shape), valid

    def relocate(self, params: Params, value: torch.Tensor) -> Params:
        """``params`` with the mean ``concentration / rate`` at ``value``; the shape is kept."""
        # 1e-300 keeps the rate finite for a centre of exactly 0, the edge of the support.
        rate = params["concentration"] / value.detach().double().clamp_min(1e-300)
        return {**params, "rate": rate}

    def inverse_cdf(
        self, params: Params, probs: torch.Tensor, event_shape: torch.Size
    ) -> torch.Tensor:
        unit_rate = scipy_elementwise(scipy.special.gammaincinv, params["concentration"], probs)
        return unit_rate / params["rate"].double()

    def noise_compensation(self, moments: Moments, event_shape: torch.Size) -> Moments:
        mean, mean_log = moments
        shape = _shape_and_rate(mean, mean_log)["concentration"]
        # The shape follows log E z - E log z; a random step in E z lowers E[log E z]
        # by Var(step) / (2 (E z)^2) = lr^2 sum w^2 / (2 shape) (delta method).
        return torch.zeros_like(mean), -0.5 / shape


class InverseGamma(Family):
    """q(z) = InverseGamma(concentration, rate): ``1/z`` is Gamma(concentration, rate).

    Statistics ``(1/z, log z)``; the M-step is Gamma's on ``1/z``.

    Example::

        fam = InverseGamma()
        q = fam.distribution({"concentration": torch.tensor(3.0), "rate": torch.tensor(2.0)},
                             torch.Size())
    """

    name = "InverseGamma"
    support = constraints.positive
    stat_names = ("inv_z", "log_z")
    event_dims = ANY_EVENT_DIMS

    def concentration(self, coordinates: Params) -> torch.Tensor:
        return coordinates["concentration"]

    def statistics(self, value: torch.Tensor, event_shape: torch.Size) -> Moments:
        log_z = safe_log(value)
        return (-log_z).exp(), log_z

    def params_from_moments(self, moments: Moments, event_shape: torch.Size) -> Params:
        mean_inv, mean_log = moments
        params = _shape_and_rate(mean_inv, -mean_log.double())
        return {k: v.to(mean_inv.dtype) for k, v in params.items()}

    def moments_from_params(self, params: Params, event_shape: torch.Size) -> Moments:
        a, b = params["concentration"], params["rate"]
        return a / b, b.log() - torch.digamma(a)

    def relocate(self, params: Params, value: torch.Tensor) -> Params:
        """``params`` with the mode ``rate / (concentration + 1)`` at ``value``; the shape
        is kept."""
        # The mode, unlike the mean, exists for every shape.
        return {**params, "rate": value.detach().double() * (params["concentration"] + 1)}

    def inverse_cdf(
        self, params: Params, probs: torch.Tensor, event_shape: torch.Size
    ) -> torch.Tensor:
        # z <= x exactly when the Gamma variable 1/z >= 1/x.
        upper = scipy_elementwise(scipy.special.gammaincinv, params["concentration"], 1 - probs)
        return params["rate"].double() / upper

    def noise_compensation(self, moments: Moments, event_shape: torch.Size) -> Moments:
        mean_inv, mean_log = moments
        # Gamma's on 1/z, whose log is -log z.
        shape = _shape_and_rate(mean_inv, -mean_log.double())["concentration"]
        return torch.zeros_like(mean_inv), 0.5 / shape

    def distribution(self, params: Params, event_shape: torch.Size) -> dist.Distribution:
        q = dist.InverseGamma(params["concentration"], params["rate"])
        return q.to_event(len(event_shape))

    def natural_from_moments(self, moments: Moments, event_shape: torch.Size):
        """``(-rate, -concentration - 1)``, the coefficients of ``(1 / z, log z)``."""
        params = self.params_from_moments(moments, event_shape)
        return -params["rate"], -params["concentration"] - 1.0

    def moments_from_natural(self, natural, event_shape: torch.Size):
        minus_rate, minus_shape_minus_one = natural
        rate, concentration = -minus_rate, -minus_shape_minus_one - 1.0
        valid = torch.isfinite(rate) & torch.isfinite(concentration) & (rate > 0) & (concentration > 0)
        one = torch.ones_like(rate)
        params = {"concentration": torch.where(valid, concentration, one),
                  "rate": torch.where(valid, rate, one)}
        return self.moments_from_params(params, event_shape), valid
