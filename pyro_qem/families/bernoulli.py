"""Bernoulli and Binomial (fixed total count) families."""

from __future__ import annotations

from typing import Optional, Union

import scipy.stats
import torch
from torch.distributions import constraints

import pyro.distributions as dist

from ._special import CENTRE_MARGIN, defensive_logits, probs_to_logits, scipy_elementwise
from .base import ANY_EVENT_DIMS, Family, Moments, Params
from .support import integer_interval_bounds, unwrap_prior


def _smoothed_mean(stat: torch.Tensor) -> torch.Tensor:
    """Mean of prior draws of a probability, with half a pseudo-count on each outcome.

    Keeps an outcome that no prior draw showed proposable from the first step.
    """
    stat = stat.double()
    return (stat.sum(0) + 0.5) / (stat.shape[0] + 1.0)


def _logits_with_probability(params: Params, prob: torch.Tensor) -> Params:
    """``params`` with the success probability moved to ``prob``."""
    # A centre of exactly 0 or 1 would give infinite logits and a q that never moves.
    prob = prob.clamp(CENTRE_MARGIN, 1 - CENTRE_MARGIN)
    return {**params, "logits": (prob.log() - (-prob).log1p()).expand_as(params["logits"])}


class Bernoulli(Family):
    """q(z) = Bernoulli(logits), independently per coordinate.

    Statistic ``z``; M-step ``probs = E z``, clamped into ``[1e-10, 1 - 1e-10]``.

    Example::

        fam = Bernoulli()
        fam.params_from_moments((torch.tensor(0.25, dtype=torch.float64),), torch.Size())
    """

    name = "Bernoulli"
    support = constraints.boolean
    stat_names = ("z",)
    event_dims = ANY_EVENT_DIMS
    default_for = ("boolean",)

    def statistics(self, value: torch.Tensor, event_shape: torch.Size) -> Moments:
        return (value.to(torch.promote_types(value.dtype, torch.get_default_dtype())),)

    def params_from_moments(self, moments: Moments, event_shape: torch.Size) -> Params:
        return {"logits": probs_to_logits(moments[0]).to(moments[0].dtype)}

    def moments_from_params(self, params: Params, event_shape: torch.Size) -> Moments:
        return (torch.sigmoid(params["logits"]),)

    def distribution(self, params: Params, event_shape: torch.Size) -> dist.Distribution:
        return dist.Bernoulli(logits=params["logits"]).to_event(len(event_shape))

    def proposal_params(self, params: Params, num_particles: int) -> Params:
        """q mixed with Bernoulli(1/2) at weight ``1 / K`` (see
        :meth:`Family.proposal_params`)."""
        return {**params, "logits": defensive_logits(params["logits"], num_particles, binary=True)}

    def init_moments(self, draws: torch.Tensor, event_shape: torch.Size) -> Moments:
        return (_smoothed_mean(draws),)

    def relocate(self, params: Params, value: torch.Tensor) -> Params:
        """``params`` with the mean ``sigmoid(logits)`` at ``value``."""
        return _logits_with_probability(params, value.detach().double())

    def inverse_cdf(
        self, params: Params, probs: torch.Tensor, event_shape: torch.Size
    ) -> torch.Tensor:
        # P(z = 0) = 1 - sigmoid(logits): 1 is the quantile exactly when p exceeds it.
        return (probs > 1 - torch.sigmoid(params["logits"].double())).double()


