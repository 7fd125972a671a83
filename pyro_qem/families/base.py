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
from typing import ClassVar, Dict, Optional, Sequence, Tuple, Union

import torch
from torch.distributions import constraints

Params = Dict[str, torch.Tensor]
Moments = Tuple[torch.Tensor, ...]
Probs = Union[torch.Tensor, Sequence[float]]

#: The class attributes every family must set; :func:`~pyro_qem.families.resolve_family`
#: checks them on a user's own family.
REQUIRED_CLASS_ATTRIBUTES = ("name", "support", "stat_names")


class AnyEventDims(tuple):
    """``event_dims`` of a family that handles every number of event dims from
    ``minimum`` on: an elementwise family works the same on scalar, vector and matrix
    sites, so listing the dims it handles would be arbitrary.

    It is an empty tuple whose membership test accepts every ``n >= minimum``.

    :param minimum: the fewest event dims the family handles.

    Example::

        3 in AnyEventDims()  # True
        0 in AnyEventDims(1)  # False
    """

    def __new__(cls, minimum: int = 0) -> "AnyEventDims":
        instance = super().__new__(cls)
        instance.minimum = minimum
        return instance

    def __contains__(self, event_dim: object) -> bool:
        return isinstance(event_dim, int) and event_dim >= self.minimum

    def __repr__(self) -> str:
        return f"({self.minimum}, {self.minimum + 1}, ...)"


#: The ``event_dims`` of elementwise families: any number of event dims.
ANY_EVENT_DIMS = AnyEventDims()


