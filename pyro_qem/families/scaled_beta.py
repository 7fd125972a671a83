"""ScaledBeta family: sites on an interval ``(a, b)`` with fixed bounds."""

from __future__ import annotations

from typing import Optional, Tuple, Union

import scipy.special
import torch
from torch.distributions import constraints
from torch.distributions.transforms import AffineTransform

import pyro.distributions as dist

from ._special import CENTRE_MARGIN, safe_log, scipy_elementwise
from .base import ANY_EVENT_DIMS, Family, Moments, Params
from .dirichlet import Beta
from .support import check_same_support, interval_bounds

Bound = Union[float, torch.Tensor]

# The unit-interval M-step and moments, shared with the Beta family.
_BETA = Beta()


class ScaledBetaDistribution(dist.TransformedDistribution):
    """``a + (b - a) u`` with ``u ~ Beta``: a Pyro ``TransformedDistribution`` (its
    ``log_prob`` includes the Jacobian ``-log(b - a)``) with a closed-form mean and
    variance, which ``TransformedDistribution`` lacks."""

    @property
    def _affine(self) -> AffineTransform:
        return self.transforms[0]

    @property
    def mean(self) -> torch.Tensor:
        return self._affine.loc + self._affine.scale * self.base_dist.mean

    @property
    def variance(self) -> torch.Tensor:
        return self._affine.scale**2 * self.base_dist.variance


