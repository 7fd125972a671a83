"""Categorical and Multinomial (fixed total count) families."""

from __future__ import annotations

from typing import Optional

import scipy.stats
import torch
from torch.distributions import constraints

import pyro.distributions as dist

from ._special import defensive_logits, normalised_log_probs, scipy_elementwise
from .base import ANY_EVENT_DIMS, AnyEventDims, Family, Moments, Params
from .support import integer_interval_bounds, support_kind, unwrap_prior, unwrap_support


def _smoothed_proportions(fractions: torch.Tensor) -> torch.Tensor:
    """Mean of prior draws of category fractions (last dim), plus half a pseudo-count each.

    Keeps a category that no prior draw showed proposable from the first step.
    """
    fractions = fractions.double()
    num = fractions.shape[-1]
    return (fractions.sum(0) + 0.5) / (fractions.shape[0] + 0.5 * num)


def categories_from_support(site_name: str, support: constraints.Constraint) -> int:
    """The number of categories of a site with support ``integer_interval(0, C - 1)``.

    :raises ValueError: for another support, a lower bound other than 0, or an upper
        bound that differs across the site's batch.
    """
    bounds = integer_interval_bounds(support)
    if bounds is None:
        raise ValueError(
            f"Site '{site_name}': the Categorical family needs a support "
            f"integer_interval(0, C - 1), got {support!r}."
        )
    lower, upper = (torch.as_tensor(b) for b in bounds)
    if not bool(torch.all(lower == 0)):
        raise ValueError(
            f"Site '{site_name}' has support {support!r}: the Categorical family needs the "
            f"lower bound 0. Sample an index from 0 and shift it in the model instead."
        )
    if upper.numel() > 1 and not bool(torch.all(upper == upper.reshape(-1)[0])):
        raise ValueError(
            f"Site '{site_name}' has support {support!r} whose upper bound differs across "
            f"the batch; a Categorical family needs one number of categories. Use a "
            f"Binomial prior (families={{'{site_name}': 'Binomial'}}) or split the site."
        )
    return int(upper.reshape(-1)[0].item()) + 1


class Categorical(Family):
    """q(z) = Categorical(logits) over ``{0, ..., num_categories - 1}``, per coordinate.

    Statistic ``one_hot(z)``; M-step ``probs = E one_hot(z)``, floored at 1e-10 and
    renormalised.

    :param num_categories: the number of categories C (at least 2).

    Example::

        fam = Categorical(3)
        fam.params_from_moments((torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64),),
                                torch.Size())
    """

    name = "Categorical"
    support = constraints.integer_interval(0, 1)
    stat_names = ("one_hot",)
    event_dims = ANY_EVENT_DIMS
    default_for = ("integer_interval",)

    def __init__(self, num_categories: int) -> None:
        if int(num_categories) != num_categories or num_categories < 2:
            raise ValueError(
                f"Categorical: num_categories must be an integer >= 2, got {num_categories}"
            )
        self.num_categories = int(num_categories)
        # Instances carry their own bounds; matching only looks at the type.
        self.support = constraints.integer_interval(0, self.num_categories - 1)

    @classmethod
    def from_site(
        cls,
        site_name: str,
        support: constraints.Constraint,
        prior: Optional[torch.distributions.Distribution] = None,
    ) -> "Categorical":
        """The Categorical family for a site with support ``integer_interval(0, C - 1)``."""
        return cls(categories_from_support(site_name, support))

    def check_site(self, site_name: str, support: constraints.Constraint) -> None:
        """Raise ``ValueError`` if the site's number of categories differs from ours."""
        expected = categories_from_support(site_name, support)
        if expected != self.num_categories:
            raise ValueError(
                f"Site '{site_name}' has {expected} categories (support {support!r}) but "
                f"the family given for it is {self!r}; use Categorical({expected})."
            )

    def statistics(self, value: torch.Tensor, event_shape: torch.Size) -> Moments:
        # A comparison, not F.one_hot, which checks the values' range on the host (a
        # recorded step cannot); the particles lie in the support by construction.
        categories = torch.arange(self.num_categories, device=value.device)
        one_hot = value.long().unsqueeze(-1) == categories
        return (one_hot.to(torch.get_default_dtype()),)

    def params_from_moments(self, moments: Moments, event_shape: torch.Size) -> Params:
        return {"logits": normalised_log_probs(moments[0]).to(moments[0].dtype)}

    def moments_from_params(self, params: Params, event_shape: torch.Size) -> Moments:
        return (torch.softmax(params["logits"], -1),)

    def distribution(self, params: Params, event_shape: torch.Size) -> dist.Distribution:
        return dist.Categorical(logits=params["logits"]).to_event(len(event_shape))

    def proposal_params(self, params: Params, num_particles: int) -> Params:
        """q mixed with the uniform distribution over the categories at weight ``1 / K``
        (see :meth:`Family.proposal_params`)."""
        return {**params, "logits": defensive_logits(params["logits"], num_particles)}

    def init_moments(self, draws: torch.Tensor, event_shape: torch.Size) -> Moments:
        return (_smoothed_proportions(self.statistics(draws, event_shape)[0]),)

    def relocate(self, params: Params, value: torch.Tensor) -> Params:
        """A copy of ``params``, unchanged."""
        # Category labels are unordered, so q has no centre to move; putting all mass on
        # the given category would stop QEM from ever proposing the others.
        return dict(params)

    def inverse_cdf(
        self, params: Params, probs: torch.Tensor, event_shape: torch.Size
    ) -> torch.Tensor:
        """The smallest category whose CDF (in label order) reaches each probability."""
        cdf = torch.softmax(params["logits"].double(), -1).cumsum(-1)
        below = (cdf < probs.unsqueeze(-1)).sum(-1).double()
        # Roundoff can leave the last cumulative sum just under a probability near 1.
        return below.clamp_max(self.num_categories - 1)

    def __repr__(self) -> str:
        return f"Categorical({self.num_categories})"


