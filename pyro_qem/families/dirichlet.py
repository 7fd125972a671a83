"""Beta and Dirichlet families: unit-interval and simplex sites."""

from __future__ import annotations

import scipy.special
import torch
from torch.distributions import constraints

import pyro.distributions as dist

from ._special import CENTRE_MARGIN, dirichlet_concentration, safe_log, scipy_elementwise
from .base import ANY_EVENT_DIMS, AnyEventDims, Family, Moments, Params


class Dirichlet(Family):
    """q(z) = Dirichlet(concentration) for a simplex site (event dim 1, or more with
    ``.to_event``: independent Dirichlets over the last dim).

    Statistic ``log z``; the M-step finds the concentration with
    ``digamma(a_k) - digamma(sum a) = E log z_k`` by Minka's fixed point, then Newton.

    Example::

        fam = Dirichlet()
        a = torch.tensor([0.5, 2.0, 30.0], dtype=torch.float64)
        m = fam.moments_from_params({"concentration": a}, torch.Size([3]))
        fam.params_from_moments(m, torch.Size([3]))  # concentration [0.5, 2, 30]
    """

    name = "Dirichlet"
    support = constraints.simplex
    stat_names = ("log_z",)
    # The categories are the last event dim; any dims before it are independent.
    event_dims = AnyEventDims(1)
    default_for = ("simplex",)

    def concentration(self, coordinates: Params) -> torch.Tensor:
        return coordinates["concentration"]

    def statistics(self, value: torch.Tensor, event_shape: torch.Size) -> Moments:
        return (safe_log(value),)

    def params_from_moments(self, moments: Moments, event_shape: torch.Size) -> Params:
        (mean_log,) = moments
        return {"concentration": dirichlet_concentration(mean_log).to(mean_log.dtype)}

    def moments_from_params(self, params: Params, event_shape: torch.Size) -> Moments:
        a = params["concentration"]
        return (torch.digamma(a) - torch.digamma(a.sum(-1, keepdim=True)),)

    def distribution(self, params: Params, event_shape: torch.Size) -> dist.Distribution:
        return dist.Dirichlet(params["concentration"]).to_event(len(event_shape) - 1)

    def relocate(self, params: Params, value: torch.Tensor) -> Params:
        """``params`` with the mean ``a / sum(a)`` at ``value`` (renormalised); the total
        concentration is kept."""
        total = params["concentration"].sum(-1, keepdim=True)
        v = value.detach().double().clamp_min(CENTRE_MARGIN)
        return {**params, "concentration": total * v / v.sum(-1, keepdim=True)}

    def inverse_cdf(
        self, params: Params, probs: torch.Tensor, event_shape: torch.Size
    ) -> torch.Tensor:
        """Each coordinate's marginal, Beta(a_k, sum(a) - a_k)."""
        a = params["concentration"].double()
        return scipy_elementwise(scipy.special.betaincinv, a, a.sum(-1, keepdim=True) - a, probs)


class Beta(Family):
    """q(z) = Beta(concentration1, concentration0), independently per coordinate.

    Statistics ``(log z, log(1 - z))``; the M-step is Dirichlet's on the pair.

    Example::

        fam = Beta()
        q = fam.distribution({"concentration1": torch.tensor(2.0),
                              "concentration0": torch.tensor(5.0)}, torch.Size())
    """

    name = "Beta"
    support = constraints.unit_interval
    stat_names = ("log_z", "log_1mz")
    event_dims = ANY_EVENT_DIMS
    default_for = ("unit_interval",)

    def concentration(self, coordinates: Params) -> torch.Tensor:
        return coordinates["concentration1"] + coordinates["concentration0"]

    def statistics(self, value: torch.Tensor, event_shape: torch.Size) -> Moments:
        return safe_log(value), safe_log(1.0 - value)

    def params_from_moments(self, moments: Moments, event_shape: torch.Size) -> Params:
        mean_log, mean_log1m = moments
        a = dirichlet_concentration(torch.stack([mean_log, mean_log1m], -1)).to(mean_log.dtype)
        return {"concentration1": a[..., 0], "concentration0": a[..., 1]}

    def moments_from_params(self, params: Params, event_shape: torch.Size) -> Moments:
        a, b = params["concentration1"], params["concentration0"]
        total = torch.digamma(a + b)
        return torch.digamma(a) - total, torch.digamma(b) - total

    def distribution(self, params: Params, event_shape: torch.Size) -> dist.Distribution:
        q = dist.Beta(params["concentration1"], params["concentration0"])
        return q.to_event(len(event_shape))

    def relocate(self, params: Params, value: torch.Tensor) -> Params:
        """``params`` with the mean ``a / (a + b)`` at ``value``; ``a + b`` is kept."""
        total = params["concentration1"] + params["concentration0"]
        v = value.detach().double().clamp(CENTRE_MARGIN, 1 - CENTRE_MARGIN)
        return {**params, "concentration1": total * v, "concentration0": total * (1 - v)}

    def inverse_cdf(
        self, params: Params, probs: torch.Tensor, event_shape: torch.Size
    ) -> torch.Tensor:
        a, b = params["concentration1"], params["concentration0"]
        return scipy_elementwise(scipy.special.betaincinv, a, b, probs)