class Family(ABC):
    """A moment-matched approximate-posterior family.

    Subclasses are small and stateless: every method receives the site's
    ``event_shape`` (``torch.Size([])`` for a scalar site, ``(D,)`` for a vector
    site made with ``.to_event(1)``, ``(R, C)`` for a matrix site) and works on any
    batch shape.

    :cvar name: the name users pass in ``families={"site": name}``.
    :cvar support: the support of q, matched against a site's support by
        constraint type and structure (see :func:`pyro_qem.families.support_matches`).
    :cvar stat_names: one short name per sufficient statistic; used in param-store names.
    :cvar event_dims: the event dims the family handles: ``(0,)`` scalar sites only,
        ``(1,)`` vector sites only, ``(0, 1)`` both, :data:`ANY_EVENT_DIMS` any number
        (elementwise families, whose statistics are per coordinate).
    :cvar default_for: the support kinds (as :func:`~pyro_qem.families.support_kind`
        names them: ``"real"``, ``"positive"``, ...) for which this family is the
        default; read from the built-in families only, and at most one may claim a kind.

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
    default_for: ClassVar[Tuple[str, ...]] = ()

    @classmethod
    def preferred_for(cls, prior: Optional[torch.distributions.Distribution]) -> bool:
        """Whether this family should replace its support kind's default for a site
        with this prior (e.g. Binomial for a Binomial prior, whose support alone would
        give a Categorical).

        :param prior: the site's prior, possibly wrapped (``Independent``, ``expand``,
            ``mask``), or None.
        :returns: False unless a family overrides it.
        """
        return False

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

    def proposal_params(self, params: Params, num_particles: int) -> Params:
        """The parameters particles are drawn from, given q's (float64) and K.

        The default is q itself. Discrete families mix in a little of the uniform
        distribution (weight ``1 / K``): a value whose posterior probability is a few
        percent is otherwise drawn so rarely that the moment update, which only sees
        drawn values, drives its q probability to the floor, where it is never drawn
        again (an absorbing state that reports probability 0). The particles' weights
        divide by this proposal's density, so the moments they give stay those of the
        posterior.
        """
        return params

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

    def natural_from_moments(self, moments: Moments, event_shape: torch.Size
                             ) -> Optional[Tuple[torch.Tensor, ...]]:
        """The natural parameters of q, one per statistic of :meth:`statistics` (the
        coefficients of ``T(z)`` in ``log q(z)``), or None for families without the
        minibatch regression update (:mod:`pyro_qem.infer.regression`), the default."""
        return None

    def moments_from_natural(self, natural: Sequence[torch.Tensor], event_shape: torch.Size
                             ) -> Tuple[Moments, torch.Tensor]:
        """Mean parameters of the q with these natural parameters, and a bool tensor
        (the statistics' shape) of where they are valid (e.g. a negative precision is
        not); invalid entries of the moments are arbitrary."""
        raise NotImplementedError(f"{self.name} has no natural parameters.")

    def to_average(self, moments: Moments, event_shape: torch.Size) -> Params:
        """The coordinates in which the iterates of q are averaged (``average_from``).

        Averaging the mean parameters themselves (E z, E z^2 for a Normal) gives the
        *mixture* of the iterates, whose variance adds the step-to-step wander of their
        means to q's own: at 1e5 rows the averaged sds came out 1.4-2.7x too wide. The
        default averages the family's usual parameters (:meth:`params_from_moments`),
        in which a wandering centre does not widen the spread; families with a location
        override it to average the location and the (co)variance separately.

        :returns: named coordinates, each of shape ``batch + its own shape``.
        """
        return dict(self.params_from_moments(moments, event_shape))

    def from_average(self, coordinates: Params, event_shape: torch.Size) -> Moments:
        """Mean parameters from averaged :meth:`to_average` coordinates."""
        return self.moments_from_params(dict(coordinates), event_shape)

    def concentration(self, coordinates: Params) -> Optional[torch.Tensor]:
        """A precision-like quantity of :meth:`to_average` coordinates that grows as q
        narrows (a Normal's precision, a Gamma's shape, a Beta's total concentration),
        per coordinate; None for families whose spread needs no watching (discrete
        ones, one-parameter families).

        Iterate averaging restarts an element whose current iterate is more than twice
        as concentrated as its running average: q is still shrinking onto the
        posterior there, and averaging it with the earlier, wider iterates would widen
        the result (at 1e5 rows q took 170 of 200 steps to shrink 100-fold).
        """
        return None

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

    def relocate(self, params: Params, value: torch.Tensor) -> Params:
        """``params`` with q's location (location families) or mean (the others) moved
        to ``value``, keeping the spread where the family can.

        An explicit ``init_loc_fn`` (e.g. ``init_to_value(values=...)``) moves q's
        centre to the strategy's value this way.

        :param params: the current parameters (float64); not modified.
        :param value: the new centre, broadcastable to the site's ``batch + event``.
        :returns: a new parameter dict.
        :raises NotImplementedError: unless the family implements it.
        """
        raise NotImplementedError(
            f"{type(self).__name__} does not implement relocate(params, value), which is "
            f"needed when an explicit init_loc_fn moves q's centre to the strategy's "
            f"value. Implement {type(self).__name__}.relocate, or leave init_loc_fn unset."
        )

    def quantiles(self, params: Params, probs: Probs, event_shape: torch.Size) -> torch.Tensor:
        """Marginal quantiles of q per coordinate, for ``guide.quantiles()`` and
        ``guide.median()``.

        Families implement :meth:`inverse_cdf`; this checks ``probs`` once for all of
        them and shapes them to broadcast against q's ``batch + event`` shape.

        :param params: q's parameters.
        :param probs: probabilities in (0, 1), a sequence or a 1-d tensor.
        :param event_shape: the site's event shape.
        :returns: float64 tensor of shape ``(len(probs),) + batch + event``.
        :raises ValueError: when ``probs`` is empty or leaves (0, 1).
        :raises NotImplementedError: when the family has no :meth:`inverse_cdf`.
        """
        p = self.check_probs(probs)
        q = self.distribution(params, event_shape)
        ndim = len(q.batch_shape) + len(q.event_shape)
        device = next(iter(params.values())).device
        return self.inverse_cdf(params, p.to(device).reshape((-1,) + (1,) * ndim), event_shape)

    @staticmethod
    def check_probs(probs: Probs) -> torch.Tensor:
        """``probs`` as a 1-d float64 tensor, checked to lie in (0, 1).

        :param probs: a sequence of probabilities or a tensor of them.
        :returns: float64 tensor of shape ``(len(probs),)``.
        :raises ValueError: when ``probs`` is empty or has a value outside (0, 1) or NaN.
        """
        p = torch.as_tensor(probs, dtype=torch.float64).reshape(-1)
        # Written as "not inside" so that NaN is rejected too.
        if p.numel() == 0 or not bool(((p > 0) & (p < 1)).all()):
            raise ValueError(f"quantiles: probabilities must lie in (0, 1), got {p.tolist()}.")
        return p

    def inverse_cdf(
        self, params: Params, probs: torch.Tensor, event_shape: torch.Size
    ) -> torch.Tensor:
        """q's marginal inverse CDF per coordinate; discrete families give the smallest
        support value whose CDF reaches the probability.

        :param params: q's parameters.
        :param probs: checked float64 probabilities of shape ``(n,) + (1,) * k``, where
            ``k`` is the number of q's batch and event dims.
        :param event_shape: the site's event shape.
        :returns: float64 tensor of shape ``(n,) + batch + event``.
        :raises NotImplementedError: unless the family implements it.
        """
        raise NotImplementedError(
            f"{type(self).__name__} does not implement inverse_cdf(params, probs, "
            f"event_shape), which guide.quantiles() and guide.median() need. Implement "
            f"{type(self).__name__}.inverse_cdf, or read q's quantiles from "
            f"guide.distributions() instead."
        )

    def coupled_coordinates(self, event_shape: torch.Size) -> int:
        """How many coordinates of a site the M-step estimates one joint spread for
        from the same weights (1: each coordinate's spread apart). A D x D covariance
        needs an effective sample size above D to be of full rank, which
        :func:`~pyro_qem.outputs.diagnose` checks."""
        return 1

    def supports_event_shape(self, event_shape: torch.Size) -> bool:
        """Whether this family can model a site with ``event_shape``."""
        return len(event_shape) in self.event_dims

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
