"""Unconstrained family: a Normal on ``biject_to(support).inv(z)``, for any continuous
support that torch can reach from the reals."""

from __future__ import annotations

from typing import Optional

import torch
from torch.distributions import biject_to, constraints
from torch.distributions.transforms import IndependentTransform, Transform

import pyro.distributions as dist

from .base import ANY_EVENT_DIMS, Family, Moments, Params
from .normal import Normal, NormalCoordinates, normal_inverse_cdf
from .support import any_bijective, check_same_support, has_bijection, unwrap_support

# The Normal M-step, noise compensation and robust start, on the unconstrained values.
_NORMAL = Normal()


class Unconstrained(NormalCoordinates, Family):
    """q(z) = the pushforward of a diagonal Normal(loc, scale) on the unconstrained space
    through ``T = biject_to(support)``, for a site with any continuous support that
    ``torch.distributions.biject_to`` knows (``corr_cholesky`` of ``LKJCholesky``,
    ``ordered_vector``, ``greater_than(c)`` of ``Pareto``, ...).

    Statistics ``(u, u^2)`` of ``u = T^-1(z)`` per unconstrained coordinate; the M-step
    is the Normal family's on ``u``. Vector and matrix sites flatten to the transform's
    unconstrained event shape (3 coordinates for a 3x3 ``LKJCholesky``). ``log q(z) =
    log N(u) - log |det J_T(u)|``, which the returned ``TransformedDistribution`` computes.

    It is the default for continuous supports no other family claims, and can be chosen
    by name for every continuous support with a bijection.

    :param support: the site's support.

    Example::

        fam = Unconstrained(dist.LKJCholesky(3).support)
        q = fam.distribution({"loc": torch.zeros(3), "scale": torch.ones(3)},
                             torch.Size([3, 3]))
        q.sample().shape  # (3, 3), a Cholesky factor of a correlation matrix
    """

    name = "Unconstrained"
    support = any_bijective
    stat_names = ("u", "u2")
    event_dims = ANY_EVENT_DIMS
    default_for = ("bijective",)

    def __init__(self, support: constraints.Constraint) -> None:
        if not has_bijection(support) or isinstance(unwrap_support(support), type(any_bijective)):
            raise ValueError(
                f"Unconstrained: the support {support!r} is discrete or has no bijection "
                f"from the reals (torch.distributions.biject_to)."
            )
        # The instance's support is the site's, so that overrides are checked against it.
        self.support = support

    @classmethod
    def from_site(
        cls,
        site_name: str,
        support: constraints.Constraint,
        prior: Optional[torch.distributions.Distribution] = None,
    ) -> "Unconstrained":
        """The Unconstrained family on the site's support."""
        try:
            return cls(support)
        except ValueError as error:
            raise ValueError(f"Site '{site_name}': {error}") from None

    def check_site(self, site_name: str, support: constraints.Constraint) -> None:
        """Raise ``ValueError`` if the site's support is another set than ours."""
        check_same_support(self, site_name, support, "support")

    def transform(self, event_shape: torch.Size) -> Transform:
        """The bijection from the unconstrained space onto the support of a site with
        ``event_shape``; event dims the support leaves out are made independent."""
        transform = biject_to(self.support)
        extra = len(event_shape) - transform.codomain.event_dim
        if extra < 0:
            raise ValueError(
                f"Unconstrained: the support {self.support!r} has {transform.codomain.event_dim} "
                f"event dims, more than the site's event shape {tuple(event_shape)}."
            )
        return IndependentTransform(transform, extra) if extra else transform

    def unconstrained_shape(self, event_shape: torch.Size) -> torch.Size:
        """The event shape of ``u``, e.g. ``(3,)`` for a 3x3 ``corr_cholesky`` site."""
        return self.transform(event_shape).inverse_shape(event_shape)

    def statistics(self, value: torch.Tensor, event_shape: torch.Size) -> Moments:
        value = value.to(torch.promote_types(value.dtype, torch.get_default_dtype()))
        u = self.transform(event_shape).inv(value)
        # A value on the edge of the support (a float32 zero of a positive site) maps
        # to an infinite u; the bound keeps u^2 finite.
        bound = torch.finfo(u.dtype).max ** 0.5 / 2
        return _NORMAL.statistics(torch.nan_to_num(u).clamp(-bound, bound), event_shape)

    def params_from_moments(self, moments: Moments, event_shape: torch.Size) -> Params:
        return _NORMAL.params_from_moments(moments, event_shape)

    def moments_from_params(self, params: Params, event_shape: torch.Size) -> Moments:
        return _NORMAL.moments_from_params(params, event_shape)

    def distribution(self, params: Params, event_shape: torch.Size) -> dist.Distribution:
        transform = self.transform(event_shape)
        base = dist.Normal(params["loc"], params["scale"]).to_event(transform.domain.event_dim)
        return dist.TransformedDistribution(base, [transform])

    def init_moments(self, draws: torch.Tensor, event_shape: torch.Size) -> Moments:
        """Normal's robust (median, interquartile range) start, on ``u``."""
        u = self.transform(event_shape).inv(draws.double())
        return _NORMAL.init_moments(u, self.unconstrained_shape(event_shape))

    def noise_compensation(self, moments: Moments, event_shape: torch.Size) -> Moments:
        return _NORMAL.noise_compensation(moments, event_shape)

    def relocate(self, params: Params, value: torch.Tensor) -> Params:
        """``params`` with ``loc = T^-1(value)`` (q's median for a scalar support); the
        scale is kept."""
        u = biject_to(self.support).inv(value.detach().double())
        return {**params, "loc": u.expand_as(params["loc"]).clone()}

    def inverse_cdf(
        self, params: Params, probs: torch.Tensor, event_shape: torch.Size
    ) -> torch.Tensor:
        """Normal quantiles of ``u`` pushed through the monotone ``T``, for supports whose
        bijection acts per coordinate (scalar supports, also inside ``.to_event``)."""
        if not _is_elementwise(self.support):
            raise NotImplementedError(
                f"Unconstrained: quantiles are defined per coordinate only for a support "
                f"whose bijection acts elementwise; {self.support!r} maps a whole event "
                f"(its coordinates have no marginal quantiles through it). Read quantiles "
                f"of functions of the site from draws of guide.distributions() instead."
            )
        transform = biject_to(unwrap_support(self.support))
        increasing = torch.as_tensor(transform.sign, dtype=torch.float64) > 0
        # A decreasing T (less_than(c)) maps the p-quantile of u to the (1-p)-quantile of z.
        p = torch.where(increasing, probs, 1 - probs)
        u = normal_inverse_cdf(params["loc"], params["scale"], p)
        return transform(u).double()

    def __repr__(self) -> str:
        return f"Unconstrained({self.support!r})"


def _is_elementwise(support: constraints.Constraint) -> bool:
    """Whether ``biject_to`` maps each coordinate of the support on its own."""
    return biject_to(unwrap_support(support)).codomain.event_dim == 0