class Multinomial(Family):
    """q(z) = Multinomial(total_count, logits) for a count-vector site (event dim 1).

    Statistic ``z``; M-step ``probs = E z / total_count``, floored and renormalised.

    :param total_count: the fixed number of trials.

    Example::

        fam = Multinomial(total_count=10)
        fam.params_from_moments((torch.tensor([2.0, 3.0, 5.0], dtype=torch.float64),),
                                torch.Size([3]))
    """

    name = "Multinomial"
    support = constraints.multinomial(1)
    stat_names = ("z",)
    # The categories are the last event dim; any dims before it are independent.
    event_dims = AnyEventDims(1)
    default_for = ("multinomial",)

    def __init__(self, total_count: int) -> None:
        if int(total_count) != total_count or total_count < 1:
            raise ValueError(f"Multinomial: total_count must be an integer >= 1, got {total_count}")
        self.total_count = int(total_count)
        self.support = constraints.multinomial(self.total_count)

    @classmethod
    def from_site(
        cls,
        site_name: str,
        support: constraints.Constraint,
        prior: Optional[torch.distributions.Distribution] = None,
    ) -> "Multinomial":
        """The Multinomial family for a site: ``total_count`` from its prior or support."""
        base_prior = unwrap_prior(prior)
        if isinstance(base_prior, torch.distributions.Multinomial):
            return cls(base_prior.total_count)
        if support_kind(support) == "multinomial":
            return cls(unwrap_support(support).upper_bound)
        raise ValueError(
            f"Site '{site_name}': the Multinomial family needs a total count, taken from a "
            f"Multinomial prior or a multinomial support; got support {support!r}. "
            f"Pass families={{'{site_name}': Multinomial(total_count=n)}}."
        )

    def check_site(self, site_name: str, support: constraints.Constraint) -> None:
        """Raise ``ValueError`` if the site's total count differs from ours."""
        expected = getattr(unwrap_support(support), "upper_bound", self.total_count)
        if expected != self.total_count:
            raise ValueError(
                f"Site '{site_name}' has total count {expected} (support {support!r}) but "
                f"the family given for it is {self!r}; use Multinomial({expected})."
            )

    def statistics(self, value: torch.Tensor, event_shape: torch.Size) -> Moments:
        return (value.to(torch.promote_types(value.dtype, torch.get_default_dtype())),)

    def params_from_moments(self, moments: Moments, event_shape: torch.Size) -> Params:
        return {"logits": normalised_log_probs(moments[0]).to(moments[0].dtype)}

    def moments_from_params(self, params: Params, event_shape: torch.Size) -> Moments:
        return (self.total_count * torch.softmax(params["logits"], -1),)

    def distribution(self, params: Params, event_shape: torch.Size) -> dist.Distribution:
        q = dist.Multinomial(self.total_count, logits=params["logits"])
        return q.to_event(len(event_shape) - 1)

    def init_moments(self, draws: torch.Tensor, event_shape: torch.Size) -> Moments:
        return (self.total_count * _smoothed_proportions(draws / self.total_count),)

    def relocate(self, params: Params, value: torch.Tensor) -> Params:
        """A copy of ``params``, unchanged."""
        # The value is one count vector: proportions taken from it give no mass to its
        # zero counts, which QEM could then never propose again.
        return dict(params)

    def inverse_cdf(
        self, params: Params, probs: torch.Tensor, event_shape: torch.Size
    ) -> torch.Tensor:
        """Each count's marginal, Binomial(total_count, probs_k)."""
        category_probs = torch.softmax(params["logits"].double(), -1)
        total = category_probs.new_tensor(self.total_count)
        return scipy_elementwise(scipy.stats.binom.ppf, probs, total, category_probs)

    def __repr__(self) -> str:
        return f"Multinomial({self.total_count})"


