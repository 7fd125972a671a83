"""Particle bookkeeping shared by the guides: where a site's K draws go in the tensor,
which plate elements a minibatch selects, and the weighted moments of the E-step."""

from __future__ import annotations

from typing import List, Mapping, Sequence

import torch

import pyro.distributions as dist

from ..families import Family
from ..handlers import is_subsampled
from .state import Selection
from .structure import SiteInfo


def weighted_statistics(family: Family, value: torch.Tensor, weight: torch.Tensor,
                        site: SiteInfo) -> List[torch.Tensor]:
    """``sum_k w_k T(z_k)`` per plate element, in float64.

    ``value`` holds the site's particles in dim 0 of its batch part (the site's own
    particle dim is the leftmost of its value), ``weight`` the group's normalised
    weights in the same layout.
    """
    value = value.double() if value.is_floating_point() else value
    weight = weight.double()
    batch_ndim = value.dim() - len(site.event_shape)
    out = []
    for stat in family.statistics(value, site.event_shape):
        trailing = stat.dim() - batch_ndim
        moment = (weight.reshape(weight.shape + (1,) * trailing) * stat.double()).sum(0)
        out.append(moment.reshape(moment.shape[moment.dim() - trailing - len(site.batch_shape):]))
    return out


def noise_compensated(family: Family, estimates: Sequence[torch.Tensor], current: Sequence[torch.Tensor],
                      weight: torch.Tensor, lr: float, site: SiteInfo) -> List[torch.Tensor]:
    """``estimates + lr * sum_k w_k^2 * compensation``: the family's correction for the
    shrinkage that noisy weights cause under smoothing, scaled by how noisy they are
    (``sum_k w_k^2`` is 1 / ESS of the site's group, per plate element)."""
    compensation = family.noise_compensation(current, site.event_shape)
    if compensation is None:
        return list(estimates)
    weight = weight.double()
    squares = (weight * weight).sum(0)
    batch_ndim = len(site.batch_shape)
    squares = squares.reshape(squares.shape[squares.dim() - batch_ndim:])
    out = []
    for estimate, term in zip(estimates, compensation):
        trailing = estimate.dim() - batch_ndim
        out.append(estimate + lr * squares.reshape(squares.shape + (1,) * trailing) * term.to(estimate))
    return out


def is_observed(msg) -> bool:
    return msg["type"] == "sample" and msg["is_observed"]


def selection_of(frames, subsamples: Mapping[str, torch.Tensor]) -> Selection:
    """(dim, indices) of each subsampled plate among ``frames``, outermost dim first."""
    selection = []
    for frame in frames:
        if is_subsampled(frame):
            if frame.name not in subsamples:
                raise RuntimeError(
                    f"Plate '{frame.name}' is subsampled but its indices were not seen; the "
                    "guide must be entered before the plate is created."
                )
            selection.append((frame.dim, subsamples[frame.name]))
    return sorted(selection, key=lambda s: s[0])


def in_dim(draws: torch.Tensor, q: dist.Distribution, dim: int) -> torch.Tensor:
    """Move the leading draw dim of ``draws`` (from ``q.sample((K,))``) to tensor dim
    ``dim`` (counted from the right of the batch part)."""
    batch = tuple(q.batch_shape)
    shape = draws.shape[:1] + (1,) * (-dim - 1 - len(batch)) + batch + tuple(q.event_shape)
    return draws.reshape(shape)


def enumerated_support(prior: dist.Distribution, dim: int) -> torch.Tensor:
    """The prior's support in tensor dim ``dim``: exact enumeration replaces particles."""
    support = prior.enumerate_support(expand=False)
    size, event = support.shape[0], tuple(prior.event_shape)
    return support.reshape((size,) + (1,) * (-dim - 1) + event)