class Binomial(Family):
    """q(z) = Binomial(total_count, logits) with the prior's fixed ``total_count``.

    Statistic ``z``; M-step ``probs = E z / total_count``, clamped away from 0 and 1.

    :param total_count: number of trials; a number or a tensor broadcastable to the
        site's batch and event shape.

    Example::

        fam = Binomial(total_count=10)
        fam.params_from_moments((torch.tensor(2.5, dtype=torch.float64),), torch.Size())
    """

    name = "Binomial"
    support = constraints.integer_interval(0, 1)
    stat_names = ("z",)
    event_dims = ANY_EVENT_DIMS

    def __init__(self, total_count: Union[int, float, torch.Tensor]) -> None:
        total = torch.as_tensor(total_count, dtype=torch.float64)
        if not bool(torch.all(total >= 1)) or not bool(torch.all(total == total.round())):
            raise ValueError(f"Binomial: total_count must be positive integers, got {total_count}")
        self.total_count = total
        # Instances carry their own upper bound; matching only looks at the type.
        self.support = constraints.integer_interval(0, total_count)

    @classmethod
    def preferred_for(cls, prior: Optional[torch.distributions.Distribution]) -> bool:
        """True for a Binomial prior: its support ``{0..n}`` alone would give a Categorical."""
        return isinstance(unwrap_prior(prior), torch.distributions.Binomial)

    @classmethod
    def from_site(
        cls,
        site_name: str,
        support: constraints.Constraint,
        prior: Optional[torch.distributions.Distribution] = None,
    ) -> "Binomial":
        """The Binomial family for a site: ``total_count`` from its Binomial prior or support.

        :raises ValueError: when neither gives a total count starting from 0.
        """
        base_prior = unwrap_prior(prior)
        if isinstance(base_prior, torch.distributions.Binomial):
            return cls(base_prior.total_count.detach())
        bounds = integer_interval_bounds(support)
        if bounds is not None and bool(torch.all(torch.as_tensor(bounds[0]) == 0)):
            return cls(torch.as_tensor(bounds[1]).detach())
        raise ValueError(
            f"Site '{site_name}': the Binomial family needs a total count, taken from a "
            f"Binomial prior or a support integer_interval(0, n); got support {support!r}. "
            f"Pass families={{'{site_name}': Binomial(total_count=n)}}."
        )

    def check_site(self, site_name: str, support: constraints.Constraint) -> None:
        """Raise ``ValueError`` if the site's support ``{0..n}`` has another ``n`` than ours."""
        bounds = integer_interval_bounds(support)
        if bounds is None:
            return
        upper = torch.as_tensor(bounds[1], dtype=torch.float64)
        try:
            same = bool(torch.all(upper == self.total_count))
        except RuntimeError:  # shapes that do not broadcast
            same = False
        if not same:
            raise ValueError(
                f"Site '{site_name}' has support {support!r} but the family given for it is "
                f"{self!r}; use Binomial(total_count=...) with the site's upper bound."
            )

    def _total(self, like: torch.Tensor) -> torch.Tensor:
        return self.total_count.to(dtype=like.dtype, device=like.device)

    def statistics(self, value: torch.Tensor, event_shape: torch.Size) -> Moments:
        return (value.to(torch.promote_types(value.dtype, torch.get_default_dtype())),)

    def params_from_moments(self, moments: Moments, event_shape: torch.Size) -> Params:
        mean = moments[0]
        return {"logits": probs_to_logits(mean / self._total(mean)).to(mean.dtype)}

    def moments_from_params(self, params: Params, event_shape: torch.Size) -> Moments:
        logits = params["logits"]
        return (self._total(logits) * torch.sigmoid(logits),)

    def distribution(self, params: Params, event_shape: torch.Size) -> dist.Distribution:
        logits = params["logits"]
        q = dist.Binomial(self._total(logits), logits=logits)
        return q.to_event(len(event_shape))

    def init_moments(self, draws: torch.Tensor, event_shape: torch.Size) -> Moments:
        total = self._total(draws.double())
        return (total * _smoothed_mean(draws / total),)

    def relocate(self, params: Params, value: torch.Tensor) -> Params:
        """``params`` with the mean ``total_count * sigmoid(logits)`` at ``value``."""
        value = value.detach().double()
        return _logits_with_probability(params, value / self._total(value))

    def inverse_cdf(
        self, params: Params, probs: torch.Tensor, event_shape: torch.Size
    ) -> torch.Tensor:
        logits = params["logits"].double()
        total = self._total(logits)
        return scipy_elementwise(scipy.stats.binom.ppf, probs, total, torch.sigmoid(logits))

    def __repr__(self) -> str:
        count = self.total_count
        shown = count.item() if count.numel() == 1 else f"tensor of shape {tuple(count.shape)}"
        return f"Binomial(total_count={shown})"
