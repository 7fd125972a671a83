"""VonMises family: angles, moment-matched on the circle."""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch.distributions import constraints

import pyro.distributions as dist

from .base import ANY_EVENT_DIMS, Family, Moments, Params
from .support import unwrap_prior

# Concentration bounds of q: below, q is uniform on the circle to float64 precision;
# above, its spread (1 / sqrt(kappa) radians) is far below any posterior's.
_MIN_KAPPA, _MAX_KAPPA = 1e-8, 1e12
# Points per coordinate of the grid that inverts q's CDF numerically.
_CDF_POINTS = 8193


def mean_resultant(kappa: torch.Tensor) -> torch.Tensor:
    """``A(kappa) = I1(kappa) / I0(kappa)``, the length of E[(cos z, sin z)] under a
    VonMises of concentration ``kappa`` (exponentially scaled Bessel functions keep it
    finite for large ``kappa``)."""
    return torch.special.i1e(kappa) / torch.special.i0e(kappa)


def concentration_from_resultant(r: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`mean_resultant`: Best and Fisher's (1981) approximation,
    refined by two Newton steps (``A'(k) = 1 - A / k - A^2``)."""
    r = r.clamp(1e-12, 1 - 1e-12)
    kappa = torch.where(
        r < 0.53, 2 * r + r ** 3 + 5 * r ** 5 / 6,
        torch.where(r < 0.85, -0.4 + 1.39 * r + 0.43 / (1 - r), 1 / (r ** 3 - 4 * r ** 2 + 3 * r)))
    kappa = kappa.clamp(_MIN_KAPPA, _MAX_KAPPA)
    for _ in range(2):
        a = mean_resultant(kappa)
        slope = (1 - a / kappa - a * a).clamp_min(1e-300)
        kappa = (kappa - (a - r) / slope).clamp(_MIN_KAPPA, _MAX_KAPPA)
    return kappa


class VonMises(Family):
    """q(z) = VonMises(loc, concentration), independently per coordinate, for angles.

    A VonMises prior's support is the whole real line to torch, but its density repeats
    every 2 pi: a Normal q on such a site follows the posterior's copies outwards and
    its loc and scale grow without bound (a posterior near +-pi gave q's loc ~1e6). This
    family, chosen by default for VonMises priors, works on the circle.

    Statistics ``(cos z, sin z)``; M-step ``loc = atan2(E sin z, E cos z)`` and
    ``concentration = A^-1(|E (cos z, sin z)|)`` with ``A = I1 / I0``. Draws lie in
    [-pi, pi).

    Example::

        fam = VonMises()
        params = fam.params_from_moments(
            (torch.tensor(0.0, dtype=torch.float64), torch.tensor(0.9, dtype=torch.float64)),
            torch.Size())
        params["loc"]  # pi / 2
    """

    name = "VonMises"
    support = constraints.real
    stat_names = ("cos", "sin")
    event_dims = ANY_EVENT_DIMS

    @classmethod
    def preferred_for(cls, prior: Optional[torch.distributions.Distribution]) -> bool:
        """True for a VonMises prior."""
        return isinstance(unwrap_prior(prior), torch.distributions.VonMises)

    def statistics(self, value: torch.Tensor, event_shape: torch.Size) -> Moments:
        return value.cos(), value.sin()

    def params_from_moments(self, moments: Moments, event_shape: torch.Size) -> Params:
        c, s = moments
        r = torch.sqrt(c * c + s * s)
        return {"loc": torch.atan2(s, c), "concentration": concentration_from_resultant(r)}

    def moments_from_params(self, params: Params, event_shape: torch.Size) -> Moments:
        a = mean_resultant(params["concentration"])
        return a * params["loc"].cos(), a * params["loc"].sin()

    def distribution(self, params: Params, event_shape: torch.Size) -> dist.Distribution:
        return dist.VonMises(params["loc"], params["concentration"]).to_event(len(event_shape))

    def init_moments(self, draws: torch.Tensor, event_shape: torch.Size) -> Moments:
        # (cos, sin) are bounded: no clipping of heavy tails needed, and clipping raw
        # angles would cut a prior that wraps around +-pi.
        return tuple(s.mean(0) for s in self.statistics(draws.double(), event_shape))

    def to_average(self, moments: Moments, event_shape: torch.Size) -> Params:
        # The direction as a unit vector (an angle's average across +-pi would point
        # the wrong way) and the concentration apart, so a wandering centre does not
        # widen the average.
        params = self.params_from_moments(moments, event_shape)
        return {"cos": params["loc"].cos(), "sin": params["loc"].sin(),
                "concentration": params["concentration"]}

    def from_average(self, coordinates: Params, event_shape: torch.Size) -> Moments:
        loc = torch.atan2(coordinates["sin"], coordinates["cos"])
        return self.moments_from_params({"loc": loc, "concentration": coordinates["concentration"]},
                                        event_shape)

    def concentration(self, coordinates: Params) -> torch.Tensor:
        return coordinates["concentration"]

    def relocate(self, params: Params, value: torch.Tensor) -> Params:
        """``params`` with the mean direction at ``value`` (wrapped to [-pi, pi))."""
        loc = torch.remainder(value.detach().double() + math.pi, 2 * math.pi) - math.pi
        return {**params, "loc": loc.expand_as(params["loc"])}

    def inverse_cdf(self, params: Params, probs: torch.Tensor, event_shape: torch.Size
                    ) -> torch.Tensor:
        """Quantiles on the arc ``[loc - pi, loc + pi]`` (the median is ``loc``, as in
        ``scipy.stats.vonmises``), by
        inverting the CDF on a grid of :data:`_CDF_POINTS` points per coordinate over
        that arc, or over ``loc +- 12 / sqrt(concentration)`` where that is narrower
        (beyond it the density is below ``exp(-72)`` of its peak)."""
        loc = params["loc"].double()
        kappa = params["concentration"].double()
        half_width = (12 / kappa.sqrt()).clamp(max=math.pi)
        unit = torch.linspace(-1.0, 1.0, _CDF_POINTS, dtype=torch.float64, device=loc.device)
        offsets = unit.reshape((-1,) + (1,) * loc.dim()) * half_width   # (points, *batch)
        density = torch.exp(kappa * (torch.cos(offsets) - 1))   # unnormalised, loc at 0
        # Trapezoids; with the in-cell solve below, quantiles within ~1e-6 of the
        # arc's width of scipy's.
        steps = (density[1:] + density[:-1]) / 2
        cdf = torch.cat([torch.zeros_like(density[:1]), steps.cumsum(0)])
        cdf = cdf / cdf[-1:]
        flat_cdf = cdf.movedim(0, -1).reshape(-1, _CDF_POINTS).contiguous()
        flat_offsets = offsets.movedim(0, -1).expand(loc.shape + (_CDF_POINTS,)).reshape(-1, _CDF_POINTS)
        flat_density = density.movedim(0, -1).reshape(-1, _CDF_POINTS)
        p = probs.reshape(-1).to(loc.device).expand(flat_cdf.shape[0], -1).contiguous()
        upper = torch.searchsorted(flat_cdf, p).clamp(1, _CDF_POINTS - 1)
        lower = upper - 1
        c0, c1 = flat_cdf.gather(1, lower), flat_cdf.gather(1, upper)
        x0, x1 = flat_offsets.gather(1, lower), flat_offsets.gather(1, upper)
        f0, f1 = flat_density.gather(1, lower), flat_density.gather(1, upper)
        # Within a cell the density is nearly linear: solve the quadratic of its
        # integral for the point where the CDF reaches p.
        h = x1 - x0
        mass = (f0 + f1) / 2 * h
        target = ((p - c0) / (c1 - c0).clamp_min(1e-300)).clamp(0, 1) * mass
        slope = (f1 - f0) / h.clamp_min(1e-300)
        linear = target / f0.clamp_min(1e-300)
        root = torch.sqrt((f0 * f0 + 2 * slope * target).clamp_min(0))
        quadratic = (root - f0) / torch.where(slope == 0, torch.ones_like(slope), slope)
        t = torch.where(slope.abs() * h < 1e-12 * f0.clamp_min(1e-300), linear, quadratic)
        x = (x0 + t.clamp(min=torch.zeros_like(h), max=h)).reshape(loc.shape + (-1,)).movedim(-1, 0)
        return loc + x