class OneHotCategorical(Family):
    """q(z) = OneHotCategorical(logits) for a one-hot site (the categories are the last
    event dim), independently over any further event dims.

    Statistic ``z`` itself, the one-hot vector; M-step ``probs = E z``, floored at
    1e-10 and renormalised, as for :class:`Categorical`.

    Example::

        fam = OneHotCategorical()
        params = fam.params_from_moments((torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64),),
                                         torch.Size([3]))
        fam.distribution(params, torch.Size([3])).sample()  # e.g. tensor([0., 0., 1.])
    """

    name = "OneHotCategorical"
    support = constraints.one_hot
    stat_names = ("one_hot",)
    event_dims = AnyEventDims(1)
    default_for = ("one_hot",)

    def statistics(self, value: torch.Tensor, event_shape: torch.Size) -> Moments:
        return (value.to(torch.promote_types(value.dtype, torch.get_default_dtype())),)

    def params_from_moments(self, moments: Moments, event_shape: torch.Size) -> Params:
        return {"logits": normalised_log_probs(moments[0]).to(moments[0].dtype)}

    def moments_from_params(self, params: Params, event_shape: torch.Size) -> Moments:
        return (torch.softmax(params["logits"], -1),)

    def distribution(self, params: Params, event_shape: torch.Size) -> dist.Distribution:
        q = _OneHot(logits=params["logits"])
        return q.to_event(len(event_shape) - 1)

    def proposal_params(self, params: Params, num_particles: int) -> Params:
        """q mixed with the uniform distribution over the categories at weight ``1 / K``
        (see :meth:`Family.proposal_params`)."""
        return {**params, "logits": defensive_logits(params["logits"], num_particles)}

    def init_moments(self, draws: torch.Tensor, event_shape: torch.Size) -> Moments:
        return (_smoothed_proportions(draws),)

    def relocate(self, params: Params, value: torch.Tensor) -> Params:
        """A copy of ``params``, unchanged (as for :class:`Categorical`)."""
        # All mass on the given category would stop QEM from proposing the others.
        return dict(params)

    def inverse_cdf(
        self, params: Params, probs: torch.Tensor, event_shape: torch.Size
    ) -> torch.Tensor:
        """Each coordinate's marginal, Bernoulli(probs_k): 1 where p exceeds 1 - probs_k."""
        category_probs = torch.softmax(params["logits"].double(), -1)
        return (probs > 1 - category_probs).double()


class _OneHot(dist.OneHotCategorical):
    """``OneHotCategorical`` whose draws are one-hot by comparison: torch's sampler uses
    ``F.one_hot``, which checks the indices' range on the host, so a recorded step
    (:mod:`pyro_qem.infer.compiled`) could not contain it. Same draws, same density."""

    def sample(self, sample_shape=torch.Size()):
        indices = self._categorical.sample(sample_shape)
        categories = torch.arange(self._categorical._num_events, device=indices.device)
        return (indices.unsqueeze(-1) == categories).to(self.probs)