class ScaledBeta(Family):
    """q(z) = a + (b - a) u with u ~ Beta(concentration1, concentration0), independently
    per coordinate, for a site on the interval ``(a, b)``; the bounds are fixed.

    Statistics ``(log u, log(1 - u))`` with ``u = (z - a) / (b - a)``; the M-step is the
    Beta family's. These are the scaled Beta's own sufficient statistics, so matching
    them minimises KL(p || q) (matching mean and variance would not), a Beta-shaped
    posterior is a fixed point, and the family coincides with Beta on the unit
    interval. Log statistics also keep the fit to a posterior piled against a bound,
    where the mean and variance hardly move.

    :param low: the lower bound ``a``: a number, or a tensor broadcastable to the
        site's ``batch + event`` shape (e.g. one bound per plate element).
    :param high: the upper bound ``b > a``, likewise.

    Example::

        fam = ScaledBeta(0.0, 5.0)
        q = fam.distribution({"concentration1": torch.tensor(2.0),
                              "concentration0": torch.tensor(3.0)}, torch.Size())
        q.mean  # 2.0
    """

    name = "ScaledBeta"
    # Matched by kind: every interval other than the unit interval (which it also takes).
    support = constraints.interval(-1.0, 1.0)
    stat_names = ("log_u", "log_1mu")
    event_dims = ANY_EVENT_DIMS
    default_for = ("interval",)

    def __init__(self, low: Bound, high: Bound) -> None:
        self.low = torch.as_tensor(low, dtype=torch.float64).detach()
        self.high = torch.as_tensor(high, dtype=torch.float64).detach()
        try:
            ordered = bool(torch.all(self.low < self.high))
        except RuntimeError as error:  # shapes that do not broadcast
            raise ValueError(f"ScaledBeta: bounds of shapes that do not broadcast ({error})")
        if not ordered or not bool(torch.isfinite(self.high - self.low).all()):
            raise ValueError(
                f"ScaledBeta: the bounds must be finite with low < high, got low={low}, "
                f"high={high}."
            )
        # Instances carry their own bounds; matching only looks at the kind.
        self.support = constraints.interval(self.low, self.high)

    @classmethod
    def from_site(
        cls,
        site_name: str,
        support: constraints.Constraint,
        prior: Optional[torch.distributions.Distribution] = None,
    ) -> "ScaledBeta":
        """The ScaledBeta family with the bounds of the site's interval support.

        :raises ValueError: for a support that is not an interval, or bounds that vary
            across particles (they depend on another latent site).
        """
        bounds = interval_bounds(support)
        if bounds is None:
            raise ValueError(
                f"Site '{site_name}': the ScaledBeta family needs an interval support, got "
                f"{support!r}."
            )
        if prior is not None:
            _check_fixed(site_name, bounds, prior.batch_shape + prior.event_shape)
        return cls(*bounds)

    def check_site(self, site_name: str, support: constraints.Constraint) -> None:
        """Raise ``ValueError`` if the site's interval has other bounds than ours."""
        check_same_support(self, site_name, support, "bounds")

    def _bounds(self, like: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(low, width)`` in the dtype and on the device of ``like``."""
        low = self.low.to(dtype=like.dtype, device=like.device)
        high = self.high.to(dtype=like.dtype, device=like.device)
        return low, high - low

    def concentration(self, coordinates: Params) -> torch.Tensor:
        return coordinates["concentration1"] + coordinates["concentration0"]

    def statistics(self, value: torch.Tensor, event_shape: torch.Size) -> Moments:
        value = value.to(torch.promote_types(value.dtype, torch.get_default_dtype()))
        low, width = self._bounds(value)
        # 1 - u from the upper bound: 1 - (z - a) / w loses the digits near b.
        return safe_log((value - low) / width), safe_log((low + width - value) / width)

    def params_from_moments(self, moments: Moments, event_shape: torch.Size) -> Params:
        return _BETA.params_from_moments(moments, event_shape)

    def moments_from_params(self, params: Params, event_shape: torch.Size) -> Moments:
        return _BETA.moments_from_params(params, event_shape)

    def distribution(self, params: Params, event_shape: torch.Size) -> dist.Distribution:
        a = params["concentration1"]
        low, width = self._bounds(a)
        unit = dist.Beta(a, params["concentration0"])
        q = ScaledBetaDistribution(unit, [AffineTransform(low, width)])
        return q.to_event(len(event_shape))

    def relocate(self, params: Params, value: torch.Tensor) -> Params:
        """``params`` with the mean ``a + (b - a) c1 / (c1 + c0)`` at ``value``; the total
        concentration ``c1 + c0`` is kept."""
        low, width = self._bounds(params["concentration1"])
        unit = (value.detach().double() - low) / width
        return _BETA.relocate(params, unit.clamp(CENTRE_MARGIN, 1 - CENTRE_MARGIN))

    def inverse_cdf(
        self, params: Params, probs: torch.Tensor, event_shape: torch.Size
    ) -> torch.Tensor:
        a, b = params["concentration1"], params["concentration0"]
        low, width = self._bounds(a.double())
        return low + width * scipy_elementwise(scipy.special.betaincinv, a, b, probs)

    def __repr__(self) -> str:
        return f"ScaledBeta(low={_shown(self.low)}, high={_shown(self.high)})"


def _shown(bound: torch.Tensor) -> str:
    return f"{bound.item():g}" if bound.numel() == 1 else f"tensor of shape {tuple(bound.shape)}"


def _check_fixed(site_name: str, bounds: Tuple[Bound, Bound], site_shape: torch.Size) -> None:
    """Raise ``ValueError`` if a bound has more elements than the site's batch + event
    shape: the extra dims are particle dims of a parent, so the bound is another latent."""
    for bound in bounds:
        shape = torch.as_tensor(bound).shape
        try:
            fits = torch.broadcast_shapes(shape, site_shape) == site_shape
        except RuntimeError:
            fits = False
        if not fits:
            raise ValueError(
                f"Site '{site_name}' has an interval support whose bounds (shape "
                f"{tuple(shape)}) vary beyond the site's shape {tuple(site_shape)}: they "
                f"depend on another latent site, so no fixed ScaledBeta q fits them. "
                f"Reparameterise: sample u = pyro.sample('{site_name}_unit', "
                f"dist.Uniform(0., 1.)) and record pyro.deterministic('{site_name}', low + "
                f"(high - low) * u, event_dim=0)."
            )
