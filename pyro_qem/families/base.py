"""The interface every moment-matched family implements.

A family is an exponential family q(z) with sufficient statistics T(z). QEM keeps the
*mean parameters* m = E_q[T(z)] of each site as its state: the E-step estimates
posterior moments of T from importance weights, the moments are smoothed, and the
M-step maps them back to the family's usual parameters.

All mappings work on float64 tensors with arbitrary leading batch dimensions; the
guide casts to the model's dtype only when it builds the distribution it samples from.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar, Dict, Optional, Tuple

import torch
from torch.distributions import constraints

Params = Dict[str, torch.Tensor]
Moments = Tuple[torch.Tensor, ...]


class Family(ABC):
    """A moment-matched approximate-posterior family.

    Subclasses are small and stateless: every method receives the site's
    ``event_shape`` (``torch.Size([])`` for a scalar site, ``(D,)`` for a vector
    site made with ``.to_event(1)``) and works on any batch shape.

    :cvar name: the name users pass in ``families={"site": name}``.
    :cvar support: the support of q, matched against a site's support by
        constraint type and structure (see :func:`pyro_qem.families.support_matches`).
    :cvar stat_names: one short name per sufficient statistic; used in param-store names.
    :cvar event_dims: the event dims the family handles: ``(0,)`` scalar sites only,
        ``(1,)`` vector sites only, ``(0, 1)`` both.

    Example::

        fam = Normal()
        moments = fam.moments_from_params({"loc": torch.zeros(3), "scale": torch.ones(3)},
                                          torch.Size())
        fam.params_from_moments(moments, torch.Size())  # loc 0, scale 1
    """

    name: ClassVar[str]
    support: ClassVar[constraints.Constraint]
    stat_names: ClassVar[Tuple[str, ...]]
    event_dims: ClassVar[Tuple[int, ...]] = (0,)

    @abstractmethod
    def statistics(self, value: torch.Tensor, event_shape: torch.Size) -> Moments:
        """Sufficient statistics T(z) of ``value``.

        :param value: tensor of shape ``batch + event_shape``.
        :returns: one tensor per statistic, each of shape ``batch + stat_shape``.
        """

    @abstractmethod
    def params_from_moments(self, moments: Moments, event_shape: torch.Size) -> Params:
        """The M-step: parameters whose mean parameters are ``moments``.

        Outputs are clamped into the interior of the parameter space with floors that
        are relative to the site's own scale, so a degenerate estimate gives a narrow
        but valid q, never NaN.
        """

    @abstractmethod
    def moments_from_params(self, params: Params, event_shape: torch.Size) -> Moments:
        """Mean parameters E_q[T(z)] of the distribution with ``params``."""

    @abstractmethod
    def distribution(self, params: Params, event_shape: torch.Size) -> torch.distributions.Distribution:
        """The distribution with ``params``; its event shape is ``event_shape``."""

    def init_moments(self, draws: torch.Tensor, event_shape: torch.Size) -> Moments:
        """Initial mean parameters from draws of the prior (draws along dim 0).

        The default matches moments of the draws after clipping them to their central
        98% per coordinate, so heavy-tailed priors (HalfCauchy, Cauchy) still give a
        finite, sensibly scaled q. Families override this when a robust statistic of
        their own fits better.
        """
        draws = draws.double()
        lo = torch.quantile(draws, 0.01, dim=0)
        hi = torch.quantile(draws, 0.99, dim=0)
        clipped = torch.minimum(torch.maximum(draws, lo), hi)
        stats = self.statistics(clipped, event_shape)
        return tuple(s.mean(0) for s in stats)

    def noise_compensation(self, moments: Moments, event_shape: torch.Size) -> Optional[Moments]:
        """What to add to the estimated statistics, per unit of ``lr * sum_k w_k^2``, so
        that smoothing keeps q's spread on average when the weights carry no
        information about the site; None (the default) for no compensation.

        Why: with weights independent of the particles, ``m_hat`` is unbiased for q's
        mean parameters, but each update moves them by a random step of variance
        ``lr^2 sum_k w_k^2 Cov_q(T)``, and a spread that is a concave function of the
        mean parameters (``Var z = E z^2 - (E z)^2``) loses that much on average: a
        factor ``1 - lr^2 sum_k w_k^2`` per step, a collapse when a large group keeps an
        effective sample size near 1. As the weights' ESS grows the term vanishes.

        :param moments: q's current mean parameters (float64).
        """
        return None

    def supports_event_shape(self, event_shape: torch.Size) -> bool:
        """Whether this family can model a site with ``event_shape``."""
        return len(event_shape) in self.event_dims

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
